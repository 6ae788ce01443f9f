"""The global random generator used for initialisation and dropout; `manual_seed` makes runs repeatable."""
import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed):
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def generator(rng=None):
    """`rng` if it is a generator, a new generator seeded by it if it is an integer seed, else the
    global generator."""
    if rng is None:
        return _generator
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    if isinstance(rng, (str, bytes, float, bool)):  # anything else is used as a generator (duck-typed)
        raise TypeError(f"rng must be a numpy Generator, an integer seed or None, got {type(rng).__name__}")
    return rng


def get_state():
    """The global generator's state (a JSON-able dict), for checkpoints."""
    return _generator.bit_generator.state


def set_state(state):
    """Restore the global generator to a state from `get_state` (same bit generator)."""
    global _generator
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = state
    _generator = np.random.Generator(bit_generator)
