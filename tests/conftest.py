"""Test set-up: the same tests run on "cpu" and on "cuda".

Without a GPU the CUDA kernels run in Numba's simulator, which must be switched on
before numba.cuda is first imported, so this happens here, before any test module
imports nbdl. On a machine with a GPU the real device is used; set
NBDL_TEST_CUDASIM=1 to force the simulator anyway.
"""
import os
import shutil


def _has_gpu():
    if os.environ.get("NBDL_TEST_CUDASIM", "0") not in ("", "0"):
        return False
    return shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidiactl")


if not _has_gpu():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import nbdl  # noqa: E402

DEVICES = ["cpu", "cuda"]


@pytest.fixture(params=DEVICES)
def device(request):
    """Run the test once on "cpu" and once on "cuda" (simulator without a GPU)."""
    if request.param == "cuda" and not nbdl.cuda_available():
        pytest.skip("numba-cuda is not installed")
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _seed():
    nbdl.manual_seed(0)
    yield
