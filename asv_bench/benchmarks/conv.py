"""conv2d forward and forward + backward, nbdl (each algorithm) vs PyTorch.

Shapes are (N, C, H, W, K, R, S, padding, stride), float32: a ResNet 3x3 block
(32,64,56,56 -> 64), a CIFAR first layer with 5x5 filters on 3 channels, a deep 3x3
layer on a 14x14 map with 256 channels, LeNet's first layer on MNIST, and the ResNet
stem (7x7, stride 2, on 224x224 RGB). "auto" is what a user gets by default; the report
divides the FLOP counts below by the time and shows them next to numpy's sgemm.
"""
import numpy as np

from ._common import DEVICES, Benchmark, conv2d_flops, first_time, flops, largest_shape_only, \
    nbdl_on, randn, torch_on

SHAPES = [
    (32, 64, 56, 56, 64, 3, 3, 1, 1),
    (64, 3, 32, 32, 32, 5, 5, 0, 1),
    (8, 256, 14, 14, 256, 3, 3, 1, 1),
    (16, 1, 28, 28, 6, 5, 5, 2, 1),
    (8, 3, 224, 224, 64, 7, 7, 3, 2),
]
ALGOS = ["auto", "im2col", "direct"]


def _forward_flops(shape):
    n, c, h, w, k, r, s, pad, stride = shape
    return conv2d_flops((n, c, h, w), (k, c, r, s), stride=stride, padding=pad)


class _Conv2d(Benchmark):
    """conv2d(x, w, b) on one shape; forward_backward computes the input, weight and bias
    gradients (the three backward products of a training step)."""

    params = (DEVICES, ALGOS, SHAPES)
    param_names = ("device", "algo", "shape")
    framework = staticmethod(nbdl_on)

    def setup(self, device, *args):
        algo, shape = args if len(args) == 2 else (None, args[0])
        self.fw = self.framework(device)
        n, c, h, w, k, r, s, self.pad, self.stride = shape
        self.kw = {} if algo is None else {"algo": algo}
        self.x = self.fw.tensor(randn((n, c, h, w)), requires_grad=True)
        self.w = self.fw.tensor(randn((k, c, r, s), seed=1) * np.float32(0.1), requires_grad=True)
        self.b = self.fw.tensor(randn((k,), seed=2), requires_grad=True)
        y = self.op()
        self.grad = self.fw.tensor(np.ones(tuple(y.shape), np.float32))
        if first_time(type(self), device, *args):
            self.forward()
            self.forward_backward()

    def op(self):
        return self.fw.F.conv2d(self.x, self.w, self.b, stride=self.stride, padding=self.pad, **self.kw)

    def forward(self):
        with self.fw.no_grad():
            self.op()
        self.fw.sync()

    def forward_backward(self):
        self.op().backward(self.grad)
        self.fw.sync()

    @flops(lambda device, *args: _forward_flops(args[-1]))
    def time_conv2d_forward(self, device, *args):
        self.forward()

    @flops(lambda device, *args: 3 * _forward_flops(args[-1]))
    def time_conv2d_forward_backward(self, device, *args):
        self.forward_backward()

    @largest_shape_only(params)
    def peakmem_conv2d(self, device, *args):
        self.forward_backward()


class Conv2d(_Conv2d):
    pass


class TorchConv2d(_Conv2d):
    """PyTorch's conv2d (its own algorithm choice) on the same shapes."""

    params = (DEVICES, SHAPES)
    param_names = ("device", "shape")
    framework = staticmethod(torch_on)

    @largest_shape_only(params)
    def peakmem_conv2d(self, device, shape):
        self.forward_backward()


def _compare(threads=2, repeats=7, cpu_time=False):
    """Print nbdl (algo="auto") against PyTorch on SHAPES, float32, in one process.

    Medians of ``repeats`` calls, each side measured twice (the better median kept) so a
    burst of load on a shared machine hurts both alike; every shape runs once on both sides
    first (PyTorch was seen to run its first shapes up to 6x slower), and each side starts
    after a pause in which the other's worker threads stop spinning. ``cpu_time`` times with the process
    CPU clock instead of the wall clock: with threads=1 it ignores time spent descheduled.
    """
    import time
    import numba
    import torch
    import nbdl
    from nbdl.kernels.conv import choose_algo, conv2d_geometry

    torch.set_num_threads(threads)
    numba.set_num_threads(threads)
    clock = time.process_time if cpu_time else time.perf_counter

    def median(f):
        time.sleep(0.2)         # the other library's worker threads stop spinning first
        f()
        times = []
        for _ in range(repeats):
            t0 = clock()
            f()
            times.append(clock() - t0)
        return float(np.median(times))

    a = randn((2048, 2048))
    sgemm = 2 * 2048 ** 3 / min(median(lambda: a @ a), median(lambda: a @ a)) / 1e9
    print(f"numpy sgemm 2048^3: {sgemm:.0f} GFLOP/s; {threads} thread(s), "
          f"{'CPU' if cpu_time else 'wall'} clock, median of {repeats}")
    print(f"{'shape (N,C,H,W,K,R,S,pad,stride)':34} {'auto':7} {'fwd ms nbdl / torch':>21} {'ratio':>6} "
          f"{'GFLOP/s nbdl/torch':>19} {'fwd+bwd ms nbdl / torch':>25} {'ratio':>6}")
    runs_by_shape = {}
    for shape in SHAPES:
        n, c, h, w, k, r, s, pad, stride = shape
        arrays = randn((n, c, h, w)), randn((k, c, r, s), seed=1) * np.float32(0.1), randn((k,), seed=2)
        grad_shape = (n, k, (h + 2 * pad - r) // stride + 1, (w + 2 * pad - s) // stride + 1)
        runs = {}
        for name, fw, F in (("nbdl", nbdl, nbdl.functional), ("torch", torch, torch.nn.functional)):
            x, wt, b = (fw.tensor(v, requires_grad=True) for v in arrays)
            g = fw.tensor(np.ones(grad_shape, np.float32))

            def fwd(F=F, fw=fw, x=x, wt=wt, b=b, stride=stride, pad=pad):
                with fw.no_grad():
                    F.conv2d(x, wt, b, stride=stride, padding=pad)

            def fwd_bwd(F=F, x=x, wt=wt, b=b, g=g, stride=stride, pad=pad):
                F.conv2d(x, wt, b, stride=stride, padding=pad).backward(g)
            runs[name] = [fwd, fwd_bwd]
        runs_by_shape[shape] = runs
    for runs in runs_by_shape.values():     # warm-up: PyTorch runs its first shapes slowly
        for f in runs["torch"] + runs["nbdl"]:
            f()
    for shape, runs in runs_by_shape.items():
        n, c, h, w, k, r, s, pad, stride = shape
        t = {key: median(f) for key, f in (("nf", runs["nbdl"][0]), ("tf", runs["torch"][0]),
                                           ("nb", runs["nbdl"][1]), ("tb", runs["torch"][1]))}
        t2 = {key: median(f) for key, f in (("nf", runs["nbdl"][0]), ("tf", runs["torch"][0]),
                                            ("nb", runs["nbdl"][1]), ("tb", runs["torch"][1]))}
        t = {key: min(t[key], t2[key]) for key in t}
        flop = _forward_flops(shape)
        algo = choose_algo(conv2d_geometry("conv2d", (n, c, h, w), (k, c, r, s), stride, pad), "cpu")
        print(f"{str(shape):34} {algo:7} {t['nf'] * 1e3:9.2f} / {t['tf'] * 1e3:9.2f} {t['nf'] / t['tf']:6.2f} "
              f"{flop / t['nf'] / 1e9:8.0f} / {flop / t['tf'] / 1e9:<8.0f} "
              f"{t['nb'] * 1e3:11.2f} / {t['tb'] * 1e3:11.2f} {t['nb'] / t['tb']:6.2f}", flush=True)


if __name__ == "__main__":
    # python -m asv_bench.benchmarks.conv [threads] [--cpu-time]
    import sys
    args = [v for v in sys.argv[1:] if not v.startswith("--")]
    _compare(threads=int(args[0]) if args else 2, cpu_time="--cpu-time" in sys.argv)
