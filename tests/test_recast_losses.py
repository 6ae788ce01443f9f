"""The distillation losses of dreidel.recast: values against numpy/scipy references, and gradchecks."""
import numpy as np
import pytest
from scipy.special import log_softmax, softmax

import dreidel
from dreidel.recast.distillation import cosine_loss, kl_loss, relative_mse


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, 5, 7)), rng.standard_normal((2, 5, 7))


def test_loss_values_match_independent_references(pair):
    out, target = pair
    assert float(relative_mse(dreidel.Tensor(out), target).numpy()) == pytest.approx(
        np.sum((out - target) ** 2) / np.sum(target ** 2))
    assert relative_mse(out, target) == pytest.approx(np.sum((out - target) ** 2) / np.sum(target ** 2))
    a, b = out.reshape(-1, 7), target.reshape(-1, 7)
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert float(cosine_loss(dreidel.Tensor(out), target).numpy()) == pytest.approx(1 - cos.mean(), rel=1e-9)
    p = softmax(b, axis=1)
    kl = np.sum(p * (np.log(p) - log_softmax(a, axis=1)), axis=1).mean()
    assert float(kl_loss(dreidel.Tensor(out), target).numpy()) == pytest.approx(kl, rel=1e-9)
    assert float(kl_loss(dreidel.Tensor(target), target).numpy()) == pytest.approx(0, abs=1e-12)


def test_losses_gradcheck(pair):
    out, target = pair
    for loss in (relative_mse, cosine_loss, kl_loss):
        assert dreidel.gradcheck(lambda x, loss=loss: loss(x, target), dreidel.Tensor(out, requires_grad=True))
