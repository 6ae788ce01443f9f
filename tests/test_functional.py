"""dreidel.functional: loss values against plain numpy references, reductions, and clear errors."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import dreidel
from dreidel import Tensor, functional as F, ops

FAST = settings(max_examples=25, deadline=None)
pytestmark = pytest.mark.usefixtures("single_thread_kernels")
seeds = st.integers(0, 2**32 - 1)
shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)
REDUCE = {"mean": np.mean, "sum": np.sum, "none": lambda v: v}


@pytest.mark.parametrize("reduction", sorted(REDUCE))
@FAST
@given(shape=shapes, seed=seeds, dtype=st.sampled_from([np.float32, np.float64]))
def test_elementwise_losses_match_numpy(reduction, shape, seed, dtype):
    rng = np.random.default_rng(seed)
    x = (4 * rng.standard_normal(shape)).astype(dtype)
    y = rng.random(shape).astype(dtype)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    expected = {
        "mse_loss": (x64 - y64) ** 2,
        "l1_loss": np.abs(x64 - y64),
        "binary_cross_entropy_with_logits": -(y64 * np.log(1 / (1 + np.exp(-x64)))
                                               + (1 - y64) * np.log(1 - 1 / (1 + np.exp(-x64)))),
    }
    for name, per_element in expected.items():
        out = getattr(F, name)(Tensor(x), y, reduction=reduction)
        assert out.dtype == dtype, name
        np.testing.assert_allclose(out.data, REDUCE[reduction](per_element), rtol=2e-5, atol=1e-5, err_msg=name)


def test_binary_cross_entropy_with_logits_is_finite_for_huge_logits():
    x = Tensor(np.array([-1e4, -50.0, 50.0, 1e4], np.float32), requires_grad=True)
    loss = F.binary_cross_entropy_with_logits(x, np.array([1.0, 0.0, 1.0, 0.0], np.float32), reduction="none")
    np.testing.assert_allclose(loss.data, [1e4, 0, 0, 1e4], atol=1e-6)
    loss.sum().backward()
    np.testing.assert_allclose(x.grad, [-1, 0, 0, 1], atol=1e-6)


def test_loss_argument_errors():
    x = Tensor(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="reduction"):
        F.mse_loss(x, np.zeros((2, 3)), reduction="avg")
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        F.mse_loss(x, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="kl_div"):
        F.kl_div(x, np.zeros(3))
    with pytest.raises(ValueError, match="do not match"):
        F.cross_entropy(x, np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="pairs"):
        F.pad(x, (1, 2, 3))


@FAST
@given(batch=st.integers(1, 3), classes=st.integers(2, 4), extra=st.integers(1, 3), seed=seeds)
def test_cross_entropy_class_axis_one_equals_flattened_rows(batch, classes, extra, seed):
    """(N, C, d) logits are the (N·d, C) case with the class axis moved last, as in PyTorch."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((batch, classes, extra))
    target = rng.integers(0, classes, size=(batch, extra))
    spatial = F.cross_entropy(Tensor(logits), target, label_smoothing=0.1, reduction="none")
    rows = F.cross_entropy(Tensor(logits.transpose(0, 2, 1).reshape(-1, classes)), target.reshape(-1),
                           label_smoothing=0.1, reduction="none")
    assert spatial.shape == (batch, extra)
    np.testing.assert_allclose(spatial.data.reshape(-1), rows.data, rtol=1e-12)


def test_cross_entropy_ignores_everything_gracefully():
    x = Tensor(np.zeros((2, 3)), requires_grad=True)
    loss = F.cross_entropy(x, np.array([-100, -100]))
    assert loss.item() == 0
    loss.backward()
    np.testing.assert_array_equal(x.grad, np.zeros((2, 3)))


def test_label_smoothing_of_one_is_the_uniform_target():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 5))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    loss = F.cross_entropy(Tensor(logits), np.array([0, 1, 2]), label_smoothing=1.0)
    np.testing.assert_allclose(loss.item(), -logp.mean(), rtol=1e-12)


def test_kl_div_reductions_and_log_target():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(4), size=3)
    logq = np.log(rng.dirichlet(np.ones(4), size=3))
    per = p * (np.log(p) - logq)
    np.testing.assert_allclose(F.kl_div(Tensor(logq), p).item(), per.sum() / 3)
    np.testing.assert_allclose(F.kl_div(Tensor(logq), p, reduction="sum").item(), per.sum())
    np.testing.assert_allclose(F.kl_div(Tensor(logq), np.log(p), log_target=True, reduction="none").data, per)


def test_one_hot():
    np.testing.assert_array_equal(F.one_hot(np.array([2, 0]), 3).data, [[0, 0, 1], [1, 0, 0]])


def test_cross_entropy_matches_a_numpy_reference(rng):
    logits = rng.standard_normal((5, 4)) * 3
    target = np.array([0, 3, -100, 1, 3])
    smoothing = 0.2
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    keep = target != -100
    nll = -logp[np.arange(5), np.where(keep, target, 0)]
    per_row = (1 - smoothing) * nll - smoothing * logp.mean(-1)
    expected = per_row[keep].mean()
    loss = F.cross_entropy(Tensor(logits), target, label_smoothing=smoothing)
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-12)
    none = F.cross_entropy(Tensor(logits), target, reduction="none")
    np.testing.assert_allclose(none.data, np.where(keep, nll, 0), rtol=1e-12)
    with pytest.raises(IndexError, match="out of range"):
        F.cross_entropy(Tensor(logits), np.array([0, 1, 2, 3, 4]))
    with pytest.raises(TypeError, match="integers"):
        F.cross_entropy(Tensor(logits), np.zeros(5))


def test_kl_div_with_zero_target_probabilities_is_finite():
    logq = ops.log_softmax(Tensor(np.array([[0.0, 1.0, 2.0]]), requires_grad=True))
    loss = F.kl_div(logq, np.array([[0.0, 0.5, 0.5]]))
    expected = sum(0.5 * (math.log(0.5) - v) for v in logq.data[0, 1:])
    np.testing.assert_allclose(loss.item(), expected)


def test_dropout_uses_the_global_generator_and_keeps_the_expectation():
    x = Tensor(np.ones((200, 200), np.float32))
    dreidel.random.manual_seed(7)
    first = F.dropout(x, 0.25).data
    dreidel.random.manual_seed(7)
    np.testing.assert_array_equal(F.dropout(x, 0.25).data, first)
    assert first.dtype == np.float32
    assert set(np.unique(first)) <= {0.0, np.float32(1 / 0.75)}
    assert abs(first.mean() - 1) < 0.02
    assert F.dropout(x, 0.25, training=False) is x
    with pytest.raises(ValueError, match="probability"):
        F.dropout(x, 1.0)


def test_embedding_rejects_bad_indices():
    weight = Tensor(np.ones((3, 2)), requires_grad=True)
    with pytest.raises(IndexError, match="out of range"):
        F.embedding(np.array([0, 3]), weight)
    with pytest.raises(TypeError, match="integers"):
        F.embedding(np.array([0.0]), weight)


def test_nll_loss_rejects_out_of_range_targets():
    logp = ops.log_softmax(Tensor(np.zeros((2, 3))))
    with pytest.raises(IndexError, match="out of range"):
        F.nll_loss(logp, np.array([-1, 0]))
