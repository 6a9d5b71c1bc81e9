"""Accuracy and special values of the vectorizable exp/sigmoid/tanh helpers."""
import math
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numba import njit

from nbdl.kernels._fastmath import FASTMATH, exp, fmax, fmin, sigmoid, tanh

F32_TINY = float(np.finfo(np.float32).tiny)
F32_SUBNORMAL_STEP = 2.0 ** -149


@njit(fastmath=FASTMATH, error_model="numpy")
def _apply_all(x, e, s, t):
    for i in range(x.size):
        e[i] = exp(x[i])
        s[i] = sigmoid(x[i])
        t[i] = tanh(x[i])


def _run(x):
    e, s, t = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    _apply_all(x, e, s, t)
    return e, s, t


def _reference(x):
    """exp, sigmoid, tanh of x computed in float64 by numpy."""
    x = x.astype(np.float64)
    with np.errstate(over="ignore"):
        e = np.exp(x)
        s = 1.0 / (1.0 + np.exp(-x))
    return e, s, np.tanh(x)


def _max_rel_err(got, want):
    keep = np.abs(want) >= F32_TINY            # normal float32 results only
    keep &= np.abs(want) <= np.finfo(np.float32).max
    return float(np.max(np.abs(got[keep] - want[keep]) / np.abs(want[keep])))


def test_float32_accuracy_over_wide_range():
    x = np.concatenate([np.linspace(-110.0, 95.0, 400_001),
                        np.geomspace(1e-30, 1.0, 2001), -np.geomspace(1e-30, 1.0, 2001)]).astype(np.float32)
    got = _run(x)
    for name, g, w in zip(("exp", "sigmoid", "tanh"), got, _reference(x)):
        assert g.dtype == np.float32
        assert _max_rel_err(g, w) < 1e-6, name


def test_float32_exp_special_values():
    x = np.array([-np.inf, np.inf, np.nan, 0.0, 100.0, 88.8, 88.72283, -200.0, -104.0], np.float32)
    e, s, t = _run(x)
    assert e[0] == 0.0 and e[1] == np.inf and np.isnan(e[2]) and e[3] == 1.0
    assert e[4] == np.inf and e[5] == np.inf
    assert np.isfinite(e[6]) and abs(e[6] / math.exp(float(x[6])) - 1) < 1e-6
    assert e[7] == 0.0 and e[8] == 0.0
    np.testing.assert_array_equal(s[[0, 1, 3]], [0.0, 1.0, 0.5])
    np.testing.assert_array_equal(t[[0, 1, 3]], [-1.0, 1.0, 0.0])
    assert np.isnan(s[2]) and np.isnan(t[2])


def test_float32_exp_subnormal_results():
    x = np.linspace(-103.5, -87.4, 5001).astype(np.float32)
    e, _, _ = _run(x)
    want = np.exp(x.astype(np.float64))
    assert np.all(e > 0)
    # one rounding step of the subnormal grid, or the polynomial's relative error
    assert np.all(np.abs(e - want) <= np.maximum(1.01 * F32_SUBNORMAL_STEP, 1e-6 * want))


def test_float64_is_exact():
    x = np.concatenate([np.linspace(-750.0, 720.0, 20001), [-np.inf, np.inf, 0.0]])
    e, s, t = _run(x)
    with np.errstate(over="ignore"):
        np.testing.assert_allclose(e, np.exp(x), rtol=1e-15)
        np.testing.assert_allclose(s, 1.0 / (1.0 + np.exp(-x)), rtol=1e-15, atol=1e-300)
    np.testing.assert_allclose(t, np.tanh(x), rtol=1e-15)


def test_python_fallbacks_match_math():
    assert exp(1.5) == math.exp(1.5)
    assert tanh(0.3) == math.tanh(0.3)
    assert sigmoid(0.0) == 0.5
    assert sigmoid(-1000.0) == 0.0 and sigmoid(1000.0) == 1.0


def test_float32_loop_vectorizes():
    """The point of the helpers: the float32 loop becomes SIMD code (no libm call)."""
    _run(np.zeros(4, np.float32))
    sig32 = [s for s in _apply_all.signatures if str(s[0].dtype) == "float32"][0]
    llvm = _apply_all.inspect_llvm(sig32)
    assert re.search(r"<\d+ x float>", llvm), "float32 exp loop did not vectorize"
    assert "@expf" not in llvm and "@tanhf" not in llvm


def test_works_in_cached_kernels(tmp_path):
    """A cache=True kernel using the helpers compiles, then loads from the cache."""
    (tmp_path / "cached_mod.py").write_text(textwrap.dedent("""
        import numpy as np
        from numba import njit
        from nbdl.kernels._fastmath import FASTMATH, exp, tanh

        @njit(cache=True, fastmath=FASTMATH, error_model="numpy")
        def f(x):
            y = np.empty_like(x)
            for i in range(x.size):
                y[i] = exp(x[i]) + tanh(x[i])
            return y
        """))
    script = ("import numpy as np, cached_mod as m; x = np.linspace(-3, 3, 7, dtype=np.float32);"
              "y = m.f(x); assert np.allclose(y, np.exp(x) + np.tanh(x), rtol=1e-6);"
              "print(sum(m.f.stats.cache_hits.values()))")
    runs = [subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
            for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    assert runs[0].stdout.strip() == "0" and runs[1].stdout.strip() == "1"


@pytest.mark.parametrize("bad", [np.array([1.0]), "x"])
def test_rejects_non_scalars(bad):
    from numba.core.errors import TypingError

    @njit
    def f(v):
        return exp(v)

    with pytest.raises(TypingError):
        f(bad)


@njit(fastmath=FASTMATH)
def _row_max_min(x):
    hi = x[0]
    lo = x[0]
    for i in range(1, x.size):
        hi = fmax(hi, x[i])
        lo = fmin(lo, x[i])
    return hi, lo


def test_fmax_fmin_reduce_and_ignore_nan():
    x = np.random.default_rng(0).standard_normal(1001).astype(np.float32)
    x[17] = np.nan
    hi, lo = _row_max_min(x)
    assert hi == np.nanmax(x) and lo == np.nanmin(x)
    assert _row_max_min(np.array([-np.inf, -np.inf])) == (-np.inf, -np.inf)
    sig32 = [s for s in _row_max_min.signatures if str(s[0].dtype) == "float32"][0]
    assert re.search(r"<\d+ x float>", _row_max_min.inspect_llvm(sig32)), "max reduction did not vectorize"
    assert fmax(1.0, float("nan")) == 1.0 and fmin(float("nan"), 2.0) == 2.0
