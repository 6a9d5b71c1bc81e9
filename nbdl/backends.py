"""Global switches that choose between equivalent kernels (like ``torch.backends``).

Convolution has two algorithms on every device, ``"direct"`` and ``"im2col"``
(see :func:`nbdl.functional.conv2d`). Which one runs is decided, in order, by:

1. the ``algo=`` keyword of the call or module, when it is not ``"auto"``;
2. the global choice set with :func:`set_conv_algo`, when it is not ``"auto"``;
3. with ``nbdl.backends.benchmark = True``: the first call for a new
   (device, dtype, shapes, stride, padding, dilation, groups) times both
   algorithms and remembers the faster one for that configuration;
4. otherwise the shape heuristic documented in ``nbdl.kernels.conv.choose_algo``,
   separately for the forward pass and each backward pass.

Example::

    import nbdl
    nbdl.set_conv_algo("im2col")      # force im2col everywhere
    nbdl.set_conv_algo("auto")        # back to the default
    nbdl.backends.benchmark = True    # measure once per new configuration
"""

CONV_ALGOS = ("auto", "direct", "im2col")

#: When True, "auto" convolutions time the candidate algorithms on the first call
#: for a new configuration and reuse the winner (see the module docstring).
benchmark = False

_conv_algo = "auto"
_benchmark_winners = {}


def set_conv_algo(name):
    """Set the global convolution algorithm: "auto" (default), "direct" or "im2col"."""
    global _conv_algo
    if not isinstance(name, str) or name not in CONV_ALGOS:
        raise ValueError(f"set_conv_algo: name must be one of {CONV_ALGOS}, got {name!r}")
    _conv_algo = name


def get_conv_algo():
    """The global convolution algorithm set by :func:`set_conv_algo` ("auto" by default)."""
    return _conv_algo


def benchmark_winner(key):
    """The algorithm measured fastest for ``key``, or None if not measured yet."""
    return _benchmark_winners.get(key)


def record_benchmark_winner(key, algo):
    """Remember ``algo`` as the fastest algorithm for the configuration ``key``."""
    _benchmark_winners[key] = algo


def clear_benchmark_cache():
    """Forget every measured choice (the next calls measure again)."""
    _benchmark_winners.clear()
