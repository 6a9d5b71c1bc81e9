"""Module and Parameter: the PyTorch shape.

Assigning a Parameter, a Module or None-for-a-parameter to an attribute registers it;
``named_parameters()`` walks the tree with dotted names ("features.0.weight"), so a
PyTorch state_dict converted to numpy loads by the same keys.
"""
from collections import OrderedDict, namedtuple

import numpy as np

from nbdl import device as _dev
from nbdl.tensor import Tensor, as_dtype, float32, float64, parse_to_args

__all__ = ["Module", "Parameter", "Sequential", "ModuleList", "ModuleDict"]


class Parameter(Tensor):
    """A Tensor that is a module's learnable weight: requires_grad=True by default."""

    def __init__(self, data, requires_grad=True):
        if not isinstance(data, Tensor):
            from nbdl.tensor import tensor
            data = tensor(data)
        super().__init__(data.array, device=data.device, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


_IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _require(ok, value, kind, name, expected):
    if not ok:
        raise TypeError(f"cannot assign {type(value).__name__} as {kind} {name!r} ({expected} or None expected)")


def _check_name(op, name):
    """A name that can appear in a state_dict key: a non-empty str without '.'."""
    if not isinstance(name, str):
        raise TypeError(f"{op}: name must be a str, got {type(name).__name__}")
    if not name or "." in name:
        raise KeyError(f"{op}: name {name!r} cannot be empty or contain '.'")


class Module:
    """Base class of every layer and model."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # -- registration --
    def __setattr__(self, name, value):
        """Register Parameters, Modules and buffers by assignment, with PyTorch's rules.

        A Parameter or a Module replaces whatever the name held before (a plain
        attribute included, which would otherwise shadow it). A name registered as a
        parameter accepts only a Parameter or None, a child module only a Module or
        None, a buffer only a Tensor or None: anything else is a TypeError, never a
        silent unregistration.
        """
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before assigning attributes")
        params, modules, buffers = self._parameters, self._modules, self._buffers
        if isinstance(value, Parameter):
            self._forget(name)
            params[name] = value
        elif name in params:
            _require(value is None, value, "parameter", name, "Parameter")
            params[name] = None
        elif isinstance(value, Module):
            self._forget(name)
            modules[name] = value
        elif name in modules:
            _require(value is None, value, "child module", name, "Module")
            modules[name] = None
        elif name in buffers:
            _require(value is None or isinstance(value, Tensor), value, "buffer", name, "Tensor")
            buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def _forget(self, name):
        """Drop ``name`` from every store (before it is registered anew)."""
        for store in (self.__dict__, self._parameters, self._modules, self._buffers):
            store.pop(name, None)
        self._non_persistent.discard(name)

    def __getattr__(self, name):
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                self._non_persistent.discard(name)
                return
        object.__delattr__(self, name)

    def register_parameter(self, name, param):
        _check_name("register_parameter", name)
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: {name!r} must be a Parameter or None, got {type(param).__name__}")
        self._forget(name)
        self._parameters[name] = param

    def register_buffer(self, name, tensor, persistent=True):
        """A tensor that is state but not a parameter (e.g. running_mean); saved in state_dict when persistent."""
        _check_name("register_buffer", name)
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"register_buffer: {name!r} must be a Tensor or None, got {type(tensor).__name__}")
        self._forget(name)
        self._buffers[name] = tensor
        if not persistent:
            self._non_persistent.add(name)

    def add_module(self, name, module):
        _check_name("add_module", name)
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {name!r} must be a Module, got {type(module).__name__}")
        self._forget(name)
        self._modules[name] = module

    register_module = add_module

    # -- traversal --
    def named_modules(self, memo=None, prefix=""):
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is not None:
                yield from m.named_modules(memo, f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def named_parameters(self, prefix="", recurse=True):
        seen = set()
        mods = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for mname, m in mods:
            for pname, p in m._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mname}.{pname}" if mname else pname), p

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True):
        mods = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for mname, m in mods:
            for bname, b in m._buffers.items():
                if b is not None:
                    yield (f"{mname}.{bname}" if mname else bname), b

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def apply(self, fn):
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # -- modes --
    def train(self, mode=True):
        if not isinstance(mode, bool):
            raise TypeError(f"train: mode must be a bool, got {mode!r}")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none=True):
        for p in self.parameters():
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()

    # -- device / dtype --
    def _convert(self, device=None, dtype=None):
        """Move/cast every parameter and buffer in place (the Parameter objects stay the same)."""
        from nbdl.ops.elementwise import _convert
        for m in self.modules():
            for store in (m._parameters, m._buffers):
                for t in store.values():
                    if t is None:
                        continue
                    dst_dev = device or t.device
                    dst_dtype = dtype if (dtype is not None and t.dtype.kind == "f") else t.dtype
                    if dst_dev != t.device or dst_dtype != t.dtype:
                        t.array = _convert(t.array, t.device, dst_dev, dst_dtype)
                        t.device = dst_dev
                        if t.grad is not None:
                            t.grad = Tensor(_convert(t.grad.array, t.grad.device, dst_dev, dst_dtype), dst_dev)
        return self

    def to(self, *args, device=None, dtype=None):
        """to(device), to(dtype) or to(device, dtype): in place, returns self (like PyTorch)."""
        device, dtype = parse_to_args(args, device, dtype)
        device = _dev.require(device) if device is not None else None
        if dtype is not None:
            dtype = as_dtype(dtype)
            if dtype.kind != "f":
                raise TypeError(f"Module.to: dtype must be a float dtype, got {dtype}")
        return self._convert(device, dtype)

    def cpu(self):
        return self.to("cpu")

    def cuda(self, index=0):
        return self.to(f"cuda:{index}")

    def double(self):
        return self.to(float64)

    def float(self):
        return self.to(float32)

    # -- state --
    def state_dict(self, prefix=""):
        """OrderedDict of name -> numpy array copy: parameters and persistent buffers."""
        out = OrderedDict()
        for mname, m in self.named_modules(prefix=prefix.rstrip(".")):
            for pname, p in m._parameters.items():
                if p is not None:
                    out[f"{mname}.{pname}" if mname else pname] = np.array(p.numpy(), copy=True)
            for bname, b in m._buffers.items():
                if b is not None and bname not in m._non_persistent:
                    out[f"{mname}.{bname}" if mname else bname] = np.array(b.numpy(), copy=True)
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy values into the existing parameters/buffers (keeping their dtype and device).

        Values may be numpy arrays, Tensors or anything np.asarray accepts (e.g. CPU
        torch tensors). strict=True raises on missing or unexpected keys; a shape
        mismatch always raises, naming the key and both shapes.
        """
        own = OrderedDict()
        for mname, m in self.named_modules():
            for store in (m._parameters, m._buffers):
                for n, t in store.items():
                    if t is not None and not (store is m._buffers and n in m._non_persistent):
                        own[f"{mname}.{n}" if mname else n] = t
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict for {type(self).__name__}: missing keys {missing}, "
                           f"unexpected keys {unexpected}")
        values = {}
        for k, t in own.items():
            if k not in state_dict:
                continue
            v = state_dict[k]
            v = v.numpy() if isinstance(v, Tensor) else np.asarray(v)
            if tuple(v.shape) != t.shape:
                raise ValueError(f"load_state_dict for {type(self).__name__}: {k!r} has shape "
                                 f"{tuple(v.shape)} in the checkpoint but {t.shape} in the model")
            values[k] = v
        for k, v in values.items():   # copy only after every key checked out
            own[k].copy_(v)
        return _IncompatibleKeys(missing, unexpected)

    # -- calling and printing --
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"({name}): " + repr(m).replace("\n", "\n  ") for name, m in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


class Sequential(Module):
    """Modules applied in order; indexable; names "0", "1", ... like PyTorch."""

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (OrderedDict, dict)):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def __getitem__(self, i):
        mods = list(self._modules.values())
        if isinstance(i, slice):    # keeps the names, so state_dict keys still match
            return Sequential(OrderedDict(list(self._modules.items())[i]))
        return mods[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module):
        self.add_module(str(len(self)), module)
        return self

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x


class ModuleList(Module):
    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class ModuleDict(Module):
    def __init__(self, modules=None):
        super().__init__()
        for k, m in (modules or {}).items():
            self.add_module(k, m)

    def __getitem__(self, k):
        return self._modules[k]

    def __setitem__(self, k, m):
        self.add_module(k, m)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def keys(self):
        return self._modules.keys()

    def items(self):
        return self._modules.items()

    def values(self):
        return self._modules.values()
