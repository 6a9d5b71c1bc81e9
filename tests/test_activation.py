"""relu, sigmoid, tanh, leaky_relu: kernels against numpy, gradients, errors, layers."""
import numpy as np
import pytest

import nbdl
import nbdl.functional as F
from nbdl import nn
from nbdl.device import kernels
from gradcheck import gradcheck


# --- numpy references ---------------------------------------------------------------

def np_relu(x):
    return np.where(x < 0, 0, x).astype(x.dtype)


def np_sigmoid(x):
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(x.dtype)


def np_tanh(x):
    return np.tanh(x)


def np_leaky_relu(x, s):
    return np.where(x > 0, x, s * x).astype(x.dtype)


REFS = {
    "relu": (np_relu, lambda g, x, y: g * (y > 0)),
    "sigmoid": (np_sigmoid, lambda g, x, y: g * y * (1 - y)),
    "tanh": (np_tanh, lambda g, x, y: g * (1 - y * y)),
}
SLOPE = 0.2


def _to(a, device):
    return nbdl.tensor(a, device=device).array


def _host(a):
    return a if isinstance(a, np.ndarray) else a.copy_to_host()


def _inputs(rng, shape, dtype):
    x = rng.standard_normal(shape) * 4
    x.reshape(-1)[:3] = [0.0, 30.0, -30.0]           # zero and saturated values
    return x.astype(dtype)


# --- kernels ----------------------------------------------------------------------

def test_forward_float32_matches_numpy(device, rng):
    x = _inputs(rng, (5, 7), np.float32)
    K = kernels("activation", device)
    for name, (ref, _) in REFS.items():
        y = _host(getattr(K, f"{name}_forward")(_to(x, device)))
        assert y.dtype == np.float32 and y.shape == x.shape
        np.testing.assert_allclose(y, ref(x), rtol=2e-6, atol=1e-7, err_msg=name)
    y = _host(K.leaky_relu_forward(_to(x, device), SLOPE))
    np.testing.assert_allclose(y, np_leaky_relu(x, SLOPE), rtol=1e-6)


def test_backward_float64_matches_numpy(device, rng):
    x = _inputs(rng, (4, 3), np.float64)
    g = rng.standard_normal(x.shape)
    K = kernels("activation", device)
    for name, (ref, dref) in REFS.items():
        y = ref(x)
        gx = _host(getattr(K, f"{name}_backward")(_to(g, device), _to(y, device)))
        np.testing.assert_allclose(gx, dref(g, x, y), rtol=1e-9, atol=1e-15, err_msg=name)
    gx = _host(K.leaky_relu_backward(_to(g, device), _to(x, device), SLOPE))
    np.testing.assert_allclose(gx, np.where(x > 0, g, SLOPE * g), rtol=1e-15)


def test_nan_propagates_and_empty_arrays_work():
    K = kernels("activation", "cpu")
    x = np.array([np.nan, -1.0, 2.0], np.float32)
    assert np.isnan(K.relu_forward(x)[0]) and np.isnan(K.sigmoid_forward(x)[0]) and np.isnan(K.tanh_forward(x)[0])
    assert K.relu_forward(np.zeros((0, 3), np.float32)).shape == (0, 3)


# --- autograd ---------------------------------------------------------------------

@pytest.mark.parametrize("op", ["relu", "sigmoid", "tanh", "leaky_relu"])
def test_gradcheck(device, rng, op):
    x = rng.standard_normal((3, 4))
    x[np.abs(x) < 0.05] = 0.3                        # keep away from the kinks
    t = nbdl.tensor(x, dtype=nbdl.float64, device=device, requires_grad=True)
    fn = (lambda a: F.leaky_relu(a, SLOPE)) if op == "leaky_relu" else getattr(F, op)
    gradcheck(fn, [t], n_directions=3 if device != "cpu" else None)


def test_relu_gradient_at_zero_is_zero_like_pytorch():
    x = nbdl.tensor([0.0, -0.0, 1.0], requires_grad=True)
    F.relu(x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0, 1.0])
    y = nbdl.tensor([0.0, 2.0], requires_grad=True)
    F.leaky_relu(y, 0.1).sum().backward()
    np.testing.assert_allclose(y.grad.numpy(), [0.1, 1.0])


def test_modules_match_functional(rng):
    x = nbdl.tensor(rng.standard_normal((2, 5)))
    for module, fn in ((nn.ReLU(), F.relu), (nn.Sigmoid(), F.sigmoid), (nn.Tanh(), F.tanh),
                       (nn.LeakyReLU(0.3), lambda a: F.leaky_relu(a, 0.3))):
        np.testing.assert_array_equal(module(x).numpy(), fn(x).numpy())
    assert repr(nn.LeakyReLU(0.3)) == "LeakyReLU(negative_slope=0.3)"


# --- errors -----------------------------------------------------------------------

def test_errors_name_the_op_and_values():
    K = kernels("activation", "cpu")
    with pytest.raises(TypeError, match=r"relu_forward: x must be float32 or float64, got int64"):
        K.relu_forward(np.arange(3))
    with pytest.raises(ValueError, match=r"sigmoid_backward: shape mismatch: gy has shape \(3,\) but y has shape \(4,\)"):
        K.sigmoid_backward(np.zeros(3), np.zeros(4))
    with pytest.raises(TypeError, match=r"tanh_backward: dtype mismatch: gy is float32 but y is float64"):
        K.tanh_backward(np.zeros(3, np.float32), np.zeros(3))
    with pytest.raises(ValueError, match=r"leaky_relu_forward: negative_slope must be finite, got nan"):
        K.leaky_relu_forward(np.zeros(3), float("nan"))
    with pytest.raises(ValueError, match="must be C-contiguous"):
        K.relu_forward(np.zeros((4, 4))[:, ::2])
    with pytest.raises(TypeError, match=r"relu: input must be float32 or float64, got int64"):
        F.relu(nbdl.tensor([1, 2]))


# --- PyTorch parity (optional) --------------------------------------------------------

def test_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((4, 6))
    g = rng.standard_normal((4, 6))
    pairs = ((F.relu, torch.relu), (F.sigmoid, torch.sigmoid), (F.tanh, torch.tanh),
             (lambda a: F.leaky_relu(a, 0.05), lambda a: torch.nn.functional.leaky_relu(a, 0.05)))
    for ours, theirs in pairs:
        a = nbdl.tensor(x, requires_grad=True)
        ta = torch.tensor(x, requires_grad=True)
        y, ty = ours(a), theirs(ta)
        (y * nbdl.tensor(g)).sum().backward()
        (ty * torch.tensor(g)).sum().backward()
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-14)
        np.testing.assert_allclose(a.grad.numpy(), ta.grad.numpy(), rtol=1e-14)
