"""nbdl's global random state.

Everything random in nbdl (initializers, dropout seeds, shuffling in the examples)
draws from one numpy Generator on the host, so ``nbdl.manual_seed(s)`` fixes every
bit, and a CPU run and a CUDA run with the same seed draw the same numbers.
"""
import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed):
    """Seed nbdl's global generator (like torch.manual_seed)."""
    global _generator
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"manual_seed: seed must be an int, got {seed!r}")
    _generator = np.random.default_rng(int(seed))
    return _generator


def generator():
    """The global numpy Generator."""
    return _generator


def next_seed():
    """A fresh 63-bit seed for a kernel's counter-based random numbers."""
    return int(_generator.integers(0, 2**63 - 1, dtype=np.int64))


def get_rng_state():
    return _generator.bit_generator.state


def set_rng_state(state):
    _generator.bit_generator.state = state
