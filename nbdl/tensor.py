"""Tensor: one array on one device, plus reverse-mode automatic differentiation.

A Tensor wraps a numpy array (device "cpu") or a numba device array ("cuda:N").
Every differentiable op records a :class:`Node` holding its input tensors and a
``backward`` closure; ``loss.backward()`` walks the nodes in reverse topological
order and calls each closure with the gradient of the node's output(s). Gradients
accumulate into the ``.grad`` of leaf tensors that require grad, like PyTorch.

Writing an op (see nbdl/ops/): run the forward kernel, then

    return make_tensor(y, parents=(x, w), backward=lambda gy: (gx, gw))

where the closure returns one raw array (or None) per parent.
"""
import contextlib
import numbers

import numpy as np

from nbdl import device as _dev

float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)
int64 = np.dtype(np.int64)
int32 = np.dtype(np.int32)
uint8 = np.dtype(np.uint8)
bool_ = np.dtype(np.bool_)

_ALLOWED = (float32, float64, int64, int32, uint8, bool_)
_grad_enabled = True


# --- grad mode ----------------------------------------------------------------------

def is_grad_enabled():
    return _grad_enabled


class _GradMode(contextlib.ContextDecorator):
    def __init__(self, enabled):
        self.enabled = enabled

    def __enter__(self):
        global _grad_enabled
        self.prev, _grad_enabled = _grad_enabled, self.enabled

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self.prev
        return False


def no_grad():
    """Context manager / decorator: ops inside record no graph (inference, updates)."""
    return _GradMode(False)


def enable_grad():
    return _GradMode(True)


def set_grad_enabled(mode):
    return _GradMode(bool(mode))


# --- dtypes -------------------------------------------------------------------------

def as_dtype(dtype):
    """np.dtype from np.float32 / "float32" / nbdl.float32; only supported dtypes."""
    try:
        d = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"unknown dtype {dtype!r}") from None
    if d not in _ALLOWED:
        raise TypeError(f"unsupported dtype {d}; nbdl tensors are float32, float64, int64, int32, uint8 or bool")
    return d


# --- the graph ----------------------------------------------------------------------

class Node:
    """One recorded op: its input tensors, its backward closure, and its outputs' metadata."""
    __slots__ = ("parents", "backward", "out_meta", "multi", "name")

    def __init__(self, parents, backward, out_meta, multi, name):
        self.parents = parents
        self.backward = backward
        self.out_meta = out_meta      # [(shape, dtype), ...] per output
        self.multi = multi
        self.name = name


def needs_grad(*tensors):
    """True when an op on ``tensors`` must record its backward."""
    return _grad_enabled and any(isinstance(t, Tensor) and t.requires_grad for t in tensors)


def _op_name(backward):
    qual = getattr(backward, "__qualname__", "op")
    return qual.split(".<locals>")[0]


def make_tensor(array, parents=(), backward=None, device=None):
    """Wrap an op's output array; record ``backward`` when a parent requires grad.

    backward(grad_array) -> tuple with one gradient array (or None) per parent.
    """
    dev = device if device is not None else (parents[0].device if parents else _infer_device(array))
    out = Tensor(array, device=dev)
    if backward is not None and needs_grad(*parents):
        node = Node(tuple(parents), backward, [(tuple(array.shape), np.dtype(array.dtype))], False,
                    _op_name(backward))
        out._node, out._index, out.requires_grad = node, 0, True
    return out


def make_multi(arrays, parents=(), backward=None, device=None):
    """Several outputs of one op, sharing one node.

    backward(grads) receives a tuple with one entry per output (None where that output
    received no gradient) and returns one gradient (or None) per parent.
    """
    dev = device if device is not None else (parents[0].device if parents else _infer_device(arrays[0]))
    outs = tuple([Tensor(a, dev) for a in arrays])
    if backward is not None and needs_grad(*parents):
        node = Node(tuple(parents), backward,
                    [(tuple(a.shape), np.dtype(a.dtype)) for a in arrays], True, _op_name(backward))
        for i, t in enumerate(outs):
            t._node, t._index, t.requires_grad = node, i, True
    return outs


def _infer_device(array):
    return "cpu" if isinstance(array, np.ndarray) else "cuda:0"


def _accumulate(acc, g, device):
    """acc + g (a new array; never modifies either)."""
    if acc is None:
        return g
    if device == "cpu":
        return np.asarray(acc + g)     # 0-d + 0-d gives a numpy scalar
    return _dev.kernels("elementwise", device).add(acc, g)


def _add_into(acc, g, device):
    """acc += g in place (acc and g of one shape and dtype, not overlapping)."""
    if device == "cpu":
        np.add(acc, g, out=acc)
    else:
        _dev.kernels("elementwise", device).axpy(1.0, g, acc)     # acc + 1.0 g: the bits of acc + g


def _accumulate_leaf(leaf, g):
    """leaf.grad += g, where the first gradient is stored as a private copy.

    Backward closures may hand one array to several inputs (both sides of a + b get
    the same gy) or pass the caller's gradient through unchanged, and .grad is later
    modified in place (zero_(), gradient clipping, optimizers): so, like PyTorch, a
    leaf's first .grad shares its storage with nothing else. Later gradients add into
    the .grad in place, like PyTorch (the same tensor; no new array per backward, which
    for a 1 MB weight gradient cost an allocation and a first write 1.5 times as long as
    the add) -- into a .grad the user set, too, which may share storage with other arrays,
    as in PyTorch. A .grad that cannot take the sum in place (another shape, dtype or
    device, read-only, or overlapping the incoming gradient: a.grad passed as the
    gradient of a + b) is replaced by a new sum instead.
    """
    grad = leaf.grad
    if grad is None:
        leaf.grad = Tensor(_dev.copy(g, leaf.device), device=leaf.device)
    elif _adds_in_place(grad, g, leaf.device):
        _add_into(grad.array, g, leaf.device)
    else:
        leaf.grad = Tensor(_accumulate(grad.array, g, leaf.device), device=leaf.device)


def _adds_in_place(grad, g, device):
    """Whether the existing .grad tensor can take g in place."""
    a = grad.array
    if grad.device != device or tuple(a.shape) != tuple(g.shape) or np.dtype(a.dtype) != np.dtype(g.dtype):
        return False
    if device == "cpu":
        return a.flags.writeable and not np.may_share_memory(a, g)
    return not _device_overlap(a, g)


def _device_overlap(a, b):
    """Whether two device arrays' address ranges overlap (bounds only, like np.may_share_memory)."""
    def extent(x):
        if getattr(type(x), "__cuda_array_interface__", None) is not None:
            lo = hi = x.__cuda_array_interface__["data"][0]
        else:                       # the CUDA simulator's arrays wrap host arrays
            lo = hi = x.ctypes.data
        for n, st in zip(x.shape, x.strides):
            lo, hi = lo + min(0, (n - 1) * st), hi + max(0, (n - 1) * st)
        return lo, hi + x.dtype.itemsize
    if a.size == 0 or b.size == 0:
        return False
    (alo, ahi), (blo, bhi) = extent(a), extent(b)
    return alo < bhi and blo < ahi


def _topo_nodes(root):
    """Nodes reachable from ``root`` in topological order (parents before children)."""
    order, seen = [], set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for p in node.parents:
            if p._node is not None and id(p._node) not in seen:
                stack.append((p._node, False))
    return order


def _checked_grad(node, parent, g):
    """``g`` after checking that an op's backward returned it in the input's shape, dtype and
    device (a numpy scalar, which numpy returns for 0-d results, becomes a 0-d array)."""
    if isinstance(g, np.generic):
        g = np.asarray(g)
    if tuple(g.shape) != parent.shape or np.dtype(g.dtype) != parent.dtype:
        raise RuntimeError(f"{node.name}: gradient of shape {tuple(g.shape)} and dtype {np.dtype(g.dtype)} "
                           f"for an input of shape {parent.shape} and dtype {parent.dtype}")
    if isinstance(g, np.ndarray) != (parent.device == "cpu"):
        raise RuntimeError(f"{node.name}: gradient on the wrong device for an input on {parent.device}")
    return g


def _run_backward(root, grad):
    """Propagate ``grad`` (array) from tensor ``root`` to every leaf that requires grad."""
    pending = {id(root._node): [None] * len(root._node.out_meta)}
    pending[id(root._node)][root._index] = grad
    for node in reversed(_topo_nodes(root._node)):
        grads = pending.pop(id(node), None)
        if grads is None or all(g is None for g in grads):
            continue
        results = node.backward(tuple(grads) if node.multi else grads[0])
        if len(results) != len(node.parents):
            raise RuntimeError(f"{node.name}: backward returned {len(results)} gradients "
                               f"for {len(node.parents)} inputs")
        for parent, g in zip(node.parents, results):
            if g is None or not parent.requires_grad:
                continue
            g = _checked_grad(node, parent, g)
            if parent._node is None:
                _accumulate_leaf(parent, g)
            else:
                slot = pending.setdefault(id(parent._node), [None] * len(parent._node.out_meta))
                slot[parent._index] = _accumulate(slot[parent._index], g, parent.device)


# --- Tensor -------------------------------------------------------------------------

class Tensor:
    """An n-dimensional array on a device, with an optional gradient.

    ``t.array`` is the raw array (numpy on "cpu", numba device array on "cuda:N");
    kernels take and return raw arrays.
    """
    __array_priority__ = 1000  # numpy scalars/arrays defer to our operators

    def __init__(self, array, device=None, requires_grad=False):
        if isinstance(array, np.generic):   # numpy ops on 0-d arrays may return scalars
            array = np.asarray(array)
        self.array = array
        self.device = _dev.normalize(device) if device is not None else _infer_device(array)
        self.grad = None
        self._node = None
        self._index = 0
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    # -- metadata --
    @property
    def shape(self):
        return tuple(self.array.shape)

    @property
    def dtype(self):
        return np.dtype(self.array.dtype)

    @property
    def ndim(self):
        return len(self.array.shape)

    def dim(self):
        return self.ndim

    def numel(self):
        return int(np.prod(self.shape, dtype=np.int64))

    def size(self, dim=None):
        return self.shape if dim is None else self.shape[dim]

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    @property
    def is_leaf(self):
        return self._node is None

    @property
    def grad_fn(self):
        return self._node

    @property
    def is_cuda(self):
        return self.device != "cpu"

    def requires_grad_(self, flag=True):
        if flag and self.dtype not in (float32, float64):
            raise TypeError(f"only float tensors can require grad, got dtype {self.dtype}")
        if not flag and self._node is not None:
            raise RuntimeError("requires_grad_(False) on a non-leaf tensor; use detach()")
        self.requires_grad = bool(flag)
        return self

    def __repr__(self):
        extra = f", device='{self.device}'" if self.device != "cpu" else ""
        grad = ", requires_grad=True" if self.requires_grad else ""
        body = np.array2string(self.numpy(), separator=", ", prefix="tensor(")
        return f"tensor({body}, dtype={self.dtype}{extra}{grad})"

    # -- host / device --
    def numpy(self):
        """A host numpy array (a copy for cuda tensors; shares memory on cpu like torch)."""
        return _dev.to_host(self.array)

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype)

    def tolist(self):
        return self.numpy().tolist()

    def item(self):
        if self.numel() != 1:
            raise ValueError(f"item(): tensor has {self.numel()} elements, expected 1")
        return self.numpy().reshape(()).item()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __bool__(self):
        return bool(self.item())

    def to(self, *args, device=None, dtype=None):
        """to(device), to(dtype) or to(device, dtype): a differentiable copy (self if nothing changes)."""
        device, dtype = parse_to_args(args, device, dtype)
        from nbdl.ops.elementwise import to
        return to(self, device=device, dtype=dtype)

    def cpu(self):
        return self.to("cpu")

    def cuda(self, index=0):
        return self.to(f"cuda:{index}")

    def double(self):
        return self.to(dtype=float64)

    def float(self):
        return self.to(dtype=float32)

    def detach(self):
        """Same storage, no graph."""
        return Tensor(self.array, device=self.device)

    @property
    def data(self):
        """A detached Tensor sharing storage (like torch's .data)."""
        return self.detach()

    @data.setter
    def data(self, other):
        other = other if isinstance(other, Tensor) else tensor(other, device=self.device)
        self.array = other.array
        self.device = other.device

    def clone(self):
        from nbdl.ops.elementwise import clone
        return clone(self)

    # -- in place (no autograd: for initializers, optimizers, bookkeeping) --
    def zero_(self):
        return self.fill_(0)

    def fill_(self, value):
        if self.device == "cpu":
            self.array[...] = value
        elif self.array.size:
            _dev.kernels("elementwise", self.device).fill(self.array, value)
        return self

    def copy_(self, src):
        """Copy src's values into self (cast to self's dtype, moved to self's device)."""
        src_arr = src.array if isinstance(src, Tensor) else np.asarray(src)
        if tuple(src_arr.shape) != self.shape:
            raise ValueError(f"copy_: shape mismatch: destination {self.shape}, source {tuple(src_arr.shape)}")
        if self.device == "cpu":
            self.array[...] = _dev.to_host(src_arr).astype(self.dtype, copy=False)
        elif _dev.is_device_array(src_arr) and np.dtype(src_arr.dtype) == self.dtype:
            if self.array.size:
                self.array.copy_to_device(src_arr)     # device to device, no host round trip
        else:
            host = _dev.to_host(src_arr).astype(self.dtype, copy=False)
            self.array.copy_to_device(np.asarray(host, order="C"))
        return self

    # -- autograd --
    def backward(self, gradient=None):
        """Accumulate d(self)/d(leaf) into every leaf's .grad (gradient defaults to 1 for scalars)."""
        if not self.requires_grad:
            raise RuntimeError("backward(): tensor does not require grad and has no graph")
        if gradient is None:
            if self.numel() != 1:
                raise RuntimeError(f"backward(): gradient can be implicit only for scalar outputs, "
                                   f"got shape {self.shape}")
            g = _dev.full(self.shape, 1.0, self.dtype, self.device)
        else:
            gt = gradient if isinstance(gradient, Tensor) else tensor(gradient, dtype=self.dtype, device=self.device)
            if gt.shape != self.shape:
                raise ValueError(f"backward(): gradient shape {gt.shape} does not match tensor shape {self.shape}")
            if gt.dtype != self.dtype or gt.device != self.device:
                raise TypeError(f"backward(): gradient is {gt.dtype} on {gt.device}, tensor is {self.dtype} on {self.device}")
            g = gt.array
        if self._node is None:
            _accumulate_leaf(self, g)
            return
        _run_backward(self, g)

    # -- operators (nbdl.ops.elementwise does the work) --
    def __add__(self, other):
        return _ew().add(self, other)

    def __radd__(self, other):
        return _ew().add(other, self)

    def __sub__(self, other):
        return _ew().sub(self, other)

    def __rsub__(self, other):
        return _ew().sub(other, self)

    def __mul__(self, other):
        return _ew().mul(self, other)

    def __rmul__(self, other):
        return _ew().mul(other, self)

    def __truediv__(self, other):
        return _ew().div(self, other)

    def __rtruediv__(self, other):
        return _ew().div(other, self)

    def __neg__(self):
        return _ew().neg(self)

    def __pow__(self, exponent):
        return _ew().pow(self, exponent)

    def __matmul__(self, other):
        return _ew().matmul(self, other)

    def __rmatmul__(self, other):
        return _ew().matmul(other, self)

    def __getitem__(self, key):
        return _ew().getitem(self, key)

    def sum(self, axis=None, keepdims=False, dim=None):
        return _ew().sum(self, axis if dim is None else dim, keepdims)

    def mean(self, axis=None, keepdims=False, dim=None):
        return _ew().mean(self, axis if dim is None else dim, keepdims)

    def exp(self):
        return _ew().exp(self)

    def log(self):
        return _ew().log(self)

    def sqrt(self):
        return _ew().sqrt(self)

    def abs(self):
        return _ew().abs(self)

    def reshape(self, *shape):
        return _ew().reshape(self, *shape)

    view = reshape

    def flatten(self, start_dim=0, end_dim=-1):
        return _ew().flatten(self, start_dim, end_dim)

    def transpose(self, dim0, dim1):
        return _ew().transpose(self, dim0, dim1)

    def permute(self, *dims):
        return _ew().permute(self, *dims)

    @property
    def T(self):
        return _ew().permute(self, *reversed(range(self.ndim)))

    def argmax(self, axis=None, dim=None):
        return _ew().argmax(self, axis if dim is None else dim)

    def relu(self):
        from nbdl.functional import relu
        return relu(self)

    def sigmoid(self):
        from nbdl.functional import sigmoid
        return sigmoid(self)

    def tanh(self):
        from nbdl.functional import tanh
        return tanh(self)

    def softmax(self, dim):
        from nbdl.functional import softmax
        return softmax(self, dim)

    def log_softmax(self, dim):
        from nbdl.functional import log_softmax
        return log_softmax(self, dim)


def _ew():
    from nbdl.ops import elementwise
    return elementwise


def parse_to_args(args, device=None, dtype=None):
    """(device, dtype) from the positional arguments of ``to(...)``: a string naming a
    device ("cpu", "cuda", "cuda:1", any case) is the device, anything else the dtype."""
    for a in args:
        if isinstance(a, str) and a.strip().lower().split(":")[0] in ("cpu", "cuda"):
            device = a
        else:
            dtype = a
    return device, dtype


# --- factories ----------------------------------------------------------------------

def _default_dtype_for(data):
    if isinstance(data, np.ndarray):
        if data.dtype.kind == "f":
            return data.dtype if data.dtype in (float32, float64) else float32
        if data.dtype.kind == "b":
            return bool_
        if data.dtype.kind in "iu":
            return data.dtype if data.dtype in _ALLOWED else int64
        raise TypeError(f"tensor(): unsupported array dtype {data.dtype}")
    arr = np.asarray(data)
    if arr.dtype.kind == "f":
        return float32            # python floats -> float32, like torch.tensor
    if arr.dtype.kind == "b":
        return bool_
    if arr.dtype.kind in "iu":
        return int64
    raise TypeError(f"tensor(): cannot make a tensor from {type(data).__name__} (dtype {arr.dtype})")


def tensor(data, dtype=None, device=None, requires_grad=False):
    """A new leaf tensor holding a copy of ``data`` (list, scalar, numpy array or Tensor).

    Python floats become float32; a numpy array keeps its float dtype (like torch.from_numpy).
    """
    device = _dev.require(device)
    if isinstance(data, Tensor):
        host = data.numpy()
    elif _dev.is_device_array(data):
        host = data.copy_to_host()
    else:
        host = data
    dtype = as_dtype(dtype) if dtype is not None else _default_dtype_for(host)
    arr = np.array(host, dtype=dtype, copy=True, order="C")
    return Tensor(_dev.from_host(arr, device), device=device, requires_grad=requires_grad)


def from_numpy(array, device=None, requires_grad=False):
    """A tensor from a numpy array (shares memory on cpu when the array is C-contiguous)."""
    device = _dev.require(device)
    array = np.asarray(array, order="C")
    as_dtype(array.dtype)
    return Tensor(_dev.from_host(array, device), device=device, requires_grad=requires_grad)


def _shape_arg(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    for s in shape:
        if not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 0:
            raise ValueError(f"shape entries must be non-negative ints, got {shape!r}")
    return tuple(int(s) for s in shape)


def _factory(fill, shape, dtype, device, requires_grad):
    device = _dev.require(device)
    dtype = as_dtype(dtype) if dtype is not None else float32
    shape = _shape_arg(shape)
    if fill is None:
        arr = _dev.empty(shape, dtype, device)
    else:
        arr = _dev.full(shape, fill, dtype, device)
    return Tensor(arr, device=device, requires_grad=requires_grad)


def empty(*shape, dtype=None, device=None, requires_grad=False):
    return _factory(None, shape, dtype, device, requires_grad)


def zeros(*shape, dtype=None, device=None, requires_grad=False):
    return _factory(0, shape, dtype, device, requires_grad)


def ones(*shape, dtype=None, device=None, requires_grad=False):
    return _factory(1, shape, dtype, device, requires_grad)


def full(shape, fill_value, dtype=None, device=None, requires_grad=False):
    return _factory(fill_value, (shape,), dtype, device, requires_grad)


def zeros_like(t, dtype=None, device=None):
    return zeros(t.shape, dtype=dtype or t.dtype, device=device or t.device)


def ones_like(t, dtype=None, device=None):
    return ones(t.shape, dtype=dtype or t.dtype, device=device or t.device)


def _random(draw, shape, dtype, device, requires_grad):
    from nbdl.random import generator
    dtype = as_dtype(dtype) if dtype is not None else float32
    host = draw(generator(), _shape_arg(shape)).astype(dtype)
    return from_numpy(host, device=device, requires_grad=requires_grad)


def randn(*shape, dtype=None, device=None, requires_grad=False):
    """Standard normal samples from nbdl's global generator (same bits on every device)."""
    return _random(lambda g, s: g.standard_normal(s), shape, dtype, device, requires_grad)


def rand(*shape, dtype=None, device=None, requires_grad=False):
    """Uniform [0, 1) samples from nbdl's global generator."""
    return _random(lambda g, s: g.random(s), shape, dtype, device, requires_grad)


def arange(start, end=None, step=1, dtype=None, device=None):
    """[start, end) in steps of ``step``: int64 for int arguments, else float32 (like torch)."""
    if end is None:
        start, end = 0, start
    host = np.arange(start, end, step)
    if dtype is None and host.dtype.kind == "f":
        dtype = float32
    return tensor(host, dtype=dtype, device=device)


def is_tensor(x):
    return isinstance(x, Tensor)


def _is_scalar(x):
    return isinstance(x, numbers.Number) and not isinstance(x, bool) or isinstance(x, np.generic)
