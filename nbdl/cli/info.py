"""`nbdl info`: what this installation runs on (versions, CUDA, threads, conv algorithms)."""

import importlib.metadata
import os
import platform
import sys

import numba
import numpy as np

import nbdl

__all__ = ["info_command", "collect_info"]

# (description, x shape, weight shape, stride, padding, groups)
CONV_SHAPES = [
    ("LeNet-5 conv1", (64, 1, 28, 28), (6, 1, 5, 5), 1, 2, 1),
    ("LeNet-5 conv2", (64, 6, 14, 14), (16, 6, 5, 5), 1, 0, 1),
    ("ResNet 3x3", (32, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1),
    ("depthwise 3x3", (32, 32, 56, 56), (32, 1, 3, 3), 1, 1, 32),
]


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@numba.njit(parallel=True, cache=True)
def _parallel_probe(n):
    """A tiny parallel loop: running it makes Numba pick (and report) its threading layer."""
    out = np.empty(n)
    for i in numba.prange(n):
        out[i] = i
    return out


def threading_info():
    """(threading layer actually used, number of threads)."""
    try:
        _parallel_probe(4)
        layer = numba.threading_layer()
    except Exception as e:  # no usable layer: say why instead of failing
        layer = f"unavailable ({e})"
    return layer, numba.get_num_threads()


def cuda_info():
    """A line about CUDA: devices, or the simulator, or why it is not available."""
    dev = nbdl.device
    if dev.simulator_enabled():
        return "simulator (NUMBA_ENABLE_CUDASIM=1): CUDA kernels run as Python on the CPU, slowly"
    if not dev.cuda_available():
        if _version("numba-cuda") is None:
            return "not available (numba-cuda is not installed: pip install 'nbdl[cuda]')"
        return "not available (no NVIDIA GPU or driver found; NUMBA_ENABLE_CUDASIM=1 runs the simulator)"
    from numba import cuda

    names = []
    for gpu in cuda.gpus:
        with gpu:
            d = cuda.get_current_device()
            name = d.name.decode() if isinstance(d.name, bytes) else d.name
            names.append(f"{name} (compute capability {d.compute_capability[0]}.{d.compute_capability[1]})")
    return "available: " + "; ".join(names)


def conv_choices(devices):
    """[(description, shapes, {device: algorithms})]: what conv2d's "auto" runs for a few shapes
    (forward / input gradient / weight gradient)."""
    from nbdl.kernels import conv as conv_kernels

    forced = nbdl.get_conv_algo()
    rows = []
    for name, x, w, stride, pad, groups in CONV_SHAPES:
        geom = conv_kernels.conv2d_geometry("info", x, w, stride, pad, 1, groups)
        passes = ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight")
        picks = {d: (forced if forced != "auto" else "/".join(conv_kernels.choose_algo(geom, d, op) for op in passes))
                 for d in devices}
        rows.append((name, f"x{x} w{w}" + (f" groups={groups}" if groups > 1 else ""), picks))
    return rows


def collect_info():
    """The report as a list of (label, value) pairs."""
    layer, threads = threading_info()
    versions = [
        ("nbdl", nbdl.__version__),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", platform.platform()),
        ("numpy", np.__version__),
        ("numba", numba.__version__),
        ("llvmlite", _version("llvmlite")),
        ("numba-cuda", _version("numba-cuda") or "not installed"),
        ("tqdm", _version("tqdm")),
        ("matplotlib", _version("matplotlib") or "not installed (curves.png is skipped)"),
        ("torch", _version("torch") or "not installed (only used as a test oracle)"),
    ]
    runtime = [
        ("CUDA", cuda_info()),
        ("numba threading layer", f"{layer}, {threads} threads (NUMBA_NUM_THREADS)"),
        ("CPU cores", str(os.cpu_count())),
        ("numba cache", os.environ.get("NUMBA_CACHE_DIR", "next to the installed kernel sources (__pycache__)")),
        ("conv algorithm", f"{nbdl.get_conv_algo()} (nbdl.set_conv_algo; benchmark mode {nbdl.backends.benchmark})"),
    ]
    return versions, runtime


def info_command(args):
    versions, runtime = collect_info()
    width = max(len(k) for k, _ in versions + runtime)
    for k, v in versions + runtime:
        print(f"{k:<{width}}  {v}")
    print('conv2d algo="auto" picks (forward/input gradient/weight gradient):')
    for name, shapes, picks in conv_choices(("cpu", "cuda")):
        print(f"  {name:<14} {shapes:<44} " + "  ".join(f"{d}: {a}" for d, a in picks.items()))
    return 0
