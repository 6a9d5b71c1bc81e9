"""softmax / log_softmax and the losses on them (cross_entropy, nll_loss, mse_loss)."""
import numpy as np
import pytest

import nbdl
import nbdl.functional as F
from nbdl import nn
from nbdl.device import kernels
from gradcheck import gradcheck


# --- numpy references ---------------------------------------------------------------

def np_log_softmax(x, axis):
    x = x.astype(np.float64)
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def np_softmax(x, axis):
    return np.exp(np_log_softmax(x, axis))


def np_cross_entropy(x, target, weight=None, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """PyTorch's definition, one sample at a time; x (N, C, d...), target (N, d...)."""
    c = x.shape[1]
    w = np.ones(c) if weight is None else weight
    logp = np.moveaxis(np_log_softmax(x, 1), 1, -1).reshape(-1, c)    # (samples, C)
    t = target.reshape(-1)
    losses, wsum = np.zeros(len(t)), 0.0
    for i, ti in enumerate(t):
        if ti == ignore_index:
            continue
        nll = -w[ti] * logp[i, ti]
        smooth = -(w * logp[i]).sum()
        losses[i] = (1 - label_smoothing) * nll + label_smoothing / c * smooth
        wsum += w[ti]
    if reduction == "none":
        return losses.reshape(target.shape)
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / wsum if wsum else 0.0


def np_nll_loss(logp, target, weight=None, ignore_index=-100, reduction="mean"):
    c = logp.shape[1]
    w = np.ones(c) if weight is None else weight
    lp = np.moveaxis(logp, 1, -1).reshape(-1, c)
    t = target.reshape(-1)
    keep = t != ignore_index
    losses = np.where(keep, -w[np.where(keep, t, 0)] * lp[np.arange(len(t)), np.where(keep, t, 0)], 0.0)
    wsum = w[t[keep]].sum()
    if reduction == "none":
        return losses.reshape(target.shape)
    return losses.sum() if reduction == "sum" else (losses.sum() / wsum if wsum else 0.0)


def _t(a, device, **kw):
    return nbdl.tensor(a, device=device, **kw)


def _host(a):
    return a if isinstance(a, np.ndarray) else a.copy_to_host()


# --- softmax kernels ----------------------------------------------------------------

@pytest.mark.parametrize("shape,axis", [((4, 9), 1), ((3, 5, 4), 1), ((3, 5, 4), 0), ((6,), -1)])
def test_softmax_forward_float32_matches_numpy(device, rng, shape, axis):
    if device != "cpu" and len(shape) == 3 and axis == 0:
        pytest.skip("one strided case on the simulator is enough")
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    x.reshape(-1)[0] = 1e4                      # a huge logit: the stable form must not overflow
    K = kernels("softmax", device)
    y = _host(K.softmax_forward(_t(x, device).array, axis))
    ly = _host(K.log_softmax_forward(_t(x, device).array, axis))
    assert y.dtype == np.float32 and np.all(np.isfinite(y))
    np.testing.assert_allclose(y, np_softmax(x, axis), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ly, np_log_softmax(x, axis), rtol=1e-5, atol=1e-4)


def test_softmax_large_and_infinite_logits(device):
    K = kernels("softmax", device)
    x = _t(np.array([[1000.0, 1000.0, -np.inf], [-1e30, 0.0, 1e30]], np.float32), device).array
    np.testing.assert_allclose(_host(K.softmax_forward(x, 1)), [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    log_y = _host(K.log_softmax_forward(x, 1))
    np.testing.assert_allclose(log_y[0, :2], [-np.log(2)] * 2, rtol=1e-6)
    assert log_y[0, 2] == -np.inf


def test_softmax_wide_rows_vectorized_path(rng):
    """Rows longer than a vector and an inner axis longer than one block."""
    K = kernels("softmax", "cpu")
    x = rng.standard_normal((3, 1001)).astype(np.float32)
    np.testing.assert_allclose(K.softmax_forward(x, 1), np_softmax(x, 1), rtol=1e-5, atol=1e-9)
    x = rng.standard_normal((2, 3, 300)).astype(np.float32)
    np.testing.assert_allclose(K.log_softmax_forward(x, 1), np_log_softmax(x, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis", [1, 0])
def test_softmax_backward_float64_matches_numpy(device, rng, axis):
    x = rng.standard_normal((3, 4, 2))
    g = rng.standard_normal(x.shape)
    K = kernels("softmax", device)
    y = np_softmax(x, axis)
    gx = _host(K.softmax_backward(_t(g, device).array, _t(y, device).array, axis))
    np.testing.assert_allclose(gx, y * (g - (g * y).sum(axis, keepdims=True)), rtol=1e-10, atol=1e-14)
    ly = np_log_softmax(x, axis)
    gx = _host(K.log_softmax_backward(_t(g, device).array, _t(ly, device).array, axis))
    np.testing.assert_allclose(gx, g - np.exp(ly) * g.sum(axis, keepdims=True), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("op,dim", [("softmax", 1), ("log_softmax", 0)])
def test_softmax_gradcheck(device, rng, op, dim):
    x = _t(rng.standard_normal((3, 4)), device, requires_grad=True)
    gradcheck(lambda a: getattr(F, op)(a, dim), [x], n_directions=3 if device != "cpu" else None)


# --- cross entropy ------------------------------------------------------------------

CE_CASES = [  # (weight?, label_smoothing, reduction)
    (False, 0.0, "mean"), (True, 0.0, "mean"), (True, 0.3, "mean"), (False, 0.2, "sum"), (True, 0.1, "none"),
]


def _ce_data(rng, shape, ignore=True):
    x = rng.standard_normal(shape) * 2
    target = rng.integers(0, shape[1], (shape[0],) + shape[2:])
    if ignore:
        target.reshape(-1)[1] = -100
    return x, target, rng.uniform(0.5, 2.0, shape[1])


@pytest.mark.parametrize("weighted,ls,reduction", CE_CASES)
def test_cross_entropy_matches_numpy(device, rng, weighted, ls, reduction):
    if device != "cpu" and (weighted, ls) == (False, 0.0):
        pytest.skip("covered by the other simulator cases")
    x, target, w = _ce_data(rng, (5, 4))
    w = w if weighted else None
    out = F.cross_entropy(_t(x, device), _t(target, device), weight=None if w is None else _t(w, device),
                          label_smoothing=ls, reduction=reduction)
    np.testing.assert_allclose(out.numpy(), np_cross_entropy(x, target, w, -100, ls, reduction), rtol=1e-12)


def test_cross_entropy_float32_and_spatial(device, rng):
    x, target, w = _ce_data(rng, (2, 3, 2, 2))
    x = x.astype(np.float32)
    out = F.cross_entropy(_t(x, device), _t(target, device), weight=_t(w.astype(np.float32), device),
                          label_smoothing=0.2)
    assert out.dtype == np.float32 and out.shape == ()
    np.testing.assert_allclose(out.numpy(), np_cross_entropy(x, target, w, -100, 0.2), rtol=1e-5)


def test_cross_entropy_gradcheck(device, rng):
    x, target, w = _ce_data(rng, (4, 3) if device == "cpu" else (3, 3))
    xt = _t(x, device, requires_grad=True)
    def fn(a):
        return F.cross_entropy(a, _t(target, device), weight=_t(w, device), label_smoothing=0.25).reshape(1)
    gradcheck(fn, [xt], n_directions=2 if device != "cpu" else None)


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_cross_entropy_spatial_gradcheck(device, rng, reduction):
    x, target, w = _ce_data(rng, (2, 3, 2))
    xt = _t(x, device, requires_grad=True)
    gradcheck(lambda a: F.cross_entropy(a, _t(target, device), weight=_t(w, device), label_smoothing=0.1,
                                        reduction=reduction).reshape(-1), [xt],
              n_directions=2 if device != "cpu" else None)


def test_cross_entropy_all_ignored_is_zero_not_nan(device):
    x = _t(np.ones((3, 4)), device, requires_grad=True)
    loss = F.cross_entropy(x, _t(np.full(3, -100), device), label_smoothing=0.1)
    loss.backward()
    assert loss.item() == 0.0
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros((3, 4)))


def test_cross_entropy_custom_ignore_index_and_unbatched(rng):
    x, target, _ = _ce_data(rng, (4, 3), ignore=False)
    target[0] = 2
    out = F.cross_entropy(_t(x, "cpu"), _t(target, "cpu"), ignore_index=2)
    np.testing.assert_allclose(out.item(), np_cross_entropy(x, target, ignore_index=2), rtol=1e-12)
    one = F.cross_entropy(_t(x[0], "cpu"), _t(np.array(1), "cpu").reshape(()))
    np.testing.assert_allclose(one.item(), np_cross_entropy(x[:1], np.array([1])), rtol=1e-12)


def test_cross_entropy_probability_targets(rng):
    x = rng.standard_normal((4, 3))
    p = rng.uniform(size=(4, 3))
    p /= p.sum(1, keepdims=True)
    xt = _t(x, "cpu", requires_grad=True)
    out = F.cross_entropy(xt, _t(p, "cpu"))
    np.testing.assert_allclose(out.item(), -(p * np_log_softmax(x, 1)).sum(1).mean(), rtol=1e-12)
    gradcheck(lambda a: F.cross_entropy(a, _t(p, "cpu"), label_smoothing=0.1).reshape(1), [xt])


def test_cross_entropy_probability_targets_spatial_mean_divides_by_samples(device, rng):
    """PyTorch's mean over probability targets divides by N * d1 * ... (every sample), not N."""
    x = rng.standard_normal((2, 3, 2))
    p = rng.uniform(size=(2, 3, 2))
    p /= p.sum(1, keepdims=True)
    w = rng.uniform(0.5, 2.0, 3)
    per_sample = -(w[:, None] * p * np_log_softmax(x, 1)).sum(1)     # (N, d1)
    out = F.cross_entropy(_t(x, device), _t(p, device), weight=_t(w, device))
    np.testing.assert_allclose(out.item(), per_sample.mean(), rtol=1e-12)
    out = F.cross_entropy(_t(x, device), _t(p, device), reduction="none")
    np.testing.assert_allclose(out.numpy(), -(p * np_log_softmax(x, 1)).sum(1), rtol=1e-12)


# --- nll_loss and mse_loss ----------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_nll_loss_matches_numpy(device, rng, reduction):
    x, target, w = _ce_data(rng, (4, 3, 2) if device == "cpu" else (2, 3, 2))
    logp = np_log_softmax(x, 1)
    out = F.nll_loss(_t(logp, device), _t(target, device), weight=_t(w, device), reduction=reduction)
    np.testing.assert_allclose(out.numpy(), np_nll_loss(logp, target, w, -100, reduction), rtol=1e-12)


@pytest.mark.parametrize("shape,reduction", [((3, 3), "mean"), ((2, 3, 2), "sum"), ((2, 3, 2), "none")])
def test_nll_loss_gradcheck(device, rng, shape, reduction):
    x, target, w = _ce_data(rng, shape)
    xt = _t(np_log_softmax(x, 1), device, requires_grad=True)
    gradcheck(lambda a: F.nll_loss(a, _t(target, device), weight=_t(w, device), reduction=reduction).reshape(-1),
              [xt], n_directions=2 if device != "cpu" else None)


def test_mse_loss(device, rng):
    a, b = rng.standard_normal((2, 3, 2))
    at, bt = _t(a, device, requires_grad=True), _t(b, device, requires_grad=True)
    np.testing.assert_allclose(F.mse_loss(at, bt).item(), ((a - b) ** 2).mean(), rtol=1e-12)
    np.testing.assert_allclose(F.mse_loss(at, bt, reduction="sum").item(), ((a - b) ** 2).sum(), rtol=1e-12)
    gradcheck(lambda u, v: F.mse_loss(u, v, reduction="none"), [at, bt],
              n_directions=2 if device != "cpu" else None)


# --- modules ------------------------------------------------------------------------

def test_loss_and_softmax_modules(rng):
    x, target, w = _ce_data(rng, (4, 3))
    xt, tt = _t(x, "cpu"), _t(target, "cpu")
    loss = nn.CrossEntropyLoss(weight=_t(w, "cpu"), label_smoothing=0.1, reduction="sum")
    np.testing.assert_allclose(loss(xt, tt).item(), np_cross_entropy(x, target, w, -100, 0.1, "sum"), rtol=1e-12)
    assert list(loss.state_dict()) == ["weight"]
    logp = nn.LogSoftmax(dim=1)(xt)
    np.testing.assert_allclose(logp.numpy(), np_log_softmax(x, 1), rtol=1e-12)
    np.testing.assert_allclose(nn.NLLLoss()(logp, tt).item(), np_nll_loss(np_log_softmax(x, 1), target),
                               rtol=1e-12)
    np.testing.assert_allclose(nn.Softmax(dim=0)(xt).numpy(), np_softmax(x, 0), rtol=1e-12)
    assert nn.MSELoss(reduction="none")(xt, xt).shape == (4, 3)
    with pytest.warns(UserWarning, match="Implicit dimension choice"):
        F.softmax(xt)


# --- errors -------------------------------------------------------------------------

def test_target_out_of_range_is_a_clear_error(device):
    x = _t(np.zeros((3, 4)), device)
    with pytest.raises(ValueError, match=r"cross_entropy_forward: target 4 at position 1 is out of bounds for 4 classes"):
        F.cross_entropy(x, _t(np.array([0, 4, 1]), device))
    with pytest.raises(ValueError, match=r"nll_loss_forward: target -1 at position 2 is out of bounds"):
        F.nll_loss(x, _t(np.array([0, 1, -1]), device))


def test_argument_errors():
    x = _t(np.zeros((3, 4)), "cpu")
    t = _t(np.array([0, 1, 2]), "cpu")
    with pytest.raises(ValueError, match=r"cross_entropy: target must have shape \(3,\) for input of shape \(3, 4\), got \(2,\)"):
        F.cross_entropy(x, _t(np.array([0, 1]), "cpu"))
    with pytest.raises(TypeError, match=r"cross_entropy: target must be int64, got int32"):
        F.cross_entropy(x, nbdl.tensor(np.array([0, 1, 2], np.int32)))
    with pytest.raises(ValueError, match=r"cross_entropy: reduction must be 'none', 'mean' or 'sum', got 'avg'"):
        F.cross_entropy(x, t, reduction="avg")
    with pytest.raises(ValueError, match=r"cross_entropy_forward: label_smoothing must be <= 1.0, got 1.5"):
        F.cross_entropy(x, t, label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"cross_entropy: weight must have shape \(C,\) = \(4,\), got \(3,\)"):
        F.cross_entropy(x, t, weight=_t(np.ones(3), "cpu"))
    with pytest.raises(TypeError, match=r"cross_entropy: dtype mismatch: input is float64 but weight is float32"):
        F.cross_entropy(x, t, weight=nbdl.tensor(np.ones(4, np.float32)))
    with pytest.raises(ValueError, match=r"softmax: axis 2 is out of range"):
        F.softmax(x, 2)
    K = kernels("softmax", "cpu")
    with pytest.raises(ValueError, match=r"softmax_backward: y must have shape \(3, 4\), got \(4, 3\)"):
        K.softmax_backward(np.zeros((3, 4)), np.zeros((4, 3)), 1)
    with pytest.raises(ValueError, match=r"cross_entropy_backward: wsum must have shape \(2,?\), got \(1,\)"):
        K.cross_entropy_backward(np.zeros(()), np.zeros((3, 4)), np.zeros(3, np.int64), None,
                                 np.zeros(3), np.zeros(1))


# --- PyTorch parity (optional) --------------------------------------------------------

def test_matches_torch_weight_smoothing_ignore(rng):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    x, target, w = _ce_data(rng, (6, 5, 3))
    for reduction in ("mean", "sum", "none"):
        xt = _t(x, "cpu", requires_grad=True)
        tx = torch.tensor(x, requires_grad=True)
        ours = F.cross_entropy(xt, _t(target, "cpu"), weight=_t(w, "cpu"), label_smoothing=0.15,
                               reduction=reduction)
        theirs = tf.cross_entropy(tx, torch.tensor(target), weight=torch.tensor(w), label_smoothing=0.15,
                                  reduction=reduction)
        g = rng.standard_normal(theirs.shape)
        ours.backward(_t(g, "cpu").reshape(tuple(theirs.shape)))
        theirs.backward(torch.tensor(g))
        np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(xt.grad.numpy(), tx.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_numpy_targets_follow_the_input_device(device, rng):
    x, target, _ = _ce_data(rng, (3, 4), ignore=False)
    out = F.cross_entropy(_t(x, device), target)             # an int64 numpy target
    assert out.device.startswith(device)
    np.testing.assert_allclose(out.item(), np_cross_entropy(x, target), rtol=1e-12)
    np.testing.assert_allclose(F.nll_loss(_t(x, device), list(target)).item(), np_nll_loss(x, target), rtol=1e-12)
