"""The global random generator used for initialisation and dropout; `manual_seed` makes runs repeatable."""
import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed):
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def generator(rng=None):
    """`rng` if given, else the global generator."""
    return rng if rng is not None else _generator
