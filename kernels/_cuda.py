"""Launch helpers shared by the cuda.py files (imported only when a CUDA device is used)."""
import numpy as np
from numba import config, cuda

THREADS = 256
# Block sizes are whole warps on a GPU; the simulator runs every thread as a Python
# thread, so there it pays to launch no idle threads at all.
WARP = 1 if config.ENABLE_CUDASIM else 32


def grid1d(n, threads=THREADS):
    """(blocks, threads) covering n items, at least one block.

    Small n gets a smaller block (a whole number of warps): no idle warps on a GPU, and
    far fewer Python threads under the simulator. Only for kernels that index with
    cuda.grid(1) and a bounds check, never for ones that assume a block size.
    """
    threads = max(WARP, min(threads, WARP * ((int(n) + WARP - 1) // WARP)))
    return max(1, (int(n) + threads - 1) // threads), threads


def grid2d(ny, nx, ty=16, tx=16):
    """((blocks_x, blocks_y), (tx, ty)) covering an ny x nx grid; x is the fast axis."""
    return (max(1, (int(nx) + tx - 1) // tx), max(1, (int(ny) + ty - 1) // ty)), (tx, ty)


def empty(shape, dtype):
    return cuda.device_array(shape, dtype=np.dtype(dtype))


def zeros(shape, dtype):
    a = cuda.device_array(shape, dtype=np.dtype(dtype))
    if a.size:
        _fill_launch(a, 0.0)
    return a


def _fill_launch(a, value):
    from nbdl.kernels.elementwise.cuda import fill
    fill(a, value)
