"""One end-to-end training step (zero_grad, forward, loss, backward, optimizer step):
nbdl vs PyTorch on the same model, through the Module/Optimizer API.

* ``LeNet``: LeNet-5 on 28x28 one-channel images (conv 5x5 -> ReLU -> max-pool, twice,
  then three Linear layers), cross-entropy, SGD with momentum.
* ``LSTMLanguageModel``: one LSTM layer over pre-embedded tokens (a (T, B, E) float
  input: the embedding lookup is left out), a Linear decoder to the vocabulary on every
  step, cross-entropy, Adam.

FLOP counts are 3x the forward GEMM/convolution work (forward, input gradient, weight
gradient); elementwise work is not counted.
"""
import numpy as np

from ._common import (
    DEVICES, Benchmark, conv2d_flops, first_time, flops, largest_shape_only, matmul_flops,
    nbdl_on, randn, torch_on,
)

LENET_BATCHES = [(16,), (128,)]
LENET_FC = [(16 * 5 * 5, 120), (120, 84), (84, 10)]

# (T, B, E, H, V): sequence length, batch, embedding, hidden, vocabulary.
LSTM_SHAPES = [(35, 8, 128, 256, 2000), (35, 32, 128, 256, 2000)]


def lenet_flops(device, shape):
    (batch,) = shape
    fwd = (conv2d_flops((batch, 1, 28, 28), (6, 1, 5, 5), padding=2)
           + conv2d_flops((batch, 6, 14, 14), (16, 6, 5, 5))
           + sum(matmul_flops(batch, o, i) for i, o in LENET_FC))
    return 3 * fwd


def lstm_lm_flops(device, shape):
    t, b, e, h, v = shape
    return 3 * (matmul_flops(t * b, 4 * h, e + h) + matmul_flops(t * b, v, h))


class _TrainStep(Benchmark):
    """Builds ``self.model``, ``self.opt``, ``self.inputs``, ``self.target`` in ``build``."""

    framework = staticmethod(nbdl_on)
    timeout = 300.0

    def setup(self, device, shape):
        self.fw = self.framework(device)
        self.fw.module.manual_seed(0)
        self.build(shape)
        if first_time(type(self), device, shape):
            self.step()  # compiles (or loads) every kernel of the step

    def loss(self):
        raise NotImplementedError

    def step(self):
        self.opt.zero_grad()
        self.loss().backward()
        self.opt.step()
        self.fw.sync()


class _LeNet(_TrainStep):
    params = (DEVICES, LENET_BATCHES)
    param_names = ("device", "shape")

    def build(self, shape):
        (batch,) = shape
        nn = self.fw.nn
        self.model = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(*LENET_FC[0]), nn.ReLU(),
            nn.Linear(*LENET_FC[1]), nn.ReLU(),
            nn.Linear(*LENET_FC[2]),
        ).to(self.fw.device)
        self.opt = self.fw.module.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.inputs = self.fw.tensor(randn((batch, 1, 28, 28)))
        self.target = self.fw.tensor(np.arange(batch, dtype=np.int64) % 10)

    def loss(self):
        return self.fw.F.cross_entropy(self.model(self.inputs), self.target)

    @flops(lenet_flops)
    def time_train_step(self, device, shape):
        self.step()

    @largest_shape_only(params)
    def peakmem_train_step(self, device, shape):
        self.step()


class _LSTMLanguageModel(_TrainStep):
    params = (DEVICES, LSTM_SHAPES)
    param_names = ("device", "shape")

    def build(self, shape):
        t, b, e, h, v = shape
        nn = self.fw.nn
        self.lstm = nn.LSTM(e, h).to(self.fw.device)
        self.decoder = nn.Linear(h, v).to(self.fw.device)
        params = list(self.lstm.parameters()) + list(self.decoder.parameters())
        self.opt = self.fw.module.optim.Adam(params, lr=1e-3)
        self.inputs = self.fw.tensor(randn((t, b, e)))
        self.target = self.fw.tensor(np.arange(t * b, dtype=np.int64) % v)
        self.hidden = h

    def loss(self):
        out, _ = self.lstm(self.inputs)
        logits = self.decoder(out.reshape(-1, self.hidden))
        return self.fw.F.cross_entropy(logits, self.target)

    @flops(lstm_lm_flops)
    def time_train_step(self, device, shape):
        self.step()

    @largest_shape_only(params)
    def peakmem_train_step(self, device, shape):
        self.step()


class LeNet(_LeNet):
    pass


class TorchLeNet(_LeNet):
    framework = staticmethod(torch_on)


class LSTMLanguageModel(_LSTMLanguageModel):
    pass


class TorchLSTMLanguageModel(_LSTMLanguageModel):
    framework = staticmethod(torch_on)
