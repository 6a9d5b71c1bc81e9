"""Tensor, autograd and the elementwise/linalg kernels behind its operators."""
import numpy as np
import pytest

import nbdl
from gradcheck import gradcheck


def T(a, device, grad=False, dtype=np.float64):
    return nbdl.tensor(np.asarray(a, dtype=dtype), device=device, requires_grad=grad)


# --- forward against numpy -----------------------------------------------------------

@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)), ((), (2, 3))])
def test_binary_ops_broadcast_like_numpy(device, rng, shapes):
    a, b = rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1]) + 3.0
    ta, tb = T(a, device), T(b, device)
    np.testing.assert_allclose((ta + tb).numpy(), a + b)
    np.testing.assert_allclose((ta - tb).numpy(), a - b)
    np.testing.assert_allclose((ta * tb).numpy(), a * b)
    np.testing.assert_allclose((ta / tb).numpy(), a / b)
    np.testing.assert_allclose((2.0 - ta).numpy(), 2.0 - a)
    np.testing.assert_allclose((-ta).numpy(), -a)


def test_unary_and_reductions_like_numpy(device, rng):
    a = rng.random((2, 3, 4)) + 0.5
    t = T(a, device)
    np.testing.assert_allclose(t.exp().numpy(), np.exp(a))
    np.testing.assert_allclose(t.log().numpy(), np.log(a))
    np.testing.assert_allclose(t.sqrt().numpy(), np.sqrt(a))
    np.testing.assert_allclose((t ** 3).numpy(), a ** 3)
    np.testing.assert_allclose(t.sum().numpy(), a.sum())
    np.testing.assert_allclose(t.sum(axis=1).numpy(), a.sum(axis=1))
    np.testing.assert_allclose(t.sum(axis=(0, 2), keepdims=True).numpy(), a.sum(axis=(0, 2), keepdims=True))
    np.testing.assert_allclose(t.mean(axis=-1).numpy(), a.mean(axis=-1))
    np.testing.assert_allclose(t.transpose(0, 2).numpy(), a.transpose(2, 1, 0))
    np.testing.assert_allclose(t.permute(1, 2, 0).numpy(), a.transpose(1, 2, 0))
    np.testing.assert_allclose(t.reshape(6, -1).numpy(), a.reshape(6, 4))
    np.testing.assert_allclose(t.flatten(1).numpy(), a.reshape(2, 12))
    np.testing.assert_array_equal(t.argmax(axis=2).numpy(), a.argmax(axis=2))


def test_matmul_like_numpy(device, rng):
    a, b = rng.standard_normal((5, 7)), rng.standard_normal((7, 3))
    np.testing.assert_allclose((T(a, device) @ T(b, device)).numpy(), a @ b, rtol=1e-12)
    a3 = rng.standard_normal((2, 5, 7))
    np.testing.assert_allclose((T(a3, device) @ T(b, device)).numpy(), a3 @ b, rtol=1e-12)
    v = rng.standard_normal(7)         # matrix @ vector and vector @ vector, like torch.matmul
    assert (T(a, device) @ T(v, device)).shape == (5,) and (T(v, device) @ T(v, device)).shape == ()
    np.testing.assert_allclose((T(a3, device) @ T(v, device)).numpy(), a3 @ v, rtol=1e-12)
    np.testing.assert_allclose((T(v, device) @ T(v, device)).numpy(), v @ v, rtol=1e-12)


def test_indexing_batch_axis(device, rng):
    a = rng.standard_normal((6, 3))
    t = T(a, device)
    np.testing.assert_allclose(t[2].numpy(), a[2])
    np.testing.assert_allclose(t[-1].numpy(), a[-1])
    np.testing.assert_allclose(t[1:4].numpy(), a[1:4])
    np.testing.assert_allclose(t[::2].numpy(), a[::2])
    np.testing.assert_allclose(t[[5, 0, 5]].numpy(), a[[5, 0, 5]])
    np.testing.assert_allclose(t[np.array([True, False] * 3)].numpy(), a[::2])
    with pytest.raises(IndexError, match="out of range"):
        t[6]
    with pytest.raises(IndexError, match="out of range"):
        t[[0, 9]]


# --- gradients ------------------------------------------------------------------------

def test_gradcheck_arithmetic_with_broadcasting(device, rng):
    a = T(rng.standard_normal((3, 4)), device, grad=True)
    b = T(rng.standard_normal((4,)) + 3.0, device, grad=True)
    c = T(rng.random((3, 1)) + 0.5, device, grad=True)
    n = 3 if device == "cuda" else None
    gradcheck(lambda a, b, c: (a * b - c) / b + c.exp() * a ** 2 + (-a).abs(), [a, b, c], n_directions=n)


def test_gradcheck_reductions_and_shapes(device, rng):
    a = T(rng.random((2, 3, 4)) + 0.5, device, grad=True)
    n = 3 if device == "cuda" else None
    gradcheck(lambda a: a.log().sum(axis=1) + a.sqrt().mean(axis=(0, 1), keepdims=True).reshape(1, 4), [a],
              n_directions=n)
    gradcheck(lambda a: a.permute(2, 0, 1).flatten(1) * 2.0 - a.transpose(0, 2).reshape(4, 6), [a],
              n_directions=n)


def test_gradcheck_matmul_and_indexing(device, rng):
    a = T(rng.standard_normal((4, 3)), device, grad=True)
    w = T(rng.standard_normal((3, 2)), device, grad=True)
    v = T(rng.standard_normal(3), device, grad=True)
    n = 3 if device == "cuda" else None
    gradcheck(lambda a, w: a @ w, [a, w], n_directions=n)
    gradcheck(lambda a, v: a @ v, [a, v], n_directions=n)
    gradcheck(lambda a: a[[3, 1, 3]] * a[1:3].sum() + a[::2].mean(), [a], n_directions=n)


def test_gradients_accumulate_like_pytorch(device):
    x = T([1.0, 2.0, 3.0], device, grad=True)
    (x * x).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * np.array([1.0, 2, 3]) + 3.0)


def test_gradients_accumulate_in_place_into_a_private_grad(device):
    x = T([1.0, 2.0, 3.0], device, grad=True)
    gy = T([1.0, 10.0, 100.0], device)
    (x + 0.0).backward(gy)                              # add's backward hands gy through as it is
    first = x.grad
    (x * 2.0).backward(gy)
    assert x.grad is first                              # later ones add into it, like PyTorch
    np.testing.assert_array_equal(first.numpy(), [3.0, 30.0, 300.0])
    np.testing.assert_array_equal(gy.numpy(), [1.0, 10.0, 100.0])   # so the first was a copy


def test_a_grad_that_cannot_take_the_sum_in_place_is_replaced(device):
    a, b = T([1.0, 2.0], device, grad=True), T([5.0, 6.0], device, grad=True)
    (a + b).sum().backward()
    (a + b).backward(a.grad)       # the incoming gradient is a.grad itself: a's sum is a new array
    np.testing.assert_array_equal(a.grad.numpy(), [2.0, 2.0])
    np.testing.assert_array_equal(b.grad.numpy(), [2.0, 2.0])
    if device != "cpu":
        return
    frozen = np.array([5.0, 6.0])
    frozen.flags.writeable = False
    a.grad = nbdl.from_numpy(frozen)                    # shares the read-only array
    assert a.grad.array is frozen
    (a * 1.0).sum().backward()
    assert a.grad.array is not frozen
    np.testing.assert_array_equal(a.grad.numpy(), [6.0, 7.0])
    np.testing.assert_array_equal(frozen, [5.0, 6.0])
    a.grad = nbdl.tensor(np.array([1.0, 1.0], dtype=np.float32))   # another dtype: numpy's promotion
    (a * 1.0).sum().backward()
    assert a.grad.dtype == np.float64
    np.testing.assert_array_equal(a.grad.numpy(), [2.0, 2.0])


def test_shared_subexpression_and_multiple_paths(device):
    x = T([0.5, -1.0], device, grad=True)
    y = x * 2.0
    z = (y * y + y).sum()        # y used twice
    z.backward()
    np.testing.assert_allclose(x.grad.numpy(), (2 * 2 * np.array([0.5, -1.0]) * 2) + 2)


def test_no_grad_and_detach(device):
    x = T([1.0, 2.0], device, grad=True)
    with nbdl.no_grad():
        y = x * 2.0
    assert not y.requires_grad
    d = (x * 2.0).detach()
    assert not d.requires_grad and d.is_leaf
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_backward_needs_scalar_or_gradient(device):
    x = T([1.0, 2.0], device, grad=True)
    y = x * 3.0
    with pytest.raises(RuntimeError, match="scalar"):
        y.backward()
    y.backward(nbdl.tensor(np.array([1.0, 10.0]), device=device))
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 30.0])


# --- dtypes, devices, factories -----------------------------------------------------

def test_mixing_float32_and_float64_is_a_type_error(device):
    a = T([1.0], device, dtype=np.float32)
    b = T([1.0], device, dtype=np.float64)
    with pytest.raises(TypeError, match="float32.*float64"):
        a + b
    with pytest.raises(TypeError, match="float32.*float64"):
        a.reshape(1, 1) @ b.reshape(1, 1)
    assert (a * 2.0).dtype == np.float32      # Python numbers take the tensor's dtype
    np.testing.assert_array_equal((nbdl.arange(3, device=device) * 2).numpy(), [0, 2, 4])
    with pytest.raises(TypeError, match=r"mul: the float 0.5 does not fit a tensor of dtype int64"):
        nbdl.arange(3, device=device) * 0.5   # would truncate 0.5 to 0
    with pytest.raises(TypeError, match=r"add: the int 1 does not fit a tensor of dtype bool"):
        nbdl.tensor([True, False], device=device) + 1


def test_mixing_devices_is_an_error_naming_both():
    if not nbdl.cuda_available():
        pytest.skip("no CUDA (not even the simulator)")
    a = nbdl.tensor([1.0], device="cpu")
    b = nbdl.tensor([1.0], device="cuda")
    with pytest.raises(ValueError, match="cpu.*cuda:0"):
        a + b


def test_broadcast_shape_error(device):
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(4,\)"):
        nbdl.zeros(2, 3, device=device) + nbdl.zeros(4, device=device)


def test_to_device_and_dtype_round_trip(device):
    x = nbdl.tensor([[1.5, -2.0]], requires_grad=True)
    y = x.to(device).to(nbdl.float64)
    assert y.device.startswith(device) and y.dtype == np.float64
    (y * 2.0).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[2.0, 2.0]])
    assert x.grad.dtype == np.float32 and x.grad.device == "cpu"


def test_factories_and_defaults(device):
    assert nbdl.tensor([1.0, 2.0]).dtype == np.float32
    assert nbdl.tensor([1, 2]).dtype == np.int64
    assert nbdl.tensor(np.zeros(2)).dtype == np.float64
    z = nbdl.zeros(2, 3, device=device)
    assert z.shape == (2, 3) and not z.numpy().any()
    np.testing.assert_array_equal(nbdl.ones((2,), dtype="float64", device=device).numpy(), [1.0, 1.0])
    nbdl.manual_seed(3)
    a = nbdl.randn(4, device=device).numpy()
    nbdl.manual_seed(3)
    b = nbdl.randn(4, device="cpu").numpy()
    np.testing.assert_array_equal(a, b)            # same seed, same bits on every device
    with pytest.raises(ValueError, match="non-negative"):
        nbdl.zeros(-1)
    with pytest.raises(TypeError, match="unsupported dtype"):
        nbdl.zeros(2, dtype=np.complex64)


def test_in_place_helpers(device):
    t = nbdl.zeros(2, 2, device=device)
    t.fill_(3.0)
    np.testing.assert_array_equal(t.numpy(), np.full((2, 2), 3.0))
    t.copy_(np.eye(2))
    np.testing.assert_array_equal(t.numpy(), np.eye(2))
    with pytest.raises(ValueError, match="shape mismatch"):
        t.copy_(np.zeros(3))
    t.copy_(nbdl.full((2, 2), 5.0, device=device))          # same device and dtype
    t.copy_(nbdl.full((2, 2), 6.0, dtype=nbdl.float64))     # cast and moved
    np.testing.assert_array_equal(t.numpy(), np.full((2, 2), 6.0))
    assert t.dtype == np.float32


def test_item_repr_len(device):
    t = nbdl.tensor([[2.5]], device=device)
    assert t.item() == 2.5 and float(t) == 2.5 and len(t) == 1
    assert "tensor(" in repr(t)
    with pytest.raises(ValueError, match="1 elements|expected 1"):
        nbdl.zeros(2).item()


# --- autograd corner cases ----------------------------------------------------------

def test_leaf_gradients_never_share_storage(device):
    """a + b hands one gradient array to both inputs; .grad is modified in place
    (zero_, clipping, optimizers), so each leaf must own its gradient (like PyTorch)."""
    a, b = T([1.0, 2.0], device, grad=True), T([3.0, 4.0], device, grad=True)
    c = T([[5.0, 6.0]], device, grad=True)
    (a + b + c.reshape(2)).sum().backward()
    a.grad.zero_()
    np.testing.assert_array_equal(b.grad.numpy(), [1.0, 1.0])
    np.testing.assert_array_equal(c.grad.numpy(), [[1.0, 1.0]])
    x = T([1.0, 2.0], device, grad=True)
    g = T([5.0, 6.0], device)
    x.backward(g)                      # a leaf's gradient is a copy of the one passed in
    g.fill_(0.0)
    np.testing.assert_array_equal(x.grad.numpy(), [5.0, 6.0])
    y = T([1.0, 2.0], device, grad=True)
    y.clone().backward(g.fill_(7.0))   # also through an op that passes it on unchanged
    g.fill_(0.0)
    np.testing.assert_array_equal(y.grad.numpy(), [7.0, 7.0])


def test_zero_d_tensors_and_a_tensor_used_twice(device):
    x = T(3.0, device, grad=True)
    y = x * x + x                      # 0-d, used three times
    assert y.shape == () and y.sum().shape == () and y.mean().shape == ()
    y.backward()
    assert x.grad.shape == () and x.grad.item() == 7.0


def test_pow_with_exponent_zero_has_zero_gradient():
    x = nbdl.tensor([0.0, 2.0], requires_grad=True)
    (x ** 0).sum().backward()          # d/dx x^0 = 0 everywhere, also at x = 0 (PyTorch)
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0])


def test_bool_negation_is_a_type_error_and_to_parses_like_torch():
    with pytest.raises(TypeError, match="neg: negation of a bool tensor"):
        -nbdl.tensor([True])
    x = nbdl.tensor([1.0])
    assert x.to("float64").dtype == np.float64 and x.to("CPU") is x
    assert nbdl.nn.Linear(1, 1).to("CPU", "float64").weight.dtype == np.float64


def test_factory_defaults_follow_pytorch():
    assert nbdl.arange(0.0, 3.0).dtype == np.float32      # float ranges take the default dtype
    assert nbdl.arange(3).dtype == np.int64
    assert nbdl.full((2,), 1.5).shape == (2,) and nbdl.full(3, 1.5).shape == (3,)
    assert nbdl.tensor([[1.0]])[[]].shape == (0, 1)       # an empty index list selects no rows


def test_the_tape_rejects_a_gradient_of_the_wrong_shape_or_dtype():
    from nbdl.tensor import make_tensor
    x = nbdl.tensor([1.0, 2.0], requires_grad=True)
    wrong_dtype = make_tensor(x.array * 2, (x,), lambda gy: (gy.astype(np.float64),))
    with pytest.raises(RuntimeError, match="dtype float64 for an input of shape \\(2,\\) and dtype float32"):
        wrong_dtype.sum().backward()
    wrong_shape = make_tensor(x.array * 2, (x,), lambda gy: (gy[:1],))
    with pytest.raises(RuntimeError, match="gradient of shape \\(1,\\)"):
        wrong_shape.sum().backward()


def test_multi_output_node_gets_none_for_unused_outputs_and_runs_once(device):
    """make_multi: one node, several outputs; backward sees None where an output got no gradient."""
    from nbdl.tensor import make_multi
    x = T([1.0, 2.0], device, grad=True)
    calls = []

    def split(t):
        E = nbdl.device.kernels("elementwise", t.device)

        def backward(grads):
            calls.append(tuple(g is None for g in grads))
            g0 = E.scale(grads[0], 2.0) if grads[0] is not None else E.zeros(t.shape, t.dtype)
            g1 = E.scale(grads[1], 3.0) if grads[1] is not None else E.zeros(t.shape, t.dtype)
            return (E.add(g0, g1),)
        return make_multi([E.scale(t.array, 2.0), E.scale(t.array, 3.0)], (t,), backward)

    a, b = split(x)
    (a.sum() + b.sum() * 10.0).backward()          # both outputs, one backward call
    np.testing.assert_array_equal(x.grad.numpy(), [32.0, 32.0])
    x.grad = None
    a, b = split(x)
    b.sum().backward()                             # only the second output
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 3.0])
    assert calls == [(False, False), (True, False)]
