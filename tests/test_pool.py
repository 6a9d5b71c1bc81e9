"""Pooling (max, avg, LP, adaptive): numpy references, gradients, errors, PyTorch parity."""
import numpy as np
import pytest

import nbdl
import nbdl.functional as F
from nbdl import nn
from gradcheck import gradcheck


# ---- numpy references (straight loops over windows, PyTorch's rules spelled out) ----

def ref_axis(size, k, s, pad, d, ceil_mode):
    """(out, pad_begin, pad_end) along one axis; pad is an int, 'same' or 'valid'."""
    eff = d * (k - 1) + 1
    if pad == "same":
        out = -(-size // s)
        total = max((out - 1) * s + eff - size, 0)
        return out, total // 2, total - total // 2
    pad = 0 if pad == "valid" else pad
    span = size + 2 * pad - eff
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + pad:   # a window may not start in the end padding
        out -= 1
    return out, pad, pad


def ref_geometry(shape, k, s, pad, d, ceil_mode):
    pads = pad if isinstance(pad, tuple) else (pad, pad)
    return [ref_axis(shape[2 + a], k[a], s[a], pads[a], d[a], ceil_mode) for a in range(2)]


def ref_taps(start, k, d, size):
    return [start + i * d for i in range(k) if 0 <= start + i * d < size]


def ref_max_pool(x, k, s, pad, d, ceil_mode):
    """Scan taps in (row, col) order; keep the first max; a NaN always takes over."""
    N, C, H, W = x.shape
    (OH, ph, _), (OW, pw, _) = ref_geometry(x.shape, k, s, pad, d, ceil_mode)
    y = np.empty((N, C, OH, OW), x.dtype)
    idx = np.empty((N, C, OH, OW), np.int64)
    for n, c, oh, ow in np.ndindex(N, C, OH, OW):
        best, arg = -np.inf, None
        for h in ref_taps(oh * s[0] - ph, k[0], d[0], H):
            for w in ref_taps(ow * s[1] - pw, k[1], d[1], W):
                v = x[n, c, h, w]
                if arg is None:
                    arg = h * W + w
                if v > best or np.isnan(v):
                    best, arg = v, h * W + w
        y[n, c, oh, ow], idx[n, c, oh, ow] = best, arg
    return y, idx


def ref_max_pool_grad(gy, idx, x_shape):
    N, C, H, W = x_shape
    gx = np.zeros((N, C, H * W))
    for n, c in np.ndindex(N, C):
        np.add.at(gx[n, c], idx[n, c].ravel(), gy[n, c].ravel())
    return gx.reshape(x_shape)


def ref_avg_windows(x_shape, k, s, pad, ceil_mode, count_include_pad, divisor_override):
    """Yield (n, c, oh, ow, rows slice, cols slice, divisor) like PyTorch's avg_pool2d."""
    N, C, H, W = x_shape
    (OH, ph, ph_end), (OW, pw, pw_end) = ref_geometry(x_shape, k, s, pad, (1, 1), ceil_mode)
    for n, c, oh, ow in np.ndindex(N, C, OH, OW):
        hs, ws = oh * s[0] - ph, ow * s[1] - pw
        he, we = min(hs + k[0], H + ph_end), min(ws + k[1], W + pw_end)
        rows, cols = slice(max(hs, 0), min(he, H)), slice(max(ws, 0), min(we, W))
        if divisor_override:
            div = divisor_override
        elif count_include_pad:
            div = (he - hs) * (we - ws)
        else:
            div = (rows.stop - rows.start) * (cols.stop - cols.start)
        yield n, c, oh, ow, rows, cols, div


def ref_avg_pool(x, *args):
    (OH, _, _), (OW, _, _) = ref_geometry(x.shape, args[0], args[1], args[2], (1, 1), args[3])
    y = np.empty(x.shape[:2] + (OH, OW), x.dtype)
    for n, c, oh, ow, rows, cols, div in ref_avg_windows(x.shape, *args):
        y[n, c, oh, ow] = x[n, c, rows, cols].sum() / div
    return y


def ref_avg_pool_grad(gy, x_shape, *args):
    gx = np.zeros(x_shape)
    for n, c, oh, ow, rows, cols, div in ref_avg_windows(x_shape, *args):
        gx[n, c, rows, cols] += gy[n, c, oh, ow] / div
    return gx


def ref_lp_pool(x, p, k, s, ceil_mode):
    """PyTorch: (avg_pool2d(x^p) * kh*kw)^(1/p); the average counts real taps only (no padding)."""
    N, C, H, W = x.shape
    (OH, _, _), (OW, _, _) = ref_geometry(x.shape, k, s, 0, (1, 1), ceil_mode)
    y = np.empty((N, C, OH, OW))
    for n, c, oh, ow in np.ndindex(N, C, OH, OW):
        win = x[n, c, oh * s[0]:oh * s[0] + k[0], ow * s[1]:ow * s[1] + k[1]]
        y[n, c, oh, ow] = ((win ** p).sum() / win.size * k[0] * k[1]) ** (1.0 / p)
    return y


def ref_adaptive_bounds(o, size, out):
    return (o * size) // out, -(-(o + 1) * size // out)


def ref_adaptive_pool(x, out, reduce):
    N, C, H, W = x.shape
    y = np.empty((N, C) + out)
    for n, c, oh, ow in np.ndindex(N, C, *out):
        h0, h1 = ref_adaptive_bounds(oh, H, out[0])
        w0, w1 = ref_adaptive_bounds(ow, W, out[1])
        y[n, c, oh, ow] = reduce(x[n, c, h0:h1, w0:w1])
    return y


def ref_adaptive_argmax(x, out):
    """Flat index h * W + w of the first max of each adaptive window."""
    N, C, H, W = x.shape
    idx = np.empty((N, C) + out, np.int64)
    for n, c, oh, ow in np.ndindex(N, C, *out):
        h0, h1 = ref_adaptive_bounds(oh, H, out[0])
        w0, w1 = ref_adaptive_bounds(ow, W, out[1])
        j = int(np.argmax(x[n, c, h0:h1, w0:w1]))
        idx[n, c, oh, ow] = (h0 + j // (w1 - w0)) * W + w0 + j % (w1 - w0)
    return idx


def ref_adaptive_avg_grad(gy, x_shape):
    N, C, H, W = x_shape
    gx = np.zeros(x_shape)
    for n, c, oh, ow in np.ndindex(*gy.shape):
        h0, h1 = ref_adaptive_bounds(oh, H, gy.shape[2])
        w0, w1 = ref_adaptive_bounds(ow, W, gy.shape[3])
        gx[n, c, h0:h1, w0:w1] += gy[n, c, oh, ow] / ((h1 - h0) * (w1 - w0))
    return gx


# ---- random configurations --------------------------------------------------------

def random_config(rng, with_dilation=True, string_padding=True):
    k = tuple(int(v) for v in rng.integers(1, 5, 2))
    s = tuple(int(v) for v in rng.integers(1, 4, 2))
    d = tuple(int(v) for v in rng.integers(1, 3, 2)) if with_dilation else (1, 1)
    roll = rng.random()
    if string_padding and roll < 0.15:
        pad = "same"
    elif string_padding and roll < 0.25:
        pad = "valid"
    else:
        pad = (int(rng.integers(0, k[0] // 2 + 1)), int(rng.integers(0, k[1] // 2 + 1)))
    ceil_mode = bool(rng.random() < 0.5)
    shape = (2, 2, int(rng.integers(d[0] * (k[0] - 1) + 1, 10)), int(rng.integers(d[1] * (k[1] - 1) + 1, 10)))
    return shape, k, s, pad, d, ceil_mode


def tensor(a, device, requires_grad=False):
    return nbdl.tensor(a, dtype=a.dtype, device=device, requires_grad=requires_grad)


def run_with_grad(fn, x_np, device, gy_seed=0):
    """y = fn(x) on device, then y.backward(gy); returns (y, gy, x.grad) as numpy."""
    x = tensor(x_np, device, requires_grad=True)
    out = fn(x)
    y = out[0] if isinstance(out, tuple) else out
    gy = np.random.default_rng(gy_seed).standard_normal(y.shape).astype(x_np.dtype)
    y.backward(tensor(gy, device))
    return out, gy, x.grad.numpy()


# ---- references over random configurations ----------------------------------------

def test_max_pool2d_matches_reference(device, rng):
    for _ in range(12):
        shape, k, s, pad, d, ceil_mode = random_config(rng)
        x = rng.integers(-3, 4, shape).astype(np.float64)   # many ties: first index wins
        try:
            ref_y, ref_idx = ref_max_pool(x, k, s, pad, d, ceil_mode)
        except TypeError:   # a window entirely on padding (nbdl refuses it: see the error test)
            continue
        (y, idx), gy, gx = run_with_grad(
            lambda t: F.max_pool2d(t, k, s, pad, d, ceil_mode=ceil_mode, return_indices=True), x, device)
        msg = f"shape={shape} k={k} s={s} pad={pad} d={d} ceil_mode={ceil_mode}"
        np.testing.assert_array_equal(y.numpy(), ref_y, err_msg=msg)
        np.testing.assert_array_equal(idx.numpy(), ref_idx, err_msg=msg)
        assert idx.dtype == np.int64
        np.testing.assert_allclose(gx, ref_max_pool_grad(gy, ref_idx, shape), atol=1e-12, err_msg=msg)


def test_avg_pool2d_matches_reference(device, rng):
    for _ in range(12):
        shape, k, s, pad, _, ceil_mode = random_config(rng, with_dilation=False)
        cip = bool(rng.random() < 0.5)
        div = int(rng.integers(1, 7)) if rng.random() < 0.25 else None
        args = (k, s, pad, ceil_mode, cip, div)
        x = rng.standard_normal(shape)
        y, gy, gx = run_with_grad(lambda t: F.avg_pool2d(t, *args), x, device)
        msg = f"shape={shape} args={args}"
        np.testing.assert_allclose(y.numpy(), ref_avg_pool(x, *args), rtol=1e-12, atol=1e-12, err_msg=msg)
        np.testing.assert_allclose(gx, ref_avg_pool_grad(gy, shape, *args), rtol=1e-12, atol=1e-12, err_msg=msg)


def test_lp_pool2d_matches_reference(device, rng):
    for p in (1.0, 2.0, 3, 1.5):
        shape, k, s, _, _, ceil_mode = random_config(rng, with_dilation=False, string_padding=False)
        x = rng.uniform(0.1, 2.0, shape)
        y = F.lp_pool2d(tensor(x, device), p, k, s, ceil_mode)
        np.testing.assert_allclose(y.numpy(), ref_lp_pool(x, p, k, s, ceil_mode), rtol=1e-12,
                                   err_msg=f"p={p} shape={shape} k={k} s={s} ceil_mode={ceil_mode}")


def test_adaptive_pools_match_reference(device, rng):
    for out in ((1, 1), (3, 2), (5, 7), (None, 2), 4):
        x = rng.integers(-3, 4, (2, 3, 5, 6)).astype(np.float64)
        pair = out if isinstance(out, tuple) else (out, out)
        want = tuple(x.shape[2 + a] if o is None else o for a, o in enumerate(pair))
        y, gy, gx = run_with_grad(lambda t: F.adaptive_avg_pool2d(t, out), x, device)
        np.testing.assert_allclose(y.numpy(), ref_adaptive_pool(x, want, np.mean), rtol=1e-12)
        np.testing.assert_allclose(gx, ref_adaptive_avg_grad(gy, x.shape), rtol=1e-12)
        (y, idx), gy, gx = run_with_grad(lambda t: F.adaptive_max_pool2d(t, out, return_indices=True), x, device)
        np.testing.assert_array_equal(y.numpy(), ref_adaptive_pool(x, want, np.max))
        np.testing.assert_array_equal(idx.numpy(), ref_adaptive_argmax(x, want))
        np.testing.assert_allclose(gx, ref_max_pool_grad(gy, idx.numpy(), x.shape), atol=1e-12)


def test_float32_matches_reference(device, rng):
    x = rng.integers(-2, 3, (2, 3, 9, 7)).astype(np.float32)   # ties, signed zeros, NaN, -inf
    x[0, 0, 1, 1:4] = [np.nan, 2, np.nan]
    x[0, 1, :3, :3] = -np.inf
    x[1, 2] = np.where(x[1, 2] == 0, -0.0, x[1, 2])
    for k, s, pad, d in (((3, 3), (2, 2), 1, (1, 1)), ((2, 3), (1, 2), (1, 0), (2, 1))):
        y, idx = F.max_pool2d(tensor(x, device), k, s, pad, d, ceil_mode=True, return_indices=True)
        ref_y, ref_idx = ref_max_pool(x, k, s, pad, d, True)
        assert y.dtype == np.float32
        np.testing.assert_array_equal(y.numpy(), ref_y)
        np.testing.assert_array_equal(idx.numpy(), ref_idx)
    x = rng.standard_normal((2, 3, 9, 7)).astype(np.float32)
    y = F.avg_pool2d(tensor(x, device), 2, 2, 1, ceil_mode=True, count_include_pad=False)
    ref = ref_avg_pool(x.astype(np.float64), (2, 2), (2, 2), 1, True, False, None)
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-6, atol=1e-6)


# ---- edge cases spelled out ---------------------------------------------------------

def test_ceil_mode_drops_a_window_starting_in_the_padding(device):
    # size 5, kernel 2, stride 3, padding 1: windows start at -1, 2 and 5; the one at 5
    # starts inside the end padding and is dropped, so the output has 2 columns, not 3.
    x = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    y = F.max_pool2d(tensor(x, device), 2, 3, 1, ceil_mode=True)
    assert y.shape == (1, 1, 2, 2)
    np.testing.assert_array_equal(y.numpy()[0, 0], [[0, 3], [15, 18]])
    y = F.max_pool2d(tensor(x, device), 2, 2, 0, ceil_mode=True)   # a partial last window is kept
    assert y.shape == (1, 1, 3, 3)
    np.testing.assert_array_equal(y.numpy()[0, 0, 2], [21, 23, 24])


def test_avg_divisor_with_ceil_mode_and_count_include_pad(device):
    # size 6, kernel 3, stride 2, padding 1, ceil_mode: the last window covers rows 5..7,
    # i.e. input row 5, padding row 6 and row 7 beyond the padding; PyTorch's divisor
    # counts rows up to the padded size (2 rows), not 3 and not 1.
    x = np.ones((1, 1, 6, 6))
    y = F.avg_pool2d(tensor(x, device), 3, 2, 1, ceil_mode=True, count_include_pad=True).numpy()[0, 0]
    assert y.shape == (4, 4)
    np.testing.assert_allclose(y[3, 3], 1 / 4)          # 1 real tap / (2 x 2)
    np.testing.assert_allclose(y[0, 0], 4 / 9)          # 4 real taps / (3 x 3)
    np.testing.assert_allclose(y[1, 1], 1.0)
    y = F.avg_pool2d(tensor(x, device), 3, 2, 1, ceil_mode=True, count_include_pad=False).numpy()
    np.testing.assert_allclose(y, 1.0)
    y = F.avg_pool2d(tensor(x, device), 3, 2, 1, ceil_mode=True, divisor_override=2).numpy()[0, 0]
    np.testing.assert_allclose(y[0, 0], 2.0)


def test_same_and_valid_padding(device):
    x = np.arange(35, dtype=np.float64).reshape(1, 1, 5, 7)
    y = F.max_pool2d(tensor(x, device), 2, 2, "same")
    assert y.shape == (1, 1, 3, 4)                        # ceil(5/2), ceil(7/2)
    np.testing.assert_array_equal(y.numpy()[0, 0, -1], [29, 31, 33, 34])
    assert F.max_pool2d(tensor(x, device), 3, 2, "valid").shape == (1, 1, 2, 3)
    # 'same' averages pad at the end only: the last column window is (6, pad).
    y = F.avg_pool2d(tensor(x, device), (1, 2), (1, 2), "same", count_include_pad=False)
    np.testing.assert_allclose(y.numpy()[0, 0, 0], [0.5, 2.5, 4.5, 6.0])


def test_nan_propagates_like_pytorch(device):
    x = np.array([[[[1.0, np.nan], [np.nan, 5.0]]]])
    y, idx = F.max_pool2d(tensor(x, device), 2, return_indices=True)
    assert np.isnan(y.numpy()).all() and idx.numpy().item() == 2   # the last NaN wins
    y, idx = F.adaptive_max_pool2d(tensor(x, device), 1, return_indices=True)
    assert np.isnan(y.numpy()).all() and idx.numpy().item() == 2


def test_unbatched_input_and_modules(device, rng):
    x = tensor(rng.standard_normal((3, 6, 6)), device)
    layers = [nn.MaxPool2d(2), nn.AvgPool2d(3, 1, 1), nn.LPPool2d(2, 2), nn.AdaptiveAvgPool2d((2, None)),
              nn.AdaptiveMaxPool2d(2)]
    shapes = [(3, 3, 3), (3, 6, 6), (3, 3, 3), (3, 2, 6), (3, 2, 2)]
    for layer, shape in zip(layers, shapes):
        assert layer(x).shape == shape
        assert layer.state_dict() == {} and list(layer.parameters()) == []
    y, idx = nn.MaxPool2d(2, return_indices=True)(x)
    assert idx.shape == (3, 3, 3) and y.shape == (3, 3, 3)
    assert repr(nn.MaxPool2d(2)) == "MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)"
    assert repr(nn.AvgPool2d(3, 1)) == "AvgPool2d(kernel_size=3, stride=1, padding=0)"
    assert repr(nn.AdaptiveAvgPool2d(1)) == "AdaptiveAvgPool2d(output_size=1)"
    assert repr(nn.LPPool2d(2, 3)) == "LPPool2d(norm_type=2, kernel_size=3, stride=None, ceil_mode=False)"


def test_cuda_matches_cpu_bitwise_for_max_pool_gradients(rng):
    if not nbdl.cuda_available():
        pytest.skip("no cuda")
    x = rng.integers(-2, 3, (2, 2, 7, 7)).astype(np.float64)
    grads = [run_with_grad(lambda t: F.max_pool2d(t, 3, 1, 1), x, dev)[2] for dev in ("cpu", "cuda")]
    np.testing.assert_array_equal(grads[0], grads[1])


# ---- gradients (float64, central differences) ------------------------------------------

def test_gradcheck(device, rng):
    n = None if device == "cpu" else 2
    x = rng.permutation(2 * 5 * 6).reshape(1, 2, 5, 6) / 7.0   # distinct values: max is differentiable
    t = tensor(x, device, requires_grad=True)
    gradcheck(lambda a: F.max_pool2d(a, 3, 2, 1, ceil_mode=True), [t], n_directions=n)
    gradcheck(lambda a: F.max_pool2d(a, 2, 1, 0, dilation=2), [t], n_directions=n)
    gradcheck(lambda a: F.avg_pool2d(a, 3, 2, 1, ceil_mode=True, count_include_pad=False), [t], n_directions=n)
    gradcheck(lambda a: F.adaptive_avg_pool2d(a, (3, 4)), [t], n_directions=n)
    gradcheck(lambda a: F.adaptive_max_pool2d(a, (2, 4)), [t], n_directions=n)
    pos = tensor(x + 0.5, device, requires_grad=True)
    for p in (2.0, 1.5):
        gradcheck(lambda a: F.lp_pool2d(a, p, 2, (2, 3), ceil_mode=True), [pos], n_directions=n)


def test_lp_pool_gradient_is_zero_where_the_output_is_zero(device):
    x = tensor(np.zeros((1, 1, 2, 2)), device, requires_grad=True)
    F.lp_pool2d(x, 2, 2).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), 0.0)


# ---- errors ------------------------------------------------------------------------------

def test_bad_arguments_raise_before_any_kernel(device):
    x = tensor(np.zeros((1, 2, 5, 5)), device)
    with pytest.raises(ValueError, match="padding should be at most half of kernel_size"):
        F.max_pool2d(x, 2, 1, 2)
    with pytest.raises(ValueError, match="output size is too small"):
        F.max_pool2d(x, 7)
    with pytest.raises(ValueError, match="output size is too small"):
        F.avg_pool2d(x, (6, 1))
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        F.max_pool2d(x, 0)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        F.avg_pool2d(x, 2, -1)
    with pytest.raises(ValueError, match="dilation must be >= 1"):
        F.max_pool2d(x, 2, dilation=0)
    with pytest.raises(ValueError, match="padding must be"):
        F.max_pool2d(x, 2, padding="full")
    with pytest.raises(ValueError, match="covers only padding"):
        F.max_pool2d(tensor(np.zeros((1, 1, 1, 1)), device), 2, 1, 1, dilation=2)
    with pytest.raises(ValueError, match="must have 3 or 4 dimensions"):
        F.max_pool2d(tensor(np.zeros((5, 5)), device), 2)
    with pytest.raises(ValueError, match="output_size must be >= 1"):
        F.adaptive_avg_pool2d(x, (0, 2))
    with pytest.raises(ValueError, match="norm_type must be > 0"):
        F.lp_pool2d(x, -1.0, 2)
    with pytest.raises(ValueError, match="divisor_override must be >= 1"):
        F.avg_pool2d(x, 2, divisor_override=0)
    with pytest.raises(ValueError, match="non-zero channels and spatial sizes"):
        F.avg_pool2d(tensor(np.zeros((1, 2, 0, 5)), device), 1)
    with pytest.raises(TypeError, match="float32 or float64"):
        F.max_pool2d(nbdl.tensor(np.zeros((1, 1, 4, 4), np.int64), device=device), 2)


def test_kernel_backward_checks_its_arguments():
    from nbdl.kernels.pool import cpu as K
    y, idx = K.max_pool2d_forward(np.zeros((1, 1, 4, 4)), 2)
    with pytest.raises(ValueError, match="grad_output must have shape"):
        K.max_pool2d_backward(np.zeros((1, 1, 3, 3)), idx, (1, 1, 4, 4), 2)
    with pytest.raises(TypeError, match="indices must be int64"):
        K.max_pool2d_backward(y, idx.astype(np.int32), (1, 1, 4, 4), 2)
    with pytest.raises(ValueError, match="x_shape must be a 4-tuple"):
        K.avg_pool2d_backward(y, (4, 4), 2)


# ---- PyTorch parity -------------------------------------------------------------------------

def test_matches_pytorch(rng):
    torch = pytest.importorskip("torch")
    for _ in range(5):
        shape, k, s, pad, d, ceil_mode = random_config(rng, string_padding=False)
        cases = [
            lambda f, t: f.max_pool2d(t, k, s, pad, d, ceil_mode=ceil_mode),
            lambda f, t: f.avg_pool2d(t, k, s, pad, ceil_mode, bool(d[0] == 1)),
            lambda f, t: f.avg_pool2d(t, k, s, pad, ceil_mode, True, 3),
            lambda f, t: f.lp_pool2d(t, 2.0, k, s, ceil_mode),
            lambda f, t: f.adaptive_max_pool2d(t, (s[0] + 1, 3)),
            lambda f, t: f.adaptive_avg_pool2d(t, (k[0] + 2, s[1])),
        ]
        x = rng.standard_normal(shape)
        for case in cases:
            xt = torch.tensor(x, requires_grad=True)
            try:
                want = case(torch.nn.functional, xt)
            except RuntimeError:
                continue   # configurations PyTorch refuses are covered by the error tests
            gy = rng.standard_normal(tuple(want.shape))
            (want * torch.tensor(gy)).sum().backward()
            want = want.detach().numpy()
            xn = tensor(x, "cpu", requires_grad=True)
            try:
                got = case(F, xn)
            except ValueError:
                assert np.isneginf(want).any()   # a window entirely on padding: nbdl refuses it
                continue
            (got * tensor(gy, "cpu")).sum().backward()
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(xn.grad.numpy(), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
