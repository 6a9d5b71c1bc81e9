"""nbdl.kernels: the compute layer.

Arrays in, arrays out; no Tensor, no autograd. Every op family is a folder with
``cpu.py`` (``@njit`` kernels) and ``cuda.py`` (``@cuda.jit`` kernels) that export
the same public functions with the same signatures. Nothing here compiles at
import time: kernels compile on first call and are cached on disk.

    from nbdl.kernels import backend
    K = backend("conv", "cpu")      # -> nbdl.kernels.conv.cpu
"""
import importlib

FAMILIES = (
    "elementwise", "linalg", "activation", "softmax", "dropout",
    "optim", "conv", "pool", "norm", "rnn",
)


_modules = {}


def backend(family, kind):
    """Return the kernel module of ``family`` for ``kind`` ("cpu" or "cuda")."""
    module = _modules.get((family, kind))
    if module is not None:      # every op call asks: skip the import machinery
        return module
    if family not in FAMILIES:
        raise ValueError(f"unknown kernel family {family!r}; known: {', '.join(FAMILIES)}")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"unknown backend {kind!r}; expected 'cpu' or 'cuda'")
    module = _modules[family, kind] = importlib.import_module(f"nbdl.kernels.{family}.{kind}")
    return module
