"""Dropout: counter-based masks (same bits on cpu and cuda), scaling, gradients, errors."""
import numpy as np
import pytest

import nbdl
import nbdl.functional as F
from nbdl import nn
from nbdl.device import kernels
from gradcheck import gradcheck


def np_keep_mask(shape, p, seed):
    """splitmix64(seed + (i + 1) * golden) >> 40 >= round(p * 2^24), in numpy uint64 (wrapping)."""
    i = np.arange(int(np.prod(shape)), dtype=np.uint64)
    z = np.uint64(seed) + (i + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(40)) >= np.uint64(round(p * 2**24))).reshape(shape)


def _host(a):
    return a if isinstance(a, np.ndarray) else a.copy_to_host()


def _dev(a, device):
    return nbdl.tensor(a, device=device).array


SEED = 0x1234_5678_9ABC_DEF0


def test_mask_and_output_match_numpy(device, rng):
    x = rng.standard_normal((4, 33)).astype(np.float32)
    K = kernels("dropout", device)
    y, mask = K.dropout_forward(_dev(x, device), 0.3, SEED)
    y, mask = _host(y), _host(mask)
    keep = np_keep_mask(x.shape, 0.3, SEED)
    assert mask.dtype == np.uint8 and y.dtype == np.float32
    np.testing.assert_array_equal(mask, keep)
    np.testing.assert_array_equal(y, x * np.where(keep, np.float32(1 / 0.7), np.float32(0)))
    g = rng.standard_normal(x.shape).astype(np.float32)
    gx = _host(K.dropout_backward(_dev(g, device), _dev(mask, device), 0.3))
    np.testing.assert_array_equal(gx, g * np.where(keep, np.float32(1 / 0.7), np.float32(0)))


def test_same_seed_same_bits_on_both_devices(rng):
    pytest.importorskip("numba.cuda")
    x = rng.standard_normal((3, 10))
    masks = {}
    for device in ("cpu", "cuda"):
        if device == "cuda" and not nbdl.cuda_available():
            continue
        K = kernels("dropout", device)
        a = _host(K.dropout_forward(_dev(x, device), 0.5, 99)[1])
        b = _host(K.dropout_forward(_dev(x, device), 0.5, 99)[1])
        np.testing.assert_array_equal(a, b)
        masks[device] = a
    if "cuda" in masks:
        np.testing.assert_array_equal(masks["cpu"], masks["cuda"])
    other = kernels("dropout", "cpu").dropout_forward(x, 0.5, 100)[1]
    assert not np.array_equal(masks["cpu"], other)


def test_functional_is_seeded_by_manual_seed(device):
    x = nbdl.ones((5, 8), device=device)
    nbdl.manual_seed(7)
    a = F.dropout(x, 0.5).numpy()
    nbdl.manual_seed(7)
    b = F.dropout(x, 0.5).numpy()
    c = F.dropout(x, 0.5).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)
    assert set(np.unique(a)) <= {0.0, 2.0}


def test_drop_rate_and_mean_are_preserved():
    K = kernels("dropout", "cpu")
    x = np.ones(200_000, np.float32)
    for p in (0.1, 0.5, 0.9):
        y, mask = K.dropout_forward(x, p, 5)
        assert abs((1 - mask.mean()) - p) < 4e-3
        assert abs(y.mean() - 1.0) < 0.03


def test_edge_probabilities_and_eval_mode():
    x = nbdl.tensor(np.arange(1.0, 7.0).reshape(2, 3), requires_grad=True)
    assert F.dropout(x, 0.0) is x
    assert F.dropout(x, 0.7, training=False) is x
    y = F.dropout(x, 1.0)
    np.testing.assert_array_equal(y.numpy(), np.zeros((2, 3)))
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros((2, 3)))
    layer = nn.Dropout(0.5)
    layer.eval()
    assert layer(x) is x
    layer.train()
    assert (layer(x).numpy() == 0).any()
    assert repr(layer) == "Dropout(p=0.5, inplace=False)"


def test_gradcheck(device, rng):
    x = nbdl.tensor(rng.standard_normal((3, 4)), device=device, requires_grad=True)

    def fn(a):
        nbdl.manual_seed(3)             # the same mask on every call of the finite differences
        return F.dropout(a, 0.4)
    gradcheck(fn, [x], n_directions=3 if device != "cpu" else None)


def test_errors_name_the_op_and_values():
    x = nbdl.ones((2, 2))
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"dropout: p must be .* got {p}"):
            F.dropout(x, p)
    with pytest.raises(ValueError, match=r"dropout: p must be finite, got nan"):
        F.dropout(x, float("nan"))
    with pytest.raises(ValueError, match=r"Dropout: p must be <= 1.0, got 2.0"):
        nn.Dropout(2.0)
    with pytest.raises(TypeError, match=r"dropout: input must be float32 or float64, got int64"):
        F.dropout(nbdl.tensor([1, 2]), 0.5)
    K = kernels("dropout", "cpu")
    with pytest.raises(TypeError, match=r"dropout_backward: mask must be uint8, got bool"):
        K.dropout_backward(np.zeros(3), np.zeros(3, bool), 0.5)
    with pytest.raises(ValueError, match=r"dropout_backward: shape mismatch: gy has shape \(3,\) but mask has shape \(4,\)"):
        K.dropout_backward(np.zeros(3), np.zeros(4, np.uint8), 0.5)
    with pytest.raises(TypeError, match=r"dropout_forward: seed must be an int"):
        K.dropout_forward(np.zeros(3), 0.5, 1.5)
