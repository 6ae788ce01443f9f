"""LowRankLinear: forward, gradients, and the (activation-aware) low-rank fits of a dense layer."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import dreidel
from dreidel import nn
from dreidel.nn.lowrank import LowRankLinear, SpectralLowRankLinear


def anisotropic_inputs(rng, n, width, shift=1.0):
    """Correlated inputs with a wide spectrum and a non-zero mean, like real activations."""
    mixing = rng.standard_normal((width, width)) * np.logspace(0, -2, width)
    return rng.standard_normal((n, width)) @ mixing.T + shift


def reference_activation_aware(W, X, rank):
    """Textbook route: whiten by C^{1/2}, truncated SVD, map back with C^{-1/2} (C full rank)."""
    Xc = X - X.mean(axis=0)
    C = Xc.T @ Xc
    values, vectors = np.linalg.eigh(C)
    root = (vectors * np.sqrt(values)) @ vectors.T
    inv_root = (vectors / np.sqrt(values)) @ vectors.T
    P, s, Qt = np.linalg.svd(W @ root)
    return (P[:, :rank] * s[:rank]) @ Qt[:rank] @ inv_root


@settings(max_examples=20, deadline=None)
@given(n_in=st.integers(1, 12), n_out=st.integers(1, 12), data=st.data())
def test_forward_matches_numpy(n_in, n_out, data):
    rank = data.draw(st.integers(1, min(n_in, n_out)))
    bias = data.draw(st.booleans())
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    layer = LowRankLinear(n_in, n_out, rank, bias=bias, rng=rng, dtype=np.float64)
    if bias:
        layer.bias.data = rng.standard_normal(n_out)
    x = rng.standard_normal((2, 3, n_in))
    expected = x @ layer.U.data @ layer.V.data + (layer.bias.data if bias else 0)
    np.testing.assert_allclose(layer(dreidel.Tensor(x)).data, expected, atol=1e-12)
    np.testing.assert_allclose(layer.weight(), (layer.U.data @ layer.V.data).T)


def test_gradcheck():
    rng = np.random.default_rng(0)
    layer = LowRankLinear(6, 5, 3, rng=rng, dtype=np.float64)
    layer.bias.data = rng.standard_normal(5)
    x = dreidel.Tensor(rng.standard_normal((2, 4, 6)), requires_grad=True)
    assert dreidel.gradcheck(lambda x, u, v, b: layer(x), x, layer.U, layer.V, layer.bias)


def test_errors_and_multiply_adds():
    with pytest.raises(ValueError, match="rank"):
        LowRankLinear(8, 4, 5)
    with pytest.raises(ValueError, match="rank"):
        LowRankLinear(8, 4, 0)
    with pytest.raises(ValueError, match="rank"):
        LowRankLinear.from_dense(np.zeros((4, 8)))
    layer = LowRankLinear(8, 4, 2)
    with pytest.raises(ValueError, match="8"):
        layer(dreidel.Tensor(np.zeros((3, 7), dtype=np.float32)))
    assert layer.multiply_adds() == 2 * 12 + 4
    assert LowRankLinear(8, 4, 2, bias=False).multiply_adds() == 24


def test_initial_output_variance_matches_a_dense_linear():
    x = dreidel.Tensor(np.random.default_rng(0).standard_normal((4000, 256)))
    low = LowRankLinear(256, 256, 64, rng=np.random.default_rng(1), dtype=np.float64)(x).data.var()
    dense = dreidel.nn.Linear(256, 256, rng=np.random.default_rng(1), dtype=np.float64)(x).data.var()
    assert 0.8 < low / dense < 1.25


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes(dtype):
    for layer in (LowRankLinear(8, 4, 2, dtype=dtype), SpectralLowRankLinear(8, 4, 2, dtype=dtype),
                  LowRankLinear.from_dense(np.ones((4, 8), dtype=dtype), rank=2)):
        assert all(p.dtype == dtype for p in layer.parameters())
        assert layer(dreidel.Tensor(np.ones((3, 8), dtype=dtype))).dtype == dtype


def test_state_dict_round_trip():
    layer = LowRankLinear(10, 7, 3, rng=np.random.default_rng(0))
    fresh = LowRankLinear(10, 7, 3, rng=np.random.default_rng(1))
    fresh.load_state_dict(layer.state_dict())
    x = dreidel.Tensor(np.random.default_rng(2).standard_normal((4, 10)).astype(np.float32))
    assert np.array_equal(fresh(x).data, layer(x).data)


# -- from_dense ------------------------------------------------------------------------------------
def test_weight_only_fit_is_the_truncated_svd():
    rng = np.random.default_rng(1)
    W, b = rng.standard_normal((20, 30)), rng.standard_normal(20)
    s = np.linalg.svd(W, compute_uv=False)
    for rank in (1, 5, 20):
        layer = LowRankLinear.from_dense(W, b, rank=rank, dtype=np.float64)
        W_hat = layer.weight()
        assert np.linalg.norm(W - W_hat) ** 2 == pytest.approx(np.sum(s[rank:] ** 2), rel=1e-9, abs=1e-18)
        assert layer.fit_report["relative_error"] == pytest.approx(np.linalg.norm(W - W_hat) / np.linalg.norm(W))
        np.testing.assert_array_equal(layer.bias.data, b)
        # balanced factors: each rank-one term split evenly
        np.testing.assert_allclose(np.linalg.norm(layer.U.data, axis=0), np.linalg.norm(layer.V.data, axis=1))


@pytest.mark.parametrize("with_inputs", [False, True])
def test_exact_when_the_weight_has_low_rank(with_inputs):
    rng = np.random.default_rng(2)
    W = rng.standard_normal((16, 4)) @ rng.standard_normal((4, 24))
    b = rng.standard_normal(16)
    X = anisotropic_inputs(rng, 100, 24) if with_inputs else None
    layer = LowRankLinear.from_dense(W, b, inputs=X, rank=4, dtype=np.float64)
    assert layer.fit_report["relative_error"] < 1e-10
    np.testing.assert_allclose(layer.weight(), W, atol=1e-9)
    np.testing.assert_allclose(layer.bias.data, b, atol=1e-9)


def test_activation_aware_matches_the_whitened_svd_reference():
    rng = np.random.default_rng(3)
    W = rng.standard_normal((12, 16))
    X = anisotropic_inputs(rng, 400, 16)
    layer = LowRankLinear.from_dense(W, inputs=X, rank=5, dtype=np.float64)
    np.testing.assert_allclose(layer.weight(), reference_activation_aware(W, X, 5), atol=1e-8)


def test_activation_aware_beats_weight_only_on_the_data_and_is_optimal():
    rng = np.random.default_rng(4)
    W, b = rng.standard_normal((24, 32)), rng.standard_normal(24)
    X = anisotropic_inputs(rng, 500, 32, shift=2.0)
    Y = X @ W.T + b
    previous = np.inf
    for rank in (2, 6, 12):
        aware = LowRankLinear.from_dense(W, b, inputs=X, rank=rank, dtype=np.float64)
        plain = LowRankLinear.from_dense(W, b, rank=rank, dtype=np.float64)
        error_aware = np.linalg.norm(Y - aware(dreidel.Tensor(X)).data) / np.linalg.norm(Y)
        error_plain = np.linalg.norm(Y - plain(dreidel.Tensor(X)).data) / np.linalg.norm(Y)
        assert error_aware == pytest.approx(aware.fit_report["relative_error"], rel=1e-9)
        assert error_aware < error_plain
        assert error_aware < previous
        previous = error_aware
        # a least-squares optimum: the data loss is stationary in U, V and the bias
        loss = ((aware(dreidel.Tensor(X)) - dreidel.Tensor(Y)) ** 2).sum()
        loss.backward()
        for p in aware.parameters():
            assert np.abs(p.grad).max() < 1e-7 * float(loss.data)
        # the bias correction leaves a zero mean residual
        np.testing.assert_allclose((Y - aware(dreidel.Tensor(X)).data).mean(axis=0), 0, atol=1e-9)


def test_fewer_samples_than_outputs():
    rng = np.random.default_rng(5)
    W = rng.standard_normal((30, 20))
    X = rng.standard_normal((6, 20))
    layer = LowRankLinear.from_dense(W, inputs=X, rank=10, dtype=np.float64)
    assert layer.U.shape == (20, 10)
    # 6 centred samples span ≤ 5 directions: exact up to √(rounding) of the squared error
    assert layer.fit_report["relative_error"] < 1e-7


# -- the hybrid: spectral blocks + low rank --------------------------------------------------------
def test_hybrid_forward_is_the_sum_and_gradchecks():
    rng = np.random.default_rng(6)
    layer = SpectralLowRankLinear(6, 10, rank=2, depth=2, rng=rng, dtype=np.float64)
    layer.spectral.d.data = rng.standard_normal(layer.spectral.d.shape)
    layer.bias.data = rng.standard_normal(10)
    x = rng.standard_normal((3, 6))
    expected = x @ layer.spectral.dense_weight().T + x @ layer.low_rank.weight().T + layer.bias.data
    np.testing.assert_allclose(layer(dreidel.Tensor(x)).data, expected, atol=1e-12)
    np.testing.assert_allclose(layer.dense_weight(), layer.spectral.dense_weight() + layer.low_rank.weight())
    assert layer.multiply_adds() == layer.spectral.multiply_adds() + layer.low_rank.multiply_adds() + 10
    params = [layer.spectral.d, layer.low_rank.U, layer.low_rank.V, layer.bias]
    xt = dreidel.Tensor(x, requires_grad=True)
    assert dreidel.gradcheck(lambda x, *p: layer(x), xt, *params)
    with pytest.raises(ValueError, match="6"):
        layer(dreidel.Tensor(np.zeros((2, 5))))


@pytest.mark.parametrize("with_inputs", [False, True])
def test_hybrid_fit_is_monotone_and_beats_its_low_rank_part(with_inputs):
    rng = np.random.default_rng(7)
    W, b = rng.standard_normal((40, 32)), rng.standard_normal(40)
    X = anisotropic_inputs(rng, 400, 32) if with_inputs else None
    hybrid = SpectralLowRankLinear.from_dense(W, b, inputs=X, rank=4, depth=2, rounds=3, dtype=np.float64)
    alone = LowRankLinear.from_dense(W, b, inputs=X, rank=4, dtype=np.float64)
    history = hybrid.fit_report["history"]
    assert history[0] == pytest.approx(alone.fit_report["relative_error"], rel=1e-9)
    assert all(later <= earlier + 1e-9 for earlier, later in zip(history, history[1:]))
    assert history[-1] < 0.95 * history[0]
    if with_inputs:
        Y = X @ W.T + b
        error = np.linalg.norm(Y - hybrid(dreidel.Tensor(X)).data) / np.linalg.norm(Y)
        assert error == pytest.approx(history[-1], rel=1e-6)


def test_streamed_input_statistics_give_the_same_fits():
    from dreidel.nn.fitting import InputStatistics
    from dreidel.nn.spectral import DeepSpectralLinear
    rng = np.random.default_rng(8)
    W, b = rng.standard_normal((12, 16)), rng.standard_normal(12)
    X = anisotropic_inputs(rng, 300, 16, shift=5.0)
    stats = InputStatistics(16)
    for chunk in np.array_split(X, 7):
        stats.update(chunk.reshape(-1, 1, 16))   # any leading shape
    Xc = X - X.mean(axis=0)
    np.testing.assert_allclose(stats.covariance, Xc.T @ Xc, rtol=1e-9, atol=1e-8)
    assert stats.count == 300
    for fit in (lambda inputs: LowRankLinear.from_dense(W, b, inputs=inputs, rank=3, dtype=np.float64),
                lambda inputs: DeepSpectralLinear.from_dense(W, b, inputs=inputs, depth=2, sweeps=2, dtype=np.float64)):
        a, c = fit(X), fit(stats)
        assert a.fit_report["relative_error"] == pytest.approx(c.fit_report["relative_error"], rel=1e-7)
        np.testing.assert_allclose(a(dreidel.Tensor(X)).data, c(dreidel.Tensor(X)).data, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="16"):
        stats.update(np.zeros((3, 15)))
    with pytest.raises(ValueError, match="match"):
        LowRankLinear.from_dense(np.zeros((4, 8)), inputs=stats, rank=2)


def _jacobian_column_norms(layer, x, param):
    """Σ over samples and outputs of (∂y/∂θ_i)², by exact unit perturbations (y is linear in each θ_i)."""
    base = layer(x).data.astype(np.float64)
    out = np.zeros(param.shape)
    for i in np.ndindex(param.shape):
        keep = param.data[i]
        param.data[i] = keep + 1
        out[i] = np.sum((layer(x).data.astype(np.float64) - base) ** 2)
        param.data[i] = keep
    return out


@pytest.mark.parametrize("make", [lambda rng: nn.LowRankLinear(5, 4, 2, rng=rng),
                                  lambda rng: nn.Linear(5, 4, rng=rng)], ids=["lowrank", "linear"])
def test_gauss_newton_diagonal_matches_the_jacobian(make):
    rng = np.random.default_rng(3)
    layer = make(rng)
    for p in layer.parameters():  # float64 so the unit perturbations are exact enough
        p.data = p.data.astype(np.float64)
    x = rng.standard_normal((2, 3, 5))
    layer.capture_curvature = True
    layer(x)
    diagonal = layer.gauss_newton_diagonal()
    assert set(diagonal) == set(layer.parameters())
    for p, h in diagonal.items():
        np.testing.assert_allclose(h, _jacobian_column_norms(layer, x, p), rtol=1e-6, atol=1e-9)


def test_gauss_newton_diagonal_needs_a_captured_batch():
    with pytest.raises(RuntimeError, match="capture_curvature"):
        nn.LowRankLinear(4, 4, 2).gauss_newton_diagonal()
    with pytest.raises(RuntimeError, match="capture_curvature"):
        nn.Linear(4, 4).gauss_newton_diagonal()
