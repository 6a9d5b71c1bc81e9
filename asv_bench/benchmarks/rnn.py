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
ratios of every pair in one process, in rounds that time both back to back (see
``_compare``).
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


def _compare(threads=2, repeats=7, cells=None, rounds=5):
    """Print nbdl against PyTorch on every (cell, shape) of RUNS, float32, in one process.

    Each (cell, shape) runs ``rounds`` rounds. A round times nbdl and PyTorch back to back
    (medians of at least ``repeats`` calls, as many as fit in about 50 ms for short calls;
    which side goes first alternates) and takes their ratio; printed are each side's median
    time over the rounds and the median of the rounds' ratios, with their range. On a
    shared machine whose speed changes within seconds, two timings taken seconds apart can
    differ by tens of percent for reasons of their own; the two sides of one round are
    taken within a fraction of a second. Each side starts after a pause in which the other
    library's worker threads stop spinning (at batch 1 a call is a few tenths of a
    millisecond, shorter than that spinning). Same layer weights on both sides; forward
    under no_grad, forward+backward computes the weight gradients (the input does not
    require grad).

    The header gives the machine's parallel speed-up at the start: a matrix product on one
    thread and on ``threads`` (on a shared virtual machine the second core is at times
    mostly somebody else's, and two-thread time loops then slow down more than one-thread
    code).
    """
    import os
    import time

    import numba
    import torch

    import nbdl

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

    a, b = nbdl.tensor(randn((384, 256))), nbdl.tensor(randn((256, 512), seed=1))
    speed = []
    for n in (1, threads):
        numba.set_num_threads(n)
        speed.append(1 / median(lambda: a @ b))
    numba.set_num_threads(threads)
    print(f"{threads} thread(s), wall clock, medians of >= {repeats} calls, {rounds} rounds; "
          f"load average {os.getloadavg()[0]:.2f}; matrix product speed-up on {threads} threads "
          f"{speed[1] / speed[0]:.2f}")
    print(f"{'cell':9} {'shape (T,B,I,H)':22} {'fwd ms nbdl / torch':>21} {'ratio (range)':>19} "
          f"{'fwd+bwd ms nbdl / torch':>25} {'ratio (range)':>19}")
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
            cols = []
            for ours, theirs in ((nb.forward, tb.forward), (nb.forward_backward, tb.forward_backward)):
                times = []
                for r in range(rounds):
                    pair = (ours, theirs) if r % 2 == 0 else (theirs, ours)
                    t = [median(f) for f in pair]
                    times.append(t if r % 2 == 0 else t[::-1])
                times = np.array(times)
                ratios = times[:, 0] / times[:, 1]
                cols.append(f"{np.median(times[:, 0]) * 1e3:9.2f} / {np.median(times[:, 1]) * 1e3:9.2f} "
                            f"{np.median(ratios):6.2f} ({ratios.min():.2f}-{ratios.max():.2f})")
            print(f"{cell:9} {str(shape):22} {cols[0]:>40} {cols[1]:>44}", flush=True)


if __name__ == "__main__":
    # python -m asv_bench.benchmarks.rnn [threads] [cell ...]
    import sys
    args = sys.argv[1:]
    _compare(threads=int(args[0]) if args and args[0].isdigit() else 2,
             cells=[a for a in args if not a.isdigit()] or None)
