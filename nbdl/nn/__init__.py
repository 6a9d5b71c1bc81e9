"""nbdl.nn: Module, Parameter and layers with PyTorch's names, arguments and state_dict keys."""
from nbdl.nn.module import *  # noqa: F401,F403
from nbdl.nn.linear import *  # noqa: F401,F403
from nbdl.nn.activation import *  # noqa: F401,F403
from nbdl.nn.loss import *  # noqa: F401,F403
from nbdl.nn.dropout import *  # noqa: F401,F403
from nbdl.nn.flatten import *  # noqa: F401,F403
from nbdl.nn.conv import *  # noqa: F401,F403
from nbdl.nn.pooling import *  # noqa: F401,F403
from nbdl.nn.normalization import *  # noqa: F401,F403
from nbdl.nn.rnn import *  # noqa: F401,F403
from nbdl.nn import init, utils  # noqa: F401
from nbdl.nn import functional  # noqa: F401
