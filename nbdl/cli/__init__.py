"""The ``nbdl`` command: train LeNet-5 and a character-level language model on real data.

    nbdl train lenet                 # LeNet-5 on bundled MNIST digits, about 98% test accuracy
    nbdl train charlm                # LSTM language model on the CPython help texts
    nbdl evaluate runs/lenet-.../checkpoint.npz
    nbdl sample runs/charlm-.../checkpoint.npz --prime "The "
    nbdl info                        # versions, CUDA, threading layer, conv algorithms

Every error a user can cause (a bad flag, a missing or foreign checkpoint, an
unwritable directory) ends in one ``nbdl: error: ...`` line and a non-zero exit code.
"""

import argparse
import math
import os
import sys

from .errors import CLIError

__all__ = ["main", "build_parser"]


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def _nonneg_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return v


def _add_common_train_flags(p, task_cls):
    from .train import OPTIMIZERS, SCHEDULES

    d = task_cls.defaults
    lrs = ", ".join(f"{k} {v:g}" for k, v in task_cls.default_lr.items())
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    _add_threads_flag(p)
    p.add_argument("--epochs", type=_positive_int, help=f"total epochs to train (default: {d['epochs']})")
    p.add_argument("--batch-size", type=_positive_int, help=f"default: {d['batch_size']}")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"default: {d['optimizer']}")
    p.add_argument("--lr", type=_positive_float, help=f"peak learning rate (default per optimizer: {lrs})")
    p.add_argument("--schedule", choices=SCHEDULES,
                   help="learning rate per step: linear warmup over 10%% of the steps then cosine decay to 0, "
                        "or constant (default: cosine)")
    p.add_argument("--seed", type=_nonneg_int, help="seed of the initialization and the data order (default: 0)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: runs/<model>-<timestamp>/, "
                                                "or the checkpoint's directory with --resume)")
    p.add_argument("--resume", metavar="CHECKPOINT",
                   help="continue a run from its checkpoint.npz (or run directory) up to --epochs")
    # for tests and quick looks: cut every epoch / evaluation short
    p.add_argument("--max-batches", type=_positive_int, help=argparse.SUPPRESS)
    p.add_argument("--eval-limit", type=_positive_int, help=argparse.SUPPRESS)


def _add_threads_flag(p):
    p.add_argument("--threads", type=_positive_int,
                   help="CPU threads for the kernels (default: one per core; 1 can be faster on a busy machine)")


def _train_parsers(sub):
    from .tasks import DigitsTask, TextTask

    train = sub.add_parser("train", help="train a model", description="Train a model; see `nbdl train MODEL --help`.")
    models = train.add_subparsers(dest="model", metavar="MODEL", required=True)

    lenet = models.add_parser(
        "lenet", help="LeNet-5 on 4,000 MNIST digits (bundled), tested on 1,000",
        description="Train LeNet-5 (conv, pool, conv, pool, 3 dense layers) on the bundled 5,000-digit MNIST "
                    "subset: a fixed stratified 4,000/1,000 train/test split. Writes checkpoint.npz, metrics.csv "
                    "and curves.png to the output directory after every epoch.")
    _add_common_train_flags(lenet, DigitsTask)
    lenet.add_argument("--algo", choices=("auto", "direct", "im2col"), default="auto",
                       help="convolution algorithm (default: auto, by shape; see `nbdl info`)")
    lenet.add_argument("--shift", type=_nonneg_int,
                       help="augmentation: shift training images by up to this many pixels (default: 2; 0: off)")

    charlm = models.add_parser(
        "charlm", help="character-level LSTM/GRU language model on the CPython help texts",
        description="Train a character-level language model on pydoc_data.topics (the help texts that ship "
                    "with every CPython; the last 10%% is held out). Reports validation bits per character "
                    "against a unigram model and gzip -9, and samples text at the end.")
    _add_common_train_flags(charlm, TextTask)
    d = TextTask.defaults
    charlm.add_argument("--cell", choices=("lstm", "gru"), help=f"recurrent cell (default: {d['cell']})")
    charlm.add_argument("--hidden", type=_positive_int, help=f"hidden size (default: {d['hidden']})")
    charlm.add_argument("--layers", type=_positive_int, help=f"stacked recurrent layers (default: {d['layers']})")
    charlm.add_argument("--seq-len", type=_positive_int,
                        help=f"characters per truncated-backprop chunk (default: {d['seq_len']})")
    charlm.add_argument("--clip", type=_positive_float, help="max gradient norm (default: 1.0)")
    charlm.add_argument("--sample-length", type=_nonneg_int, default=400,
                        help="characters to sample at the end (default: 400)")
    for p in (lenet, charlm):
        p.set_defaults(func=_run_train)


def _run_train(args):
    from .train import train_command

    return train_command(args)


def _run_evaluate(args):
    from .train import evaluate_command

    return evaluate_command(args)


def _run_sample(args):
    from .train import sample_command

    return sample_command(args)


def _run_info(args):
    from .info import info_command

    return info_command(args)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="nbdl",
        description="Train and use small neural networks with nbdl's Numba kernels (CPU, or CUDA with --device cuda).",
        epilog="Start with: nbdl train lenet",
    )
    parser.add_argument("--version", action="version", version=f"nbdl {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _train_parsers(sub)

    ev = sub.add_parser("evaluate", help="evaluate a saved model on its held-out data",
                        description="Report test accuracy (lenet) or validation bits/char (charlm) of a checkpoint.")
    ev.add_argument("checkpoint", help="checkpoint.npz, or the run directory that holds it")
    ev.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    _add_threads_flag(ev)
    ev.add_argument("--limit", type=_positive_int, help=argparse.SUPPRESS)
    ev.set_defaults(func=_run_evaluate)

    sa = sub.add_parser("sample", help="generate text (charlm) or classify random digits (lenet)",
                        description="charlm: generate text one character at a time. lenet: draw random test digits "
                                    "as text with the model's predictions.")
    sa.add_argument("checkpoint", help="checkpoint.npz, or the run directory that holds it")
    sa.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    _add_threads_flag(sa)
    sa.add_argument("--length", type=_nonneg_int, default=400, help="charlm: characters to generate (default: 400)")
    sa.add_argument("--prime", default="The ", help="charlm: text to start from (default: 'The ')")
    sa.add_argument("--temperature", type=_positive_float, default=0.8,
                    help="charlm: <1 is more conservative, >1 more surprising (default: 0.8)")
    sa.add_argument("--count", type=_positive_int, default=4, help="lenet: digits to show (default: 4)")
    sa.add_argument("--seed", type=_nonneg_int, default=None, help="random seed (default: fresh each time)")
    sa.set_defaults(func=_run_sample)

    info = sub.add_parser("info", help="versions, CUDA, threading layer, convolution algorithms",
                          description="Show what this installation runs on.")
    info.set_defaults(func=_run_info)
    return parser


def _version():
    try:
        from importlib.metadata import version

        return version("nbdl")
    except Exception:
        return "unknown"


def main(argv=None):
    """Entry point of the ``nbdl`` console script; returns the exit code.

    Usage errors exit with 2 (argparse's convention), other input errors with 1,
    an interrupt with 130.
    """
    # Numba's OpenMP threads spin while they wait for work by default. On a machine where
    # other processes compete for the cores, the spinning threads steal the time the
    # working ones need: LeNet-5 steps ran 4-15x slower on a busy 2-core machine, and
    # passive waiting costs only a futex wake-up per parallel region on an idle one.
    # It must be set before Numba starts its thread pool (the first parallel kernel);
    # an explicit OMP_WAIT_POLICY in the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed by argparse
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        return args.func(args)
    except CLIError as e:
        print(f"nbdl: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("nbdl: interrupted", file=sys.stderr)
        return 130
