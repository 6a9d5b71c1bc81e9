"""First-call (start-up) cost per kernel family, tracked in seconds.

A user's first forward+backward of an op compiles its kernels (cold) or loads them
from numba's on-disk cache (warm, every later process). Both are measured in a fresh
interpreter so nothing compiled by this process counts:

* cold: ``NUMBA_CACHE_DIR`` points at a new empty folder;
* warm: a second interpreter with the same folder, now filled by the cold run.

The clock starts after ``import nbdl`` (which compiles nothing and does not even import
numba) and stops after the first forward+backward (or optimizer step) on tiny inputs:
interpreter start-up is not counted, importing numba and loading the BLAS are, as a
user pays them on first use. All families are measured once, in ``setup_cache``.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

from ._common import DEVICES, require_device

# One first use per family: tiny float32 inputs, forward and backward.
SNIPPETS = {
    "elementwise": """
        x = nbdl.randn(4, 8, device=DEV, requires_grad=True)
        ((x * x + x).exp() / (x * x + 1.0)).sum().backward()
    """,
    "linalg": """
        a = nbdl.randn(8, 16, device=DEV, requires_grad=True)
        b = nbdl.randn(16, 4, device=DEV, requires_grad=True)
        (a @ b).sum().backward()
    """,
    "activation": """
        x = nbdl.randn(4, 8, device=DEV, requires_grad=True)
        (F.relu(x) + F.sigmoid(x) + F.tanh(x) + F.leaky_relu(x)).sum().backward()
    """,
    "softmax": """
        x = nbdl.randn(4, 10, device=DEV, requires_grad=True)
        target = nbdl.tensor([1, 0, 3, 9], device=DEV)
        (F.cross_entropy(x, target) + F.softmax(x, dim=1).sum()).backward()
    """,
    "conv": """
        m = nn.Conv2d(3, 4, 3, padding=1, device=DEV)
        x = nbdl.randn(2, 3, 8, 8, device=DEV, requires_grad=True)
        m(x).sum().backward()
    """,
    "pool": """
        x = nbdl.randn(2, 3, 8, 8, device=DEV, requires_grad=True)
        (F.max_pool2d(x, 2).sum() + F.avg_pool2d(x, 2).sum()).backward()
    """,
    "norm": """
        m = nn.BatchNorm2d(3, device=DEV)
        x = nbdl.randn(2, 3, 4, 4, device=DEV, requires_grad=True)
        m(x).sum().backward()
    """,
    "rnn": """
        m = nn.LSTM(8, 16, device=DEV)
        x = nbdl.randn(5, 2, 8, device=DEV, requires_grad=True)
        m(x)[0].sum().backward()
    """,
    "optim": """
        m = nn.Linear(8, 4, device=DEV)
        opt = nbdl.optim.Adam(m.parameters(), lr=1e-3)
        m(nbdl.randn(2, 8, device=DEV)).sum().backward()
        opt.step()
    """,
}

_PROGRAM = """
import time
import nbdl
import nbdl.functional as F
import nbdl.nn as nn
DEV = {device!r}
t0 = time.perf_counter()
{body}
nbdl.synchronize(DEV)
print("SECONDS", time.perf_counter() - t0)
"""


def first_call_seconds(family, device, cache_dir):
    """Seconds of the family's first use in a fresh interpreter caching into ``cache_dir``."""
    program = _PROGRAM.format(device=device, body=textwrap.dedent(SNIPPETS[family]))
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    proc = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True,
                          text=True, timeout=600)
    for line in proc.stdout.splitlines():
        if line.startswith("SECONDS "):
            return float(line.split()[1])
    raise RuntimeError(f"{family} on {device} failed:\n{proc.stderr[-2000:]}")


def cold_and_warm(family, device):
    """{"cold": s, "warm": s}, or {"error": message} when the family cannot run."""
    try:
        require_device(device)
    except NotImplementedError as exc:
        return {"error": str(exc)}
    cache_dir = tempfile.mkdtemp(prefix="nbdl-compile-")
    try:
        return {"cold": first_call_seconds(family, device, cache_dir),
                "warm": first_call_seconds(family, device, cache_dir)}
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


class Compile:
    """``track_first_call``: seconds of a family's first forward+backward in a new process."""

    params = (list(SNIPPETS), DEVICES, ["cold", "warm"])
    param_names = ("family", "device", "cache")
    unit = "seconds"
    rounds = 1
    timeout = 60.0

    def setup_cache(self):
        return {(family, device): cold_and_warm(family, device)
                for family in SNIPPETS for device in DEVICES}

    setup_cache.timeout = 1500.0

    def setup(self, seconds, family, device, cache):
        entry = seconds[family, device]
        if "error" in entry:
            raise NotImplementedError(entry["error"])

    def track_first_call(self, seconds, family, device, cache):
        return seconds[family, device][cache]
