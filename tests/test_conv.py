"""conv2d / nn.Conv2d: numpy reference, both algorithms, gradients, errors, torch parity, training.

Compile budget: the im2col kernels compile once per dtype whatever the geometry; the
direct kernels compile once per (kernel size, stride, dilation), so the random
configurations draw the direct path's geometry from a short list.
"""
import numpy as np
import pytest

import nbdl
import nbdl.functional as F
from nbdl import nn
from nbdl.kernels.conv import conv2d_geometry
from gradcheck import gradcheck

# (R, S, stride, dilation) the direct-path tests use
DIRECT_GEOMS = [((3, 3), 1, 1), ((2, 3), (2, 1), (1, 2))]


def tap_windows(x, g):
    """(k, r, s, win) for every output channel k and kernel tap: win (N, Cg, P, Q) holds the
    input values tap (r, s) of channel k's group meets, from the zero-padded input."""
    xp = np.zeros((g.N, g.C, g.H + g.pt + g.pb, g.W + g.pl + g.pr))
    xp[:, :, g.pt:g.pt + g.H, g.pl:g.pl + g.W] = x
    for k in range(g.K):
        c0 = (k // g.Kg) * g.Cg
        for r in range(g.R):
            for s in range(g.S):
                yield k, r, s, xp[:, c0:c0 + g.Cg, r * g.dh:r * g.dh + g.sh * (g.P - 1) + 1:g.sh,
                                  s * g.dw:s * g.dw + g.sw * (g.Q - 1) + 1:g.sw]


def conv_ref(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """Naive float64 convolution: zero-pad, then one strided window per kernel tap."""
    g = conv2d_geometry("ref", x.shape, w.shape, stride, padding, dilation, groups)
    y = np.zeros((g.N, g.K, g.P, g.Q))
    for k, r, s, win in tap_windows(x, g):
        y[:, k] += np.einsum("ncpq,c->npq", win, w[k, :, r, s])
    if b is not None:
        y += np.asarray(b).reshape(1, -1, 1, 1)
    return y


def grads_ref(x, w, gy, **kw):
    """Reference gradients through the adjoint: conv is linear in x and in w, so
    <gy, conv(e_i)> gives each partial derivative (tiny shapes only)."""
    gx = np.zeros(x.shape)
    for i in np.ndindex(x.shape):
        e = np.zeros(x.shape)
        e[i] = 1
        gx[i] = np.sum(gy * conv_ref(e, w, **kw))
    gw = np.zeros(w.shape)
    for i in np.ndindex(w.shape):
        e = np.zeros(w.shape)
        e[i] = 1
        gw[i] = np.sum(gy * conv_ref(x, e, **kw))
    return gx, gw


def random_config(rng, direct):
    """A random convolution: odd sizes, batch 1, groups/depthwise, every padding form."""
    if direct:
        (R, S), stride, dilation = DIRECT_GEOMS[rng.integers(len(DIRECT_GEOMS))]
    else:
        R, S = (int(v) for v in rng.integers(1, 5, size=2))
        stride = tuple(int(v) for v in rng.integers(1, 4, size=2))
        dilation = tuple(int(v) for v in rng.integers(1, 3, size=2))
    groups = int(rng.choice([1, 1, 2, 3]))
    C = groups * int(rng.integers(1, 4))
    K = groups * int(rng.integers(1, 4))
    if rng.random() < 0.2:                       # depthwise
        groups, C, K = C, C, C
    padding = [0, 1, (1, 2), (0, 1, 2, 1), "valid", "same"][rng.integers(6)]
    N = int(rng.choice([1, 2, 3]))
    H, W = (int(v) for v in rng.integers(5, 11, size=2))
    return (N, C, H, W), (K, C // groups, R, S), dict(stride=stride, padding=padding,
                                                       dilation=dilation, groups=groups)


def t(a, device, requires_grad=False):
    return nbdl.tensor(a, device=device, requires_grad=requires_grad)


# ---------------------------------------------------------------------------------------------
# geometry and errors (no kernel runs)
# ---------------------------------------------------------------------------------------------

def test_padding_forms_and_output_size():
    geo = lambda **kw: conv2d_geometry("t", (1, 2, 10, 7), (3, 2, 3, 3), **kw)  # noqa: E731
    assert geo(padding=1)[14:] == (1, 1, 1, 1, 10, 7)
    assert geo(padding=(2, 0))[14:] == (2, 2, 0, 0, 12, 5)
    assert geo(padding=(0, 1, 2, 3))[14:] == (0, 1, 2, 3, 9, 10)
    assert geo(padding="valid")[14:] == (0, 0, 0, 0, 8, 5)
    assert geo(padding="same")[14:] == (1, 1, 1, 1, 10, 7)
    # TensorFlow's "same" with stride 2: out = ceil(in / 2), the odd pixel bottom/right
    assert geo(padding="same", stride=2)[14:] == (0, 1, 1, 1, 5, 4)
    assert geo(padding="same", dilation=2)[14:] == (2, 2, 2, 2, 10, 7)


@pytest.mark.parametrize("kwargs, x_shape, w_shape, exc, match", [
    ({}, (2, 3, 8, 8), (5, 4, 3, 3), ValueError, "4 input channels per group but x has 3"),
    (dict(groups=2), (2, 3, 8, 8), (4, 1, 3, 3), ValueError, "groups=2 does not divide the 3 input"),
    (dict(groups=2), (2, 4, 8, 8), (3, 2, 3, 3), ValueError, "does not divide the 3 output"),
    ({}, (2, 3, 4, 4), (5, 3, 5, 5), ValueError, r"kernel size \(5, 5\).*larger than the padded input \(4, 4\)"),
    (dict(dilation=3), (2, 3, 6, 6), (5, 3, 3, 3), ValueError, "larger than the padded input"),
    (dict(stride=0), (2, 3, 8, 8), (5, 3, 3, 3), ValueError, "stride must be >= 1"),
    (dict(stride=(1, -1)), (2, 3, 8, 8), (5, 3, 3, 3), ValueError, "stride must be >= 1"),
    (dict(dilation=0), (2, 3, 8, 8), (5, 3, 3, 3), ValueError, "dilation must be >= 1"),
    (dict(padding=-1), (2, 3, 8, 8), (5, 3, 3, 3), ValueError, "padding must be >= 0"),
    (dict(padding=(1, 2, 3)), (2, 3, 8, 8), (5, 3, 3, 3), TypeError, "padding must be"),
    (dict(padding="full"), (2, 3, 8, 8), (5, 3, 3, 3), ValueError, "padding must be 'valid', 'same'"),
    (dict(groups=0), (2, 3, 8, 8), (5, 3, 3, 3), ValueError, "groups must be >= 1"),
    (dict(stride=1.5), (2, 3, 8, 8), (5, 3, 3, 3), TypeError, "stride must be an int"),
    (dict(algo="fft"), (2, 3, 8, 8), (5, 3, 3, 3), ValueError, "algo must be"),
    ({}, (3, 8, 8), (5, 3, 3, 3), ValueError, "input must have 4 dimensions"),
    ({}, (2, 3, 8, 8), (5, 3, 3), ValueError, "weight must have 4 dimensions"),
])
def test_bad_input_raises_before_any_kernel(kwargs, x_shape, w_shape, exc, match):
    x, w = nbdl.zeros(x_shape), nbdl.zeros(w_shape)
    with pytest.raises(exc, match=match):
        F.conv2d(x, w, **kwargs)


def test_bad_dtypes_bias_and_devices(device):
    x, w = nbdl.zeros((1, 2, 5, 5)), nbdl.zeros((3, 2, 3, 3))
    with pytest.raises(TypeError, match="input must be float32 or float64"):
        F.conv2d(nbdl.zeros((1, 2, 5, 5), dtype=nbdl.int64), w)
    with pytest.raises(TypeError, match="dtype mismatch"):
        F.conv2d(x, w.to(nbdl.float64))
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        F.conv2d(x, w, nbdl.zeros(4))
    if device != "cpu":
        with pytest.raises(ValueError, match="different devices: input on cpu, weight on cuda"):
            F.conv2d(x, w.to(device))


def test_kernel_layer_validates(device):
    from nbdl.device import kernels
    K = kernels("conv", device)
    x, w = t(np.zeros((2, 3, 8, 8)), device).array, t(np.zeros((5, 4, 3, 3)), device).array
    with pytest.raises(ValueError, match=r"conv2d_forward: weight has 4 input channels per group but x has 3 "
                                         r"\(groups=1\) \(x.shape=\(2, 3, 8, 8\), weight.shape=\(5, 4, 3, 3\)\)"):
        K.conv2d_forward(x, w)
    gy = t(np.zeros((2, 5, 6, 7)), device).array
    with pytest.raises(ValueError, match=r"grad_out must have shape \(2, 5, 6, 6\)"):
        K.conv2d_backward_weight(gy, t(np.zeros((2, 4, 8, 8)), device).array, (5, 4, 3, 3))


def test_module_arguments():
    with pytest.raises(ValueError, match="groups=2 must divide in_channels=3"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="kernel_size must be a positive int"):
        nn.Conv2d(3, 4, 0)
    with pytest.raises(ValueError, match="padding_mode must be 'zeros'"):
        nn.Conv2d(3, 4, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="padding must be >= 0"):
        nn.Conv2d(3, 4, 3, padding=-1)
    m = nn.Conv2d(4, 8, (3, 2), stride=2, padding="same", groups=2, bias=False)
    assert m.weight.shape == (8, 2, 3, 2) and m.bias is None
    assert "4, 8, kernel_size=(3, 2), stride=(2, 2), padding='same', groups=2, bias=False" in repr(m)


# ---------------------------------------------------------------------------------------------
# kernels against the numpy reference
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("algo", ["im2col", "direct"])
def test_forward_random_configs_cpu(algo):
    rng = np.random.default_rng(7 if algo == "im2col" else 8)
    for _ in range(14):
        xs, ws, kw = random_config(rng, direct=algo == "direct")
        x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
        y = F.conv2d(t(x, "cpu"), t(w, "cpu"), t(b, "cpu"), algo=algo, **kw)
        np.testing.assert_allclose(y.numpy(), conv_ref(x, w, b, **kw), rtol=1e-10, atol=1e-10,
                                   err_msg=f"{xs} {ws} {kw}")


@pytest.mark.parametrize("algo", ["im2col", "direct"])
def test_backward_random_configs_cpu(algo):
    """Input and weight gradients against the adjoint reference (tiny shapes)."""
    from nbdl.kernels.conv import cpu as K
    rng = np.random.default_rng(17 if algo == "im2col" else 18)
    for _ in range(8):
        xs, ws, kw = random_config(rng, direct=algo == "direct")
        xs = (min(xs[0], 2), xs[1], min(xs[2], 7), min(xs[3], 7))
        if kw["padding"] in (0, "valid") and (ws[2] - 1) * 2 + 1 > 7:
            kw["padding"] = "same"
        x, w = rng.standard_normal(xs), rng.standard_normal(ws)
        gy = rng.standard_normal(conv_ref(x, w, **kw).shape)
        gx_ref, gw_ref = grads_ref(x, w, gy, **kw)
        args = (kw["stride"], kw["padding"], kw["dilation"], kw["groups"])
        np.testing.assert_allclose(K.conv2d_backward_input(gy, w, xs, *args, algo=algo), gx_ref,
                                   rtol=1e-10, atol=1e-10, err_msg=f"{xs} {ws} {kw}")
        np.testing.assert_allclose(K.conv2d_backward_weight(gy, x, ws, *args, algo=algo), gw_ref,
                                   rtol=1e-10, atol=1e-10, err_msg=f"{xs} {ws} {kw}")
        np.testing.assert_allclose(K.conv2d_backward_bias(gy), gy.sum((0, 2, 3)), rtol=1e-12)


CUDA_CONFIGS = [((2, 2, 5, 6), (4, 2, 3, 3), dict(stride=1, padding=1, dilation=1, groups=1)),
                ((1, 4, 6, 5), (2, 2, 2, 3), dict(stride=(2, 1), padding="same", dilation=(1, 2), groups=2))]


@pytest.mark.parametrize("algo", ["im2col", "direct"])
def test_forward_backward_cuda(algo, rng):
    pytest.importorskip("numba.cuda")
    if not nbdl.cuda_available():
        pytest.skip("no CUDA device or simulator")
    from nbdl.kernels.conv import cuda as K
    for xs, ws, kw in CUDA_CONFIGS:
        x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
        y = F.conv2d(t(x, "cuda"), t(w, "cuda"), t(b, "cuda"), algo=algo, **kw)
        np.testing.assert_allclose(y.numpy(), conv_ref(x, w, b, **kw), rtol=1e-10, atol=1e-10)
        gy = rng.standard_normal(y.shape)
        gx_ref, gw_ref = grads_ref(x, w, gy, **kw)
        args = (kw["stride"], kw["padding"], kw["dilation"], kw["groups"])
        dgy = t(gy, "cuda").array
        gx = K.conv2d_backward_input(dgy, t(w, "cuda").array, xs, *args, algo=algo).copy_to_host()
        gw = K.conv2d_backward_weight(dgy, t(x, "cuda").array, ws, *args, algo=algo).copy_to_host()
        np.testing.assert_allclose(gx, gx_ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(gw, gw_ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(K.conv2d_backward_bias(dgy).copy_to_host(), gy.sum((0, 2, 3)), rtol=1e-12)


def test_im2col_col2im(device, rng):
    from nbdl.device import kernels
    K = kernels("conv", device)
    x = rng.standard_normal((2, 2, 5, 4))
    col = K.im2col(t(x, device).array, (2, 3), stride=(2, 1), padding=(1, 0, 1, 1), dilation=1)
    col = col if isinstance(col, np.ndarray) else col.copy_to_host()
    # the column matrix times a flattened kernel is the convolution
    w = rng.standard_normal((3, 2, 2, 3))
    y = np.einsum("kl,nlj->nkj", w.reshape(3, -1), col)
    ref = conv_ref(x, w, stride=(2, 1), padding=(1, 0, 1, 1))
    np.testing.assert_allclose(y.reshape(ref.shape), ref, rtol=1e-12, atol=1e-12)
    # col2im is the adjoint of im2col: <im2col(x), c> == <x, col2im(c)>
    c = rng.standard_normal(col.shape)
    back = K.col2im(t(c, device).array, x.shape, (2, 3), stride=(2, 1), padding=(1, 0, 1, 1))
    back = back if isinstance(back, np.ndarray) else back.copy_to_host()
    assert np.isclose(np.sum(col * c), np.sum(x * back))


def test_algorithms_agree_float32_and_big_tiles(rng):
    """float32, a geometry large enough for several reduction chunks and pixel tiles."""
    x = rng.standard_normal((2, 32, 24, 23)).astype(np.float32)
    w = (rng.standard_normal((12, 32, 3, 3)) / 10).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    outs = {}
    for algo in ("im2col", "direct"):
        xt, wt, bt = t(x, "cpu", True), t(w, "cpu", True), t(b, "cpu", True)
        y = F.conv2d(xt, wt, bt, padding=1, algo=algo)
        gy = np.cos(np.arange(y.numel()).reshape(y.shape)).astype(np.float32)
        y.backward(t(gy, "cpu"))
        outs[algo] = [y.numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy()]
        assert all(o.dtype == np.float32 for o in outs[algo])
    ref = conv_ref(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), padding=1)
    np.testing.assert_allclose(outs["im2col"][0], ref, rtol=1e-4, atol=1e-4)
    for a, d in zip(outs["im2col"], outs["direct"]):
        np.testing.assert_allclose(a, d, rtol=1e-4, atol=1e-3)


def wgrad_ref(x, gy, w_shape, stride=1, padding=0, dilation=1, groups=1):
    """Naive weight gradient: gw[k, c, r, s] = sum_{n,p,q} gy[n, k, p, q] * xpad[n, c0 + c, tap]."""
    g = conv2d_geometry("ref", x.shape, w_shape, stride, padding, dilation, groups)
    gw = np.zeros(w_shape)
    for k, r, s, win in tap_windows(x, g):
        gw[k, :, r, s] = np.einsum("ncpq,npq->c", win, gy[:, k])
    return gw


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tuning", ["default", "small_chunks", "streamed_grouped", "in_place"])
def test_cpu_implicit_gemm_paths(dtype, tuning, monkeypatch, rng):
    """The CPU im2col kernels' blocking paths, each forced by its tuning constant: several tap
    chunks, several tiles per task, non-temporal output stores, the in-place variant for
    small images, several weight-gradient slices; output channels not a multiple of the
    register block's rows (remainders of 2, 4 and 1 rows); tiles spanning images."""
    from nbdl.kernels.conv import cpu as K
    if tuning == "small_chunks":
        monkeypatch.setattr(K, "_IMPLICIT_KC", 8)
        monkeypatch.setattr(K, "_WGRAD_CHUNK", 16)
        monkeypatch.setattr(K, "_WGRAD_MIN_PIX", 40)
    if tuning == "streamed_grouped":
        monkeypatch.setattr(K, "_STREAM_BYTES", 0)
        monkeypatch.setattr(K, "_ACC_BYTES", 1 << 30)
    monkeypatch.setattr(K, "_INPLACE_BYTES", 1 << 30 if tuning == "in_place" else 0)
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    for xs, ws, kw in [((5, 5, 9, 11), (32, 5, 3, 3), dict(padding=1)),
                       ((2, 4, 13, 10), (26, 2, 3, 2), dict(stride=2, padding=(1, 0, 2, 1), dilation=(2, 1),
                                                            groups=2)),
                       ((2, 3, 15, 15), (10, 3, 5, 5), dict(stride=(2, 3), padding="same")),
                       ((4, 2, 30, 30), (6, 2, 3, 3), dict(padding=1))]:        # 57 tiles
        x = rng.standard_normal(xs).astype(dtype)
        w = rng.standard_normal(ws).astype(dtype)
        b = rng.standard_normal(ws[0]).astype(dtype)
        y = K.conv2d_forward(x, w, b, **kw, algo="im2col")
        assert y.dtype == dtype
        np.testing.assert_allclose(y, conv_ref(x, w, b, **kw), **tol)
        gy = rng.standard_normal(y.shape).astype(dtype)
        args = conv2d_geometry("t", xs, ws, kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1),
                               kw.get("groups", 1))
        hyper = ((args.sh, args.sw), (args.pt, args.pb, args.pl, args.pr), (args.dh, args.dw), args.G)
        gw = K.conv2d_backward_weight(gy, x, ws, *hyper, algo="im2col")
        np.testing.assert_allclose(gw, wgrad_ref(x, gy, ws, *hyper), **tol)


# ---------------------------------------------------------------------------------------------
# autograd
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("algo", ["im2col", "direct"])
def test_gradcheck_cpu(algo, rng):
    for xs, ws, kw in [((2, 2, 5, 4), (3, 2, 3, 3), dict(stride=1, padding=1, dilation=1, groups=1)),
                       ((1, 4, 6, 7), (4, 2, 2, 3), dict(stride=(2, 1), padding="same", dilation=(1, 2),
                                                         groups=2))]:
        x = t(rng.standard_normal(xs), "cpu", True)
        w = t(rng.standard_normal(ws), "cpu", True)
        b = t(rng.standard_normal(ws[0]), "cpu", True)
        gradcheck(lambda x, w, b: F.conv2d(x, w, b, algo=algo, **kw), [x, w, b])


@pytest.mark.parametrize("algo", ["im2col", "direct"])
def test_gradcheck_cuda(algo, rng):
    if not nbdl.cuda_available():
        pytest.skip("no CUDA device or simulator")
    x = t(rng.standard_normal((1, 2, 4, 5)), "cuda", True)
    w = t(rng.standard_normal((2, 1, 2, 3)), "cuda", True)
    b = t(rng.standard_normal(2), "cuda", True)
    gradcheck(lambda x, w, b: F.conv2d(x, w, b, stride=(1, 2), padding=(1, 0, 1, 2), groups=2, algo=algo),
              [x, w, b], n_directions=2)


def test_backward_is_deterministic(device, rng):
    x = rng.standard_normal((2, 2, 4, 4))
    w = rng.standard_normal((2, 2, 3, 3))
    grads = []
    for _ in range(2):
        xt, wt = t(x, device, True), t(w, device, True)
        F.conv2d(xt, wt, padding=1, algo="im2col").sum().backward()
        grads.append((xt.grad.numpy(), wt.grad.numpy()))
    assert all(np.array_equal(a, b) for a, b in zip(*grads))


# ---------------------------------------------------------------------------------------------
# algorithm choice
# ---------------------------------------------------------------------------------------------

def _record_algos(monkeypatch):
    from nbdl.kernels.conv import cpu as K
    seen = []
    real = K.conv2d_forward

    def spy(*args, algo="im2col", **kw):
        seen.append(algo)
        return real(*args, algo=algo, **kw)
    monkeypatch.setattr(K, "conv2d_forward", spy)
    return seen


def test_set_conv_algo_and_benchmark_mode(monkeypatch, rng):
    seen = _record_algos(monkeypatch)
    x, w = t(rng.standard_normal((2, 2, 6, 6)), "cpu"), t(rng.standard_normal((3, 2, 3, 3)), "cpu")
    ref = conv_ref(x.numpy(), w.numpy(), padding=1)
    assert nbdl.get_conv_algo() == "auto"
    try:
        nbdl.set_conv_algo("direct")
        F.conv2d(x, w, padding=1)
        F.conv2d(x, w, padding=1, algo="im2col")            # the call's choice wins
        assert seen[-2:] == ["direct", "im2col"]
        nbdl.set_conv_algo("auto")
        nbdl.backends.benchmark = True
        y = F.conv2d(x, w, padding=1)
        np.testing.assert_allclose(y.numpy(), ref, rtol=1e-10)
        winner = seen[-1]
        assert winner in ("direct", "im2col") and set(seen[2:-1]) == {"direct", "im2col"}
        n = len(seen)
        F.conv2d(x, w, padding=1)                           # remembered: no new measurement
        assert seen[n:] == [winner]
    finally:
        nbdl.set_conv_algo("auto")
        nbdl.backends.benchmark = False
        nbdl.backends.clear_benchmark_cache()
    with pytest.raises(ValueError, match="set_conv_algo: name must be one of"):
        nbdl.set_conv_algo("winograd")


# ---------------------------------------------------------------------------------------------
# PyTorch parity
# ---------------------------------------------------------------------------------------------

def test_torch_state_dict_and_gradients_match():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    # float64: the kernels the gradient checks compile anyway (float32 runs in the CNN test)
    tconv = torch.nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2).double()
    m = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2, dtype=nbdl.float64)
    m.load_state_dict({k: v.detach().numpy() for k, v in tconv.state_dict().items()})
    x = np.random.default_rng(3).standard_normal((2, 4, 9, 8))
    xt = torch.tensor(x, requires_grad=True)
    ty = tconv(xt)
    ty.square().sum().backward()
    xn = nbdl.tensor(x, requires_grad=True)
    y = m(xn)
    (y * y).sum().backward()
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(xn.grad.numpy(), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.weight.grad.numpy(), tconv.weight.grad.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(m.bias.grad.numpy(), tconv.bias.grad.numpy(), rtol=1e-10, atol=1e-10)


def test_default_init_matches_torch_bounds():
    m = nn.Conv2d(6, 8, 3, groups=2)
    bound = 1 / np.sqrt(3 * 9)             # fan_in = in_channels/groups * kH * kW
    w, b = m.weight.numpy(), m.bias.numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
    assert np.abs(b).max() <= bound


# ---------------------------------------------------------------------------------------------
# a small CNN learns
# ---------------------------------------------------------------------------------------------

def _bars(n, rng):
    """8x8 images with one horizontal (label 0) or vertical (label 1) bar, plus noise."""
    x = rng.normal(0, 0.3, size=(n, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 2, size=n)
    pos = rng.integers(1, 7, size=n)
    for i in range(n):
        if y[i]:
            x[i, 0, :, pos[i]] += 2
        else:
            x[i, 0, pos[i], :] += 2
    return x, y


class SmallCNN(nn.Module):
    """conv-relu-pool-conv-relu-linear."""

    def __init__(self, device):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, device=device)
        self.conv2 = nn.Conv2d(4, 4, 3, padding="same", device=device)
        self.fc = nn.Linear(4 * 4 * 4, 2, device=device)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.conv2(x))
        return self.fc(x.reshape(x.shape[0], -1))


def test_small_cnn_trains(device):
    """cpu: learns the task (held-out accuracy); cuda (simulated, slow): a few steps on one
    fixed batch must cut the loss."""
    rng = np.random.default_rng(0)
    steps, batch = (60, 16) if device == "cpu" else (4, 6)
    model = SmallCNN(device)
    opt = nbdl.optim.Adam(model.parameters(), lr=0.03)
    xs, ys = _bars(steps * batch, rng)
    losses = []
    for i in range(steps):
        j = i if device == "cpu" else 0
        xb = nbdl.tensor(xs[j * batch:(j + 1) * batch], device=device)
        yb = nbdl.tensor(ys[j * batch:(j + 1) * batch], device=device)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    if device == "cpu":
        assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses
        xv, yv = _bars(64, rng)
        with nbdl.no_grad():
            acc = (model(nbdl.tensor(xv)).numpy().argmax(1) == yv).mean()
        assert acc > 0.9
    else:
        assert losses[-1] < 0.6 * losses[0], losses
