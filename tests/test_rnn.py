"""RNN / LSTM / GRU: kernels and layers against a step-by-step numpy reference,
BPTT gradient checks, PyTorch parity (weights load across), variable lengths,
recurrent dropout, bad input, and small sequence tasks that train."""
import numpy as np
import pytest

import nbdl
import nbdl.functional as F
from gradcheck import gradcheck
from nbdl import nn
from nbdl.device import kernels
from nbdl.random import next_seed

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


# --- the numpy reference: one step at a time ---------------------------------------------

def np_sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def np_step(cell, x, h, c, w, mask=None, nonlinearity="tanh", reset_after=True):
    """One step for every row: returns (h', c'). w = (w_ih, w_hh, b_ih, b_hh), biases may be None."""
    w_ih, w_hh, b_ih, b_hh = w
    b_ih = np.zeros(w_ih.shape[0]) if b_ih is None else b_ih
    b_hh = np.zeros(w_ih.shape[0]) if b_hh is None else b_hh
    hm = h if mask is None else h * mask            # recurrent dropout acts inside W_hh h only
    xp = x @ w_ih.T + b_ih
    if cell == "rnn":
        a = xp + hm @ w_hh.T + b_hh
        return (np.tanh(a) if nonlinearity == "tanh" else np.maximum(a, 0.0)), None
    if cell == "lstm":
        i, f, g, o = np.split(xp + hm @ w_hh.T + b_hh, 4, axis=1)
        c2 = np_sigmoid(f) * c + np_sigmoid(i) * np.tanh(g)
        return np_sigmoid(o) * np.tanh(c2), c2
    xr, xz, xn = np.split(xp, 3, axis=1)
    (w_r, w_z, w_n), (b_r, b_z, b_n) = np.split(w_hh, 3), np.split(b_hh, 3)
    r = np_sigmoid(xr + hm @ w_r.T + b_r)
    z = np_sigmoid(xz + hm @ w_z.T + b_z)
    n = np.tanh(xn + r * (hm @ w_n.T + b_n)) if reset_after else np.tanh(xn + (r * hm) @ w_n.T + b_n)
    return (1 - z) * n + z * h, None


def np_rnn(cell, x, weights, h0=None, c0=None, num_layers=1, bidirectional=False, batch_first=False,
           lengths=None, masks=None, nonlinearity="tanh", reset_after=True):
    """Multi-layer, bidirectional reference; a row stops at its length (state kept, output 0)."""
    if batch_first:
        x = x.transpose(1, 0, 2)
    steps, batch, _ = x.shape
    dirs = 2 if bidirectional else 1
    hidden = weights[0][1].shape[1]
    lengths = np.full(batch, steps) if lengths is None else np.asarray(lengths)
    zeros = np.zeros((num_layers * dirs, batch, hidden))
    h0 = zeros if h0 is None else h0
    c0 = zeros if c0 is None else c0
    inp, h_n, c_n = x, [], []
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            h, c, y = h0[k], c0[k], np.zeros((steps, batch, hidden))
            for t in (range(steps - 1, -1, -1) if d else range(steps)):
                active = (t < lengths)[:, None]
                h2, c2 = np_step(cell, inp[t], h, c, weights[k], None if masks is None else masks[k],
                                 nonlinearity, reset_after)
                h = np.where(active, h2, h)
                c = np.where(active, c2, c) if cell == "lstm" else c
                y[t] = np.where(active, h2, 0.0)
            outs.append(y)
            h_n.append(h)
            c_n.append(c)
        inp = np.concatenate(outs, axis=2)
    out = inp.transpose(1, 0, 2) if batch_first else inp
    return out, np.stack(h_n), np.stack(c_n)


def np_weights(module):
    """(w_ih, w_hh, b_ih, b_hh) per layer and direction, as numpy, PyTorch's order."""
    sd = module.state_dict()
    out = []
    for layer in range(module.num_layers):
        for d in range(2 if module.bidirectional else 1):
            s = f"_l{layer}" + ("_reverse" if d else "")
            out.append(tuple(sd.get(n + s) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))
    return out


def make(cell, *args, **kwargs):
    cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
    return cls(*args, **kwargs)


def t(a, device, grad=False):
    return nbdl.tensor(a, device=device, requires_grad=grad)


# --- forward against the reference ------------------------------------------------------

CONFIGS = [
    # cell, kwargs of the layer, lengths, initial states
    ("lstm", dict(num_layers=2, bidirectional=True), [3, 1], True),
    ("lstm", dict(bias=False, batch_first=True), None, False),
    ("gru", dict(bidirectional=True, batch_first=True), [2, 3], False),
    ("gru", dict(num_layers=2, reset_after=False, bias=False), None, True),
    ("gru", dict(reset_after=False, bidirectional=True), [1, 3], True),
    ("rnn", dict(num_layers=2, nonlinearity="relu", bidirectional=True), None, True),
    ("rnn", dict(batch_first=True), [2, 3], False),
]


@pytest.mark.parametrize("cell, kw, lengths, init", CONFIGS)
def test_forward_matches_numpy_reference(device, rng, cell, kw, lengths, init):
    steps, batch, inputs, hidden = 3, 2, 3, 4
    m = make(cell, inputs, hidden, dtype=nbdl.float64, device=device, **kw)
    dirs = 2 if kw.get("bidirectional") else 1
    states = (kw.get("num_layers", 1) * dirs, batch, hidden)
    x = rng.standard_normal((batch, steps, inputs) if kw.get("batch_first") else (steps, batch, inputs))
    h0, c0 = (rng.standard_normal(states), rng.standard_normal(states)) if init else (None, None)
    hx = None
    if init:
        hx = (t(h0, device), t(c0, device)) if cell == "lstm" else t(h0, device)
    out, hn = m(t(x, device), hx, lengths=lengths)
    ref_out, ref_h, ref_c = np_rnn(cell, x, np_weights(m), h0, c0, lengths=lengths,
                                   nonlinearity=kw.get("nonlinearity", "tanh"),
                                   reset_after=kw.get("reset_after", True),
                                   **{k: v for k, v in kw.items() if k in ("num_layers", "bidirectional",
                                                                          "batch_first")})
    assert out.shape == ref_out.shape and out.device == nbdl.device.normalize(device)
    np.testing.assert_allclose(out.numpy(), ref_out, rtol=1e-10, atol=1e-12)
    if cell == "lstm":
        np.testing.assert_allclose(hn[0].numpy(), ref_h, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(hn[1].numpy(), ref_c, rtol=1e-10, atol=1e-12)
    else:
        np.testing.assert_allclose(hn.numpy(), ref_h, rtol=1e-10, atol=1e-12)


def test_float32_forward_and_backward(rng):
    """The CPU fast path (float32: vectorized sigmoid/tanh, register-blocked GEMM) against float64."""
    for cell in ("lstm", "gru"):
        m = make(cell, 5, 6)
        x = rng.standard_normal((4, 5, 5)).astype(np.float32)
        out, _ = m(t(x, "cpu"))
        assert out.dtype == np.float32
        ref = np_rnn(cell, x.astype(np.float64), [tuple(None if w is None else w.astype(np.float64) for w in ws)
                                                  for ws in np_weights(m)])[0]
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)
        out.sum().backward()
        assert all(p.grad is not None and p.grad.dtype == np.float32 for p in m.parameters())


def test_unbatched_input_and_cells(device, rng):
    """(T, I) input and one-step cells, batched (B, I) and unbatched (I,), like PyTorch."""
    m = nn.GRU(3, 4, dtype=nbdl.float64, device=device)
    x = rng.standard_normal((3, 3))
    out, hn = m(t(x, device))
    ref_out, ref_h, _ = np_rnn("gru", x[:, None], np_weights(m))
    assert out.shape == (3, 4) and hn.shape == (1, 4)
    np.testing.assert_allclose(out.numpy(), ref_out[:, 0], rtol=1e-10, atol=1e-12)
    for cls, cell, kw in ((nn.RNNCell, "rnn", dict(nonlinearity="relu")), (nn.LSTMCell, "lstm", {}),
                          (nn.GRUCell, "gru", dict(reset_after=False))):
        c = cls(3, 4, dtype=nbdl.float64, device=device, **kw)
        w = (c.weight_ih.numpy(), c.weight_hh.numpy(), c.bias_ih.numpy(), c.bias_hh.numpy())
        xb, hb, cb = rng.standard_normal((2, 3)), rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
        ref = np_step(cell, xb, hb, cb, w, nonlinearity=kw.get("nonlinearity", "tanh"),
                      reset_after=kw.get("reset_after", True))
        got = c(t(xb, device), (t(hb, device), t(cb, device)) if cell == "lstm" else t(hb, device))
        got = got if cell == "lstm" else (got,)
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g.numpy(), r, rtol=1e-10, atol=1e-12)
        one = c(t(xb[0], device))                                   # unbatched, zero state
        ref1 = np_step(cell, xb[:1], np.zeros((1, 4)), np.zeros((1, 4)), w,
                       nonlinearity=kw.get("nonlinearity", "tanh"), reset_after=kw.get("reset_after", True))
        h1 = one[0] if cell == "lstm" else one
        assert h1.shape == (4,)
        np.testing.assert_allclose(h1.numpy(), ref1[0][0], rtol=1e-10, atol=1e-12)


# --- gradients --------------------------------------------------------------------------

def random_weights(rng, cell, inputs, hidden, num_layers=1, dirs=1, device="cpu", bias=True):
    """Flat list w_ih, w_hh, b_ih, b_hh per layer and direction (requires_grad float64 tensors)."""
    g = GATES[cell] * hidden
    flat = []
    for layer in range(num_layers):
        for _ in range(dirs):
            shapes = [(g, inputs if layer == 0 else dirs * hidden), (g, hidden)] + ([(g,), (g,)] if bias else [])
            flat += [t(rng.uniform(-0.7, 0.7, s), device, True) for s in shapes]
    return flat


def grouped(flat, bias=True):
    """Flat weights -> [(w_ih, w_hh, b_ih, b_hh)] per layer and direction."""
    if bias:
        return [tuple(flat[k:k + 4]) for k in range(0, len(flat), 4)]
    return [(flat[k], flat[k + 1], None, None) for k in range(0, len(flat), 2)]


FUNCTIONAL = {"rnn": F.rnn, "lstm": F.lstm, "gru": F.gru}


@pytest.mark.parametrize("cell, kw", [("lstm", {}), ("gru", {}), ("gru", dict(reset_after=False)),
                                      ("rnn", dict(nonlinearity="tanh"))])
def test_bptt_gradcheck_long_sequence(rng, cell, kw):
    """Exact BPTT over 24 steps: every gradient of the 24-step unroll, elementwise, in float64."""
    steps, batch, inputs, hidden = 24, 2, 2, 2
    x = t(rng.standard_normal((steps, batch, inputs)), "cpu", True)
    h0 = t(rng.standard_normal((1, batch, hidden)), "cpu", True)
    c0 = t(rng.standard_normal((1, batch, hidden)), "cpu", True)
    flat = random_weights(rng, cell, inputs, hidden)

    def fn(x, h0, c0, *flat):
        out, hn = FUNCTIONAL[cell](x, (h0, c0) if cell == "lstm" else h0, grouped(flat), **kw)
        return out, (hn[1] if cell == "lstm" else hn)

    gradcheck(fn, [x, h0, c0 if cell == "lstm" else t(np.zeros(1), "cpu"), *flat], atol=1e-7)


def test_gradcheck_every_flag(rng):
    """Two bidirectional layers, batch_first, lengths, recurrent dropout (masks held fixed by
    reseeding), initial states, no bias (GRU): gradients of the input, the states and weights
    of both layers and directions."""
    for cell, kw in (("lstm", {}), ("gru", dict(reset_after=False))):
        x = t(rng.standard_normal((3, 4, 2)), "cpu", True)
        h0 = t(rng.standard_normal((4, 3, 2)), "cpu", True)
        c0 = t(rng.standard_normal((4, 3, 2)), "cpu", True)
        flat = random_weights(rng, cell, 2, 2, num_layers=2, dirs=2, bias=cell == "lstm")
        per = len(flat) // 4                           # tensors per layer and direction
        for w in flat[:per] + flat[2 * per:]:          # checked: all of layer 0's reverse direction
            w.requires_grad = False                    # and layer 1's forward w_hh (the rest runs
        flat[2 * per + 1].requires_grad = True         # the same code)

        def fn(x, h0, c0, *flat):
            nbdl.manual_seed(7)                            # the same dropout masks at every call
            out, hn = FUNCTIONAL[cell](x, (h0, c0) if cell == "lstm" else h0, grouped(flat, cell == "lstm"),
                                       num_layers=2, bidirectional=True, batch_first=True, training=True,
                                       recurrent_dropout=0.3, lengths=[4, 1, 3], **kw)
            return out, hn[0] if cell == "lstm" else hn

        gradcheck(fn, [x, h0, c0 if cell == "lstm" else t(np.zeros(1), "cpu"), *flat], atol=1e-7)


def test_lstm_gradcheck_tiled_batch(rng):
    """The CPU backward's tiled paths (a step's gradients move into the transposed layout in
    lanes x lanes tiles, 8 x 8 in float64 with AVX-512, and value by value at the edges):
    batch 9 and 10 units, with lengths, along random directions."""
    steps, batch, inputs, hidden = 3, 9, 3, 10
    x = t(rng.standard_normal((steps, batch, inputs)), "cpu", True)
    h0 = t(rng.standard_normal((1, batch, hidden)), "cpu", True)
    c0 = t(rng.standard_normal((1, batch, hidden)), "cpu", True)
    flat = random_weights(rng, "lstm", inputs, hidden)

    def fn(x, h0, c0, *flat):
        out, hn = FUNCTIONAL["lstm"](x, (h0, c0), grouped(flat), lengths=[3, 1, 2, 3, 3, 2, 1, 3, 2])
        return out, hn[1]

    gradcheck(fn, [x, h0, c0, *flat], atol=1e-7, n_directions=4)


def test_gradcheck_cuda_random_directions(rng):
    """The CUDA kernels' BPTT along random directions (simulator: tiny sizes, few inputs)."""
    if not nbdl.cuda_available():
        pytest.skip("no CUDA (not even the simulator)")
    for cell, kw in (("lstm", dict(training=True, recurrent_dropout=0.5)), ("gru", dict(reset_after=False))):
        x = t(rng.standard_normal((2, 2, 2)), "cuda", True)
        flat = random_weights(rng, cell, 2, 2, device="cuda")
        for w in flat[2:]:
            w.requires_grad = False

        def fn(x, w_ih, w_hh):
            nbdl.manual_seed(3)
            return FUNCTIONAL[cell](x, None, [(w_ih, w_hh, flat[2], flat[3])], lengths=[2, 1], **kw)[0]

        gradcheck(fn, [x, flat[0], flat[1]], n_directions=1, atol=1e-7)


def test_cpu_and_cuda_give_the_same_gradients(rng):
    if not nbdl.cuda_available():
        pytest.skip("no CUDA (not even the simulator)")
    grads = {}
    x = rng.standard_normal((3, 2, 2))
    for device in ("cpu", "cuda"):
        nbdl.manual_seed(1)
        m = nn.LSTM(2, 3, bidirectional=True, recurrent_dropout=0.4, dtype=nbdl.float64, device=device)
        out, (hn, cn) = m(t(x, device), lengths=[2, 3])
        (out.sum() + (hn * hn).sum() + cn.sum()).backward()
        grads[device] = [out.numpy()] + [p.grad.numpy() for p in m.parameters()]
    for a, b in zip(grads["cpu"], grads["cuda"]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("shape", [(3, 6, 3, 5), (50, 5, 4, 300), (3, 66, 4, 300)])
def test_cuda_sequence_kernels_match_the_cpu_kernels(rng, shape):
    """The CUDA sequence kernels give the cpu kernels' results (float64), forward and
    backward, for every cell, with lengths, masks and both directions.

    (3, 6, 3, 5): two chunks of batch rows, the second of two (simulator and GPU). On a
    GPU, where the hidden units are split between blocks (one per multiprocessor):
    (50, 5, 4, 300), blocks owning several units over 50 grid barriers a direction;
    (3, 66, 4, 300), phases taking several rounds of dot-product groups."""
    if not nbdl.cuda_available():
        pytest.skip("no CUDA")
    from numba import config, cuda
    if config.ENABLE_CUDASIM and shape[3] > 5:
        pytest.skip("a GPU size: the simulator runs one block, one Python thread a GPU thread")
    cpu, gpu = kernels("rnn", "cpu"), kernels("rnn", "cuda")
    steps, batch, inputs, hidden = shape
    lengths = rng.integers(1, steps + 1, batch)
    lengths[0] = steps
    mask = (rng.random((batch, hidden)) > 0.3) / 0.7
    active = (np.arange(steps)[:, None] < lengths[None, :])[:, :, None]      # (T, B, 1)
    for cell, gates, kw in (("rnn", 1, dict(nonlinearity="tanh")), ("lstm", 4, dict(mask=mask)),
                            ("gru", 3, dict(mask=mask, reset_after=True)),
                            ("gru", 3, dict(mask=mask, reset_after=False))):
        for reverse in (False, True):
            x = rng.standard_normal((steps, batch, inputs))
            h0, c0 = rng.standard_normal((2, batch, hidden))
            w = [rng.standard_normal((gates * hidden, n)) / np.sqrt(n) for n in (inputs, hidden)]
            b = [rng.standard_normal(gates * hidden) * 0.1 for _ in range(2)]
            states = (h0, c0) if cell == "lstm" else (h0,)
            args = (x, *states, *w, *b)
            opts = dict(kw, reverse=reverse, lengths=lengths)
            ref = getattr(cpu, cell + "_forward")(*args, **opts)
            out = [o.copy_to_host() for o in getattr(gpu, cell + "_forward")(*[cuda.to_device(a) for a in args],
                                                                              **opts)]
            n_states = 2 * len(states) + 1       # y, the final states and the saved states
            for r, o in zip(ref[:n_states], out[:n_states]):
                np.testing.assert_allclose(o, r, rtol=1e-10, atol=1e-12)
            for r, o in zip(ref[n_states:], out[n_states:]):        # gates, aux: set on active steps
                np.testing.assert_allclose(np.where(active, o, 0.0), np.where(active, r, 0.0), rtol=1e-10,
                                           atol=1e-12)
            dy = rng.standard_normal((steps, batch, hidden))
            d_states = tuple(rng.standard_normal((batch, hidden)) for _ in states)
            back = (dy, *d_states, x, *w, *ref[len(states) + 1:])
            ref_g = getattr(cpu, cell + "_backward")(*back, **opts)
            out_g = getattr(gpu, cell + "_backward")(*[cuda.to_device(a) for a in back], **opts)
            for r, o in zip(ref_g, out_g):
                np.testing.assert_allclose(o.copy_to_host(), r, rtol=1e-10, atol=1e-11)


# --- lengths, recurrent dropout -----------------------------------------------------------

def test_lengths_leave_state_and_zero_outputs(rng):
    m = nn.GRU(2, 3, bidirectional=True, dtype=nbdl.float64)
    x = rng.standard_normal((5, 2, 2))
    out, hn = m(t(x, "cpu"), lengths=[5, 2])
    short, hs = m(t(x[:2, 1:], "cpu"))           # row 1 alone, cut to its length
    np.testing.assert_array_equal(out.numpy()[2:, 1], 0.0)
    np.testing.assert_allclose(out.numpy()[:2, 1], short.numpy()[:, 0], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(hn.numpy()[:, 1], hs.numpy()[:, 0], rtol=1e-12, atol=1e-14)
    out.sum().backward()                             # nothing flows from the padding
    g = nbdl.tensor(x, requires_grad=True)
    m(g, lengths=[5, 2])[0].sum().backward()
    np.testing.assert_array_equal(g.grad.numpy()[2:, 1], 0.0)


def test_recurrent_dropout(device, rng):
    """One mask per sequence on h_{t-1} inside W_hh h; training only; cpu and cuda masks agree."""
    m = nn.LSTM(2, 3, recurrent_dropout=0.5, dtype=nbdl.float64, device=device)
    x = rng.standard_normal((4, 2, 2))
    nbdl.manual_seed(11)
    out = m(t(x, device))[0].numpy()
    nbdl.manual_seed(11)
    mask = kernels("rnn", "cpu").recurrent_dropout_mask(2, 3, 0.5, next_seed(), np.float64)
    assert set(np.unique(mask)) <= {0.0, 2.0}
    ref = np_rnn("lstm", x, np_weights(m), masks=[mask])[0]
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)
    m.eval()
    np.testing.assert_allclose(m(t(x, device))[0].numpy(), np_rnn("lstm", x, np_weights(m))[0],
                               rtol=1e-10, atol=1e-12)
    if device != "cpu":
        got = kernels("rnn", device).recurrent_dropout_mask(5, 7, 0.3, 12345, np.float32).copy_to_host()
        want = kernels("rnn", "cpu").recurrent_dropout_mask(5, 7, 0.3, 12345, np.float32)
        np.testing.assert_array_equal(got, want)


def test_inter_layer_dropout_only_in_training(rng):
    m = nn.GRU(2, 3, num_layers=2, dropout=0.5, dtype=nbdl.float64)
    x = t(rng.standard_normal((3, 2, 2)), "cpu")
    a, b = m(x)[0].numpy(), m(x)[0].numpy()
    assert not np.allclose(a, b)                     # fresh masks per call
    m.eval()
    np.testing.assert_allclose(m(x)[0].numpy(), np_rnn("gru", x.numpy(), np_weights(m), num_layers=2)[0],
                               rtol=1e-10, atol=1e-12)


# --- PyTorch parity -------------------------------------------------------------------------

@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_torch_parity_and_weights_load_across(cell):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    kw = dict(num_layers=2, bidirectional=True, batch_first=True)
    tcls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    tm = tcls(3, 4, **kw).double()
    m = make(cell, 3, 4, dtype=nbdl.float64, **kw)
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    assert list(m.state_dict()) == list(tm.state_dict())
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True)
    thx = (h0, c0) if cell == "lstm" else h0
    ty, th = tm(x, thx)
    xn, h0n, c0n = (nbdl.tensor(a.detach().numpy(), requires_grad=True) for a in (x, h0, c0))
    y, hn = m(xn, (h0n, c0n) if cell == "lstm" else h0n)
    finals = (th if cell == "lstm" else (th,), hn if cell == "lstm" else (hn,))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    for a, b in zip(*finals):
        np.testing.assert_allclose(b.numpy(), a.detach().numpy(), rtol=1e-10, atol=1e-12)
    ((ty ** 2).sum() + sum((s * 1.5).sum() for s in finals[0])).backward()
    ((y * y).sum() + sum((s * 1.5).sum() for s in finals[1])).backward()
    np.testing.assert_allclose(xn.grad.numpy(), x.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(h0n.grad.numpy(), h0.grad.numpy(), rtol=1e-9, atol=1e-11)
    tparams = dict(tm.named_parameters())
    for name, p in m.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), tparams[name].grad.numpy(), rtol=1e-9, atol=1e-11,
                                   err_msg=name)
    back = tcls(3, 4, **kw).double()                 # and nbdl's weights load into PyTorch
    back.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    np.testing.assert_allclose(back(x, thx)[0].detach().numpy(), y.numpy(), rtol=1e-10, atol=1e-12)


def test_torch_parity_lengths_match_packed_sequences():
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    torch.manual_seed(0)
    tm = torch.nn.LSTM(3, 4, bidirectional=True).double()
    m = nn.LSTM(3, 4, bidirectional=True, dtype=nbdl.float64)
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    lengths = [5, 2, 4]
    packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    tout, (th, tc) = tm(packed)
    tout = pad_packed_sequence(tout, total_length=5)[0]
    out, (hn, cn) = m(nbdl.tensor(x.numpy()), lengths=lengths)
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(hn.numpy(), th.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cn.numpy(), tc.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_torch_parity_cells():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    for tcls, cls in ((torch.nn.RNNCell, nn.RNNCell), (torch.nn.LSTMCell, nn.LSTMCell),
                      (torch.nn.GRUCell, nn.GRUCell)):
        tc, c = tcls(3, 4).double(), cls(3, 4, dtype=nbdl.float64)
        c.load_state_dict({k: v.detach().numpy() for k, v in tc.state_dict().items()})
        x = torch.randn(2, 3, dtype=torch.float64)
        want, got = tc(x), c(nbdl.tensor(x.numpy()))
        for a, b in zip(want if isinstance(want, tuple) else (want,), got if isinstance(got, tuple) else (got,)):
            np.testing.assert_allclose(b.numpy(), a.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_init_and_names_follow_pytorch():
    nbdl.manual_seed(0)
    m = nn.LSTM(3, 16, num_layers=2, bidirectional=True, bias=False)
    names = [n for n, _ in m.named_parameters()]
    assert names == ["weight_ih_l0", "weight_hh_l0", "weight_ih_l0_reverse", "weight_hh_l0_reverse",
                     "weight_ih_l1", "weight_hh_l1", "weight_ih_l1_reverse", "weight_hh_l1_reverse"]
    assert m.weight_ih_l1.shape == (64, 32) and m.weight_ih_l1.dtype == np.float32
    for p in m.parameters():
        assert np.abs(p.numpy()).max() <= 0.25 and np.abs(p.numpy()).max() > 0.2   # U(+-1/sqrt(16))
    assert nn.GRU(2, 3).weight_hh_l0.shape == (9, 3) and nn.RNN(2, 3).bias_ih_l0.shape == (3,)
    assert "reset_after=False" in repr(nn.GRU(2, 3, reset_after=False))


# --- the plain inference call -------------------------------------------------------------

PLAIN = [("lstm", {}), ("lstm", dict(bias=False)), ("gru", {}), ("gru", dict(reset_after=False)),
         ("rnn", {}), ("rnn", dict(nonlinearity="relu"))]


def _count_sequences(monkeypatch):
    """Record each call that takes the general path (builds a _Sequence)."""
    import nbdl.ops.rnn as R
    calls = []

    class Counted(R._Sequence):
        def __init__(self, *args):
            calls.append(args[0])
            super().__init__(*args)

    monkeypatch.setattr(R, "_Sequence", Counted)
    return calls


@pytest.mark.parametrize("cell, kw", PLAIN)
def test_plain_inference_goes_straight_to_the_kernel(device, rng, monkeypatch, cell, kw):
    """One layer, one direction, zero initial states, all steps, nothing to record: the
    op skips the general path (_plain_inference), with the general path's bits."""
    general = _count_sequences(monkeypatch)
    steps, batch, inputs, hidden = 5, 2, 3, 4
    m = make(cell, inputs, hidden, dtype=nbdl.float64, device=device, **kw)
    x = rng.standard_normal((steps, batch, inputs))
    with nbdl.no_grad():
        out, hn = m(t(x, device))
        assert general == []
        zeros = t(np.zeros((1, batch, hidden)), device)                 # the same call, given states
        out2, hn2 = m(t(x, device), (zeros, zeros) if cell == "lstm" else zeros)
        assert len(general) == 1
    finals = (hn, hn2) if cell != "lstm" else (hn[0], hn2[0])
    np.testing.assert_array_equal(out.numpy(), out2.numpy())
    np.testing.assert_array_equal(finals[0].numpy(), finals[1].numpy())
    if cell == "lstm":
        np.testing.assert_array_equal(hn[1].numpy(), hn2[1].numpy())
    ref_out, ref_h, ref_c = np_rnn(cell, x, np_weights(m), nonlinearity=kw.get("nonlinearity", "tanh"),
                                   reset_after=kw.get("reset_after", True))
    assert out.shape == (steps, batch, hidden) and finals[0].shape == (1, batch, hidden)
    assert out.device == nbdl.device.normalize(device) and not out.requires_grad
    np.testing.assert_allclose(out.numpy(), ref_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(finals[0].numpy(), ref_h, rtol=1e-10, atol=1e-12)
    if cell == "lstm":
        np.testing.assert_allclose(hn[1].numpy(), ref_c, rtol=1e-10, atol=1e-12)


def test_plain_inference_only_without_a_graph_to_record(rng, monkeypatch):
    """With grad enabled, a parameter that requires grad sends the call down the general
    path (which records the backward); frozen parameters and a plain input do not."""
    general = _count_sequences(monkeypatch)
    m = nn.GRU(3, 4, dtype=nbdl.float64)
    x = t(rng.standard_normal((5, 2, 3)), "cpu")
    out, _ = m(x)
    assert general == ["gru"] and out.requires_grad
    for p in m.parameters():
        p.requires_grad_(False)
    out, _ = m(x)
    assert general == ["gru"] and not out.requires_grad
    out, _ = m(t(rng.standard_normal((5, 2, 3)), "cpu", grad=True))
    assert general == ["gru", "gru"] and out.requires_grad
    with nbdl.no_grad():                    # what the plain path leaves to the general one
        m(x, lengths=[5, 3])
        nn.GRU(3, 4, batch_first=True, dtype=nbdl.float64)(t(rng.standard_normal((2, 5, 3)), "cpu"))
        nn.GRU(3, 4, num_layers=2, dtype=nbdl.float64)(x)
        nn.GRU(3, 4, bidirectional=True, dtype=nbdl.float64)(x)
        nn.GRU(3, 4, recurrent_dropout=0.5, dtype=nbdl.float64).train()(x)
        m(t(rng.standard_normal((5, 3)), "cpu"))                        # unbatched
    assert len(general) == 2 + 6


def test_plain_inference_rejects_bad_input_like_the_general_path(device, monkeypatch):
    """A call the plain path cannot take plainly goes to the general path, which raises
    its usual error (the op's, not a kernel's) before any kernel runs."""
    general = _count_sequences(monkeypatch)
    m = nn.LSTM(3, 4, device=device)
    cases = [
        (ValueError, "input_size is 3", lambda: m(nbdl.zeros(5, 2, 4, device=device))),
        (ValueError, "dimensions", lambda: m(nbdl.zeros(5, 2, 3, 1, device=device))),
        (TypeError, "dtype mismatch", lambda: m(nbdl.zeros(5, 2, 3, dtype=nbdl.float64, device=device))),
        (ValueError, "at least one step", lambda: m(nbdl.zeros(0, 2, 3, device=device))),
        (TypeError, "must be a Tensor", lambda: m(np.zeros((5, 2, 3), np.float32))),
    ]
    if device != "cpu":
        cases.append((ValueError, "different devices", lambda: m(nbdl.zeros(5, 2, 3))))
    with nbdl.no_grad():
        for k, (exc, msg, call) in enumerate(cases):
            with pytest.raises(exc, match="^lstm: .*" + msg):
                call()
            assert len(general) == k + 1
    import nbdl.ops.rnn as R
    x = nbdl.zeros(5, 2, 3, device=device)
    weights = [m._layer_weights()[0]]
    with pytest.raises(TypeError, match="^gru: recurrent_dropout must be a number"):
        R.gru(x, None, [iter(weights[0])], training=True, recurrent_dropout=np.array([0.1, 0.2]))
    with nbdl.no_grad():            # an iterator of weights: not plain, and the general path runs it
        out, _ = R.lstm(x, None, [iter(weights[0])])
    assert out.shape == (5, 2, 4) and len(general) == len(cases) + 2


# --- bad input: one clear error before any kernel ----------------------------------------

def test_bad_input_is_rejected(device):
    m = nn.LSTM(3, 4, num_layers=2, device=device)
    x = nbdl.zeros(5, 2, 3, device=device)
    cases = [
        (ValueError, "input_size is 3", lambda: m(nbdl.zeros(5, 2, 4, device=device))),
        (ValueError, "dimensions", lambda: m(nbdl.zeros(5, 2, 3, 1, device=device))),      # rank
        (ValueError, "hx must have shape", lambda: m(x, (nbdl.zeros(1, 2, 4, device=device),
                                                         nbdl.zeros(2, 2, 4, device=device)))),
        (ValueError, r"lengths must lie in \[1, 5\]", lambda: m(x, lengths=[6, 2])),
        (ValueError, r"lengths must lie in \[1, 5\]", lambda: m(x, lengths=[0, 2])),
        (ValueError, "one entry per batch row", lambda: m(x, lengths=[3])),
        (TypeError, "lengths must hold integers", lambda: m(x, lengths=[2.5, 1.0])),
        (TypeError, "dtype mismatch", lambda: m(nbdl.zeros(5, 2, 3, dtype=nbdl.float64, device=device))),
    ]
    if device != "cpu":
        cases.append((ValueError, "different devices",
                      lambda: m(x, (nbdl.zeros(2, 2, 4), nbdl.zeros(2, 2, 4)))))
    for exc, msg, call in cases:
        with pytest.raises(exc, match=msg):
            call()


def test_bad_constructor_arguments():
    with pytest.raises(TypeError, match="hidden_size must be an int"):
        nn.GRU(3, 4.0)
    with pytest.raises(ValueError, match="hidden_size must be >= 1"):
        nn.LSTM(3, 0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        nn.LSTM(3, 4, dropout=1.0)
    with pytest.raises(ValueError, match=r"recurrent_dropout must be in \[0, 1\)"):
        nn.GRU(3, 4, recurrent_dropout=-0.1)
    with pytest.raises(ValueError, match="nonlinearity"):
        nn.RNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="num_layers must be >= 1"):
        nn.RNN(3, 4, num_layers=0)


def test_kernel_argument_checks():
    K = kernels("rnn", "cpu")
    x, h = np.zeros((2, 1, 3)), np.zeros((1, 4))
    w_ih, w_hh = np.zeros((16, 3)), np.zeros((16, 4))
    with pytest.raises(ValueError, match=r"w_hh must have shape \(4\*H, H\)"):
        K.lstm_forward(x, h, h, w_ih, np.zeros((12, 4)), None, None)
    with pytest.raises(TypeError, match="dtype mismatch"):
        K.lstm_forward(x.astype(np.float32), h, h, w_ih, w_hh, None, None)
    with pytest.raises(ValueError, match=r"c0 must have shape \(1, 4\)"):
        K.lstm_forward(x, h, np.zeros((2, 4)), w_ih, w_hh, None, None)
    with pytest.raises(TypeError, match="c0 must be an array"):
        K.lstm_forward(x, h, None, w_ih, w_hh, None, None)
    from nbdl.kernels.rnn import check_forward        # shared by both backends
    with pytest.raises(TypeError, match="dc_n must be an array"):
        check_forward("lstm_backward", "lstm", x, h, None, w_ih, w_hh, None, None, states=("dh_n", "dc_n"))
    with pytest.raises(ValueError, match="nonlinearity"):
        K.rnn_forward(x, h, np.zeros((4, 3)), np.zeros((4, 4)), None, None, nonlinearity="gelu")
    with pytest.raises(ValueError, match=r"p must be < 1.0"):
        K.recurrent_dropout_mask(2, 3, 1.0, 0, np.float32)
    y, hn, cn, hs, cs, gates = K.lstm_forward(x, h, h, w_ih, w_hh, None, None)
    with pytest.raises(ValueError, match=r"dh_n must have shape \(1, 4\)"):
        K.lstm_backward(y, np.zeros((2, 4)), cn, x, w_ih, w_hh, hs, cs, gates)
    with pytest.raises(ValueError, match=r"gates must have shape \(2, 1, 16\)"):
        K.lstm_backward(y, hn, cn, x, w_ih, w_hh, hs, cs, gates[:1])


def test_kernel_forward_check_fast_path_accepts_only_what_the_checks_accept():
    """check_forward skips its checks when _forward_ok holds: every bad variant fails
    _forward_ok (and is then rejected by the checks)."""
    from nbdl.kernels.rnn import _forward_ok, check_forward
    f = np.float32
    good = dict(x=np.zeros((2, 1, 3), f), h0=np.zeros((1, 4), f), c0=np.zeros((1, 4), f),
                w_ih=np.zeros((16, 3), f), w_hh=np.zeros((16, 4), f), b_ih=np.zeros(16, f), b_hh=None,
                mask=None)
    assert _forward_ok(4, **good)
    assert check_forward("op", "lstm", **good) == (2, 1, 3, 4, np.dtype(f))
    bad = {"x": [np.zeros((2, 1, 3)), np.zeros((2, 3), f), np.zeros((2, 1, 6), f)[:, :, ::2],
                 np.zeros((0, 1, 3), f), np.zeros((2, 1, 3), np.int32)],
           "h0": [None, np.zeros((2, 4), f), np.zeros((1, 4)), np.zeros((1, 8), f)[:, ::2]],
           "c0": [np.zeros((1, 5), f)],
           "w_ih": [np.zeros((16, 2), f), np.zeros((12, 3), f), np.zeros((3, 16), f).T],
           "w_hh": [np.zeros((12, 4), f), np.zeros((16, 4)), np.zeros((16, 4), f).tolist()],
           "b_ih": [np.zeros(12, f), np.zeros(16)], "b_hh": [np.zeros((1, 16), f)],
           "mask": [np.zeros((1, 3), f), np.zeros((1, 4))]}
    for name, values in bad.items():
        for value in values:
            args = dict(good, **{name: value})
            assert not _forward_ok(4, **args), (name, value)
            with pytest.raises((TypeError, ValueError)):
                check_forward("op", "lstm", **args)


# --- CPU internals: packed GEMMs and time loops shared among threads --------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cpu_packed_gemm_matches_numpy(rng, dtype, monkeypatch):
    from nbdl.kernels.rnn import cpu
    tol = 1e-12 if dtype == np.float64 else 1e-4
    # shapes off the register block (6 x 64), an empty reduction, a reduction longer than
    # one chunk, a transposed left operand large enough to be copied first
    for m, k, n in [(1, 3, 1), (7, 13, 70), (13, 600, 65), (50, 0, 7), (130, 31, 200), (200, 150, 20)]:
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        ref = a.astype(np.float64) @ b
        monkeypatch.setattr(cpu, "_PARALLEL_WORK", 1 << 62)
        out = cpu._matmul(a, b)
        np.testing.assert_allclose(out, ref, rtol=tol, atol=tol * max(k, 1))
        # the same bits through transposed views and with the rows shared among threads
        monkeypatch.setattr(cpu, "_PARALLEL_WORK", 0)
        assert np.array_equal(cpu._matmul(np.ascontiguousarray(a.T).T, np.ascontiguousarray(b.T).T), out)
        acc = np.ones((m, n), dtype)
        cpu._matmul(a, b, out=acc, accumulate=True)
        np.testing.assert_allclose(acc, ref + 1, rtol=tol, atol=tol * max(k, 1))
        b2 = rng.standard_normal((k, 3)).astype(dtype)
        o1, o2 = cpu._matmul_pair(a, b, b2)
        assert np.array_equal(o1, out)
        np.testing.assert_allclose(o2, a.astype(np.float64) @ b2, rtol=tol, atol=tol * max(k, 1))


def _lstm_kernel_run(K, args, kw):
    """Forward and backward of K.lstm_forward/backward; every output array."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = args
    y, h_n, c_n, hs, cs, gates = K.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, **kw)
    dy = np.cos(3 * y).astype(y.dtype)
    back = K.lstm_backward(dy, np.sin(h_n), np.cos(c_n), x, w_ih, w_hh, hs, cs, gates, **kw)
    return (y, h_n, c_n, gates) + tuple(back)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cpu_lstm_threads_give_the_same_bits(rng, dtype, monkeypatch):
    """The time loop shared among threads by hidden units (spin barriers) gives exactly the
    one-thread result, for every row-block shape: one row (matrix-vector products), blocks of
    MR or 8 rows with padding, odd hidden sizes, lengths, masks, reverse; and it matches the
    numpy reference. The gate math's form follows the shape alone (see _row_by_row), on one
    thread as on two: at batch 4, H = 70 goes row by row in float64 (560-byte rows) and
    gathered in float32 (280 bytes), H = 130 row by row in float32 (65 units a thread, with
    a vector tail); batch 13 and H = 37 gathered; batch 18 and H = 40: the backward moves
    a step's gradients in whole register tiles and at the edges."""
    from nbdl.kernels.rnn import cpu
    for steps, batch, inputs, hidden in [(4, 1, 3, 7), (3, 2, 5, 9), (3, 1, 4, 40), (5, 5, 4, 16), (3, 13, 6, 37),
                                         (3, 4, 5, 70), (3, 4, 5, 130), (3, 18, 5, 40)]:
        w = [rng.standard_normal(s).astype(dtype) * 0.5
             for s in ((4 * hidden, inputs), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,))]
        x = rng.standard_normal((steps, batch, inputs)).astype(dtype)
        h0, c0 = (rng.standard_normal((batch, hidden)).astype(dtype) for _ in range(2))
        lengths = rng.integers(1, steps + 1, batch)
        mask = (rng.random((batch, hidden)) > 0.3).astype(dtype) / dtype(0.7)
        for kw in (dict(lengths=lengths, mask=mask), dict(reverse=True, lengths=lengths, mask=mask)):
            args = (x, h0, c0, *w)
            monkeypatch.setattr(cpu, "_PARALLEL_WORK", 1 << 62)
            one = _lstm_kernel_run(cpu, args, kw)
            monkeypatch.setattr(cpu, "_PARALLEL_WORK", 0)
            shared = _lstm_kernel_run(cpu, args, kw)
            for u, v in zip(one, shared):
                assert (u is None and v is None) or np.array_equal(u, v)
            if dtype == np.float32:    # every output, the backward's included, against float64
                wide = _lstm_kernel_run(cpu, tuple(a.astype(np.float64) for a in args),
                                        dict(kw, mask=mask.astype(np.float64)))
                for u, v in zip(shared, wide):
                    assert (u is None and v is None) or np.allclose(u, v, rtol=1e-3, atol=1e-3)
            if kw.get("reverse"):      # the reference runs reverse only as a second direction
                continue
            ref_y, ref_h, ref_c = np_rnn("lstm", x.astype(np.float64), [tuple(a.astype(np.float64) for a in w)],
                                         h0[None].astype(np.float64), c0[None].astype(np.float64),
                                         lengths=lengths, masks=[mask.astype(np.float64)])
            tol = 1e-12 if dtype == np.float64 else 1e-4
            np.testing.assert_allclose(shared[0], ref_y, rtol=tol, atol=tol)
            np.testing.assert_allclose(shared[1], ref_h[0], rtol=tol, atol=tol)
            np.testing.assert_allclose(shared[2], ref_c[0], rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cpu_lstm_projection_inside_the_time_loop(rng, dtype, monkeypatch):
    """Batches of one or two rows compute x W_ih^T inside the time loop, in units run
    alongside the recurrent product (and alone where a step's rows are not ready yet):
    sequences long enough for several unit groups, input sizes far below and far above
    the hidden size, unit ranges that cut gates across panels (tiles), a last row block
    with fewer rows, reverse. Against the numpy reference, the same bits on one thread
    and shared, and the same values as the separate projection (larger batches, longer inputs)."""
    from nbdl.kernels.rnn import cpu
    # (steps, batch, inputs, hidden): several unit groups, I << H and I >> H, gates cut
    # across panels, a partial last row block, unequal shares cut at cache lines (H = 200),
    # H = 1, and no input features at all
    for steps, batch, inputs, hidden in [(37, 1, 70, 50), (23, 2, 130, 64), (19, 1, 300, 16), (9, 2, 2, 33),
                                         (21, 1, 5, 200), (6, 2, 3, 1), (5, 1, 0, 24)]:
        w = [(rng.standard_normal(s) / np.sqrt(hidden)).astype(dtype)
             for s in ((4 * hidden, inputs), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,))]
        x = rng.standard_normal((steps, batch, inputs)).astype(dtype)
        h0, c0 = (rng.standard_normal((batch, hidden)).astype(dtype) for _ in range(2))
        lengths = np.array([steps, max(1, steps - 4)][:batch])
        mask = (rng.random((batch, hidden)) > 0.3).astype(dtype) / dtype(0.7)
        tol = 1e-12 if dtype == np.float64 else 2e-5
        if cpu._barrier_threads() > 1 and hidden >= 16:      # the shared run below really shares
            assert len(cpu._plan(batch, hidden, hidden, 4, 1 << 62, dtype).units) > 2
        for reverse in (False, True):
            kw = dict(reverse=reverse, lengths=lengths, mask=mask)
            monkeypatch.setattr(cpu, "_PARALLEL_WORK", 1 << 62)
            one = cpu.lstm_forward(x, h0, c0, *w, **kw)
            monkeypatch.setattr(cpu, "_PARALLEL_WORK", 0)
            shared = cpu.lstm_forward(x, h0, c0, *w, **kw)
            for u, v in zip(one, shared):
                assert np.array_equal(u, v)
            # the same sequence as rows of a batch of 3 (separate projection, MR-row blocks)
            x3, h3, c3, m3 = (np.ascontiguousarray(np.concatenate([a, a, a], axis=a.ndim - 2)[..., :3, :])
                              for a in (x, h0, c0, mask))
            l3 = np.concatenate([lengths, lengths, lengths])[:3]
            y3 = cpu.lstm_forward(x3, h3, c3, *w, reverse=reverse, lengths=l3, mask=m3)[0]
            np.testing.assert_allclose(shared[0], y3[:, :batch], rtol=tol, atol=tol)
            monkeypatch.setattr(cpu, "_PROJ_MAX", -1)         # long inputs: the separate projection
            np.testing.assert_allclose(cpu.lstm_forward(x, h0, c0, *w, **kw)[0], shared[0], rtol=tol, atol=tol)
            monkeypatch.undo()
            if reverse:
                continue
            ref_y, ref_h, ref_c = np_rnn("lstm", x.astype(np.float64), [tuple(a.astype(np.float64) for a in w)],
                                         h0[None].astype(np.float64), c0[None].astype(np.float64),
                                         lengths=lengths, masks=[mask.astype(np.float64)])
            np.testing.assert_allclose(shared[0], ref_y, rtol=tol, atol=tol)
            np.testing.assert_allclose(shared[1], ref_h[0], rtol=tol, atol=tol)
            np.testing.assert_allclose(shared[2], ref_c[0], rtol=tol, atol=tol)


def test_cpu_thread_settings_follow_numba(monkeypatch):
    """The raw getters the time loops read numba's thread count and chunk size through
    answer what the public ones do: after changes of either, in another Python thread
    (numba's settings are per thread), and through the public ones where the raw ones are
    missing. A time loop shares its steps among threads only with the default chunk size,
    on a threading layer whose threads all run at once."""
    import threading
    import types

    import numba
    from nbdl.kernels.rnn import cpu
    n0, chunk0 = numba.get_num_threads(), numba.get_parallel_chunksize()
    concurrent = numba.threading_layer() in ("omp", "workqueue")
    try:
        for n, chunk in ((1, 0), (n0, 0), (n0, 4), (n0, 0)):
            numba.set_num_threads(n)
            numba.set_parallel_chunksize(chunk)
            assert cpu._thread_settings() == (n, chunk)
            assert cpu._barrier_threads() == (n0 if n > 1 and chunk == 0 and concurrent else 1)
        assert callable(getattr(cpu._parallel, "_get_num_threads", None))    # the raw ones ran
        numba.set_num_threads(1)
        seen = []
        other = threading.Thread(target=lambda: seen.append(
            (cpu._thread_settings(), (numba.get_num_threads(), numba.get_parallel_chunksize()))))
        other.start()
        other.join()
        assert seen[0][0] == seen[0][1] and cpu._thread_settings() == (1, 0)
        monkeypatch.setattr(cpu, "_parallel", types.SimpleNamespace())     # a numba without them
        assert cpu._thread_settings() == (1, 0)
    finally:
        numba.set_num_threads(n0)
        numba.set_parallel_chunksize(chunk0)


def test_cpu_lengths_of_none_stay_whole(rng):
    """Every kernel gets lengths=None as one shared array per (batch, steps): none writes it."""
    from nbdl.kernels.rnn import check_lengths
    K = kernels("rnn", "cpu")
    steps, batch, inputs, hidden = 4, 3, 2, 5
    shared = check_lengths("op", None, batch, steps)
    x, h = rng.standard_normal((steps, batch, inputs)), rng.standard_normal((batch, hidden))
    for cell, g in GATES.items():
        w_ih, w_hh = rng.standard_normal((g * hidden, inputs)), rng.standard_normal((g * hidden, hidden))
        if cell == "lstm":
            y, h_n, c_n, *saved = K.lstm_forward(x, h, h, w_ih, w_hh, None, None)
            K.lstm_backward(y, h_n, c_n, x, w_ih, w_hh, *saved)
        elif cell == "gru":
            y, h_n, *saved = K.gru_forward(x, h, w_ih, w_hh, None, None)
            K.gru_backward(y, h_n, x, w_ih, w_hh, *saved)
        else:
            y, h_n, hs = K.rnn_forward(x, h, w_ih, w_hh, None, None)
            K.rnn_backward(y, h_n, x, w_ih, w_hh, hs)
    assert check_lengths("op", None, batch, steps) is shared and (shared == steps).all()


def test_cpu_unit_ranges_and_buffers_sit_on_cache_lines():
    """Threads of a time loop own unit ranges cut at whole cache lines of a state row where
    the rows are long enough (else equal shares), and the shared buffers start on a line."""
    from nbdl.kernels.rnn import cpu
    assert list(cpu._unit_bounds(128, 2, 4)) == [0, 64, 128]
    assert list(cpu._unit_bounds(200, 2, 4)) == [0, 96, 200]       # 100 rounded to 6 lines of floats
    assert list(cpu._unit_bounds(200, 2, 8)) == [0, 104, 200]      # 13 lines of doubles
    assert list(cpu._unit_bounds(47, 2, 4)) == [0, 23, 47]         # short rows: equal shares
    for hidden, n in [(129, 2), (1000, 2), (513, 3)]:
        b = cpu._unit_bounds(hidden, n, 4)
        assert b[0] == 0 and b[-1] == hidden and np.all(np.diff(b) > 0) and np.all(b[1:-1] % 16 == 0)
    for shape, dtype in [((3, 5, 7), np.float32), ((1,), np.float64), ((100, 1, 512), np.float32)]:
        a = cpu._empty(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.ctypes.data % 64 == 0
    assert not cpu._empty((4, 9), np.float64, zero=True).any()
    parts = cpu._empties([(3, 5), (1,), (17, 2)], np.float32)          # one allocation, several arrays
    assert [a.shape for a in parts] == [(3, 5), (1,), (17, 2)]
    assert all(a.ctypes.data % 64 == 0 and a.flags.c_contiguous for a in parts)
    spans = sorted((a.ctypes.data, a.ctypes.data + a.nbytes) for a in parts)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))    # no overlap


def test_cpu_projection_unit_groups():
    """The in-loop projection's row-block groups end at 1, 2, 4, then every _PROJ_GROUP
    blocks; the unit table holds every (row block, panel, chunk) once, a group's units
    together, in reverse from the last block."""
    from nbdl.kernels.rnn import cpu
    ends = [cpu._group_end.py_func(pos, 14) for pos in range(14)]
    assert ends == [1, 2, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12, 14, 14]
    assert cpu._group_end.py_func(2, 3) == 3
    for reverse in (False, True):
        nrb, npx, nch = 14, 2, 3
        tab = cpu._unit_table(nrb, npx, nch, 4 * nrb - 1, 4, 64, 128, 0, 64, reverse)
        assert sorted(map(tuple, tab[:, :3])) == [(rb, p, c) for rb in range(nrb) for p in range(npx)
                                                   for c in range(nch)]
        positions = [nrb - 1 - rb if reverse else rb for rb in tab[:, 0]]
        per_block = npx * nch
        for end in sorted(set(ends)):          # the units of groups up to `end` come first
            assert sorted(positions[:end * per_block]) == sorted(p for p in range(end) for _ in range(per_block))


# --- small sequence tasks train ------------------------------------------------------------------

def adding_problem(rng, steps, batch):
    """x_t = (u_t, marker_t), two markers per sequence; target: the sum of the two marked u."""
    u = rng.random((steps, batch))
    marks = np.zeros((steps, batch))
    for b in range(batch):
        marks[rng.choice(steps, 2, replace=False), b] = 1.0
    return np.stack([u, marks], axis=2), (u * marks).sum(0)[:, None]


def train_adding(cell, device, iterations, steps=6, batch=32, hidden=16):
    nbdl.manual_seed(0)
    rng = np.random.default_rng(0)
    rnn = make(cell, 2, hidden, dtype=nbdl.float64, device=device)
    head = nn.Linear(hidden, 1, dtype=nbdl.float64, device=device)
    opt = nbdl.optim.Adam(list(rnn.parameters()) + list(head.parameters()), lr=0.03)
    losses = []
    for _ in range(iterations):
        x, y = adding_problem(rng, steps, batch)
        out, _ = rnn(t(x, device))
        loss = F.mse_loss(head(out[steps - 1]), t(y, device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_adding_problem_trains(cell):
    """Predicting 1.0 always gives MSE ~ 1/6; a trained LSTM/GRU gets far below it."""
    losses = train_adding(cell, "cpu", 200)
    assert np.mean(losses[:10]) > 0.1
    assert np.mean(losses[-20:]) < 0.03


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_adding_problem_trains_the_same_on_cuda(cell):
    """The first training steps on cuda (simulator) follow the cpu run to rounding."""
    if not nbdl.cuda_available():
        pytest.skip("no CUDA (not even the simulator)")
    cuda_losses = train_adding(cell, "cuda", 3, steps=3, batch=4, hidden=2)
    cpu_losses = train_adding(cell, "cpu", 3, steps=3, batch=4, hidden=2)
    np.testing.assert_allclose(cuda_losses, cpu_losses, rtol=1e-9)
    assert cuda_losses[-1] < cuda_losses[0]
