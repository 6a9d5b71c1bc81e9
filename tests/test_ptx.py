"""Every CUDA kernel compiles for a real GPU (sm_90 and sm_75), not only in the simulator."""
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from nbdl.kernels import FAMILIES

HERE = pathlib.Path(__file__).parent


def _nvvm_available():
    return importlib.util.find_spec("numba.cuda") is not None


@pytest.mark.skipif(not _nvvm_available(), reason="numba-cuda is not installed")
@pytest.mark.parametrize("family", FAMILIES)
def test_family_compiles_to_ptx(family):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, str(HERE / "ptx_check.py"), family],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
