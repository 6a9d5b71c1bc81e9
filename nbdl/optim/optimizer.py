"""Optimizer: the base class of every nbdl optimizer (the torch.optim.Optimizer shape).

An optimizer holds ``param_groups`` (a list of dicts: ``"params"`` plus that group's
hyperparameters, defaults filled in) and ``state`` (a dict from parameter to a dict
of its buffers: Tensors on the parameter's device, plus an int ``"step"``).
``step()`` runs one fused update kernel per parameter, on the parameter's device,
from ``nbdl.kernels.optim``; subclasses say how (``_init_state`` and ``_update``).

``state_dict()`` uses PyTorch's layout with numpy arrays in place of tensors, so
``nbdl.save`` can store it and a converted torch state dict loads:

    {"state": {0: {"step": 3, "exp_avg": ndarray, ...}, ...},
     "param_groups": [{"lr": 0.001, ..., "params": [0, 1, 2]}, ...]}

Parameters are referred to by their index in the order of ``param_groups``.
"""
import math
import numbers
from collections.abc import Iterable

import numpy as np

from nbdl import device as _dev
from nbdl.tensor import Tensor, empty, no_grad, zeros

__all__ = ["Optimizer", "required"]


class _RequiredParameter:
    """Marks a hyperparameter with no default (a group must give it)."""

    def __repr__(self):
        return "<required parameter>"


required = _RequiredParameter()


# --------------------------------------------------------------------------- checks

def check_hyper(owner, name, value, low=0.0, high=None, high_open=False):
    """A finite real ``value`` with low <= value (<= or <) high; else ValueError naming owner and name.

    NaN and inf fail every range, so a NaN learning rate is caught here.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {value!r}")
    v = float(value)
    ok = math.isfinite(v) and v >= low
    if high is not None:
        ok = ok and (v < high if high_open else v <= high)
    if not ok:
        if high is None:
            want = f"a finite {name} >= {low:g}"
        else:
            want = f"{name} in [{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{owner}: invalid {name}={value!r}; expected {want}")
    return v


def _is_c_contiguous(a):
    flags = getattr(a, "flags", None)
    if flags is None:
        return True
    try:
        return bool(flags["C_CONTIGUOUS"])
    except (KeyError, TypeError):
        return bool(getattr(flags, "c_contiguous", True))


def flat(t):
    """A 1-D view of a Tensor's array (shares memory: kernels update it in place)."""
    if not _is_c_contiguous(t.array):
        raise ValueError(f"tensor of shape {t.shape} is not contiguous; "
                         f"an in-place update needs contiguous memory")
    return t.array.reshape(-1) if t.array.ndim != 1 else t.array


def _to_python(v):
    """numpy scalars/arrays (e.g. after nbdl.load) back to Python values."""
    if isinstance(v, np.ndarray):
        return v.item() if v.ndim == 0 else tuple(x.item() if isinstance(x, np.generic) else x for x in v)
    if isinstance(v, np.generic):
        return v.item()
    return v


def _as_list(groups):
    """param_groups as a list: a list as saved, or a dict keyed "0", "1", ... after nbdl.load."""
    if isinstance(groups, dict):
        return [groups[k] for k in sorted(groups, key=int)]
    return list(groups)


# --------------------------------------------------------------------------- Optimizer

class Optimizer:
    """Base class. ``params``: an iterable of Tensors, of (name, Tensor) pairs, or of dicts
    (parameter groups: ``{"params": [...], "lr": ...}``); ``defaults``: hyperparameter defaults.
    """

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self._check_hyperparameters(self.defaults)
        self.state = {}
        self.param_groups = []
        self._step_count = 0
        if isinstance(params, Tensor):
            raise TypeError(f"{type(self).__name__}: params must be an iterable of Tensors or dicts, "
                            f"but got a Tensor (wrap it in a list)")
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # -- groups --
    def add_param_group(self, param_group):
        """Append a group: validates its parameters, fills in defaults, validates hyperparameters."""
        name = type(self).__name__
        if not isinstance(param_group, dict):
            raise TypeError(f"{name}: param_group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        params = group["params"] if "params" in group else []
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(f"{name}: parameters must be given in an ordered collection, not a set "
                            f"(the order of a set changes between runs)")
        elif not isinstance(params, Iterable):
            raise TypeError(f"{name}: params must be an iterable of Tensors, got {type(params).__name__}")
        params = list(params)
        tensors, names = [], []
        for p in params:
            if isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str):
                names.append(p[0])
                p = p[1]
            tensors.append(p)
        if names and len(names) != len(tensors):
            raise ValueError(f"{name}: give names for all parameters of a group or for none")
        for i, p in enumerate(tensors):
            if not isinstance(p, Tensor):
                raise TypeError(f"{name} can only optimize Tensors, but parameter {i} of the group "
                                f"is {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError(f"{name}: can't optimize a non-leaf Tensor (parameter {i} of the group "
                                 f"was computed by an op; use .detach() to make a leaf)")
        ids = [id(p) for p in tensors]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{name}: a parameter group contains the same parameter more than once")
        existing = {id(p) for g in self.param_groups for p in g["params"]}
        if existing & set(ids):
            raise ValueError(f"{name}: some parameters appear in more than one parameter group")
        group["params"] = tensors
        if names:
            group["param_names"] = names
        for key, default in self.defaults.items():
            if default is required and key not in group:
                raise ValueError(f"{name}: parameter group didn't specify a value of required "
                                 f"optimization parameter {key}")
            group.setdefault(key, default)
        self._check_hyperparameters(group)
        self.param_groups.append(group)
        self._on_add_group(group)

    def _check_hyperparameters(self, group):
        """Raise ValueError/TypeError for a bad hyperparameter (subclasses, via _check)."""

    def _check(self, group, key, low=0.0, high=None, high_open=False):
        """check_hyper on group[key], named after this class (a required default is skipped)."""
        value = group[key]
        if value is not required:
            check_hyper(type(self).__name__, key, value, low, high, high_open)

    def _on_add_group(self, group):
        """Hook: create state eagerly where torch does (Adagrad)."""

    # -- gradients --
    def zero_grad(self, set_to_none=True):
        """Reset every parameter's .grad: to None (default), or fill it with zeros."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()

    # -- the update --
    def step(self, closure=None):
        """One update of every parameter that has a .grad; returns closure() if given.

        ``closure`` re-evaluates the model and returns the loss (it runs with grad
        mode on, before the update).
        """
        loss = None
        if closure is not None:
            from nbdl.tensor import enable_grad
            with enable_grad():
                loss = closure()
        with no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    self._check_grad(p)
                    state = self.state.get(p)
                    if not state:
                        state = self.state[p] = {}
                        self._init_state(p, group, state)
                    else:
                        self._follow_param(p, state)
                    K = _dev.kernels("optim", p.device)
                    self._update(K, p, flat(p), flat(p.grad), group, state)
        self._step_count += 1
        return loss

    def _init_state(self, p, group, state):
        """Fill ``state`` for parameter p before its first update (subclasses)."""

    def _update(self, K, p, param, grad, group, state):
        """Run the fused kernel of module K on the flat arrays param, grad (subclasses)."""
        raise NotImplementedError

    def _check_grad(self, p):
        # raw array attributes: this runs for every parameter at every step
        g, name = p.grad, type(self).__name__
        if g.device != p.device:
            raise ValueError(f"{name}: a parameter is on {p.device} but its grad is on {g.device}")
        if g.array.shape != p.array.shape:
            raise ValueError(f"{name}: a parameter has shape {p.shape} but its grad has shape {g.shape}")
        if g.array.dtype != p.array.dtype:
            raise TypeError(f"{name}: a parameter is {p.dtype} but its grad is {g.dtype}")
        if p.array.dtype not in (np.float32, np.float64):
            raise TypeError(f"{name}: can only update float32/float64 parameters, got {p.dtype}")

    @staticmethod
    def _follow_param(p, state):
        """Keep state on the parameter's device and dtype (after model.to(...))."""
        for k, v in state.items():
            if isinstance(v, Tensor) and (v.device != p.device or v.array.dtype != p.array.dtype):
                state[k] = _tensor_like(v.numpy(), p)

    @staticmethod
    def _zeros_like(p):
        return zeros(p.shape, dtype=p.dtype, device=p.device)

    @staticmethod
    def _empty_like(p):
        return empty(p.shape, dtype=p.dtype, device=p.device)

    # -- state dict --
    def state_dict(self):
        """{"state": {index: {name: ndarray | int}}, "param_groups": [{..., "params": [index]}]}.

        Arrays are host copies; the parameters themselves are not saved.
        """
        index, groups = {}, []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            packed["params"] = [index[id(p)] for p in group["params"]]
            groups.append(packed)
        state = {}
        for p, s in self.state.items():
            if id(p) in index:
                state[index[id(p)]] = {k: (np.array(v.numpy(), copy=True) if isinstance(v, Tensor) else v)
                                       for k, v in s.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Load a dict from :meth:`state_dict` (also after nbdl.save/nbdl.load, or a torch
        optimizer's state dict with tensors converted to numpy).

        Hyperparameters are taken from the saved groups; state arrays are copied onto
        each parameter's device in its dtype.
        """
        name = type(self).__name__
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' and 'param_groups'")
        saved_groups = _as_list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: loaded state dict has {len(saved_groups)} parameter "
                             f"groups but the optimizer has {len(self.param_groups)}")
        id_map = {}
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            saved_ids = [int(k) for k in np.atleast_1d(np.asarray(saved["params"], dtype=np.int64))] \
                if len(saved["params"]) else []
            if len(saved_ids) != len(group["params"]):
                raise ValueError(f"{name}.load_state_dict: loaded parameter group {i} has {len(saved_ids)} "
                                 f"parameters but the optimizer's group has {len(group['params'])}")
            id_map.update(zip(saved_ids, group["params"]))
        state = {}
        for key, values in state_dict["state"].items():
            if int(key) not in id_map:
                raise ValueError(f"{name}.load_state_dict: state refers to parameter {key}, "
                                 f"which no parameter group contains")
            p = id_map[int(key)]
            state[p] = {k: _state_value(name, int(key), k, v, p) for k, v in values.items() if v is not None}
        new_groups = []
        for saved, group in zip(saved_groups, self.param_groups):
            new = {k: _to_python(v) for k, v in saved.items() if k != "params" and v is not None}
            new["params"] = group["params"]
            if "param_names" in new:
                new["param_names"] = list(new["param_names"])
            for k, default in self.defaults.items():
                new.setdefault(k, group.get(k, default))
            self._check_hyperparameters(new)
            new_groups.append(new)
        self.param_groups = new_groups
        self.state = state

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {group[k]}" for k in sorted(group) if k != "params"]
        return "\n".join(lines) + "\n)"


def _tensor_like(host, p):
    """A new Tensor with a copy of host's values on p's device in p's dtype, shaped like p."""
    arr = np.array(host, dtype=p.dtype, order="C", copy=True).reshape(p.shape)
    return Tensor(_dev.from_host(arr, p.device), device=p.device)


def _state_value(owner, index, key, value, p):
    """One loaded state entry: "step" -> int; an array -> Tensor like p (sizes must match)."""
    if hasattr(value, "numpy") and callable(value.numpy):
        value = value.numpy()
    value = np.asarray(value)
    if key == "step":
        return int(value.item())
    if value.ndim == 0:
        return value.item()
    if value.size != int(np.prod(p.shape, dtype=np.int64)):
        raise ValueError(f"{owner}.load_state_dict: state {key!r} of parameter {index} has shape "
                         f"{value.shape} but the parameter has shape {p.shape}")
    return _tensor_like(value, p)
