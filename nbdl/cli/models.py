"""The two model families the command line trains: LeNet-5 and a character-level RNN LM.

Both are plain `nbdl.nn.Module`s built from the public layers, the way a PyTorch user
would write them. Each model is rebuilt from a small JSON-able config dict that the
checkpoint stores next to the weights (`MODEL_KINDS[kind](**config)`).
"""

import numpy as np

import nbdl
from nbdl import nn

__all__ = ["LeNet5", "CharLM", "MODEL_KINDS", "one_hot"]


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al., 1998) with ReLU and max pooling, for 28x28 digits.

    (N, 1, 28, 28) -> conv 6@5x5 pad 2 -> ReLU -> maxpool 2 -> (N, 6, 14, 14)
    -> conv 16@5x5 -> ReLU -> maxpool 2 -> (N, 16, 5, 5) -> flatten 400
    -> fc 120 -> ReLU -> fc 84 -> ReLU -> fc `num_classes` logits.

    The input is standardized inside the model with the training set's `mean` and `std`
    so a checkpoint carries its own preprocessing.
    """

    def __init__(self, num_classes=10, mean=0.0, std=1.0, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.mean, self.std = float(mean), float(std)
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2, **kw),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, **kw),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120, **kw),
            nn.ReLU(),
            nn.Linear(120, 84, **kw),
            nn.ReLU(),
            nn.Linear(84, num_classes, **kw),
        )

    def forward(self, x):
        """x: (N, 1, 28, 28) pixels in [0, 1] -> (N, num_classes) logits."""
        x = (x - self.mean) * (1.0 / self.std)
        return self.classifier(self.features(x))


class CharLM(nn.Module):
    """Character-level language model: one-hot -> LSTM/GRU stack -> linear -> logits.

    x: (T, B) int codes -> one-hot (T, B, V) -> RNN (T, B, H) -> (T, B, V) logits of the
    next character. The one-hot input goes straight into the recurrent layer: its input
    weight W_ih (4H x V for an LSTM) then *is* a learned character embedding, with no
    separate embedding layer and no extra GEMM.
    """

    def __init__(self, vocab_size, hidden_size=128, num_layers=1, cell="gru", device=None, dtype=None):
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise ValueError(f"CharLM: cell must be 'lstm' or 'gru', got {cell!r}")
        kw = dict(device=device, dtype=dtype)
        self.vocab_size, self.cell = vocab_size, cell
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(vocab_size, hidden_size, num_layers, **kw)
        self.decoder = nn.Linear(hidden_size, vocab_size, **kw)

    def forward(self, x, state=None):
        """x: (T, B) int64 numpy codes; state: the RNN's (h, c) or h, or None.

        Returns (logits (T, B, V), new state). Pass the state back in (detached) to
        carry context across consecutive chunks of a text.
        """
        dev = self.decoder.weight.device
        dtype = self.decoder.weight.dtype
        inputs = nbdl.tensor(one_hot(x, self.vocab_size, dtype), device=dev)
        out, state = self.rnn(inputs, state)
        t, b, h = out.shape
        logits = self.decoder(out.reshape(t * b, h))
        return logits.reshape(t, b, self.vocab_size), state


def one_hot(codes, n, dtype=np.float32):
    """codes: int array of any shape -> float array of shape codes.shape + (n,)."""
    out = np.zeros(codes.shape + (n,), dtype=dtype)
    np.put_along_axis(out, codes[..., None], 1.0, axis=-1)
    return out


def detach_state(state):
    """Cut the autograd history of an RNN state ((h, c) tuple or h) between chunks."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


MODEL_KINDS = {"lenet": LeNet5, "charlm": CharLM}
