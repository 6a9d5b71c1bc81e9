"""linear / nn.Linear / Identity / Flatten: numpy references, gradients, init, errors."""
import math

import numpy as np
import pytest

import nbdl
import nbdl.functional as F
from nbdl import nn
from gradcheck import gradcheck


def np_linear(x, w, b=None):
    y = x @ w.T
    return y if b is None else y + b


def test_forward_float32_matches_numpy(device, rng):
    x = rng.standard_normal((2, 3, 5)).astype(np.float32)
    w = rng.standard_normal((4, 5)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    t = lambda a: nbdl.tensor(a, device=device)  # noqa: E731
    y = F.linear(t(x), t(w), t(b))
    assert y.shape == (2, 3, 4) and y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), np_linear(x, w, b), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(F.linear(t(x[0, 0]), t(w)).numpy(), np_linear(x[0, 0], w), rtol=1e-5, atol=1e-5)


def test_gradcheck(device, rng):
    x, w, b = rng.standard_normal((3, 4)), rng.standard_normal((2, 4)), rng.standard_normal(2)
    ts = [nbdl.tensor(a, device=device, requires_grad=True) for a in (x, w, b)]
    gradcheck(F.linear, ts, n_directions=3 if device != "cpu" else None)


def test_gradcheck_batched_input_no_bias(rng):
    x = nbdl.tensor(rng.standard_normal((2, 2, 3)), requires_grad=True)
    w = nbdl.tensor(rng.standard_normal((2, 3)), requires_grad=True)
    gradcheck(F.linear, [x, w])


def test_linear_module_init_and_state_dict(rng):
    nbdl.manual_seed(0)
    layer = nn.Linear(16, 3)
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]
    assert layer.weight.shape == (3, 16) and layer.weight.dtype == np.float32
    bound = 1 / math.sqrt(16)           # kaiming_uniform(a=sqrt(5)) and the bias rule of PyTorch
    for p in (layer.weight.numpy(), layer.bias.numpy()):
        assert np.abs(p).max() <= bound and np.abs(p).max() > 0.5 * bound
    state = {"weight": rng.standard_normal((3, 16)), "bias": rng.standard_normal(3)}
    layer.load_state_dict(state)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    np.testing.assert_allclose(layer(nbdl.tensor(x)).numpy(), np_linear(x, state["weight"], state["bias"]),
                               rtol=1e-5, atol=1e-5)
    assert repr(layer) == "Linear(in_features=16, out_features=3, bias=True)"
    no_bias = nn.Linear(4, 2, bias=False, dtype=nbdl.float64)
    assert no_bias.bias is None and list(no_bias.state_dict()) == ["weight"]
    assert no_bias.weight.dtype == np.float64


def test_linear_module_on_device(device):
    layer = nn.Linear(3, 2, device=device, dtype=nbdl.float64)
    x = nbdl.tensor(np.ones((4, 3)), device=device, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad.device == x.device
    np.testing.assert_allclose(layer.bias.grad.numpy(), [4.0, 4.0])
    np.testing.assert_allclose(layer.weight.grad.numpy(), np.full((2, 3), 4.0))


def test_identity_and_flatten():
    x = nbdl.tensor(np.arange(24.0).reshape(2, 3, 4))
    assert nn.Identity(54, unused=1)(x) is x
    assert nn.Flatten()(x).shape == (2, 12)
    assert nn.Flatten(0, 1)(x).shape == (6, 4)


def test_small_mlp_learns(rng):
    """Flatten -> Linear -> ReLU -> Dropout -> Linear -> cross_entropy, plain gradient steps."""
    nbdl.manual_seed(1)
    x = rng.standard_normal((32, 2, 2)).astype(np.float32)
    y = (x.reshape(32, 4).sum(1) > 0).astype(np.int64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))
    xt, yt = nbdl.tensor(x), nbdl.tensor(y)
    losses = []
    for _ in range(60):
        loss = F.cross_entropy(model(xt), yt)
        for p in model.parameters():
            p.grad = None
        loss.backward()
        with nbdl.no_grad():
            for p in model.parameters():
                p.copy_(p.numpy() - 0.5 * p.grad.numpy())
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_errors_name_the_op_and_values():
    x = nbdl.ones((2, 3))
    with pytest.raises(ValueError, match=r"linear: input has 3 features but weight expects 4 "
                                         r"\(input.shape=\(2, 3\), weight.shape=\(5, 4\)\)"):
        F.linear(x, nbdl.ones((5, 4)))
    with pytest.raises(ValueError, match=r"linear: bias must have shape \(5,\), got \(4,\)"):
        F.linear(x, nbdl.ones((5, 3)), nbdl.ones(4))
    with pytest.raises(TypeError, match=r"linear: dtype mismatch: input is float32 but weight is float64"):
        F.linear(x, nbdl.ones((5, 3), dtype=nbdl.float64))
    with pytest.raises(ValueError, match=r"linear: weight must have 2 dimensions, got shape \(3,\)"):
        F.linear(x, nbdl.ones(3))
    with pytest.raises(ValueError, match=r"Linear: in_features must be a non-negative int, got -1"):
        nn.Linear(-1, 2)


def test_device_mismatch_is_an_error():
    if not nbdl.cuda_available():
        pytest.skip("no cuda (not even the simulator)")
    with pytest.raises(ValueError, match=r"linear: tensors on different devices: input on cpu, weight on cuda:0"):
        F.linear(nbdl.ones((2, 3)), nbdl.ones((4, 3), device="cuda"))


def test_matches_torch(rng):
    torch = pytest.importorskip("torch")
    ours = nn.Linear(5, 3, dtype=nbdl.float64)
    theirs = torch.nn.Linear(5, 3, dtype=torch.float64)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    x = rng.standard_normal((4, 5))
    xt, tx = nbdl.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    (ours(xt) ** 2).sum().backward()
    (theirs(tx) ** 2).sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.weight.grad.numpy(), theirs.weight.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.bias.grad.numpy(), theirs.bias.grad.numpy(), rtol=1e-12)
