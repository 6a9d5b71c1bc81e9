"""Recurrent layers over a whole sequence: one layer, one direction per call.

Layouts are PyTorch's, so weights load across::

    x       (T, B, I)    time-major input sequence
    h0, c0  (B, H)       initial states
    w_ih    (G*H, I)     input weights, gate blocks stacked along rows
    w_hh    (G*H, H)     recurrent weights
    b_ih, b_hh (G*H,)    the two biases (None: no bias)

    G = 1  rnn_tanh / rnn_relu   h' = act(W_ih x + b_ih + W_hh h + b_hh)
    G = 4  lstm, gates i, f, g, o
           i, f, o = sigmoid(.), g = tanh(.);  c' = f c + i g;  h' = o tanh(c')
    G = 3  gru, gates r, z, n
           r, z = sigmoid(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z})
           reset_after=True  (PyTorch, cuDNN):  n = tanh(W_in x + b_in + r (W_hn h + b_hn))
           reset_after=False (Cho et al., Keras reset_after=False):
                                                n = tanh(W_in x + b_in + W_hn (r h) + b_hn)
           h' = (1 - z) n + z h

How it runs (both backends): the input projection of all T steps is one GEMM
(T*B, I) x (I, G*H) before the time loop; each step is the recurrent product plus
the fused gate math; the backward pass walks the steps in reverse, collecting the
pre-activation gradients of every step, and the weight gradients are then one
GEMM each over all T*B rows. On CUDA the whole time loop is one cooperative
kernel (see cuda.py); on the CPU one compiled time loop (see cpu.py).

Options shared by every cell:

- ``reverse``: run the sequence from t = T-1 down to 0 (the backward direction of
  a bidirectional layer). Outputs stay in time order.
- ``lengths`` (host int array (B,), 1 <= lengths[b] <= T, or None for all T): step
  t is active for row b when t < lengths[b]. An inactive step leaves the row's
  state unchanged and writes a zero output, so h_n is the state after each row's
  own last step (in reverse, the row starts at its own last step). The array
  lives on the host on both backends: it is metadata, like a shape.
- ``mask`` ((B, H) or None, LSTM and GRU): recurrent dropout. The recurrent
  product uses h * mask in place of h (one mask for the whole sequence).

Saved state (returned by the forward, handed back to the backward):

- ``hs`` (T+1, B, H): the states in time order. Forward direction: hs[0] = h0 and
  hs[t+1] = state after step t; reverse: hs[T] = h0 and hs[t] = state after step t.
  So the state entering step t is hs[t] (forward) or hs[t+1] (reverse).
- lstm: ``cs`` (T+1, B, H) cell states, same slots; ``gates`` (T, B, 4H): i, f, g, o
  after their activations.
- gru: ``gates`` (T, B, 4H): r, z, n and a fourth block, W_hn h + b_hn
  (reset_after) or r * h (reset_after=False), the operand the backward needs.
"""
import numpy as np

from nbdl.kernels._checks import FLOAT_DTYPES, check_array, check_finite, check_float, check_int, check_positive_int

GATES = {"rnn": 1, "lstm": 4, "gru": 3}
NONLINEARITIES = ("tanh", "relu")


def check_nonlinearity(op, nonlinearity):
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"{op}: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return nonlinearity


_ALL_STEPS = {}     # (B, T) -> the lengths array of None, kept: the kernels only read it


def check_lengths(op, lengths, batch, steps):
    """None, or B integers in [1, T]; returns an int64 host array (B,), which the caller
    must not write (for None, the array is shared between calls)."""
    if lengths is None:
        full = _ALL_STEPS.get((batch, steps))
        if full is None:
            if len(_ALL_STEPS) >= 64:
                _ALL_STEPS.clear()
            full = _ALL_STEPS[batch, steps] = np.full(batch, steps, dtype=np.int64)
        return full
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{op}: lengths must be integers, got dtype {arr.dtype}")
    if arr.shape != (batch,):
        raise ValueError(f"{op}: lengths must have one entry per batch row, shape ({batch},), "
                         f"got shape {arr.shape}")
    if batch and (arr.min() < 1 or arr.max() > steps):
        raise ValueError(f"{op}: lengths must lie in [1, {steps}] (the sequence length), "
                         f"got min {arr.min()} and max {arr.max()}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def check_forward(op, cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, mask=None, states=("h0", "c0")):
    """Validate one layer's forward arguments; return (T, B, I, H, dtype).

    cell: "rnn", "lstm" or "gru" (G = 1, 4, 3 gate blocks). states: the names of
    h0 and c0 in messages (the backward passes its dh_n and dc_n there).
    """
    g = GATES[cell]
    if cell == "lstm" and c0 is None:
        raise TypeError(f"{op}: {states[1]} must be an array (B, H), got None")
    if _forward_ok(g, x, h0, c0, w_ih, w_hh, b_ih, b_hh, mask):
        return x.shape + (w_hh.shape[1], x.dtype)   # the checks below would pass (per call)
    check_array(op, "x", x, ndim=3, dtype="float")
    check_array(op, "w_hh", w_hh, ndim=2, dtype="float")
    steps, batch, inputs = x.shape
    rows, hidden = w_hh.shape
    if rows != g * hidden or hidden < 1:
        raise ValueError(f"{op}: w_hh must have shape ({g}*H, H) for {cell}, got {tuple(w_hh.shape)}")
    if steps < 1 or batch < 1:
        raise ValueError(f"{op}: x must hold at least one step and one batch row, got shape {tuple(x.shape)}")
    check_array(op, "w_ih", w_ih, shape=(g * hidden, inputs), dtype="float")
    check_array(op, states[0], h0, shape=(batch, hidden), dtype="float")
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            check_array(op, name, b, shape=(g * hidden,), dtype="float")
    if c0 is not None:
        check_array(op, states[1], c0, shape=(batch, hidden), dtype="float")
    if mask is not None:
        check_array(op, "mask", mask, shape=(batch, hidden), dtype="float")
    dtype = check_float(op, x=x, **{states[0]: h0, states[1]: c0}, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh,
                        mask=mask)
    return steps, batch, inputs, hidden, dtype


def _forward_ok(g, x, h0, c0, w_ih, w_hh, b_ih, b_hh, mask):
    """Whether numpy arguments pass every check of check_forward."""
    if not (type(x) is np.ndarray and x.ndim == 3 and x.dtype in FLOAT_DTYPES and type(w_hh) is np.ndarray
            and w_hh.ndim == 2):
        return False
    steps, batch, inputs = x.shape
    hidden = w_hh.shape[1]
    rows, state, dtype = g * hidden, (batch, hidden), x.dtype
    return (steps >= 1 and batch >= 1 and hidden >= 1 and _is(x, x.shape, dtype)
            and _is(w_hh, (rows, hidden), dtype) and _is(w_ih, (rows, inputs), dtype) and _is(h0, state, dtype)
            and (c0 is None or _is(c0, state, dtype)) and (b_ih is None or _is(b_ih, (rows,), dtype))
            and (b_hh is None or _is(b_hh, (rows,), dtype)) and (mask is None or _is(mask, state, dtype)))


def _is(a, shape, dtype):
    """a is a C-contiguous numpy array of this shape and dtype."""
    return type(a) is np.ndarray and a.shape == shape and a.dtype == dtype and a.flags.c_contiguous


def check_backward(op, dy, dh_n, dc_n, x, saved, shapes):
    """Validate upstream gradients and saved arrays; shapes: name -> expected shape."""
    steps, batch, _ = x.shape
    check_array(op, "dh_n", dh_n, ndim=2, dtype="float")
    hidden = dh_n.shape[1]
    check_array(op, "dh_n", dh_n, shape=(batch, hidden))
    check_array(op, "dy", dy, shape=(steps, batch, hidden), dtype="float")
    if dc_n is not None:
        check_array(op, "dc_n", dc_n, shape=(batch, hidden), dtype="float")
    for name, arr in saved.items():
        check_array(op, name, arr, shape=shapes[name], dtype="float")
    check_float(op, dy=dy, dh_n=dh_n, dc_n=dc_n, x=x, **saved)


def check_mask_args(op, batch, hidden, p, seed):
    """Arguments of recurrent_dropout_mask; returns p as a float."""
    check_positive_int(op, "batch", batch)
    check_positive_int(op, "hidden", hidden)
    check_int(op, "seed", seed, minimum=0)
    return check_finite(op, "p", p, minimum=0.0, maximum=1.0, open_max=True)


def splitmix_uniform(seed, index):
    """A uniform float64 in [0, 1) from (seed, index): splitmix64 of seed + (index + 1) * golden.

    Plain Python on numpy integers; each backend compiles it (njit / cuda device
    function), so a CPU and a CUDA mask drawn from one seed are the same bits.
    """
    z = np.uint64(seed) + np.uint64(index + 1) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)    # 53 bits / 2^53
