"""Learning-rate schedules: formulas, PyTorch parity step by step, state_dict, bad input.

Schedulers only rewrite param_group["lr"]; no kernel runs here (optimizer.step() with no
gradients updates nothing), so these tests are cheap and device-independent.
"""
import math
import warnings

import numpy as np
import pytest

import nbdl
from nbdl import optim
from nbdl.nn import Parameter
from nbdl.optim import lr_scheduler as S

EPOCHS = 25


def _nbdl_opt(cls=optim.SGD, **kw):
    groups = [{"params": [Parameter(nbdl.zeros(2))]}, {"params": [Parameter(nbdl.zeros(3))], "lr": 0.5}]
    return cls(groups, lr=kw.pop("lr", 0.1), **kw)


def _torch_opt(torch, cls_name="SGD", **kw):
    groups = [{"params": [torch.zeros(2, requires_grad=True)]},
              {"params": [torch.zeros(3, requires_grad=True)], "lr": 0.5}]
    return getattr(torch.optim, cls_name)(groups, lr=kw.pop("lr", 0.1), **kw)


def _values(opt, keys):
    """The group values under ``keys``, flattened (Adam's betas pair becomes two numbers)."""
    out = []
    for g in opt.param_groups:
        for k in keys:
            out.extend(g[k] if isinstance(g[k], (tuple, list)) else [g[k]])
    return out


def _trace(opt, sched, epochs=EPOCHS, keys=("lr",)):
    """Values of the group keys after construction and after each of ``epochs`` steps."""
    out = [_values(opt, keys)]
    for _ in range(epochs):
        opt.step()
        sched.step()
        out.append(_values(opt, keys))
    return out


SCHEDULES = [
    ("StepLR", dict(step_size=4, gamma=0.5)),
    ("MultiStepLR", dict(milestones=[3, 7, 7, 12], gamma=0.3)),
    ("ExponentialLR", dict(gamma=0.9)),
    ("CosineAnnealingLR", dict(T_max=10, eta_min=0.01)),      # runs past T_max: the cosine comes back up
    ("LambdaLR", dict(lr_lambda=lambda e: 1.0 / (1 + e) ** 0.5)),
]


@pytest.mark.parametrize("name,kw", SCHEDULES, ids=[n for n, _ in SCHEDULES])
def test_matches_torch_step_by_step(name, kw):
    torch = pytest.importorskip("torch")
    opt, topt = _nbdl_opt(), _torch_opt(torch)
    ours = _trace(opt, getattr(S, name)(opt, **kw))
    theirs = _trace(topt, getattr(torch.optim.lr_scheduler, name)(topt, **kw))
    np.testing.assert_allclose(ours, theirs, rtol=1e-15, atol=0)


@pytest.mark.parametrize("name,kw", SCHEDULES[:4], ids=[n for n, _ in SCHEDULES[:4]])
def test_closed_form_matches_torch(name, kw):
    torch = pytest.importorskip("torch")
    opt, topt = _nbdl_opt(), _torch_opt(torch)
    sched = getattr(S, name)(opt, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                     # torch deprecates step(epoch)
        tsched = getattr(torch.optim.lr_scheduler, name)(topt, **kw)
        for epoch in (5, 2, 13, 8):
            sched.step(epoch)
            tsched.step(epoch)
            np.testing.assert_allclose(sched.get_last_lr(), tsched.get_last_lr(), rtol=1e-15)


@pytest.mark.parametrize("cls_name,kw", [
    ("SGD", dict(momentum=0.9)),
    ("Adam", dict()),
])
@pytest.mark.parametrize("three_phase,strategy", [(False, "cos"), (True, "linear")])
def test_one_cycle_matches_torch(cls_name, kw, three_phase, strategy):
    torch = pytest.importorskip("torch")
    opt, topt = _nbdl_opt(getattr(optim, cls_name), **dict(kw)), _torch_opt(torch, cls_name, **dict(kw))
    args = dict(max_lr=[1.0, 0.3], total_steps=EPOCHS, three_phase=three_phase, anneal_strategy=strategy)
    keys = ("lr", "momentum") if cls_name == "SGD" else ("lr", "betas")
    ours = _trace(opt, S.OneCycleLR(opt, **args), EPOCHS - 1, keys)
    theirs = _trace(topt, torch.optim.lr_scheduler.OneCycleLR(topt, **args), EPOCHS - 1, keys)
    np.testing.assert_allclose(ours, theirs, rtol=1e-14)


def test_one_cycle_refuses_to_step_past_total_steps():
    opt = _nbdl_opt()
    sched = S.OneCycleLR(opt, max_lr=1.0, total_steps=3, cycle_momentum=False)
    for _ in range(3):
        opt.step()
        sched.step()
    with pytest.raises(ValueError, match="tried to step 4 times; total_steps is 3"):
        sched.step()


@pytest.mark.parametrize("staircase", [False, True])
def test_inverse_time_formula(staircase):
    # lr = lr0 / (1 + gamma * t'),  t' = t / decay_steps, floored when staircase
    opt = _nbdl_opt()
    sched = S.InverseTimeLR(opt, gamma=0.5, decay_steps=3, staircase=staircase)
    got = _trace(opt, sched, epochs=7)
    for t, lrs in enumerate(got):
        tp = t // 3 if staircase else t / 3
        assert lrs == pytest.approx([0.1 / (1 + 0.5 * tp), 0.5 / (1 + 0.5 * tp)], rel=1e-15)
    # hand-computed: t = 6, decay_steps = 3 -> t' = 2 either way -> 0.1 / (1 + 0.5 * 2) = 0.05
    assert got[6][0] == pytest.approx(0.05, rel=1e-15)
    # t = 4: staircase t' = 1 -> 0.1 / 1.5 = 0.0666...; smooth t' = 4/3 -> 0.1 / (5/3) = 0.06
    assert got[4][0] == pytest.approx(0.1 / 1.5 if staircase else 0.06, rel=1e-15)


def test_inverse_time_default_is_lr0_over_one_plus_gamma_t():
    opt = _nbdl_opt()
    got = _trace(opt, S.InverseTimeLR(opt, gamma=0.1), epochs=5)
    assert [lrs[0] for lrs in got] == pytest.approx([0.1 / (1 + 0.1 * t) for t in range(6)], rel=1e-15)


def test_cosine_closed_form_values():
    opt = _nbdl_opt()
    sched = S.CosineAnnealingLR(opt, T_max=4, eta_min=0.0)
    got = [lrs[0] for lrs in _trace(opt, sched, epochs=4)]
    # 0.1 * (1 + cos(pi * t / 4)) / 2 for t = 0..4
    half = math.sqrt(0.5)
    assert got == pytest.approx([0.1, 0.1 * (1 + half) / 2, 0.05, 0.1 * (1 - half) / 2, 0.0], abs=1e-15)


def test_state_dict_round_trip_through_save(tmp_path):
    opt = _nbdl_opt()
    sched = S.MultiStepLR(opt, milestones=[2, 5], gamma=0.5)
    _trace(opt, sched, epochs=3)
    nbdl.save({"scheduler": sched.state_dict()}, tmp_path / "s.npz")
    opt2 = _nbdl_opt()
    sched2 = S.MultiStepLR(opt2, milestones=[100], gamma=0.9)
    sched2.load_state_dict(nbdl.load(tmp_path / "s.npz")["scheduler"])
    for g, lr in zip(opt2.param_groups, sched2.get_last_lr()):   # the lr lives in the optimizer
        g["lr"] = lr
    assert sched2.last_epoch == 3 and sched2.milestones == [2, 5] and sched2.gamma == 0.5
    assert _trace(opt2, sched2, epochs=4) == _trace(opt, sched, epochs=4)


def test_lambda_lr_state_dict_leaves_out_the_functions():
    opt = _nbdl_opt()
    sched = S.LambdaLR(opt, [lambda e: 0.5 ** e, lambda e: 1.0])
    assert "lr_lambdas" not in sched.state_dict()
    sched.load_state_dict(sched.state_dict())
    assert len(sched.lr_lambdas) == 2


def test_resume_with_last_epoch_and_initial_lr():
    opt = _nbdl_opt()
    with pytest.raises(KeyError, match="initial_lr"):
        S.StepLR(opt, step_size=2, last_epoch=4)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    sched = S.ExponentialLR(opt, gamma=0.5, last_epoch=4)
    assert sched.last_epoch == 5 and sched.get_last_lr() == [0.1, 0.5]


def test_warns_when_scheduler_steps_before_optimizer():
    opt = _nbdl_opt()
    sched = S.StepLR(opt, step_size=1)
    with pytest.warns(UserWarning, match="before `optimizer.step\\(\\)`"):
        sched.step()


@pytest.mark.parametrize("make,match", [
    (lambda o: S.StepLR(o, step_size=0), "StepLR: step_size must be an integer >= 1"),
    (lambda o: S.StepLR(o, step_size=2, gamma=float("nan")), "StepLR: gamma must be a finite number"),
    (lambda o: S.MultiStepLR(o, milestones=[2, -1]), "MultiStepLR: each milestone must be an integer >= 0"),
    (lambda o: S.CosineAnnealingLR(o, T_max=0), "CosineAnnealingLR: T_max must be an integer >= 1"),
    (lambda o: S.InverseTimeLR(o, gamma=-0.1), r"InverseTimeLR: gamma must be in \[0, inf\]"),
    (lambda o: S.InverseTimeLR(o, gamma=0.1, decay_steps=0), "decay_steps must be an integer >= 1"),
    (lambda o: S.LambdaLR(o, [lambda e: 1.0]), "Expected 2 lr_lambdas, but got 1"),
    (lambda o: S.OneCycleLR(o, max_lr=1.0), "define either total_steps or"),
    (lambda o: S.OneCycleLR(o, max_lr=[1.0], total_steps=5), "max_lr must have the same length"),
    (lambda o: S.OneCycleLR(o, max_lr=1.0, total_steps=5, anneal_strategy="exp"), "anneal_strategy"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make(_nbdl_opt())
    with pytest.raises(TypeError, match="is not an Optimizer"):
        S.StepLR(object(), step_size=1)
