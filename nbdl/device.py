"""The device flag: "cpu", "cuda" or "cuda:N", and the one dispatch point to kernels.

A device is a plain string. ``normalize("cuda")`` gives ``"cuda:0"``; every Tensor
carries a normalized device string. ``kernels(family, device)`` returns the
``nbdl.kernels.<family>.cpu`` or ``.cuda`` module, so ops never import a backend
themselves. numba.cuda is imported only when a CUDA device is first used: a CPU-only
install without numba-cuda imports and runs.

Without a GPU, set ``NUMBA_ENABLE_CUDASIM=1`` before anything imports numba.cuda to
run the CUDA kernels in Numba's simulator (slow, plain Python, but real).
"""
import os

import numpy as np

from nbdl.kernels import backend as _backend

_default_device = None
_cuda_ok = None

_HOW_TO_GET_CUDA = (
    "install the CUDA extra on a machine with an NVIDIA GPU and driver "
    "(pip install 'nbdl[cuda]'), or run the CUDA kernels in Numba's CPU simulator "
    "by setting NUMBA_ENABLE_CUDASIM=1 in the environment before starting Python "
    "(slow; for testing)"
)


def _cuda():
    from numba import cuda  # lazy: only when a CUDA device is used
    return cuda


def simulator_enabled():
    """True when Numba's CUDA simulator is switched on (NUMBA_ENABLE_CUDASIM=1)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def cuda_available():
    """True when CUDA kernels can run: a real GPU, or the simulator is enabled."""
    global _cuda_ok
    if _cuda_ok is None:
        try:
            _cuda_ok = bool(_cuda().is_available())
        except Exception:  # numba-cuda missing, no driver, broken toolkit
            _cuda_ok = False
    return _cuda_ok


def cuda_device_count():
    if not cuda_available():
        return 0
    if simulator_enabled():
        return 1
    return len(_cuda().gpus)


def normalize(device):
    """Canonical device string: "cpu" or "cuda:N". Raises on anything else."""
    if type(device) is str and device == "cpu":
        return device               # the common case first: every Tensor asks
    if device is None:
        return get_default_device()
    if hasattr(device, "device") and isinstance(getattr(device, "device"), str):
        device = device.device  # a Tensor: its device
    if not isinstance(device, str):
        raise TypeError(f"device must be a string like 'cpu' or 'cuda:0', got {device!r}")
    name = device.strip().lower()
    if name == "cpu":
        return "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        index = 0
        if ":" in name:
            try:
                index = int(name.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"device {device!r}: the CUDA index must be an integer, e.g. 'cuda:0'") from None
            if index < 0:
                raise ValueError(f"device {device!r}: the CUDA index must be >= 0")
        return f"cuda:{index}"
    raise ValueError(f"unknown device {device!r}; expected 'cpu', 'cuda' or 'cuda:N'")


def require(device):
    """Normalize ``device`` and check it can be used now; return the canonical string."""
    device = normalize(device)
    if device != "cpu":
        if not cuda_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available: {_HOW_TO_GET_CUDA}")
        index = int(device.split(":")[1])
        count = cuda_device_count()
        if index >= count:
            raise RuntimeError(f"device {device!r} requested but only {count} CUDA device(s) exist")
    return device


def is_cuda(device):
    return device != "cpu"


def kind(device):
    """"cpu" or "cuda": which kernel backend serves ``device``."""
    return "cpu" if device == "cpu" else "cuda"


def kernels(family, device):
    """The kernel module of ``family`` for ``device`` (the one dispatch point)."""
    return _backend(family, kind(device))


def set_default_device(device):
    """Set the device used when a factory function gets ``device=None``."""
    global _default_device
    _default_device = require(device)


def get_default_device():
    """The default device: set_default_device(), else $NBDL_DEVICE, else "cpu"."""
    global _default_device
    if _default_device is None:
        _default_device = require(os.environ.get("NBDL_DEVICE", "cpu") or "cpu")
    return _default_device


# --- arrays on a device -------------------------------------------------------------

def is_device_array(a):
    return not isinstance(a, np.ndarray) and hasattr(a, "copy_to_host")


def to_host(a):
    """A numpy copy (or the array itself when it is already on the host)."""
    if isinstance(a, np.ndarray):
        return a
    return a.copy_to_host()


def from_host(a, device):
    """Put a numpy array on ``device`` (copy to the GPU; on cpu, returned as is)."""
    a = np.asarray(a, order="C")
    if device == "cpu":
        return a
    return _cuda().to_device(a)


def move(a, device):
    """``a`` (numpy or device array) placed on ``device``."""
    if device == "cpu":
        return np.asarray(to_host(a), order="C")
    if is_device_array(a):
        return a
    return from_host(a, device)


def copy(a, device):
    """A new C-contiguous copy of ``a`` (numpy or device array) on its own ``device``."""
    if device == "cpu":
        return np.array(a, copy=True, order="C")
    out = _cuda().device_array(a.shape, dtype=np.dtype(a.dtype))
    if out.size:
        out.copy_to_device(a)          # device to device, no kernel
    return out


def empty(shape, dtype, device):
    if device == "cpu":
        return np.empty(shape, dtype=dtype)
    return _cuda().device_array(shape, dtype=np.dtype(dtype))


def full(shape, value, dtype, device):
    if device == "cpu":
        return np.full(shape, value, dtype=dtype)
    a = empty(shape, dtype, device)
    if a.size:
        kernels("elementwise", device).fill(a, value)
    return a


def zeros(shape, dtype, device):
    return full(shape, 0, dtype, device)


def synchronize(device=None):
    """Wait for all queued work on ``device`` (no-op on cpu)."""
    device = normalize(device)
    if device != "cpu":
        _cuda().synchronize()
