"""Recurrent layers: nn.RNN / nn.LSTM / nn.GRU over a whole sequence, nbdl vs PyTorch.

Parameters: device, cell ("lstm", "gru", "rnn_tanh") and shape (T, B, I, H) =
(steps, batch, input size, hidden size), float32, one layer, one direction:

* (50, 32, 256, 256): a mid-sized layer, LSTM and GRU;
* (100, 1, 128, 128): batch 1, latency-bound (per-step overhead dominates), LSTM and GRU;
* (50, 16, 1760, 1760): a DeepSpeech-sized layer, vanilla RNN and GRU.

Other (cell, shape) pairs show as n/a. The input does not require grad (a first
layer), so forward+backward computes the weight gradients but not dx, in both
frameworks. FLOPs count the GEMMs only: forward 2 T B G H (I + H) with G gate
blocks; backward adds 2 T B G H (I + 2H) (dW_ih, dW_hh and the recurrent dh).

``python -m asv_bench.benchmarks.rnn [threads] [cell ...]`` prints the nbdl/PyTorch
ratios of every pair in one process (see ``_compare``).
"""
import numpy as np

from ._common import Benchmark, DEVICES, first_time, flops, largest_shape_only, nbdl_on, randn, torch_on

CELLS = ["lstm", "gru", "rnn_tanh"]
SHAPES = [(100, 1, 128, 128), (50, 32, 256, 256), (50, 16, 1760, 1760)]
RUNS = {
    (100, 1, 128, 128): ("lstm", "gru"),
    (50, 32, 256, 256): ("lstm", "gru"),
    (50, 16, 1760, 1760): ("rnn_tanh", "gru"),
}
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1}


def forward_flops(device, cell, shape):
    t, b, i, h = shape
    return 2 * t * b * GATES[cell] * h * (i + h)


def forward_backward_flops(device, cell, shape):
    t, b, i, h = shape
    return forward_flops(device, cell, shape) + 2 * t * b * GATES[cell] * h * (i + 2 * h)


class _RNN(Benchmark):
    params = (DEVICES, CELLS, SHAPES)
    param_names = ("device", "cell", "shape")
    framework = staticmethod(nbdl_on)
    timeout = 300.0

    def setup(self, device, cell, shape):
        if cell not in RUNS[shape]:
            raise NotImplementedError(f"{cell} is not benchmarked at {shape}")
        self.fw = fw = self.framework(device)
        fw.module.manual_seed(0)
        steps, batch, inputs, hidden = shape
        layer = {"lstm": fw.nn.LSTM, "gru": fw.nn.GRU, "rnn_tanh": fw.nn.RNN}[cell]
        self.layer = layer(inputs, hidden).to(fw.device)
        self.x = fw.tensor(randn((steps, batch, inputs)))
        if first_time(type(self), device, cell, shape):
            self.forward_backward()              # compiles (or loads) every kernel

    def forward(self):
        with self.fw.no_grad():
            self.layer(self.x)
        self.fw.sync()

    def forward_backward(self):
        out, _ = self.layer(self.x)
        out.sum().backward()
        self.fw.sync()

    @flops(forward_flops)
    def time_rnn_forward(self, device, cell, shape):
        self.forward()

    @flops(forward_backward_flops)
    def time_rnn_forward_backward(self, device, cell, shape):
        self.forward_backward()

    @largest_shape_only(params)
    def peakmem_rnn(self, device, cell, shape):
        self.forward_backward()


class RNN(_RNN):
    pass


class TorchRNN(_RNN):
    framework = staticmethod(torch_on)


def _compare(threads=2, repeats=7, cells=None):
    """Print nbdl against PyTorch on every (cell, shape) of RUNS, float32, in one process.

    Medians of at least ``repeats`` calls (as many as fit in about 50 ms for short
    calls), nbdl and PyTorch interleaved and each side measured twice (the better median
    kept), so a burst of load on a shared machine hurts both alike; each side starts
    after a pause in which the other's worker threads stop spinning (at batch 1 a call
    is a few tenths of a millisecond, shorter than that spinning). Same layer weights on
    both sides; forward under no_grad, forward+backward computes the weight gradients
    (the input does not require grad).
    """
    import os
    import time

    import numba
    import torch

    torch.set_num_threads(threads)
    numba.set_num_threads(threads)

    def median(f):
        time.sleep(0.2)         # the other library's worker threads stop spinning first
        t0 = time.perf_counter()
        f()
        calls = max(repeats, min(200, int(0.05 / max(time.perf_counter() - t0, 1e-6))))
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    print(f"{threads} thread(s), wall clock, median of >= {repeats}; load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'cell':9} {'shape (T,B,I,H)':22} {'fwd ms nbdl / torch':>21} {'ratio':>6} "
          f"{'fwd+bwd ms nbdl / torch':>25} {'ratio':>6}")
    for shape in SHAPES:
        for cell in RUNS[shape]:
            if cells and cell not in cells:
                continue
            runs = {}
            for cls in (RNN, TorchRNN):
                bench = cls()
                bench.setup("cpu", cell, shape)
                runs[cls.__name__] = bench
            nb, tb = runs["RNN"], runs["TorchRNN"]
            with torch.no_grad():                   # the same weights on both sides
                for name, p in tb.layer.named_parameters():
                    p.copy_(torch.from_numpy(getattr(nb.layer, name).numpy()))
            pairs = (("nf", nb.forward), ("tf", tb.forward), ("nb", nb.forward_backward),
                     ("tb", tb.forward_backward))
            t = {key: median(f) for key, f in pairs}
            t = {key: min(t[key], median(f)) for key, f in pairs}
            print(f"{cell:9} {str(shape):22} {t['nf'] * 1e3:9.2f} / {t['tf'] * 1e3:9.2f} "
                  f"{t['nf'] / t['tf']:6.2f} {t['nb'] * 1e3:11.2f} / {t['tb'] * 1e3:11.2f} "
                  f"{t['nb'] / t['tb']:6.2f}", flush=True)


if __name__ == "__main__":
    # python -m asv_bench.benchmarks.rnn [threads] [cell ...]
    import sys
    args = sys.argv[1:]
    _compare(threads=int(args[0]) if args and args[0].isdigit() else 2,
             cells=[a for a in args if not a.isdigit()] or None)
