"""nbdl.nn.functional: the same module as nbdl.functional (like torch.nn.functional)."""
from nbdl.functional import *  # noqa: F401,F403
