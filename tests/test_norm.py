"""BatchNorm and LayerNorm: numpy references, gradients, running statistics, errors, PyTorch parity."""
import numpy as np
import pytest

import nbdl
import nbdl.functional as F
from nbdl import nn
from gradcheck import gradcheck


# ---- numpy references -----------------------------------------------------------------

def ref_batch_norm(x, rm, rv, w, b, training, momentum, eps):
    """-> (y, new running mean, new running var) with PyTorch's rules."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    if training:
        mean, var = x.mean(axes), x.var(axes)
        count = x.size // x.shape[1]
        rm = (1 - momentum) * rm + momentum * mean
        rv = (1 - momentum) * rv + momentum * var * count / (count - 1)
    else:
        mean, var = rm, rv
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    if w is not None:
        y = y * w.reshape(shape)
    if b is not None:
        y = y + b.reshape(shape)
    return y, rm, rv


def ref_batch_norm_grad(gy, x, w, training, rv, eps):
    """-> (gx, gw, gb): with batch statistics the mean and variance depend on x."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    var = x.var(axes) if training else rv
    mean = x.mean(axes, keepdims=True) if training else None
    invstd = (1 / np.sqrt(var + eps)).reshape(shape)
    xhat = (x - (mean if training else 0)) * invstd if training else None
    scale = invstd * (1 if w is None else w.reshape(shape))
    if training:
        gx = scale * (gy - gy.mean(axes, keepdims=True) - xhat * (gy * xhat).mean(axes, keepdims=True))
        gw = (gy * xhat).sum(axes)
    else:
        gx = gy * scale
        gw = None
    return gx, gw, gy.sum(axes)


def ref_layer_norm(x, nshape, w, b, eps):
    axes = tuple(range(x.ndim - len(nshape), x.ndim))
    y = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + eps)
    return y * (1 if w is None else w) + (0 if b is None else b)


def ref_layer_norm_grad(gy, x, nshape, w, eps):
    axes = tuple(range(x.ndim - len(nshape), x.ndim))
    lead = tuple(range(x.ndim - len(nshape)))
    xhat = (x - x.mean(axes, keepdims=True)) / np.sqrt(x.var(axes, keepdims=True) + eps)
    invstd = 1 / np.sqrt(x.var(axes, keepdims=True) + eps)
    g = gy * (1 if w is None else w)
    gx = invstd * (g - g.mean(axes, keepdims=True) - xhat * (g * xhat).mean(axes, keepdims=True))
    return gx, (gy * xhat).sum(lead), gy.sum(lead)


def tensor(a, device, requires_grad=False):
    return None if a is None else nbdl.tensor(a, dtype=a.dtype, device=device, requires_grad=requires_grad)


# ---- batch norm ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 6), (2, 3, 4, 5)])
def test_batch_norm_matches_reference(device, rng, shape):
    c = shape[1]
    for training, affine, momentum in ((True, True, 0.1), (True, False, 0.7), (False, True, 0.1)):
        x = rng.standard_normal(shape) * 3 + 1
        rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
        w, b = (rng.standard_normal(c), rng.standard_normal(c)) if affine else (None, None)
        tx, tw, tb = tensor(x, device, True), tensor(w, device, True), tensor(b, device, True)
        trm, trv = tensor(rm, device), tensor(rv, device)
        y = F.batch_norm(tx, trm, trv, tw, tb, training, momentum, 1e-5)
        ref_y, ref_rm, ref_rv = ref_batch_norm(x, rm, rv, w, b, training, momentum, 1e-5)
        np.testing.assert_allclose(y.numpy(), ref_y, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(trm.numpy(), ref_rm, rtol=1e-12)
        np.testing.assert_allclose(trv.numpy(), ref_rv, rtol=1e-12)
        gy = rng.standard_normal(shape)
        y.backward(tensor(gy, device))
        gx, gw, gb = ref_batch_norm_grad(gy, x, w, training, rv, 1e-5)
        np.testing.assert_allclose(tx.grad.numpy(), gx, rtol=1e-9, atol=1e-10)
        if affine:
            np.testing.assert_allclose(tb.grad.numpy(), gb, rtol=1e-10, atol=1e-10)
            if training:
                np.testing.assert_allclose(tw.grad.numpy(), gw, rtol=1e-9, atol=1e-10)


def test_batch_norm_float32(device, rng):
    x = rng.standard_normal((8, 4, 3, 3)).astype(np.float32) * 5 + 3
    bn = nn.BatchNorm2d(4, device=device)
    y = bn(tensor(x, device, True))
    ref_y, ref_rm, ref_rv = ref_batch_norm(x.astype(np.float64), np.zeros(4), np.ones(4), None, None,
                                           True, 0.1, 1e-5)
    assert y.dtype == np.float32 and bn.running_mean.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), ref_y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.running_var.numpy(), ref_rv, rtol=1e-5)


def test_batch_norm_layer_running_statistics(device, rng):
    bn = nn.BatchNorm1d(3, momentum=None, device=device, dtype=nbdl.float64)
    batches = [rng.standard_normal((6, 3)) * (k + 1) + k for k in range(3)]
    for xb in batches:
        bn(tensor(xb, device))
    # momentum=None: the running statistics are the plain average over the batches.
    np.testing.assert_allclose(bn.running_mean.numpy(), np.mean([xb.mean(0) for xb in batches], 0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), np.mean([xb.var(0, ddof=1) for xb in batches], 0),
                               rtol=1e-12)
    assert int(bn.num_batches_tracked.item()) == 3
    bn.eval()
    x = batches[0]
    ref_y, _, _ = ref_batch_norm(x, bn.running_mean.numpy(), bn.running_var.numpy(), None, None, False, 0, 1e-5)
    np.testing.assert_allclose(bn(tensor(x, device)).numpy(), ref_y, rtol=1e-12)
    assert int(bn.num_batches_tracked.item()) == 3          # eval does not count


def test_batch_norm_without_running_stats_uses_batch_stats(device, rng):
    bn = nn.BatchNorm2d(2, affine=False, track_running_stats=False, device=device, dtype=nbdl.float64)
    assert bn.running_mean is None and bn.weight is None
    assert list(bn.state_dict()) == []
    bn.eval()
    x = rng.standard_normal((3, 2, 2, 2))
    ref_y, _, _ = ref_batch_norm(x, np.zeros(2), np.ones(2), None, None, True, 0.1, 1e-5)
    np.testing.assert_allclose(bn(tensor(x, device)).numpy(), ref_y, rtol=1e-10, atol=1e-12)


def test_batch_norm_module_api():
    bn = nn.BatchNorm2d(4, eps=1e-3, momentum=0.2, dtype=nbdl.float64)
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert bn.state_dict()["num_batches_tracked"].shape == ()
    assert bn.state_dict()["num_batches_tracked"].dtype == np.int64
    assert bn.weight.dtype == np.float64 and bn.running_var.dtype == np.float64
    np.testing.assert_array_equal(bn.weight.numpy(), 1.0)
    np.testing.assert_array_equal(bn.running_var.numpy(), 1.0)
    assert repr(bn) == "BatchNorm2d(4, eps=0.001, momentum=0.2, affine=True, track_running_stats=True)"
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]
    ln = nn.LayerNorm(6, bias=False)
    assert ln.bias is None and [n for n, _ in ln.named_parameters()] == ["weight"]
    assert repr(ln) == "LayerNorm((6,), eps=1e-05, elementwise_affine=True)"
    assert nn.LayerNorm((2, 3), elementwise_affine=False).weight is None


# ---- layer norm ---------------------------------------------------------------------------

@pytest.mark.parametrize("nshape,affine", [((5,), "both"), ((3, 4), "weight"), ((4,), "none")])
def test_layer_norm_matches_reference(device, rng, nshape, affine):
    x = rng.standard_normal((2,) * (3 - len(nshape)) + nshape) * 2 + 1
    w = rng.standard_normal(nshape) if affine != "none" else None
    b = rng.standard_normal(nshape) if affine == "both" else None
    tx, tw, tb = tensor(x, device, True), tensor(w, device, True), tensor(b, device, True)
    y = F.layer_norm(tx, nshape if len(nshape) > 1 else nshape[0], tw, tb, 1e-5)
    np.testing.assert_allclose(y.numpy(), ref_layer_norm(x, nshape, w, b, 1e-5), rtol=1e-10, atol=1e-10)
    gy = rng.standard_normal(x.shape)
    y.backward(tensor(gy, device))
    gx, gw, gb = ref_layer_norm_grad(gy, x, nshape, w, 1e-5)
    np.testing.assert_allclose(tx.grad.numpy(), gx, rtol=1e-9, atol=1e-10)
    if w is not None:
        np.testing.assert_allclose(tw.grad.numpy(), gw, rtol=1e-9, atol=1e-10)
    if b is not None:
        np.testing.assert_allclose(tb.grad.numpy(), gb, rtol=1e-10, atol=1e-10)


def test_layer_norm_float32_module(device, rng):
    x = rng.standard_normal((3, 4, 8)).astype(np.float32)
    y = nn.LayerNorm(8, device=device)(tensor(x, device))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), ref_layer_norm(x.astype(np.float64), (8,), None, None, 1e-5),
                               rtol=1e-4, atol=1e-5)


# ---- gradients ----------------------------------------------------------------------------

def test_gradcheck(device, rng):
    n = None if device == "cpu" else 2
    x = tensor(rng.standard_normal((3, 2, 2, 2)), device, True)
    w, b = tensor(rng.standard_normal(2), device, True), tensor(rng.standard_normal(2), device, True)
    rm, rv = tensor(rng.standard_normal(2), device), tensor(rng.uniform(0.5, 2, 2), device)
    gradcheck(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), [x, w, b], n_directions=n)
    gradcheck(lambda x, w, b: F.batch_norm(x, rm, rv, w, b, training=False), [x, w, b], n_directions=n)
    x2 = tensor(rng.standard_normal((3, 2, 5)), device, True)
    w2, b2 = tensor(rng.standard_normal((2, 5)), device, True), tensor(rng.standard_normal((2, 5)), device, True)
    gradcheck(lambda x, w, b: F.layer_norm(x, (2, 5), w, b), [x2, w2, b2], n_directions=n)


# ---- errors -------------------------------------------------------------------------------

def test_bad_input_raises(device):
    x = tensor(np.zeros((1, 3)), device)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        nn.BatchNorm1d(3, device=device, dtype=nbdl.float64)(x)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        F.batch_norm(tensor(np.zeros((1, 3, 1, 1)), device), None, None, training=True)
    bn = nn.BatchNorm1d(3, device=device, dtype=nbdl.float64).eval()
    assert bn(x).shape == (1, 3)                         # one value is fine in eval mode
    with pytest.raises(ValueError, match="expected 2D or 3D input"):
        bn(tensor(np.zeros((2, 3, 4, 4)), device))
    with pytest.raises(ValueError, match="expected 4D input"):
        nn.BatchNorm2d(3, device=device)(tensor(np.zeros((2, 3, 4), np.float32), device))
    with pytest.raises(ValueError, match=r"running_mean must have shape \(4,?\)"):
        F.batch_norm(tensor(np.zeros((2, 4)), device), tensor(np.zeros(3), device), tensor(np.ones(3), device))
    with pytest.raises(ValueError, match="required when training=False"):
        F.batch_norm(tensor(np.zeros((2, 4)), device), None, None, training=False)
    with pytest.raises(TypeError, match="dtype mismatch"):
        F.batch_norm(tensor(np.zeros((2, 3), np.float32), device), None, None, tensor(np.ones(3), device),
                     training=True)
    with pytest.raises(ValueError, match="momentum must be <= 1"):
        F.batch_norm(tensor(np.zeros((2, 3)), device), None, None, training=True, momentum=2.0)
    with pytest.raises(ValueError, match=r"Given normalized_shape=\[4\], expected input with shape \[\*, 4\]"):
        F.layer_norm(tensor(np.zeros((2, 3)), device), 4)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,?\)"):
        F.layer_norm(tensor(np.zeros((2, 3)), device), 3, tensor(np.ones(4), device))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        F.layer_norm(tensor(np.zeros((2, 3)), device), 3, eps=-1.0)


def test_kernel_checks():
    from nbdl.kernels.norm import cpu as K
    x = np.zeros((2, 3, 4))
    with pytest.raises(ValueError, match="must be given together"):
        K.batch_norm_forward(x, None, None, np.zeros(3), None, None, True, 0.1, 1e-5)
    with pytest.raises(ValueError, match="momentum=None"):
        K.batch_norm_forward(x, None, None, np.zeros(3), np.ones(3), None, True, None, 1e-5)
    with pytest.raises(ValueError, match="grad_output must have shape"):
        K.layer_norm_backward(np.zeros((2, 2)), np.zeros((2, 3)), None, np.zeros(2), np.ones(2))


# ---- PyTorch parity -----------------------------------------------------------------------

def test_matches_pytorch_training_steps(rng):
    torch = pytest.importorskip("torch")
    cases = [(nn.BatchNorm1d(3, momentum=None, dtype=nbdl.float64), torch.nn.BatchNorm1d(3, momentum=None).double(),
              (6, 3, 4)),
             (nn.BatchNorm2d(3, momentum=0.3, dtype=nbdl.float64), torch.nn.BatchNorm2d(3, momentum=0.3).double(),
              (4, 3, 3, 2)),
             (nn.LayerNorm((3, 4), dtype=nbdl.float64), torch.nn.LayerNorm((3, 4)).double(), (2, 3, 4))]
    for ours, theirs, shape in cases:
        theirs.load_state_dict({k: torch.tensor(rng.standard_normal(v.shape)) if v.dtype == np.float64
                                else torch.tensor(v) for k, v in ours.state_dict().items()}, strict=True)
        ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
        for step in range(3):
            if step == 2:
                ours.eval()
                theirs.eval()
            x = rng.standard_normal(shape) * 2 + 0.5
            xt = torch.tensor(x, requires_grad=True)
            xn = nbdl.tensor(x, requires_grad=True)
            gy = rng.standard_normal(shape)
            yt, yn = theirs(xt), ours(xn)
            (yt * torch.tensor(gy)).sum().backward()
            (yn * nbdl.tensor(gy)).sum().backward()
            np.testing.assert_allclose(yn.numpy(), yt.detach().numpy(), rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(xn.grad.numpy(), xt.grad.numpy(), rtol=1e-9, atol=1e-10)
            for (name, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
                np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-9, atol=1e-10, err_msg=name)
            for k, v in theirs.state_dict().items():
                np.testing.assert_allclose(ours.state_dict()[k], v.numpy(), rtol=1e-12, err_msg=k)
