"""Recurrent layers: RNN, LSTM, GRU and their cells, with PyTorch's arguments, parameter names and outputs.

Parameters per layer k and direction: ``weight_ih_l{k}`` (G*H, I_k), ``weight_hh_l{k}``
(G*H, H), ``bias_ih_l{k}``, ``bias_hh_l{k}`` (G*H,), with the suffix ``_reverse`` for
the backward direction; G = 1 (RNN), 4 (LSTM: i, f, g, o), 3 (GRU: r, z, n). All start
as U(-1/sqrt(H), 1/sqrt(H)), so a PyTorch state_dict loads as is (and back).

Beyond PyTorch: ``lengths=`` in forward (variable-length batches without packing),
``recurrent_dropout`` (LSTM, GRU) and ``reset_after`` (GRU); see nbdl.ops.rnn.
"""
import math

import nbdl
from nbdl.nn import init
from nbdl.nn.module import Module, Parameter
from nbdl.ops import rnn as R

__all__ = ["RNNBase", "RNN", "LSTM", "GRU", "RNNCellBase", "RNNCell", "LSTMCell", "GRUCell"]

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


def _check_size(cls, name, v, minimum=1):
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{cls}: {name} must be an int, got {v!r}")
    if v < minimum:
        raise ValueError(f"{cls}: {name} must be >= {minimum}, got {v}")
    return v


def _check_rate(cls, name, p):
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{cls}: {name} must be a number in [0, 1), got {p!r}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{cls}: {name} must be in [0, 1), got {p}")
    return float(p)


class RNNBase(Module):
    """Shared machinery of RNN, LSTM and GRU: parameters, init and the forward dispatch."""

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, recurrent_dropout=0.0, device=None, dtype=None):
        super().__init__()
        cls = type(self).__name__
        self.mode = mode
        self.input_size = _check_size(cls, "input_size", input_size)
        self.hidden_size = _check_size(cls, "hidden_size", hidden_size)
        self.num_layers = _check_size(cls, "num_layers", num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = _check_rate(cls, "dropout", dropout)
        self.bidirectional = bool(bidirectional)
        self.recurrent_dropout = _check_rate(cls, "recurrent_dropout", recurrent_dropout)
        directions = 2 if bidirectional else 1
        gates = _GATES[mode] * hidden_size
        self._flat_weights_names = []
        self._weight_names = []             # (w_ih, w_hh, b_ih, b_hh) per layer and direction; None: no bias
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * directions
            for d in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                shapes = [("weight_ih", (gates, layer_input)), ("weight_hh", (gates, hidden_size))]
                if bias:
                    shapes += [("bias_ih", (gates,)), ("bias_hh", (gates,))]
                for name, shape in shapes:
                    setattr(self, name + suffix, Parameter(nbdl.empty(shape, dtype=dtype, device=device)))
                    self._flat_weights_names.append(name + suffix)
                names = [name + suffix for name, _ in shapes]
                self._weight_names.append(tuple(names) if bias else (names[0], names[1], None, None))
        self.reset_parameters()

    def reset_parameters(self):
        """Every weight and bias ~ U(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), like PyTorch."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name in self._flat_weights_names:
            init.uniform_(getattr(self, name), -bound, bound)

    def _layer_weights(self):
        """[(w_ih, w_hh, b_ih, b_hh)] per layer and direction, in PyTorch's order."""
        params = self._parameters          # (getattr goes through Module.__getattr__: ~1 us each)
        return [tuple(None if n is None else params[n] if n in params else getattr(self, n) for n in names)
                for names in self._weight_names]

    def flatten_parameters(self):
        """A no-op, for code written for PyTorch (there it packs weights for cuDNN)."""

    @property
    def all_weights(self):
        """The parameters of each layer and direction, like PyTorch's ``all_weights``."""
        return [[p for p in w if p is not None] for w in self._layer_weights()]

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.mode == "RNN_RELU":
            s += ", nonlinearity='relu'"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.recurrent_dropout:
            s += f", recurrent_dropout={self.recurrent_dropout}"
        return s

    def _common(self):
        return dict(num_layers=self.num_layers, batch_first=self.batch_first, dropout=self.dropout,
                    training=self.training, bidirectional=self.bidirectional)


class RNN(RNNBase):
    """Elman RNN: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), act = tanh or relu.

    forward(input, hx=None, lengths=None) -> (output, h_n):
    input (T, B, input_size) ((B, T, input_size) with batch_first, or (T, input_size));
    hx, h_n (num_layers * num_directions, B, hidden_size); output (T, B, D * hidden_size).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, 0.0, device, dtype)
        self.nonlinearity = nonlinearity

    def forward(self, input, hx=None, lengths=None):
        return R.rnn(input, hx, self._layer_weights(), nonlinearity=self.nonlinearity, lengths=lengths,
                     **self._common())


class LSTM(RNNBase):
    """LSTM with gates i, f, g, o: c_t = f c_{t-1} + i g, h_t = o tanh(c_t).

    forward(input, hx=None, lengths=None) -> (output, (h_n, c_n)); hx = (h_0, c_0).
    recurrent_dropout: variational dropout on h_{t-1} in the recurrent product (training only).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, recurrent_dropout=0.0, device=None, dtype=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         recurrent_dropout, device, dtype)

    def forward(self, input, hx=None, lengths=None):
        return R.lstm(input, hx, self._layer_weights(), recurrent_dropout=self.recurrent_dropout,
                      lengths=lengths, **self._common())


class GRU(RNNBase):
    """GRU with gates r, z, n: h_t = (1 - z) n + z h_{t-1}.

    reset_after=True (PyTorch, cuDNN): n = tanh(W_in x + b_in + r (W_hn h + b_hn));
    reset_after=False (Cho et al., Keras' reset_after=False): n = tanh(W_in x + b_in + W_hn (r h) + b_hn).
    forward(input, hx=None, lengths=None) -> (output, h_n).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, recurrent_dropout=0.0, reset_after=True, device=None, dtype=None):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         recurrent_dropout, device, dtype)
        self.reset_after = bool(reset_after)

    def forward(self, input, hx=None, lengths=None):
        return R.gru(input, hx, self._layer_weights(), recurrent_dropout=self.recurrent_dropout,
                     lengths=lengths, reset_after=self.reset_after, **self._common())

    def extra_repr(self):
        return super().extra_repr() + ("" if self.reset_after else ", reset_after=False")


class RNNCellBase(Module):
    """One time step: weight_ih (G*H, I), weight_hh (G*H, H), bias_ih, bias_hh (G*H,)."""

    def __init__(self, input_size, hidden_size, bias, gates, device=None, dtype=None):
        super().__init__()
        cls = type(self).__name__
        self.input_size = _check_size(cls, "input_size", input_size)
        self.hidden_size = _check_size(cls, "hidden_size", hidden_size)
        self.bias = bool(bias)
        self.weight_ih = Parameter(nbdl.empty((gates * hidden_size, input_size), dtype=dtype, device=device))
        self.weight_hh = Parameter(nbdl.empty((gates * hidden_size, hidden_size), dtype=dtype, device=device))
        if bias:
            self.bias_ih = Parameter(nbdl.empty((gates * hidden_size,), dtype=dtype, device=device))
            self.bias_hh = Parameter(nbdl.empty((gates * hidden_size,), dtype=dtype, device=device))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self):
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            init.uniform_(p, -bound, bound)

    def _weights(self):
        return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")


class RNNCell(RNNCellBase):
    """h' = act(W_ih x + b_ih + W_hh h + b_hh); input (B, I) or (I,), hx (B, H) or (H,), None = zeros."""

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNNCell: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, bias, 1, device, dtype)
        self.nonlinearity = nonlinearity

    def forward(self, input, hx=None):
        return R.rnn_cell(input, hx, *self._weights(), nonlinearity=self.nonlinearity)


class LSTMCell(RNNCellBase):
    """One LSTM step: forward(input, (h, c)=None) -> (h', c')."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, 4, device, dtype)

    def forward(self, input, hx=None):
        return R.lstm_cell(input, hx, *self._weights())


class GRUCell(RNNCellBase):
    """One GRU step: forward(input, h=None) -> h'; reset_after as in GRU."""

    def __init__(self, input_size, hidden_size, bias=True, reset_after=True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, 3, device, dtype)
        self.reset_after = bool(reset_after)

    def forward(self, input, hx=None):
        return R.gru_cell(input, hx, *self._weights(), reset_after=self.reset_after)
