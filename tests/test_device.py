"""The device flag."""
import os
import subprocess
import sys

import pytest

import nbdl
from nbdl import device as dev


def test_normalize():
    assert dev.normalize("cpu") == "cpu"
    assert dev.normalize("CUDA") == "cuda:0"
    assert dev.normalize("cuda:1") == "cuda:1"
    for bad in ("gpu", "cuda:x", "cuda:-1"):
        with pytest.raises(ValueError, match="device"):
            dev.normalize(bad)
    with pytest.raises(TypeError):
        dev.normalize(3)


def test_require_refuses_devices_that_do_not_exist():
    if not nbdl.cuda_available():
        pytest.skip("no CUDA (not even the simulator)")
    with pytest.raises(RuntimeError, match=r"'cuda:7' requested but only \d+ CUDA device"):
        nbdl.zeros(1, device="cuda:7")


def test_default_device_round_trip():
    before = nbdl.get_default_device()
    try:
        nbdl.set_default_device("cpu")
        assert nbdl.zeros(1).device == "cpu"
    finally:
        nbdl.set_default_device(before)


def _run(code, **env):
    full = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120)


def test_cuda_without_gpu_says_how_to_get_one():
    if os.path.exists("/dev/nvidiactl"):
        pytest.skip("a GPU is present")
    p = _run("import nbdl\ntry:\n    nbdl.zeros(1, device='cuda')\nexcept RuntimeError as e:\n    print(e)")
    assert "NUMBA_ENABLE_CUDASIM=1" in p.stdout and "nbdl[cuda]" in p.stdout, p.stdout + p.stderr


def test_env_default_device_and_import_is_lazy():
    p = _run("import sys, nbdl\n"
             "print(nbdl.get_default_device())\n"
             "print('numba.cuda' in sys.modules, any(m.startswith('numba.core.registry') for m in sys.modules))",
             NBDL_DEVICE="cpu")
    lines = p.stdout.split()
    assert lines[0] == "cpu", p.stderr
    assert lines[1] == "False", "import nbdl must not import numba.cuda"
    assert lines[2] == "False", "import nbdl must not load numba's compiler"


def test_import_compiles_nothing_quickly():
    p = _run("import time; t = time.perf_counter(); import nbdl; print(time.perf_counter() - t)")
    assert float(p.stdout.strip()) < 5.0, p.stderr   # generous: the machine may be loaded
