"""nbdl.functional (import as F): the differentiable ops, PyTorch's names and semantics.

Each op validates its arguments, picks the CPU or CUDA kernels from its inputs'
device, runs the forward kernel and records a backward closure. The ops live in
nbdl/ops/, one module per family.
"""
from nbdl.ops.elementwise import *  # noqa: F401,F403
from nbdl.ops.linear import *  # noqa: F401,F403
from nbdl.ops.activation import *  # noqa: F401,F403
from nbdl.ops.loss import *  # noqa: F401,F403
from nbdl.ops.dropout import *  # noqa: F401,F403
from nbdl.ops.conv import *  # noqa: F401,F403
from nbdl.ops.pool import *  # noqa: F401,F403
from nbdl.ops.norm import *  # noqa: F401,F403
from nbdl.ops.rnn import *  # noqa: F401,F403
