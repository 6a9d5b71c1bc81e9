"""Differentiable recurrent layers: multi-layer, bidirectional RNN, LSTM and GRU, and their cells.

One call is one autograd node, like cuDNN's RNN: the forward runs the kernels of
``nbdl.kernels.rnn`` layer by layer (each layer and direction one kernel call over
the whole sequence), the backward runs their backward kernels in reverse.
Layouts, weight order and outputs are PyTorch's:

    input   (T, B, I), or (B, T, I) with batch_first, or (T, I) unbatched
    hx, cx  (L * D, B, H)  initial states; zeros when None (D = 2 if bidirectional)
    weights one (w_ih, w_hh, b_ih, b_hh) per layer and direction, in the order
            layer 0 forward, layer 0 reverse, layer 1 forward, ...; biases may be None
    output  (T, B, D * H): the last layer's states (both directions concatenated)
    h_n, c_n (L * D, B, H): the final states

Beyond PyTorch:
    lengths            one int per batch row: steps t >= lengths[b] leave row b's state
                       unchanged and give a zero output; h_n holds each row's state after
                       its own last step (the reverse direction starts there). This is
                       PyTorch's packed-sequence semantics without packing.
    recurrent_dropout  (LSTM, GRU; training only) variational dropout on the recurrent
                       state: one mask per sequence, layer and direction multiplies
                       h_{t-1} inside W_hh h_{t-1} (Gal & Ghahramani; Keras' recurrent_dropout).
    reset_after        (GRU) False: n = tanh(W_in x + b_in + W_hn (r * h) + b_hn), the
                       original (Cho et al.) and Keras reset_after=False form.
"""
import numpy as np

from nbdl.device import kernels
from nbdl.ops._checks import FLOATS, check_same_device, check_same_dtype, check_tensor
from nbdl.random import next_seed
from nbdl.tensor import Tensor, is_grad_enabled, make_multi, needs_grad

__all__ = ["rnn", "lstm", "gru", "rnn_cell", "lstm_cell", "gru_cell"]

_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


# --- argument checks (all before any kernel runs) -----------------------------------

def _check_rate(op, name, p):
    if type(p) is float and 0.0 <= p < 1.0:
        return p                    # the common case
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise TypeError(f"{op}: {name} must be a number in [0, 1), got {p!r}")
    if not 0.0 <= float(p) < 1.0:
        raise ValueError(f"{op}: {name} must be in [0, 1), got {p}")
    return float(p)


def _check_weights(op, cell, weights, num_layers, directions, x):
    """weights: num_layers * directions tuples (w_ih, w_hh, b_ih, b_hh); returns hidden size."""
    g = _GATES[cell]
    if len(weights) != num_layers * directions:
        raise ValueError(f"{op}: expected {num_layers * directions} weight tuples (num_layers={num_layers}, "
                         f"{directions} direction(s)), got {len(weights)}")
    hidden = None
    for k, w in enumerate(weights):
        if len(w) != 4:
            raise ValueError(f"{op}: weights[{k}] must be (w_ih, w_hh, b_ih, b_hh), got {len(w)} entries")
        w_ih, w_hh, b_ih, b_hh = w
        h = hidden if hidden is not None else (w_hh.shape[1] if isinstance(w_hh, Tensor) and w_hh.ndim == 2 else 0)
        if h > 0 and _weights_ok(w, x, h, g, x.shape[-1] if k < directions else directions * h):
            hidden = h
            continue                 # the checks below would pass: skip their cost (per call)
        check_tensor(op, f"weights[{k}][0] (w_ih)", w_ih, ndim=2, dtype="float")
        check_tensor(op, f"weights[{k}][1] (w_hh)", w_hh, ndim=2, dtype="float")
        if hidden is None:
            hidden = w_hh.shape[1]
        if k < directions and w_ih.shape[1] != x.shape[-1]:
            raise ValueError(f"{op}: input has {x.shape[-1]} features (shape {x.shape}) but the layer's "
                             f"input_size is {w_ih.shape[1]}")
        layer_input = x.shape[-1] if k < directions else directions * hidden
        want = {"w_ih": (g * hidden, layer_input), "w_hh": (g * hidden, hidden),
                "b_ih": (g * hidden,), "b_hh": (g * hidden,)}
        for name, t in zip(("w_ih", "w_hh", "b_ih", "b_hh"), w):
            if t is None and name in ("b_ih", "b_hh"):
                continue
            check_tensor(op, f"weights[{k}] {name}", t, dtype="float")
            if tuple(t.shape) != want[name]:
                raise ValueError(f"{op}: weights[{k}] {name} must have shape {want[name]} "
                                 f"(hidden_size={hidden}, layer input size {layer_input}), got {t.shape}")
            check_same_device(op, input=x, **{f"weights[{k}] {name}": t})
            check_same_dtype(op, input=x, **{f"weights[{k}] {name}": t})
    return hidden


def _weights_ok(w, x, hidden, g, layer_input):
    """Whether one (w_ih, w_hh, b_ih, b_hh) passes every check of _check_weights (read
    from the arrays: the Tensor properties cost more than the comparisons, per call)."""
    w_ih, w_hh, b_ih, b_hh = w
    dtype, device, rows = x.array.dtype, x.device, g * hidden
    return (_matches(w_ih, (rows, layer_input), dtype, device) and _matches(w_hh, (rows, hidden), dtype, device)
            and (b_ih is None or _matches(b_ih, (rows,), dtype, device))
            and (b_hh is None or _matches(b_hh, (rows,), dtype, device)))


def _matches(t, shape, dtype, device):
    return isinstance(t, Tensor) and t.array.shape == shape and t.array.dtype == dtype and t.device == device


def _check_state(op, name, s, shape, x, unbatched):
    if s is None:
        return None
    check_tensor(op, name, s, dtype="float")
    want = shape[:1] + shape[2:] if unbatched else shape
    if tuple(s.shape) != want:
        raise ValueError(f"{op}: {name} must have shape {want} (num_layers * num_directions, batch, hidden), "
                         f"got {s.shape}")
    check_same_device(op, input=x, **{name: s})
    check_same_dtype(op, input=x, **{name: s})
    return s


def _check_lengths(op, lengths, batch, steps):
    if lengths is None:
        return None
    arr = lengths.numpy() if isinstance(lengths, Tensor) else np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{op}: lengths must hold integers, got {arr.dtype}")
    if arr.shape != (batch,):
        raise ValueError(f"{op}: lengths must have one entry per batch row ({batch}), got shape {arr.shape}")
    if arr.min() < 1 or arr.max() > steps:
        raise ValueError(f"{op}: lengths must lie in [1, {steps}] (the sequence length), "
                         f"got min {arr.min()} and max {arr.max()}")
    return np.ascontiguousarray(arr, dtype=np.int64)


# --- array-level helpers (numpy on cpu, device arrays on cuda) ------------------------

def _concat_directions(E, a, b):
    """(T, B, H) x 2 -> (T, B, 2H): forward features first, like PyTorch."""
    both = E.zeros((2,) + tuple(a.shape), a.dtype)
    E.copy_into(both[0], a)
    E.copy_into(both[1], b)
    steps, batch, hidden = a.shape
    return E.permute(both, (1, 2, 0, 3)).reshape(steps, batch, 2 * hidden)


def _split_directions(E, g):
    """(T, B, 2H) -> two contiguous (T, B, H)."""
    steps, batch, h2 = g.shape
    parts = E.permute(g.reshape(steps, batch, 2, h2 // 2), (2, 0, 1, 3))
    return parts[0], parts[1]


def _stack(E, states, shape):
    """(B, H) x n -> (n, B, H), as ``shape``; a lone state is only reshaped."""
    if len(states) == 1:
        return states[0].reshape(shape)
    out = E.zeros((len(states),) + tuple(states[0].shape), states[0].dtype)
    for k, s in enumerate(states):
        E.copy_into(out[k], s)
    return out.reshape(shape)


def _as_array(E, t, shape, dtype):
    """A tensor's array as ``shape``, or zeros of ``shape`` when the tensor is None."""
    return E.zeros(shape, dtype) if t is None else t.array.reshape(shape)


def _arrays(w):
    """(w_ih, w_hh, b_ih, b_hh) tensors -> their arrays (None stays None)."""
    w_ih, w_hh, b_ih, b_hh = w
    return (w_ih.array, w_hh.array, None if b_ih is None else b_ih.array, None if b_hh is None else b_hh.array)


# --- the multi-layer op ------------------------------------------------------------------

class _Config:
    """Everything about a call that is not a tensor."""

    def __init__(self, cell, num_layers, bidirectional, nonlinearity, reset_after):
        self.cell = cell
        self.num_layers = num_layers
        self.directions = 2 if bidirectional else 1
        self.nonlinearity = nonlinearity
        self.reset_after = reset_after


def _layer_forward(K, cfg, x, h0, c0, w, reverse, lengths, mask):
    """One layer, one direction -> y, h_n, c_n (None but for LSTM), saved arrays."""
    w_ih, w_hh, b_ih, b_hh = w
    if cfg.cell == "rnn":
        y, h, hs = K.rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, cfg.nonlinearity, reverse, lengths)
        return y, h, None, (hs,)
    if cfg.cell == "lstm":
        y, h, c, *saved = K.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, reverse, lengths, mask)
        return y, h, c, saved
    y, h, *saved = K.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, cfg.reset_after, reverse, lengths, mask)
    return y, h, None, saved


def _layer_backward(K, cfg, dy, dh, dc, x, w, saved, reverse, lengths, mask, need_dx):
    """-> dx, dh0, dc0 (None but for LSTM), dw_ih, dw_hh, db_ih, db_hh."""
    w_ih, w_hh = w[0], w[1]
    if cfg.cell == "rnn":
        dx, dh0, *dw = K.rnn_backward(dy, dh, x, w_ih, w_hh, *saved, cfg.nonlinearity, reverse, lengths,
                                      need_dx)
        return (dx, dh0, None, *dw)
    if cfg.cell == "lstm":
        return K.lstm_backward(dy, dh, dc, x, w_ih, w_hh, *saved, reverse, lengths, mask, need_dx)
    dx, dh0, *dw = K.gru_backward(dy, dh, x, w_ih, w_hh, *saved, cfg.reset_after, reverse, lengths, mask,
                                  need_dx)
    return (dx, dh0, None, *dw)


class _Sequence:
    """One call of a recurrent op: the checked arguments, what the forward saves,
    and the backward through every layer and direction."""

    def __init__(self, op, cfg, input, hx, cx, weights, batch_first, dropout, training, recurrent_dropout,
                 lengths):
        check_tensor(op, "input", input, ndim=(2, 3), dtype="float")
        x = input.array                   # (read once: the Tensor properties cost per call)
        self.cfg, self.input, self.batch_first = cfg, input, batch_first
        self.unbatched = x.ndim == 2
        self.dropout = _check_rate(op, "dropout", dropout)
        recurrent_dropout = _check_rate(op, "recurrent_dropout", recurrent_dropout)
        if self.unbatched:
            self.steps, self.batch = x.shape[0], 1
        else:
            self.steps, self.batch = (x.shape[1], x.shape[0]) if batch_first else x.shape[:2]
        if self.steps < 1 or self.batch < 1:
            raise ValueError(f"{op}: input must hold at least one step and one batch row, got shape {input.shape}")
        self.weights = [tuple(w) for w in weights]
        n = cfg.num_layers * cfg.directions
        self.hidden = _check_weights(op, cfg.cell, self.weights, cfg.num_layers, cfg.directions, input)
        self.state_shape = (n, self.batch, self.hidden)
        self.hx = None if hx is None else _check_state(op, "hx", hx, self.state_shape, input, self.unbatched)
        self.cx = None if cx is None else _check_state(op, "cx", cx, self.state_shape, input, self.unbatched)
        self.lengths = None if lengths is None else _check_lengths(op, lengths, self.batch, self.steps)

        dev, self.dtype = input.device, x.dtype
        self.K, self.E = kernels("rnn", dev), kernels("elementwise", dev)
        self.D = kernels("dropout", dev) if self.dropout and training and cfg.num_layers > 1 else None
        self.masks = [None] * n
        if recurrent_dropout and training and cfg.cell != "rnn":
            self.masks = [self.K.recurrent_dropout_mask(self.batch, self.hidden, recurrent_dropout, next_seed(),
                                                        self.dtype) for _ in range(n)]
        self.w_arrays = [_arrays(w) for w in self.weights]

    def parents(self):
        tensors = [self.input] + [t for t in (self.hx, self.cx) if t is not None]
        return tensors + [t for w in self.weights for t in w if t is not None]

    # layout: the kernels take time-major (T, B, I) sequences
    def _to_time_major(self, a):
        if self.unbatched:
            return a.reshape(self.steps, 1, a.shape[1])
        return self.E.permute(a, (1, 0, 2)) if self.batch_first else a

    def _from_time_major(self, a, shape):
        if self.unbatched:
            return a.reshape(shape)
        return self.E.permute(a, (1, 0, 2)) if self.batch_first else a

    def forward(self):
        """Every layer and direction in turn -> [output, h_n] (+ c_n for LSTM), as arrays."""
        cfg, E, dirs = self.cfg, self.E, self.cfg.directions
        lstm = cfg.cell == "lstm"
        h0 = _as_array(E, self.hx, self.state_shape, self.dtype)
        c0 = _as_array(E, self.cx, self.state_shape, self.dtype) if lstm else None
        layer_in = self._to_time_major(self.input.array)
        self.layer_inputs, self.saved, self.drop_masks, h_n, c_n = [], [], [], [], []
        for layer in range(cfg.num_layers):
            outs = []
            for d in range(dirs):
                k = layer * dirs + d
                y, h, c, s = _layer_forward(self.K, cfg, layer_in, h0[k], None if c0 is None else c0[k],
                                            self.w_arrays[k], d == 1, self.lengths, self.masks[k])
                outs.append(y)
                self.saved.append(s)
                h_n.append(h)
                c_n.append(c)
            self.layer_inputs.append(layer_in)
            layer_in = outs[0] if dirs == 1 else _concat_directions(E, outs[0], outs[1])
            if self.D is not None and layer < cfg.num_layers - 1:
                layer_in, keep = self.D.dropout_forward(layer_in, self.dropout, next_seed())
                self.drop_masks.append(keep)
        steps, batch, hidden = self.steps, self.batch, self.hidden
        if self.unbatched:
            self.out_shape, final_shape = (steps, dirs * hidden), (self.state_shape[0], hidden)
        else:
            self.out_shape = (batch, steps, dirs * hidden) if self.batch_first else (steps, batch, dirs * hidden)
            final_shape = self.state_shape
        out = [self._from_time_major(layer_in, self.out_shape), _stack(E, h_n, final_shape)]
        return out + [_stack(E, c_n, final_shape)] if lstm else out

    def backward(self, grads):
        """Gradients of every parent from those of [output, h_n (, c_n)] (None: zero)."""
        cfg, E, dirs = self.cfg, self.E, self.cfg.directions
        zeros = lambda shape: E.zeros(shape, self.dtype)  # noqa: E731
        g = self._to_time_major(zeros(self.out_shape) if grads[0] is None else grads[0])
        dh_n = zeros(self.state_shape) if grads[1] is None else grads[1].reshape(self.state_shape)
        dc_n = None
        if cfg.cell == "lstm":
            dc_n = zeros(self.state_shape) if grads[2] is None else grads[2].reshape(self.state_shape)
        n = cfg.num_layers * dirs
        dh0, dc0, dws = [None] * n, [None] * n, [None] * n
        for layer in range(cfg.num_layers - 1, -1, -1):
            if self.D is not None and layer < cfg.num_layers - 1:
                g = self.D.dropout_backward(g, self.drop_masks[layer], self.dropout)
            gs = [g] if dirs == 1 else _split_directions(E, g)
            need_dx = layer > 0 or self.input.requires_grad
            dx = None
            for d in range(dirs):
                k = layer * dirs + d
                r = _layer_backward(self.K, cfg, gs[d], dh_n[k], None if dc_n is None else dc_n[k],
                                    self.layer_inputs[layer], self.w_arrays[k], self.saved[k], d == 1,
                                    self.lengths, self.masks[k], need_dx)
                dh0[k], dc0[k], dws[k] = r[1], r[2], r[3:]
                if need_dx:
                    dx = r[0] if dx is None else E.axpy(1.0, r[0], dx)
            g = dx
        result = [self._from_time_major(g, self.input.shape) if self.input.requires_grad else None]
        for t, parts in ((self.hx, dh0), (self.cx, dc0)):
            if t is not None:
                result.append(_stack(E, parts, t.shape))
        for w, dw in zip(self.weights, dws):
            result += [gw for t, gw in zip(w, dw) if t is not None]
        return tuple(result)


def _recurrent(op, cfg, input, hx, cx, weights, batch_first, dropout, training, recurrent_dropout, lengths):
    """Validate, run every layer and direction, record one backward for all of them."""
    outs = _plain_inference(cfg, input, hx, cx, weights, batch_first, dropout, training, recurrent_dropout,
                            lengths)
    if outs is not None:
        return outs
    run = _Sequence(op, cfg, input, hx, cx, weights, batch_first, dropout, training, recurrent_dropout, lengths)
    outs = run.forward()
    parents = run.parents() if is_grad_enabled() else ()
    if not needs_grad(*parents):
        return make_multi(outs, (), None, device=input.device)
    return make_multi(outs, parents, run.backward)


def _plain_inference(cfg, input, hx, cx, weights, batch_first, dropout, training, recurrent_dropout,
                     lengths):
    """The output tensors of the plainest call, or None for any other: one layer, one
    direction, a batched time-major input, zero initial states, every step of every row, no
    recurrent dropout, and nothing to record for a backward (no grad mode, or nothing
    requiring grad). That call is one kernel call; here it goes straight to it. Whatever is
    not plainly such a call, valid arguments included, returns None, and _Sequence checks
    it (and raises) as always.

    Why: right after a kernel, Python runs about twice as slowly as on its own (the
    kernel leaves it cold in the caches), and a latency-bound call pays that on every
    line. For a 100-step LSTM at batch 1 and hidden size 128 (about 190 us in the kernel
    and its host), the general path measured about 20 us over a bare kernel call, this
    one about 10."""
    if not (cfg.num_layers == 1 and cfg.directions == 1 and hx is None and cx is None and lengths is None
            and batch_first is False and type(input) is Tensor and type(weights) in (list, tuple)
            and len(weights) == 1 and type(weights[0]) in (list, tuple) and len(weights[0]) == 4
            and type(dropout) in (float, int) and 0 <= dropout < 1
            and type(recurrent_dropout) in (float, int) and 0 <= recurrent_dropout < 1
            and not (recurrent_dropout and training)):
        return None
    x = input.array
    w = weights[0]
    if x.ndim != 3 or x.dtype not in FLOATS or not isinstance(w[1], Tensor) or len(w[1].array.shape) != 2:
        return None
    steps, batch, features = x.shape
    hidden = w[1].array.shape[1]
    if steps < 1 or batch < 1 or hidden < 1 or not _weights_ok(w, input, hidden, _GATES[cfg.cell], features):
        return None
    if is_grad_enabled() and (input.requires_grad or any(t is not None and t.requires_grad for t in w)):
        return None
    K, E = kernels("rnn", input.device), kernels("elementwise", input.device)
    w_ih, w_hh, b_ih, b_hh = _arrays(w)
    h0 = E.zeros((batch, hidden), x.dtype)
    if cfg.cell == "lstm":
        y, h, c = K.lstm_forward(x, h0, h0, w_ih, w_hh, b_ih, b_hh, False, None, None)[:3]
        return make_multi([y, h.reshape(1, batch, hidden), c.reshape(1, batch, hidden)], (), None, input.device)
    if cfg.cell == "gru":
        y, h = K.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, cfg.reset_after, False, None, None)[:2]
    else:
        y, h = K.rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, cfg.nonlinearity, False, None)[:2]
    return make_multi([y, h.reshape(1, batch, hidden)], (), None, input.device)


def _result(cfg, outs):
    if cfg.cell == "lstm":
        return outs[0], (outs[1], outs[2])
    return outs[0], outs[1]


def _check_layers(op, num_layers):
    if isinstance(num_layers, bool) or not isinstance(num_layers, (int, np.integer)) or num_layers < 1:
        raise ValueError(f"{op}: num_layers must be a positive int, got {num_layers!r}")
    return int(num_layers)


def rnn(input, hx, weights, num_layers=1, nonlinearity="tanh", batch_first=False, dropout=0.0,
        training=False, bidirectional=False, lengths=None):
    """Elman RNN: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), act = tanh or relu.

    Returns (output, h_n); shapes in the module docstring.
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"rnn: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    cfg = _Config("rnn", _check_layers("rnn", num_layers), bidirectional, nonlinearity, True)
    return _result(cfg, _recurrent("rnn", cfg, input, hx, None, weights, batch_first, dropout, training,
                                   0.0, lengths))


def lstm(input, hx, weights, num_layers=1, batch_first=False, dropout=0.0, training=False,
         bidirectional=False, recurrent_dropout=0.0, lengths=None):
    """LSTM (gates i, f, g, o): c_t = f c_{t-1} + i g, h_t = o tanh(c_t).

    hx: None or a pair (h_0, c_0), either of which may be None. Returns (output, (h_n, c_n)).
    """
    h0, c0 = (None, None) if hx is None else hx
    cfg = _Config("lstm", _check_layers("lstm", num_layers), bidirectional, "tanh", True)
    return _result(cfg, _recurrent("lstm", cfg, input, h0, c0, weights, batch_first, dropout, training,
                                   recurrent_dropout, lengths))


def gru(input, hx, weights, num_layers=1, batch_first=False, dropout=0.0, training=False,
        bidirectional=False, recurrent_dropout=0.0, lengths=None, reset_after=True):
    """GRU (gates r, z, n): h_t = (1 - z) n + z h_{t-1}; reset_after picks where r applies.

    Returns (output, h_n).
    """
    cfg = _Config("gru", _check_layers("gru", num_layers), bidirectional, "tanh", bool(reset_after))
    return _result(cfg, _recurrent("gru", cfg, input, hx, None, weights, batch_first, dropout, training,
                                   recurrent_dropout, lengths))


# --- cells: one step -----------------------------------------------------------------

def _cell(op, cfg, input, h, c, w):
    """A cell is a one-step, one-layer sequence: input (B, I) or (I,), states (B, H) or (H,)."""
    check_tensor(op, "input", input, ndim=(1, 2), dtype="float")
    seq = input.reshape(1, *input.shape)
    hs = None if h is None else h.reshape(1, *h.shape)
    cs = None if c is None else c.reshape(1, *c.shape)
    outs = _recurrent(op, cfg, seq, hs, cs, [w], False, 0.0, False, 0.0, None)
    states = [o.reshape(*o.shape[1:]) for o in outs[1:]]
    return states[0] if cfg.cell != "lstm" else (states[0], states[1])


def rnn_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh"):
    """One Elman step: h' = act(W_ih x + b_ih + W_hh h + b_hh). hx None means zeros."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"rnn_cell: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return _cell("rnn_cell", _Config("rnn", 1, False, nonlinearity, True), input, hx, None,
                 (w_ih, w_hh, b_ih, b_hh))


def lstm_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """One LSTM step; hx None or (h, c). Returns (h', c')."""
    h, c = (None, None) if hx is None else hx
    return _cell("lstm_cell", _Config("lstm", 1, False, "tanh", True), input, h, c, (w_ih, w_hh, b_ih, b_hh))


def gru_cell(input, hx, w_ih, w_hh, b_ih=None, b_hh=None, reset_after=True):
    """One GRU step. Returns h'."""
    return _cell("gru_cell", _Config("gru", 1, False, "tanh", bool(reset_after)), input, hx, None,
                 (w_ih, w_hh, b_ih, b_hh))
