"""dreidel.nn.fitting: the fitting math of every `from_dense`, against independent numpy references."""
import numpy as np
import pytest

import dreidel
from dreidel.nn import ALSHSparseDense, DeepSpectralLinear, LinearWHT, LowRankLinear, SpectralLowRankLinear
from dreidel.nn.fitting import (DenseProblem, InputStatistics, dense_arrays, finish_fit, fit_diagonal,
                                output_subspace, spectral_als_sweep, start_fit)


def test_fit_diagonal_is_the_least_squares_solution_of_the_explicit_design():
    rng = np.random.default_rng(0)
    n, N, out = 60, 6, 4
    U, A = rng.standard_normal((n, N)), rng.standard_normal((out, N))
    Y = rng.standard_normal((n, out))
    # y_s ≈ A diag(u_s) d: the design row block of sample s is A * u_s (columns scaled)
    design = np.concatenate([A * u for u in U])
    want = np.linalg.lstsq(design, Y.reshape(-1), rcond=None)[0]
    d, change = fit_diagonal(U.T @ U, Y.T @ U, A, A.T @ A, np.zeros(N), ridge=1e-12)
    np.testing.assert_allclose(d, want, rtol=1e-8, atol=1e-10)
    f = lambda d: np.sum((Y.reshape(-1) - design @ d) ** 2)
    assert change == pytest.approx(f(d) - f(np.zeros(N)), rel=1e-8)
    assert change < 0


def test_fit_diagonal_keeps_unreached_coordinates():
    rng = np.random.default_rng(1)
    U = rng.standard_normal((30, 5))
    U[:, 3] = 0  # coordinate 3 never carries signal: G is singular there
    A, Y = rng.standard_normal((3, 5)), rng.standard_normal((30, 3))
    d_old = np.arange(5.0)
    d, _ = fit_diagonal(U.T @ U, Y.T @ U, A, A.T @ A, d_old)
    assert d[3] == pytest.approx(3.0)


def test_output_subspace_gives_the_whitened_eckart_young_fit():
    rng = np.random.default_rng(2)
    W = rng.standard_normal((7, 5))
    X = rng.standard_normal((200, 5)) @ rng.standard_normal((5, 5))
    Xc = X - X.mean(axis=0)
    C = Xc.T @ Xc
    P = output_subspace(W, C, 2)
    # reference: best rank-2 of W C^{1/2}, mapped back by C^{-1/2}
    values, vectors = np.linalg.eigh(C)
    root = vectors @ np.diag(np.sqrt(values)) @ vectors.T
    u, s, vt = np.linalg.svd(W @ root)
    want = (u[:, :2] * s[:2]) @ vt[:2] @ np.linalg.inv(root)
    np.testing.assert_allclose(P @ P.T @ W, want, rtol=1e-8, atol=1e-8)


def test_dense_problem_errors_match_the_data():
    rng = np.random.default_rng(3)
    W, b = rng.standard_normal((4, 6)), rng.standard_normal(4)
    X = rng.standard_normal((50, 6)) + 3
    W_hat = W + 0.1 * rng.standard_normal(W.shape)
    problem = DenseProblem(W, b, X)
    Y = X @ W.T + b
    Y_hat = X @ W_hat.T + problem.offset(W_hat)
    assert problem.relative_error(W_hat) == pytest.approx(np.linalg.norm(Y - Y_hat) / np.linalg.norm(Y), rel=1e-10)
    assert np.mean(Y - Y_hat, axis=0) == pytest.approx(np.zeros(4), abs=1e-10)  # the optimal offset
    weight_only = DenseProblem(W, b)
    assert weight_only.relative_error(W_hat) == pytest.approx(np.linalg.norm(W - W_hat) / np.linalg.norm(W))
    assert weight_only.offset(W_hat) is weight_only.b and weight_only.has_bias
    assert not DenseProblem(W).has_bias and DenseProblem(W, inputs=X).has_bias
    stats = InputStatistics(6)
    for part in np.array_split(X, 3):
        stats.update(part)
    assert DenseProblem(W, b, stats).relative_error(W_hat) == pytest.approx(problem.relative_error(W_hat), rel=1e-10)


def test_dense_arrays_checks_and_picks_the_layer_dtype():
    W, b, dtype = dense_arrays(dreidel.Tensor(np.ones((2, 3), np.float32)), [1.0, 2.0])
    assert isinstance(W, np.ndarray) and W.dtype == np.float32 and dtype == np.float32
    assert dense_arrays(np.ones((2, 3), np.int64))[2] == np.float32
    assert dense_arrays(np.ones((2, 3)))[2] == np.float64
    with pytest.raises(ValueError, match="2-D"):
        dense_arrays(np.ones(3))
    with pytest.raises(ValueError, match=r"bias shape \(3,\).*\(2,\)"):
        dense_arrays(np.ones((2, 3)), np.ones(3))
    with pytest.raises(TypeError, match="numeric"):
        dense_arrays(np.array([["a", "b"]]))


@pytest.mark.parametrize("make", [lambda W, b: LinearWHT.from_dense(W, b),
                                  lambda W, b: DeepSpectralLinear.from_dense(W, b, depth=2, sweeps=1),
                                  lambda W, b: LowRankLinear.from_dense(W, b, rank=2),
                                  lambda W, b: SpectralLowRankLinear.from_dense(W, b, rank=2, depth=1, rounds=1),
                                  lambda W, b: ALSHSparseDense.from_dense(W, b, bits=2, tables=2)])
def test_every_from_dense_shares_the_argument_rules(make):
    W = np.arange(24).reshape(6, 4) % 5 - 2  # integer weights: float32 layers
    layer = make(W, np.arange(6))
    assert all(p.dtype == np.float32 for p in layer.parameters())
    with pytest.raises(ValueError, match="bias shape"):
        make(W.astype(np.float32), np.zeros(5))
    with pytest.raises(ValueError, match="2-D"):
        make(np.zeros(4), None)


def test_start_and_finish_fit_build_the_report_and_the_bias():
    rng = np.random.default_rng(4)
    W, X = rng.standard_normal((3, 4)), rng.standard_normal((20, 4))
    problem, dtype = start_fit(W, None, X, dtype=np.float32)
    assert dtype == np.float32 and problem.has_bias  # an offset is fitted though the dense layer has none
    layer = dreidel.nn.Linear(4, 3, bias=problem.has_bias)
    W_hat = np.zeros_like(W)
    finish_fit(layer, problem, W_hat, dtype, iterations=3, history=[1.0])
    assert list(layer.fit_report) == ["relative_error", "iterations", "history", "used_inputs"]
    assert layer.fit_report["iterations"] == 3 and layer.fit_report["used_inputs"]
    np.testing.assert_allclose(layer.bias.data, W @ X.mean(axis=0), rtol=1e-6)  # mean output of W x
    assert layer.bias.dtype == np.float32
    assert layer.fit_report["relative_error"] == pytest.approx(problem.relative_error(W_hat))


def test_spectral_sweep_changes_are_the_true_error_changes():
    rng = np.random.default_rng(5)
    W, X = rng.standard_normal((10, 12)), rng.standard_normal((80, 12))
    problem = DenseProblem(W, None, X)
    layer = DeepSpectralLinear(12, 10, depth=3, bias=False, dtype=np.float64)
    D = layer.d.data.copy()
    squared = lambda D: problem.relative_error(layer._dense_weight(D)) ** 2 * problem.total
    before = squared(D)
    changes = spectral_als_sweep(layer, problem, D, 1e-9)
    assert len(changes) == 3 and all(c <= 0 for c in changes)
    assert before + sum(changes) == pytest.approx(squared(D), rel=1e-7, abs=1e-9 * before)


def test_output_subspace_reuses_its_last_eigh_only_for_the_same_weights_and_covariance():
    from dreidel.nn import fitting
    rng = np.random.default_rng(3)
    W, X = rng.standard_normal((40, 24)), rng.standard_normal((200, 24))
    C = X.T @ X / 200
    first = [fitting.output_subspace(W, C, r) for r in (4, 9)]   # the second reuses the first's eigh
    fitting._last_eigh.clear()
    fresh = [fitting.output_subspace(W, C, r) for r in (9, 4)]
    np.testing.assert_array_equal(first[0], fresh[1])
    np.testing.assert_array_equal(first[1], fresh[0])
    W2 = W.copy()
    W2[0, 0] += 1.0  # one changed entry: a different problem, never the cached answer
    values, vectors = np.linalg.eigh(W2 @ C @ W2.T)
    P = fitting.output_subspace(W2, C, 3)
    np.testing.assert_allclose(np.abs(P.T @ vectors[:, ::-1][:, :3]), np.eye(3), atol=1e-8)
