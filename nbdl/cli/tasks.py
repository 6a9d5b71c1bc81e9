"""What each model trains on and how it is scored: the two tasks of the command line.

A task owns its data, builds its model from a config dict, cuts an epoch into batches,
computes the loss of a batch, and evaluates on held-out data. The training loop in
`nbdl.cli.train` is shared; everything model-specific lives here.

- `DigitsTask` ("lenet"): LeNet-5 on the bundled MNIST digits; metric: test accuracy.
- `TextTask` ("charlm"): a character-level LSTM/GRU on the CPython help texts; metric:
  validation bits per character, against a unigram model and gzip -9.
"""

import math
from typing import NamedTuple

import numpy as np

import nbdl
import nbdl.functional as F

from . import data
from .models import CharLM, LeNet5, detach_state

__all__ = ["DigitsTask", "TextTask", "TASKS"]


class Batch(NamedTuple):
    """One training batch: inputs and targets as host arrays."""

    x: np.ndarray
    y: np.ndarray


def _accuracy_counts(logits, targets):
    """(number of correct argmax predictions, number of predictions) on the host."""
    pred = logits.numpy().argmax(axis=-1)
    return int((pred == targets).sum()), int(targets.size)


class DigitsTask:
    """LeNet-5 on 4,000 training / 1,000 test MNIST digits (fixed stratified split)."""

    kind = "lenet"
    title = "LeNet-5 on MNIST digits (4,000 train / 1,000 test)"
    unit = "img"
    defaults = {"epochs": 15, "batch_size": 64, "optimizer": "adam", "schedule": "cosine", "seed": 0, "shift": 2}
    # peak learning rate of the warmup + cosine schedule, per optimizer
    default_lr = {"sgd": 0.1, "momentum": 0.03, "rmsprop": 1e-3, "adam": 3e-3, "adadelta": 1.0}

    def __init__(self):
        self.data = data.load_digits()

    def model_config(self, args):
        x = self.data.x_train
        return {"num_classes": 10, "mean": float(x.mean()), "std": float(x.std())}

    @staticmethod
    def build_model(config, device):
        return LeNet5(**config, device=device)

    def describe(self):
        d = self.data
        return f"data: {len(d.y_train)} train / {len(d.y_test)} test digits (28x28), bundled MNIST subset"

    # -- training --
    def epoch(self, epoch, seed, batch_size, config):
        """(samples, batches, iterator of Batch): a shuffled, augmented pass over the train set.

        The permutation and the random shifts depend only on (seed, epoch), so a resumed
        run sees exactly the batches the uninterrupted run would have seen.
        """
        rng = np.random.default_rng([seed, epoch])
        x = data.shift_images(self.data.x_train, config.get("shift", 0), rng)
        y = self.data.y_train
        order = rng.permutation(len(y))

        def batches():
            for i in range(0, len(order), batch_size):
                idx = order[i : i + batch_size]
                yield Batch(x[idx], y[idx])

        return len(order), math.ceil(len(order) / batch_size), batches()

    def start_epoch(self):
        pass

    def loss(self, model, batch, device):
        """Mean cross-entropy of one batch; returns (loss Tensor, correct, count)."""
        logits = model(nbdl.tensor(batch.x, device=device))
        loss = F.cross_entropy(logits, nbdl.tensor(batch.y, device=device))
        return (loss,) + _accuracy_counts(logits, batch.y)

    # -- evaluation --
    def evaluate(self, model, device, limit=None, batch_size=500):
        """{"test_loss", "test_acc"} on the 1,000 held-out digits (or the first `limit`)."""
        x, y = self.data.x_test, self.data.y_test
        if limit:
            x, y = x[:limit], y[:limit]
        total, correct, preds = 0.0, 0, []
        model.eval()
        with nbdl.no_grad():
            for i in range(0, len(y), batch_size):
                logits = model(nbdl.tensor(x[i : i + batch_size], device=device))
                yb = y[i : i + batch_size]
                total += F.cross_entropy(logits, nbdl.tensor(yb, device=device)).item() * len(yb)
                c, _ = _accuracy_counts(logits, yb)
                correct += c
                preds.append(logits.numpy().argmax(-1))
        model.train()
        self.last_predictions = np.concatenate(preds)  # for per-class reports
        return {"test_loss": total / len(y), "test_acc": correct / len(y)}

    # -- presentation --
    @staticmethod
    def epoch_summary(row):
        return (
            f"train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:5.2f}% | "
            f"test loss {row['test_loss']:.4f} acc {100 * row['test_acc']:5.2f}%"
        )

    @staticmethod
    def bar_postfix(loss, acc):
        return {"loss": f"{loss:.4f}", "acc": f"{100 * acc:.2f}%"}

    @staticmethod
    def plot_panels(extra):
        panels = [
            ("cross-entropy loss", [("train_loss", "train"), ("test_loss", "test")]),
            ("accuracy", [("train_acc", "train"), ("test_acc", "test")]),
        ]
        return panels, {}

    @staticmethod
    def train_metrics(loss, acc):
        return {"train_loss": loss, "train_acc": acc}

    def extra(self):
        return {}

    def after_training(self, model, device, args, cfg):
        pass

    def final_summary(self, row):
        return f"test accuracy {100 * row['test_acc']:.2f}% ({len(self.last_predictions)} held-out digits)"


class TextTask:
    """A character-level language model on the CPython help texts (last 10% held out)."""

    kind = "charlm"
    title = "character-level language model on the CPython help texts"
    unit = "char"
    # GRU over LSTM: on this text a GRU reached lower validation bits/char for the same
    # time (same cost per step, faster early progress); --cell lstm is one flag away.
    defaults = {
        "epochs": 10,
        "batch_size": 32,
        "optimizer": "adam",
        "schedule": "cosine",
        "seed": 0,
        "clip": 1.0,  # recurrent nets need it: a rare huge gradient otherwise undoes much of the training
        "cell": "gru",
        "hidden": 128,
        "layers": 1,
        "seq_len": 64,
    }
    default_lr = {"sgd": 1.0, "momentum": 0.1, "rmsprop": 2e-3, "adam": 6e-3, "adadelta": 1.0}

    def __init__(self, vocab=None):
        self.text = data.load_text(vocab=vocab)
        self.state = None
        vocab_size = len(self.text.vocab)
        self.unigram_bpc = data.unigram_bits_per_char(self.text.train, self.text.val, vocab_size)
        self.gzip_bpc = data.gzip_bits_per_char(self.text.decode(self.text.val))

    def model_config(self, args):
        return {
            "vocab": self.text.vocab,
            "cell": args.cell,
            "hidden_size": args.hidden,
            "num_layers": args.layers,
        }

    @staticmethod
    def build_model(config, device):
        config = dict(config)
        vocab = config.pop("vocab")
        return CharLM(len(vocab), **config, device=device)

    def describe(self):
        t = self.text
        return (
            f"data: pydoc_data.topics, {len(t.train):,} train / {len(t.val):,} validation characters, "
            f"{len(t.vocab)} distinct\n"
            f"baselines on the validation text: unigram model {self.unigram_bpc:.3f} bits/char, "
            f"gzip -9 {self.gzip_bpc:.3f} bits/char"
        )

    # -- training --
    def epoch(self, epoch, seed, batch_size, config):
        """(characters, batches, iterator of Batch) for truncated backprop through time.

        The training text is cut into `batch_size` contiguous streams (after a random
        offset, so chunk boundaries move from epoch to epoch); each batch is the next
        `seq_len` characters of every stream, x: (T, B) codes, y: x shifted by one.
        The hidden state flows from one batch to the next (see `loss`).
        """
        T = config["seq_len"]
        rng = np.random.default_rng([seed, epoch])
        codes = self.text.train
        offset = int(rng.integers(0, T))
        per_stream = (len(codes) - 1 - offset) // batch_size
        n_chunks = per_stream // T
        x = codes[offset : offset + per_stream * batch_size].reshape(batch_size, per_stream)
        y = codes[offset + 1 : offset + 1 + per_stream * batch_size].reshape(batch_size, per_stream)

        def batches():
            for k in range(n_chunks):
                cols = slice(k * T, (k + 1) * T)
                yield Batch(np.ascontiguousarray(x[:, cols].T), np.ascontiguousarray(y[:, cols].T))

        return n_chunks * T * batch_size, n_chunks, batches()

    def start_epoch(self):
        self.state = None

    def loss(self, model, batch, device):
        """Mean next-character cross-entropy (nats) of one (T, B) chunk."""
        logits, state = model(batch.x, self.state)
        self.state = detach_state(state)  # carry context, but backprop only through this chunk
        V = logits.shape[-1]
        loss = F.cross_entropy(logits.reshape(-1, V), nbdl.tensor(batch.y.reshape(-1), device=device))
        return (loss,) + _accuracy_counts(logits, batch.y)

    # -- evaluation --
    def evaluate(self, model, device, limit=None, streams=16, seq_len=256):
        """{"val_loss" (nats/char), "val_bpc", "val_acc"} over the held-out text.

        The text is read as `streams` contiguous pieces in chunks of `seq_len` with the
        state carried along, so (nearly) every character is predicted with full context.
        """
        codes = self.text.val[: limit + 1] if limit else self.text.val
        streams = max(1, min(streams, (len(codes) - 1) // 2))
        per_stream = (len(codes) - 1) // streams
        x = codes[: per_stream * streams].reshape(streams, per_stream).T
        y = codes[1 : 1 + per_stream * streams].reshape(streams, per_stream).T
        total, correct, state = 0.0, 0, None
        model.eval()
        with nbdl.no_grad():
            for t in range(0, per_stream, seq_len):
                xb, yb = np.ascontiguousarray(x[t : t + seq_len]), np.ascontiguousarray(y[t : t + seq_len])
                logits, state = model(xb, state)
                V = logits.shape[-1]
                nll = F.cross_entropy(logits.reshape(-1, V), nbdl.tensor(yb.reshape(-1), device=device))
                total += nll.item() * yb.size
                correct += _accuracy_counts(logits, yb)[0]
        model.train()
        n = per_stream * streams
        return {"val_loss": total / n, "val_bpc": data.bits(total / n), "val_acc": correct / n}

    def sample(self, model, device, prime="The ", length=400, temperature=0.8, rng=None):
        """Text generated one character at a time from p(next | text so far) ** (1 / temperature)."""
        rng = rng or np.random.default_rng()
        codes = self.text.encode(prime) if prime else np.array([rng.integers(len(self.text.vocab))])
        out = []
        model.eval()
        with nbdl.no_grad():
            logits, state = model(codes[:, None], None)  # (T, 1) -> the state after the prime
            for _ in range(length):
                z = logits.numpy()[-1, 0].astype(np.float64) / temperature
                p = np.exp(z - z.max())
                code = int(rng.choice(len(p), p=p / p.sum()))
                out.append(code)
                logits, state = model(np.array([[code]]), state)
        model.train()
        return (prime or self.text.vocab[codes[0]]) + self.text.decode(out)

    # -- presentation --
    @staticmethod
    def epoch_summary(row):
        return (
            f"train {row['train_bpc']:.3f} bits/char acc {100 * row['train_acc']:5.2f}% | "
            f"val {row['val_bpc']:.3f} bits/char acc {100 * row['val_acc']:5.2f}%"
        )

    @staticmethod
    def bar_postfix(loss, acc):
        return {"bpc": f"{data.bits(loss):.3f}", "acc": f"{100 * acc:.2f}%"}

    @staticmethod
    def plot_panels(extra):
        panels = [
            ("bits per character", [("train_bpc", "train"), ("val_bpc", "validation")]),
            ("next-character accuracy", [("train_acc", "train"), ("val_acc", "validation")]),
        ]
        hlines = {0: [(extra["gzip_bpc"], "gzip -9"), (extra["unigram_bpc"], "unigram")]} if extra else {}
        return panels, hlines

    @staticmethod
    def train_metrics(loss, acc):
        return {"train_loss": loss, "train_bpc": data.bits(loss), "train_acc": acc}

    def final_summary(self, row):
        verdict = "beats gzip" if row["val_bpc"] < self.gzip_bpc else "does not beat gzip yet"
        return (
            f"validation {row['val_bpc']:.3f} bits/char: unigram model {self.unigram_bpc:.3f}, "
            f"gzip -9 {self.gzip_bpc:.3f} ({verdict})"
        )

    def extra(self):
        return {"unigram_bpc": self.unigram_bpc, "gzip_bpc": self.gzip_bpc}

    def after_training(self, model, device, args, cfg):
        """Show what the model learned: a sample that starts from "The "."""
        if args.sample_length:
            print("sample (temperature 0.8):")
            print(self.sample(model, device, length=args.sample_length, rng=np.random.default_rng(cfg["seed"])))


TASKS = {"lenet": DigitsTask, "charlm": TextTask}
