"""nbdl.kernels._views: array views that count no references."""
import os
import subprocess
import sys
import textwrap

import numpy as np
from numba import njit

from nbdl.kernels._views import keep_alive, unmanaged


@njit
def _through_views(a):
    """Writes through unmanaged views of an argument and of an own buffer."""
    v = unmanaged(a)
    v[1:3] = 7.0                             # a slice of the view writes a
    buf = np.zeros((2, 3))
    w = unmanaged(buf)
    for i in range(2):
        row = w[i]
        for j in range(3):
            row[j] = v[i * 3 + j] + 1.0
    total = buf.sum()
    keep_alive((buf,))
    return total


def test_unmanaged_views_share_the_arrays_memory():
    a = np.arange(6.0)
    total = _through_views(a)
    np.testing.assert_array_equal(a, [0.0, 7.0, 7.0, 3.0, 4.0, 5.0])
    assert total == (a + 1.0).sum()


@njit
def _unmanaged_of(a):
    return unmanaged(a)       # only for this test: a view returned to Python owns nothing


def test_unmanaged_view_has_no_owner():
    a = np.arange(4.0)
    v = _unmanaged_of(a)
    assert v.base is None and np.shares_memory(v, a)     # a managed view would keep a base


def test_unmanaged_views_leave_no_allocation_behind():
    """NRT's allocation counters (enabled only at start-up, hence the subprocess): every
    block allocated is freed once, whether or not its views were unmanaged."""
    code = textwrap.dedent("""
        import numpy as np
        from numba import njit
        from numba.core.runtime import rtsys
        from nbdl.kernels._views import keep_alive, unmanaged

        @njit
        def f(n):
            buf = np.ones(n)
            v = unmanaged(buf)
            s = 0.0
            for i in range(n):
                s += v[i:][0]
            keep_alive((buf,))
            return s

        assert f(5) == 5.0
        before = rtsys.get_allocation_stats()
        for _ in range(100):
            assert f(5) == 5.0
        after = rtsys.get_allocation_stats()
        print(after.alloc - before.alloc, after.free - before.free,
              after.mi_alloc - before.mi_alloc, after.mi_free - before.mi_free)
    """)
    env = dict(os.environ, NUMBA_NRT_STATS="1", NUMBA_DISABLE_JIT="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    alloc, free, mi_alloc, mi_free = map(int, out.stdout.split())
    assert alloc == free == 100
    assert mi_alloc == mi_free == 100
