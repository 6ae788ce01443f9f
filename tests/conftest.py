"""Shared fixtures (keep this small: helpers used by one file live in that file)."""
import numpy as np
import pytest


@pytest.fixture
def rng():
    """A fresh, seeded generator per test: tests stay independent and repeatable."""
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def single_thread_kernels():
    """Engine tests call kernels on tiny arrays thousands of times; an OpenMP team per call costs
    milliseconds on a busy machine, and results do not depend on the thread count."""
    import dreidel
    previous = dreidel.get_num_threads()
    dreidel.set_num_threads(1)
    yield
    dreidel.set_num_threads(previous)
