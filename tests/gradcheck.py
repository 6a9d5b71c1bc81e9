"""Finite-difference gradient checks for float64 ops, on any device.

gradcheck(fn, inputs) compares the autograd gradient of L = sum(fn(*inputs) * R),
with R a fixed random weighting of the output, against central differences
    dL/dx_i ~= (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)
element by element, or along ``n_directions`` random unit directions v:
    <grad L, v> ~= (L(x + eps v) - L(x - eps v)) / (2 eps)
(two forward passes per direction: the cheap mode for the CUDA simulator).
"""
import numpy as np

import nbdl


def _as_list(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _loss(fn, inputs, weights):
    outs = _as_list(fn(*inputs))
    total = 0.0
    for o, w in zip(outs, weights):
        if o is None or w is None:
            continue
        total += float(np.sum(o.numpy().astype(np.float64) * w))
    return total


def gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, n_directions=None, seed=0):
    """Assert autograd matches central differences for every input that requires grad.

    fn: callable(*tensors) -> Tensor or tuple of Tensors (float64).
    inputs: list of Tensors; those with requires_grad=True are checked.
    """
    rng = np.random.default_rng(seed)
    outs = _as_list(fn(*inputs))
    weights = [None if o is None else rng.standard_normal(o.shape) for o in outs]
    for t in inputs:
        if isinstance(t, nbdl.Tensor):
            assert t.dtype == np.float64 or not t.requires_grad, "gradcheck needs float64 inputs"
            t.grad = None
    total = None
    for o, w in zip(outs, weights):
        if o is None or not o.requires_grad:
            continue
        term = (o * nbdl.tensor(w, dtype=o.dtype, device=o.device)).sum()
        total = term if total is None else total + term
    assert total is not None, "no output requires grad"
    total.backward()

    for k, t in enumerate(inputs):
        if not (isinstance(t, nbdl.Tensor) and t.requires_grad):
            continue
        analytic = np.zeros(t.shape) if t.grad is None else t.grad.numpy()
        base = t.numpy().copy()

        def loss_at(x):
            moved = nbdl.tensor(x, dtype=t.dtype, device=t.device)
            args = [moved if j == k else a for j, a in enumerate(inputs)]
            with nbdl.no_grad():
                return _loss(fn, args, weights)

        if n_directions is None:
            numeric = np.zeros(t.shape)
            flat = numeric.reshape(-1)
            for i in range(base.size):
                e = np.zeros(base.size)
                e[i] = eps
                e = e.reshape(base.shape)
                flat[i] = (loss_at(base + e) - loss_at(base - e)) / (2 * eps)
            np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol,
                                       err_msg=f"gradient of input {k} (shape {t.shape})")
        else:
            for d in range(n_directions):
                v = rng.standard_normal(base.shape)
                v /= np.linalg.norm(v) or 1.0
                numeric = (loss_at(base + eps * v) - loss_at(base - eps * v)) / (2 * eps)
                got = float(np.sum(analytic * v))
                assert abs(got - numeric) <= atol + rtol * abs(numeric), (
                    f"directional derivative {d} of input {k} (shape {t.shape}): "
                    f"autograd {got!r} vs finite differences {numeric!r}")
    return True
