"""Optimizers: numpy references, a hand-computed sequence, torch parity, CPU/CUDA agreement,
state_dict round trips, gradient clipping and bad input."""
import math

import numpy as np
import pytest

import nbdl
from nbdl import optim
from nbdl.nn import Parameter
from nbdl.nn.utils import clip_grad_norm_, clip_grad_value_, get_total_norm

SHAPES = [(3, 4), (5,)]          # a weight and a bias: tiny, so the CUDA simulator is quick
STEPS = 3
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


# --------------------------------------------------------------------------- helpers

def make_params(device, dtype, seed=0):
    rng = np.random.default_rng(seed)
    host = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    return [Parameter(nbdl.tensor(h, device=device)) for h in host], host


def grad_sequence(dtype, steps=STEPS, seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]


def set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = nbdl.tensor(g, device=p.device)


# --------------------------------------------------------------------------- numpy references
# Textbook formulas in float64, one function per optimizer: (p, g, state, step, **hyper) -> new p.

def ref_sgd(p, g, st, t, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
            maximize=False):
    g = -g if maximize else g
    g = g + weight_decay * p
    if momentum:
        st["b"] = g.copy() if t == 1 else momentum * st["b"] + (1 - dampening) * g
        g = g + momentum * st["b"] if nesterov else st["b"]
    return p - lr * g


def ref_adam(p, g, st, t, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
             maximize=False, decoupled=False):
    b1, b2 = betas
    g = -g if maximize else g
    if decoupled:
        p = p * (1 - lr * weight_decay)
    else:
        g = g + weight_decay * p
    st["m"] = b1 * st.get("m", 0.0) + (1 - b1) * g
    st["v"] = b2 * st.get("v", 0.0) + (1 - b2) * g * g
    v = st["v"]
    if amsgrad:
        st["vmax"] = v = np.maximum(st.get("vmax", 0.0), v)
    m_hat = st["m"] / (1 - b1 ** t)
    v_hat = v / (1 - b2 ** t)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps)


def ref_adamw(p, g, st, t, weight_decay=1e-2, **kw):
    return ref_adam(p, g, st, t, weight_decay=weight_decay, decoupled=True, **kw)


def ref_rmsprop(p, g, st, t, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                centered=False, maximize=False):
    g = -g if maximize else g
    g = g + weight_decay * p
    st["v"] = alpha * st.get("v", 0.0) + (1 - alpha) * g * g
    if centered:
        st["a"] = alpha * st.get("a", 0.0) + (1 - alpha) * g
        d = np.sqrt(st["v"] - st["a"] ** 2) + eps
    else:
        d = np.sqrt(st["v"]) + eps
    if momentum > 0:
        st["b"] = momentum * st.get("b", 0.0) + g / d
        return p - lr * st["b"]
    return p - lr * g / d


def ref_adagrad(p, g, st, t, lr, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                eps=1e-10, maximize=False):
    g = -g if maximize else g
    g = g + weight_decay * p
    st["s"] = st.get("s", initial_accumulator_value) + g * g
    clr = lr / (1 + (t - 1) * lr_decay)
    return p - clr * g / (np.sqrt(st["s"]) + eps)


def ref_adadelta(p, g, st, t, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False):
    g = -g if maximize else g
    g = g + weight_decay * p
    st["v"] = rho * st.get("v", 0.0) + (1 - rho) * g * g
    delta = np.sqrt(st.get("u", 0.0) + eps) / np.sqrt(st["v"] + eps) * g
    st["u"] = rho * st.get("u", 0.0) + (1 - rho) * delta * delta
    return p - lr * delta


CASES = [
    ("SGD", ref_sgd, dict(lr=0.1)),
    ("SGD", ref_sgd, dict(lr=0.1, momentum=0.9, dampening=0.2, weight_decay=0.05)),
    ("SGD", ref_sgd, dict(lr=0.1, momentum=0.8, nesterov=True, maximize=True)),
    ("Adam", ref_adam, dict(lr=0.01, weight_decay=0.1)),
    ("Adam", ref_adam, dict(lr=0.01, betas=(0.3, 0.9), amsgrad=True, maximize=True)),
    ("AdamW", ref_adamw, dict(lr=0.01, weight_decay=0.1)),
    ("RMSprop", ref_rmsprop, dict(lr=0.01)),
    ("RMSprop", ref_rmsprop, dict(lr=0.01, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.1)),
    ("Adagrad", ref_adagrad, dict(lr=0.1, lr_decay=0.5, initial_accumulator_value=0.2, weight_decay=0.1)),
    ("Adadelta", ref_adadelta, dict(lr=0.5, rho=0.8, weight_decay=0.1)),
]
CASE_IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(CASES)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,ref,hyper", CASES, ids=CASE_IDS)
def test_matches_numpy_reference(device, dtype, name, ref, hyper):
    params, host = make_params(device, dtype)
    opt = getattr(optim, name)(params, **hyper)
    expect = [h.astype(np.float64) for h in host]
    states = [{} for _ in params]
    for t, grads in enumerate(grad_sequence(dtype), start=1):
        set_grads(params, grads)
        opt.step()
        expect = [ref(e, g.astype(np.float64), s, t, **hyper) for e, g, s in zip(expect, grads, states)]
        for p, e in zip(params, expect):
            np.testing.assert_allclose(p.numpy(), e, **TOL[dtype])
    assert all(p.dtype == dtype and p.device == nbdl.device.normalize(device) for p in params)


# --------------------------------------------------------------------------- hand-computed

def test_adam_two_steps_by_hand(device):
    # Adam(lr=0.1, betas=(0.9, 0.999), eps=1e-8), p0 = [1, -2]
    # step 1, g = [0.5, -1]:
    #   m = 0.1 g = [0.05, -0.1]          v = 0.001 g^2 = [0.00025, 0.001]
    #   m_hat = m / 0.1 = [0.5, -1]       v_hat = v / 0.001 = [0.25, 1]   sqrt = [0.5, 1]
    #   p1 = p0 - 0.1 * m_hat / (sqrt + eps) = [0.9, -1.9]        (eps shifts it by ~1e-9)
    # step 2, g = [0.5, 2]:
    #   m = 0.9 m + 0.1 g = [0.045 + 0.05, -0.09 + 0.2] = [0.095, 0.11]
    #   v = 0.999 v + 0.001 g^2 = [0.00024975 + 0.00025, 0.000999 + 0.004] = [0.00049975, 0.004999]
    #   1 - 0.9^2 = 0.19,  1 - 0.999^2 = 0.001999
    #   m_hat = [0.095 / 0.19, 0.11 / 0.19] = [0.5, 11/19 = 0.5789474]
    #   v_hat = [0.00049975 / 0.001999, 0.004999 / 0.001999] = [0.25, 4999/1999 = 2.5007504]
    #   sqrt(v_hat) = [0.5, 1.5813761]
    #   p2 = [0.9 - 0.1 * 0.5 / 0.5, -1.9 - 0.1 * 0.5789474 / 1.5813761] = [0.8, -1.9366104]
    p = Parameter(nbdl.tensor([1.0, -2.0], dtype=nbdl.float64, device=device))
    opt = optim.Adam([p], lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    p.grad = nbdl.tensor([0.5, -1.0], dtype=nbdl.float64, device=device)
    opt.step()
    np.testing.assert_allclose(p.numpy(), [0.9, -1.9], atol=1e-7)
    p.grad = nbdl.tensor([0.5, 2.0], dtype=nbdl.float64, device=device)
    opt.step()
    np.testing.assert_allclose(p.numpy(), [0.8, -1.9366104], atol=1e-7)
    np.testing.assert_allclose(opt.state[p]["exp_avg"].numpy(), [0.095, 0.11], atol=1e-15)
    np.testing.assert_allclose(opt.state[p]["exp_avg_sq"].numpy(), [0.00049975, 0.004999], atol=1e-15)
    assert opt.state[p]["step"] == 2


def test_sgd_momentum_two_steps_by_hand(device):
    # SGD(lr=0.1, momentum=0.9), p0 = [1, -2]
    # step 1, g = [0.5, -1]: buf = g = [0.5, -1];              p1 = p0 - 0.1 buf = [0.95, -1.9]
    # step 2, g = [0.5, 2]:  buf = 0.9 buf + g = [0.95, 1.1];  p2 = p1 - 0.1 buf = [0.855, -2.01]
    p = Parameter(nbdl.tensor([1.0, -2.0], dtype=nbdl.float64, device=device))
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    for g, want in (([0.5, -1.0], [0.95, -1.9]), ([0.5, 2.0], [0.855, -2.01])):
        p.grad = nbdl.tensor(g, dtype=nbdl.float64, device=device)
        opt.step()
        np.testing.assert_allclose(p.numpy(), want, rtol=0, atol=1e-15)
    np.testing.assert_allclose(opt.state[p]["momentum_buffer"].numpy(), [0.95, 1.1], atol=1e-15)


# --------------------------------------------------------------------------- torch parity

@pytest.mark.parametrize("name,hyper", [(n, h) for n, _, h in CASES], ids=CASE_IDS)
def test_matches_torch(device, name, hyper):
    torch = pytest.importorskip("torch")
    params, host = make_params(device, np.float32)
    tparams = [torch.tensor(h, requires_grad=True) for h in host]
    opt = getattr(optim, name)(params, **hyper)
    topt = getattr(torch.optim, name)(tparams, foreach=False, **hyper)
    for grads in grad_sequence(np.float32, steps=4):
        set_grads(params, grads)
        for tp, g in zip(tparams, grads):
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        # the same float32 operations in the same order; only FMA contraction in torch's
        # vectorized loops can move the last bit
        np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=1e-6, atol=1e-7)
        for key, value in opt.state[p].items():
            want = topt.state[tp][key]
            got = value if key == "step" else value.numpy()
            np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-6, atol=1e-7, err_msg=key)


def test_param_groups_have_their_own_hyperparameters(device):
    torch = pytest.importorskip("torch")
    params, host = make_params(device, np.float32)
    tparams = [torch.tensor(h, requires_grad=True) for h in host]

    def groups(ps):
        return [{"params": [ps[0]], "lr": 0.1, "betas": (0.5, 0.9)}, {"params": [ps[1]]}]
    opt = optim.Adam(groups(params), lr=0.01, amsgrad=True)
    topt = torch.optim.Adam(groups(tparams), lr=0.01, amsgrad=True, foreach=False)
    assert opt.param_groups[0]["lr"] == 0.1 and opt.param_groups[1]["lr"] == 0.01
    assert opt.param_groups[1]["betas"] == (0.9, 0.999)
    for grads in grad_sequence(np.float32):
        set_grads(params, grads)
        for tp, g in zip(tparams, grads):
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- CPU == CUDA

@pytest.mark.parametrize("name,hyper", [(n, h) for n, _, h in CASES], ids=CASE_IDS)
def test_cpu_and_cuda_agree(name, hyper):
    if not nbdl.cuda_available():
        pytest.skip("numba-cuda is not installed")
    out = {}
    for device in ("cpu", "cuda"):
        params, _ = make_params(device, np.float32)
        opt = getattr(optim, name)(params, **hyper)
        for grads in grad_sequence(np.float32, steps=2):
            set_grads(params, grads)
            opt.step()
        out[device] = [p.numpy() for p in params] + \
            [v.numpy() for p in params for v in opt.state[p].values() if isinstance(v, nbdl.Tensor)]
    # the simulator runs the same float32 operations: identical bits. A real GPU contracts
    # multiply-adds into FMAs where the CPU's compiler may not (or the other way round): each
    # such rounding differs by up to half a unit, and a parameter that the update brings
    # near zero shows it as many units of its own (2 to 30 were seen on an H100)
    for a, b in zip(out["cpu"], out["cuda"]):
        if nbdl.device.simulator_enabled():
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,hyper", [CASES[i][::2] for i in (1, 4, 7, 8, 9)],
                         ids=[CASE_IDS[i] for i in (1, 4, 7, 8, 9)])
def test_cpu_parallel_loop_matches_serial_loop(monkeypatch, name, hyper):
    # large arrays take the prange version of the loop, small ones the serial one
    from nbdl.kernels.optim import cpu as K
    n = K.PARALLEL_MIN + 7
    rng = np.random.default_rng(5)
    p0, grads = rng.standard_normal(n).astype(np.float32), rng.standard_normal((2, n)).astype(np.float32)
    out = []
    for parallel_min in (K.PARALLEL_MIN, n + 1):
        monkeypatch.setattr(K, "PARALLEL_MIN", parallel_min)
        p = Parameter(nbdl.tensor(p0))
        opt = getattr(optim, name)([p], **hyper)
        for g in grads:
            p.grad = nbdl.tensor(g)
            opt.step()
        out.append([p.numpy()] + [v.numpy() for v in opt.state[p].values() if isinstance(v, nbdl.Tensor)])
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- optimizer API

def test_zero_grad_and_closure(device):
    params, _ = make_params(device, np.float32)
    opt = optim.SGD(params, lr=0.1)
    set_grads(params, grad_sequence(np.float32, steps=1)[0])
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.numpy().any() for p in params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    calls = []

    def closure():
        calls.append(1)
        set_grads(params, grad_sequence(np.float32, steps=1)[0])
        return 42.0
    assert opt.step(closure) == 42.0 and calls == [1]


def test_parameters_without_grad_are_skipped():
    params, host = make_params("cpu", np.float32)
    opt = optim.Adam(params, lr=0.1)
    params[0].grad = nbdl.tensor(np.ones(SHAPES[0], np.float32))
    opt.step()
    np.testing.assert_array_equal(params[1].numpy(), host[1])
    assert params[1] not in opt.state and opt.state[params[0]]["step"] == 1


def test_add_param_group_and_named_parameters():
    params, _ = make_params("cpu", np.float32)
    opt = optim.SGD([("w", params[0])], lr=0.1, momentum=0.9)
    opt.add_param_group({"params": [("b", params[1])], "lr": 0.5})
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    assert opt.param_groups[1]["momentum"] == 0.9
    assert opt.param_groups[0]["param_names"] == ["w"]
    assert "Parameter Group 1" in repr(opt)


def test_state_follows_model_to_another_dtype():
    params, _ = make_params("cpu", np.float32)
    opt = optim.Adam(params, lr=0.1)
    set_grads(params, grad_sequence(np.float32, steps=1)[0])
    opt.step()
    for p in params:                   # what Module.double() does to a parameter
        p.array = p.array.astype(np.float64)
    set_grads(params, grad_sequence(np.float64, steps=1)[0])
    opt.step()
    assert opt.state[params[0]]["exp_avg"].dtype == np.float64


# --------------------------------------------------------------------------- state_dict

def _run(opt, params, grads_list):
    for grads in grads_list:
        set_grads(params, grads)
        opt.step()


@pytest.mark.parametrize("name,hyper", [("Adam", dict(lr=0.1, amsgrad=True)),
                                        ("SGD", dict(lr=0.1, momentum=0.9)),
                                        ("RMSprop", dict(lr=0.1, momentum=0.5, centered=True)),
                                        ("Adagrad", dict(lr=0.1)), ("Adadelta", dict())])
def test_state_dict_round_trip_through_save(tmp_path, device, name, hyper):
    grads = grad_sequence(np.float32, steps=4)
    params, _ = make_params(device, np.float32)
    groups = [{"params": [params[0]], "lr": 0.05}, {"params": [params[1]]}]
    opt = getattr(optim, name)(groups, **hyper)
    _run(opt, params, grads[:2])
    sd = opt.state_dict()
    assert sorted(sd["state"]) == [0, 1] and [g["params"] for g in sd["param_groups"]] == [[0], [1]]
    assert all(isinstance(v, np.ndarray) for s in sd["state"].values() for k, v in s.items() if k != "step")
    nbdl.save({"optimizer": sd}, tmp_path / "opt.npz")

    params2 = [Parameter(nbdl.tensor(p.numpy(), device=device)) for p in params]
    opt2 = getattr(optim, name)([{"params": [params2[0]]}, {"params": [params2[1]]}], lr=1.0)
    opt2.load_state_dict(nbdl.load(tmp_path / "opt.npz")["optimizer"])
    assert opt2.param_groups[0]["lr"] == 0.05
    assert opt2.param_groups[1]["lr"] == opt.param_groups[1]["lr"]
    for p2 in params2:
        for v in opt2.state[p2].values():
            if isinstance(v, nbdl.Tensor):
                assert v.device == p2.device and v.dtype == p2.dtype
    _run(opt, params, grads[2:])
    _run(opt2, params2, grads[2:])
    for p, p2 in zip(params, params2):
        np.testing.assert_array_equal(p.numpy(), p2.numpy())


def test_loads_a_torch_state_dict():
    torch = pytest.importorskip("torch")
    grads = grad_sequence(np.float32, steps=4)
    _, host = make_params("cpu", np.float32)
    tparams = [torch.tensor(h, requires_grad=True) for h in host]
    topt = torch.optim.Adam(tparams, lr=0.05, foreach=False)
    for gs in grads[:2]:
        for tp, g in zip(tparams, gs):
            tp.grad = torch.tensor(g)
        topt.step()
    tsd = topt.state_dict()
    converted = {"state": {i: {k: v.numpy() for k, v in s.items()} for i, s in tsd["state"].items()},
                 "param_groups": tsd["param_groups"]}
    params = [Parameter(nbdl.tensor(tp.detach().numpy())) for tp in tparams]
    opt = optim.Adam(params)
    opt.load_state_dict(converted)
    assert opt.param_groups[0]["lr"] == 0.05 and opt.state[params[0]]["step"] == 2
    for gs in grads[2:]:
        set_grads(params, gs)
        for tp, g in zip(tparams, gs):
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_load_state_dict_rejects_mismatches():
    params, _ = make_params("cpu", np.float32)
    opt = optim.Adam(params, lr=0.1)
    set_grads(params, grad_sequence(np.float32, steps=1)[0])
    opt.step()
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="parameter groups"):
        optim.Adam([{"params": [params[0]]}, {"params": [params[1]]}]).load_state_dict(sd)
    with pytest.raises(ValueError, match="group 0 has 2 parameters"):
        optim.Adam([params[0]]).load_state_dict(sd)
    swapped = optim.Adam([params[1], params[0]])
    with pytest.raises(ValueError, match=r"state 'exp_avg' of parameter 0 has shape \(3, 4\)"):
        swapped.load_state_dict(sd)


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("cls,kwargs,match", [
    (optim.SGD, dict(lr=-0.1), r"SGD: invalid lr=-0\.1"),
    (optim.SGD, dict(lr=float("nan")), r"SGD: invalid lr=nan"),
    (optim.SGD, dict(lr=0.1, momentum=-0.5), r"SGD: invalid momentum=-0\.5"),
    (optim.SGD, dict(lr=0.1, nesterov=True), "SGD: Nesterov momentum requires a momentum and zero dampening"),
    (optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "Nesterov"),
    (optim.SGD, dict(lr=0.1, weight_decay=-1.0), r"SGD: invalid weight_decay=-1\.0"),
    (optim.Adam, dict(lr=float("inf")), r"Adam: invalid lr=inf"),
    (optim.Adam, dict(eps=-1e-8), r"Adam: invalid eps=-1e-08"),
    (optim.Adam, dict(betas=(1.0, 0.999)), r"Adam: invalid betas\[0\]=1\.0; expected betas\[0\] in \[0, 1\)"),
    (optim.AdamW, dict(betas=(0.9, -0.1)), r"AdamW: invalid betas\[1\]=-0\.1"),
    (optim.Adam, dict(betas=0.9), "Adam: betas must be a pair"),
    (optim.RMSprop, dict(alpha=-0.1), r"RMSprop: invalid alpha=-0\.1"),
    (optim.Adagrad, dict(lr_decay=-1.0), r"Adagrad: invalid lr_decay=-1\.0"),
    (optim.Adagrad, dict(initial_accumulator_value=-1.0), "Adagrad: invalid initial_accumulator_value"),
    (optim.Adadelta, dict(rho=1.5), r"Adadelta: invalid rho=1\.5; expected rho in \[0, 1\]"),
])
def test_bad_hyperparameters(cls, kwargs, match):
    params, _ = make_params("cpu", np.float32)
    with pytest.raises(ValueError, match=match):
        cls(params, **kwargs)


def test_bad_hyperparameter_in_a_group():
    params, _ = make_params("cpu", np.float32)
    with pytest.raises(ValueError, match=r"Adam: invalid lr=-1"):
        optim.Adam([{"params": [params[0]], "lr": -1}])
    with pytest.raises(TypeError, match="Adam: lr must be a real number"):
        optim.Adam(params, lr="0.1")


def test_bad_parameters():
    params, _ = make_params("cpu", np.float32)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="iterable of Tensors or dicts, but got a Tensor"):
        optim.SGD(params[0], lr=0.1)
    with pytest.raises(TypeError, match="not a set"):
        optim.SGD([{"params": set(params)}], lr=0.1)
    with pytest.raises(TypeError, match="can only optimize Tensors"):
        optim.SGD([np.zeros(3)], lr=0.1)
    nonleaf = params[0] * 2.0
    with pytest.raises(ValueError, match="non-leaf"):
        optim.SGD([nonleaf], lr=0.1)
    with pytest.raises(ValueError, match="same parameter more than once"):
        optim.SGD([params[0], params[0]], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": [params[0]]}, {"params": [params[0]]}], lr=0.1)
    with pytest.raises(ValueError, match="required optimization parameter lr"):
        optim.Optimizer(params, {"lr": optim.optimizer.required})


def test_bad_grad():
    params, _ = make_params("cpu", np.float32)
    opt = optim.Adam(params)
    params[0].grad = nbdl.zeros(4, 3)
    with pytest.raises(ValueError, match=r"Adam: a parameter has shape \(3, 4\) but its grad has shape"):
        opt.step()
    params[0].grad = nbdl.zeros(3, 4, dtype=nbdl.float64)
    with pytest.raises(TypeError, match="Adam: a parameter is float32 but its grad is float64"):
        opt.step()


def test_kernel_host_functions_validate():
    from nbdl.kernels.optim import cpu as K
    p, g = np.zeros(4, np.float32), np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"adam_step: exp_avg_sq must have shape \(4,?\), got \(3,\)"):
        K.adam_step(p, g, np.zeros(4, np.float32), np.zeros(3, np.float32), None, 1, 0.1, 0.9, 0.999, 1e-8)
    with pytest.raises(TypeError, match="sgd_step: dtype mismatch"):
        K.sgd_step(p, g.astype(np.float64), None, 0.1)
    with pytest.raises(ValueError, match="sgd_step: momentum=0.9 needs a momentum_buffer"):
        K.sgd_step(p, g, None, 0.1, momentum=0.9)
    with pytest.raises(ValueError, match="adam_step: step must be >= 1"):
        K.adam_step(p, g, p.copy(), p.copy(), None, 0, 0.1, 0.9, 0.999, 1e-8)
    with pytest.raises(ValueError, match="adadelta_step: rho must be <= 1"):
        K.adadelta_step(p, g, p.copy(), p.copy(), 1.0, 1.5, 1e-6)
    with pytest.raises(ValueError, match="vector_norm: norm_type must be > 0 or inf"):
        K.vector_norm(p, 0, np.zeros(1), 0)
    with pytest.raises(ValueError, match="vector_norm: index 1 is out of range"):
        K.vector_norm(p, 2, np.zeros(1), 1)


# --------------------------------------------------------------------------- gradient clipping

def _grads_on(device, dtype=np.float32, scale=1.0):
    params, _ = make_params(device, dtype)
    grads = [g * scale for g in grad_sequence(dtype, steps=1)[0]]
    set_grads(params, grads)
    return params, grads


@pytest.mark.parametrize("norm_type", [2.0, 1, 3.0, math.inf])
def test_clip_grad_norm(device, norm_type):
    params, grads = _grads_on(device)
    flat = np.concatenate([g.ravel().astype(np.float64) for g in grads])
    if norm_type == math.inf:
        want = np.max(np.abs(flat))
    else:
        want = np.sum(np.abs(flat) ** norm_type) ** (1 / norm_type)
    max_norm = 0.5 * want
    total = clip_grad_norm_(params, max_norm, norm_type=norm_type)
    assert isinstance(total, nbdl.Tensor) and total.shape == () and total.dtype == np.float32
    assert total.device == params[0].device
    np.testing.assert_allclose(total.item(), want, rtol=1e-6)
    coef = max_norm / (want + 1e-6)
    for p, g in zip(params, grads):
        np.testing.assert_allclose(p.grad.numpy(), g * coef, rtol=1e-6)


def test_clip_grad_norm_matches_torch(device):
    torch = pytest.importorskip("torch")
    params, grads = _grads_on(device)
    tparams = [torch.zeros(g.shape, requires_grad=True) for g in grads]
    for tp, g in zip(tparams, grads):
        tp.grad = torch.tensor(g)
    total = clip_grad_norm_(params, 1.0)
    ttotal = torch.nn.utils.clip_grad_norm_(tparams, 1.0)
    np.testing.assert_allclose(total.item(), ttotal.item(), rtol=1e-6)
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=1e-6, atol=1e-8)


def test_clip_grad_norm_leaves_small_gradients_and_inf_max_norm():
    params, grads = _grads_on("cpu")
    total = clip_grad_norm_(params, math.inf)          # the "just measure it" idiom
    assert total.item() > 1
    for p, g in zip(params, grads):
        np.testing.assert_array_equal(p.grad.numpy(), g)
    assert get_total_norm([p.grad for p in params]).item() == pytest.approx(total.item(), rel=1e-7)
    assert clip_grad_norm_([Parameter(nbdl.zeros(2))], 1.0).item() == 0.0   # no grads at all


def test_clip_grad_norm_nonfinite():
    params, grads = _grads_on("cpu")
    params[1].grad = nbdl.tensor(np.array([1, 2, np.inf, 4, 5], np.float32))
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    with pytest.raises(ValueError, match="clip_grad_norm_: max_norm must be a number >= 0"):
        clip_grad_norm_(params, -1.0)
    with pytest.raises(ValueError, match="norm_type must be > 0"):
        clip_grad_norm_(params, 1.0, norm_type=-2)


def test_clip_grad_norm_of_a_large_gradient():
    # many reduction chunks, parallel loops on cpu
    p = Parameter(nbdl.zeros(100_003))
    g = np.random.default_rng(2).standard_normal(100_003).astype(np.float32)
    p.grad = nbdl.tensor(g)
    total = clip_grad_norm_([p], 1.0)
    want = np.sqrt(np.sum(g.astype(np.float64) ** 2))
    np.testing.assert_allclose(total.item(), want, rtol=1e-6)
    np.testing.assert_allclose(p.grad.numpy(), g * (1.0 / (want + 1e-6)), rtol=1e-6)
    clip_grad_value_([p], 1e-3)
    assert np.abs(p.grad.numpy()).max() == np.float32(1e-3)


def test_clip_grad_value(device):
    params, grads = _grads_on(device)
    clip_grad_value_(params, 0.5)
    for p, g in zip(params, grads):
        np.testing.assert_array_equal(p.grad.numpy(), np.clip(g, -0.5, 0.5))
    with pytest.raises(ValueError, match="clip_value must be a finite number >= 0"):
        clip_grad_value_(params, -0.5)
