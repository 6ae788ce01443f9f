"""LinearWHT and DeepSpectralLinear: forward vs a dense-matrix reference, gradients, fitting, state."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import dreidel
from dreidel import kernels
from dreidel.nn.spectral import DeepSpectralLinear, LinearWHT, fwht_multiply_adds


def H(n):
    return kernels.hadamard_matrix(n) / np.sqrt(n)


def reference_linear_wht(layer, x):
    N, n_in, n_out = layer.size, layer.in_features, layer.out_features
    y = x @ (H(N)[:n_out, :n_in] * layer.d.data.astype(np.float64)).T
    return y + (layer.bias.data if layer.bias is not None else 0)


def reference_deep(layer, x):
    N = layer.size
    z = np.zeros(x.shape[:-1] + (N,))
    z[..., :layer.in_features] = x
    for perm, d in zip(layer.perms.data, layer.d.data.astype(np.float64)):
        z = (z[..., perm] * d) @ H(N).T
    return z[..., :layer.out_features] + (layer.bias.data if layer.bias is not None else 0)


def random_params(layer, rng):
    layer.d.data = rng.standard_normal(layer.d.shape).astype(layer.d.dtype)
    if layer.bias is not None:
        layer.bias.data = rng.standard_normal(layer.bias.shape).astype(layer.bias.dtype)
    return layer


def dense_of(layer):
    """(W, b) of the affine map a layer applies, probed with the identity."""
    with dreidel.no_grad():
        b = layer(dreidel.Tensor(np.zeros((1, layer.in_features)))).data[0]
        W = layer(dreidel.Tensor(np.eye(layer.in_features))).data.T - b[:, None]
    return W, b


sizes = st.sampled_from([1, 3, 8, 12, 20, 24, 28, 33, 40])


# -- construction and forward ----------------------------------------------------------------------
def test_width_is_the_smallest_supported_size():
    assert LinearWHT(384, 1536).size == 1536
    assert DeepSpectralLinear(768, 768).size == 768
    assert DeepSpectralLinear(300, 100).size == 320   # 20·16
    assert LinearWHT(1000, 1000).size == 1024


@settings(max_examples=25, deadline=None)
@given(n_in=sizes, n_out=sizes, bias=st.booleans(), seed=st.integers(0, 2**16))
def test_linear_wht_matches_dense_reference(n_in, n_out, bias, seed):
    rng = np.random.default_rng(seed)
    layer = random_params(LinearWHT(n_in, n_out, bias=bias, dtype=np.float64), rng)
    x = rng.standard_normal((2, 3, n_in))
    np.testing.assert_allclose(layer(dreidel.Tensor(x)).data, reference_linear_wht(layer, x), atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(n_in=sizes, n_out=sizes, depth=st.integers(1, 5), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_deep_spectral_matches_dense_reference(n_in, n_out, depth, bias, seed):
    rng = np.random.default_rng(seed)
    layer = random_params(DeepSpectralLinear(n_in, n_out, depth=depth, bias=bias, seed=seed, dtype=np.float64), rng)
    x = rng.standard_normal((4, n_in))
    np.testing.assert_allclose(layer(dreidel.Tensor(x)).data, reference_deep(layer, x), atol=1e-11)


@pytest.mark.parametrize("cls", [LinearWHT, DeepSpectralLinear])
def test_float32_and_float64(cls):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 24))
    for dtype in (np.float32, np.float64):
        layer = cls(24, 40, dtype=dtype)
        y = layer(dreidel.Tensor(x.astype(dtype)))
        assert y.dtype == dtype and y.shape == (5, 40)
        reference = (reference_linear_wht if cls is LinearWHT else reference_deep)(layer, x)
        np.testing.assert_allclose(y.data, reference, rtol=1e-4 if dtype == np.float32 else 1e-10, atol=1e-5)


@pytest.mark.parametrize("cls", [LinearWHT, DeepSpectralLinear])
def test_wrong_input_width_is_a_clear_error(cls):
    layer = cls(16, 8)
    with pytest.raises(ValueError, match="16"):
        layer(dreidel.Tensor(np.zeros((3, 15), dtype=np.float32)))
    with pytest.raises(ValueError):
        cls(0, 8)


def test_bad_depth_and_bad_dense_shapes_are_errors():
    with pytest.raises(ValueError):
        DeepSpectralLinear(8, 8, depth=0)
    with pytest.raises(ValueError, match="2-D"):
        LinearWHT.from_dense(np.zeros(8))
    with pytest.raises(ValueError, match="bias"):
        DeepSpectralLinear.from_dense(np.zeros((4, 8)), bias=np.zeros(8))
    with pytest.raises(ValueError, match="inputs"):
        LinearWHT.from_dense(np.zeros((4, 8)), inputs=np.zeros((10, 7)))


@pytest.mark.parametrize("depth", [1, 4, 8])
@pytest.mark.parametrize("shape", [(64, 64), (96, 384), (384, 96)])
def test_initialisation_preserves_the_variance(depth, shape):
    n_in, n_out = shape
    x = np.random.default_rng(1).standard_normal((2000, n_in))
    layers = [DeepSpectralLinear(n_in, n_out, depth=depth, seed=3, dtype=np.float64)]
    if depth == 1:
        layers.append(LinearWHT(n_in, n_out, dtype=np.float64, rng=np.random.default_rng(3)))
    for layer in layers:
        var = layer(dreidel.Tensor(x)).data.var()
        assert 0.85 < var < 1.15, (type(layer).__name__, var)


def test_multiply_adds():
    assert fwht_multiply_adds(1024) == 1024 * 10
    assert fwht_multiply_adds(384) == 384 * 5 + 384 * 12   # 12·2^5: 5 stages, one H_12 per group
    assert LinearWHT(1024, 1024).multiply_adds() == 1024 + 1024 * 10 + 1024
    assert DeepSpectralLinear(1024, 512, depth=4, bias=False).multiply_adds() == 4 * (1024 * 10 + 1024)


# -- gradients -------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(5, 7), (12, 12), (20, 6)])
def test_linear_wht_gradcheck(shape):
    rng = np.random.default_rng(0)
    layer = random_params(LinearWHT(*shape, dtype=np.float64), rng)
    x = dreidel.Tensor(rng.standard_normal((2, 3, shape[0])), requires_grad=True)
    assert dreidel.gradcheck(lambda x, d, b: layer(x), x, layer.d, layer.bias)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("shape,depth", [((5, 7), 3), ((12, 12), 2), ((20, 6), 4), ((3, 3), 1)])
def test_deep_spectral_gradcheck(shape, depth, recompute, monkeypatch):
    """Both backward paths: block inputs kept from the forward, and recomputed from x (large batches)."""
    from dreidel.nn import spectral
    if recompute:
        monkeypatch.setattr(spectral, "SAVE_MAX_BYTES", 0)
    rng = np.random.default_rng(1)
    layer = random_params(DeepSpectralLinear(*shape, depth=depth, dtype=np.float64), rng)
    x = dreidel.Tensor(rng.standard_normal((2, 3, shape[0])), requires_grad=True)
    assert dreidel.gradcheck(lambda x, d, b: layer(x), x, layer.d, layer.bias)


def test_gradient_flows_through_a_composition():
    """The layer's node composes with other ops (d appears twice in the graph)."""
    rng = np.random.default_rng(2)
    layer = random_params(DeepSpectralLinear(8, 8, depth=2, dtype=np.float64), rng)
    x = dreidel.Tensor(rng.standard_normal((3, 8)), requires_grad=True)
    assert dreidel.gradcheck(lambda x, d, b: layer(layer(x).tanh()), x, layer.d, layer.bias)


# -- state -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [LinearWHT, DeepSpectralLinear])
def test_state_dict_round_trip_is_bit_identical(cls, tmp_path):
    kwargs = {"seed": 5} if cls is DeepSpectralLinear else {"rng": np.random.default_rng(5)}
    other = {"seed": 6} if cls is DeepSpectralLinear else {"rng": np.random.default_rng(6)}
    layer = random_params(cls(24, 40, **kwargs), np.random.default_rng(0))
    x = dreidel.Tensor(np.random.default_rng(1).standard_normal((3, 24)).astype(np.float32))
    path = tmp_path / "layer.safetensors"
    dreidel.save(layer.state_dict(), str(path))
    fresh = cls(24, 40, **other)
    assert not np.array_equal(fresh(x).data, layer(x).data)
    fresh.load_state_dict(dreidel.load(str(path)))
    assert np.array_equal(fresh(x).data, layer(x).data)
    if cls is DeepSpectralLinear:
        state = layer.state_dict()
        assert state["perms"].dtype == np.int64 and state["perms"].shape == (layer.depth, layer.size)
        assert all(np.array_equal(np.sort(p), np.arange(layer.size)) for p in state["perms"])


def test_permutations_are_seeded():
    a, b, c = DeepSpectralLinear(32, 32, seed=1), DeepSpectralLinear(32, 32, seed=1), DeepSpectralLinear(32, 32, seed=2)
    assert np.array_equal(a.perms.data, b.perms.data) and np.array_equal(a.d.data, b.d.data)
    assert not np.array_equal(a.perms.data, c.perms.data)


# -- from_dense ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(24, 24), (20, 40), (40, 20)])
def test_linear_wht_from_dense_is_exact_on_its_own_form(shape):
    rng = np.random.default_rng(0)
    teacher = random_params(LinearWHT(*shape, dtype=np.float64), rng)
    W, b = dense_of(teacher)
    fitted = LinearWHT.from_dense(W, b)
    assert fitted.fit_report["relative_error"] < 1e-8   # the 1e-9 proximal ridge
    np.testing.assert_allclose(fitted.d.data, teacher.d.data, atol=1e-8)
    np.testing.assert_array_equal(fitted.bias.data, b)
    X = rng.standard_normal((200, shape[0])) + 3.0   # uncentred inputs: the bias must be refitted
    fitted = LinearWHT.from_dense(W, b, inputs=X)
    assert fitted.fit_report["relative_error"] < 1e-8
    np.testing.assert_allclose(fitted.bias.data, b, atol=1e-7)


@pytest.mark.parametrize("with_inputs", [False, True])
def test_linear_wht_from_dense_is_a_least_squares_optimum(with_inputs):
    """At the fit, the gradient of the fitting loss wrt d (and the bias) vanishes."""
    rng = np.random.default_rng(3)
    W, b = rng.standard_normal((30, 20)), rng.standard_normal(30)
    X = rng.standard_normal((300, 20)) * np.linspace(0.1, 3, 20) + 1.0 if with_inputs else np.eye(20)
    layer = LinearWHT.from_dense(W, b, inputs=X if with_inputs else None, dtype=np.float64)
    target = X @ W.T + (b if with_inputs else layer.bias.data)
    loss = ((layer(dreidel.Tensor(X)) - dreidel.Tensor(target)) ** 2).sum()
    loss.backward()
    assert np.abs(layer.d.grad).max() < 1e-8 * np.abs(target).sum()
    if with_inputs:  # weight-only fits copy the bias
        assert np.abs(layer.bias.grad).max() < 1e-8 * np.abs(target).sum()
    prediction = layer(dreidel.Tensor(X)).data
    assert layer.fit_report["relative_error"] == pytest.approx(
        np.linalg.norm(target - prediction) / np.linalg.norm(target - (0 if with_inputs else layer.bias.data)), rel=1e-9)


def test_deep_spectral_from_dense_depth_one_is_exact():
    rng = np.random.default_rng(4)
    teacher = random_params(DeepSpectralLinear(24, 40, depth=1, seed=7, dtype=np.float64), rng)
    W, b = dense_of(teacher)
    fitted = DeepSpectralLinear.from_dense(W, b, depth=1, seed=7, sweeps=1)
    assert fitted.fit_report["relative_error"] < 1e-8
    X = rng.standard_normal((100, 24)) - 2.0
    fitted = DeepSpectralLinear.from_dense(W, b, inputs=X, depth=1, seed=7, sweeps=1, dtype=np.float64)
    assert fitted.fit_report["relative_error"] < 1e-8
    np.testing.assert_allclose(fitted(dreidel.Tensor(X)).data, X @ W.T + b, atol=1e-7)


@pytest.mark.parametrize("with_inputs", [False, True])
def test_deep_spectral_als_is_monotone(with_inputs):
    rng = np.random.default_rng(5)
    teacher = random_params(DeepSpectralLinear(32, 32, depth=3, seed=0, dtype=np.float64), rng)
    W, b = dense_of(teacher)
    X = rng.standard_normal((150, 32)) if with_inputs else None
    fitted = DeepSpectralLinear.from_dense(W, b, inputs=X, depth=3, seed=0, sweeps=15, tol=0)
    history, objective = fitted.fit_report["history"], fitted.fit_report["objective"]
    assert len(history) == 16 and len(objective) == 45
    assert all(b_ <= a + 1e-12 * a for a, b_ in zip(history, history[1:]))
    assert all(b_ <= a + 1e-9 for a, b_ in zip([history[0]] + objective, objective))
    assert history[-1] < 0.5 * history[0]
    assert fitted.fit_report["relative_error"] == pytest.approx(history[-1])
    # the per-update bookkeeping (quadratic form) agrees with the direct error after each sweep
    np.testing.assert_allclose(objective[2::3], history[1:], rtol=1e-6, atol=1e-7)
    if with_inputs:  # the reported error is the real held-in output error
        Y = X @ W.T + b
        assert history[-1] == pytest.approx(np.linalg.norm(Y - fitted(dreidel.Tensor(X)).data) / np.linalg.norm(Y), rel=1e-4)


def test_deep_spectral_als_block_is_optimal_given_the_others():
    """After a sweep the last block's diagonal (and the bias) are least-squares optimal."""
    rng = np.random.default_rng(6)
    W, b = rng.standard_normal((20, 24)), rng.standard_normal(20)
    X = rng.standard_normal((200, 24)) + 0.5
    layer = DeepSpectralLinear.from_dense(W, b, inputs=X, depth=2, sweeps=3, tol=0, dtype=np.float64)
    loss = ((layer(dreidel.Tensor(X)) - dreidel.Tensor(X @ W.T + b)) ** 2).sum()
    loss.backward()
    scale = float(loss.data) + 1
    assert np.abs(layer.d.grad[-1]).max() < 1e-7 * scale
    assert np.abs(layer.bias.grad).max() < 1e-7 * scale
    assert np.abs(layer.d.grad[0]).max() > 1e-4 * scale   # the first block moved after its update


def test_deep_spectral_fits_a_random_matrix_better_with_depth():
    rng = np.random.default_rng(7)
    W = rng.standard_normal((32, 32))
    errors = [DeepSpectralLinear.from_dense(W, depth=k, sweeps=10).fit_report["relative_error"] for k in (1, 2, 4)]
    assert errors[0] > errors[1] > errors[2]


# -- Gauss–Newton diagonal -------------------------------------------------------------------------
def jacobian_squares(layer, x):
    """Σ over samples and outputs of (∂y_sj/∂θ)², by one backward per output entry."""
    total = {p: np.zeros(p.shape) for p in layer.parameters()}
    y = layer(dreidel.Tensor(x))
    for index in np.ndindex(*y.shape):
        layer.zero_grad()
        seed = np.zeros(y.shape)
        seed[index] = 1
        layer(dreidel.Tensor(x)).backward(seed)
        for p in layer.parameters():
            total[p] += p.grad ** 2
    return total


def test_linear_wht_gauss_newton_diagonal_is_exact():
    rng = np.random.default_rng(8)
    layer = random_params(LinearWHT(12, 20, dtype=np.float64), rng)
    x = rng.standard_normal((4, 12))
    with pytest.raises(RuntimeError, match="capture_curvature"):
        layer(dreidel.Tensor(x))
        layer.gauss_newton_diagonal()
    layer.capture_curvature = True
    layer(dreidel.Tensor(x))
    gn = layer.gauss_newton_diagonal()
    reference = jacobian_squares(layer, x)
    for p in layer.parameters():
        np.testing.assert_allclose(gn[p], reference[p], rtol=1e-10)


def test_deep_spectral_gauss_newton_diagonal_exact_and_estimated():
    rng = np.random.default_rng(9)
    layer = random_params(DeepSpectralLinear(12, 20, depth=3, dtype=np.float64), rng)
    x = rng.standard_normal((3, 12))
    layer.capture_curvature = True
    layer(dreidel.Tensor(x))
    exact = layer.gauss_newton_diagonal()
    estimated = layer.gauss_newton_diagonal(probes=20000, seed=1)
    reference = jacobian_squares(layer, x)
    for p in layer.parameters():
        np.testing.assert_allclose(exact[p], reference[p], rtol=1e-9, atol=1e-12)
    # Hutchinson: unbiased, ~1/√probes relative noise on each column norm
    np.testing.assert_allclose(estimated[layer.d], reference[layer.d], rtol=0.1, atol=1e-9)


def _block_backward_fused(g, x, perm, d):
    return kernels.spectral_block_backward(g, x, perm, d)


def _block_backward_composed(g, x, perm, d):
    """Given y = H(P x ⊙ d): ∂/∂x = Pᵀ(d ⊙ H g), ∂/∂d = Σ_rows (H g) ⊙ P x  (H is symmetric)."""
    gz = kernels.fwht(g, normalized=True)
    grad_d = np.einsum("bn,bn->n", gz, kernels.permute(x, perm))
    return kernels.permute_inverse(gz * d, perm), grad_d


@pytest.mark.parametrize("save_max_bytes", [0, 1 << 30])
def test_stack_kernel_agrees_with_the_per_block_composition(monkeypatch, save_max_bytes):
    """The layer runs all K blocks in one kernel call (forward and backward); it must agree with
    chaining the single-block kernels (the fused block backward, and its composition by hand)."""
    from dreidel.nn import spectral
    monkeypatch.setattr(spectral, "SAVE_MAX_BYTES", save_max_bytes)
    rng = np.random.default_rng(10)
    layer = random_params(DeepSpectralLinear(40, 24, depth=3, dtype=np.float64), rng)
    x = rng.standard_normal((5, 40))
    g = rng.standard_normal((5, 24))
    xt = dreidel.Tensor(x, requires_grad=True)
    y = layer(xt)
    y.backward(g)
    N, perms, D = layer.size, layer.perms.data, layer.d.data
    for block_backward in (_block_backward_composed, _block_backward_fused):
        Z = np.zeros((5, N))
        Z[:, :40] = x
        inputs, Z = spectral._deep_spectral_forward(Z, perms, D)
        np.testing.assert_allclose(y.data, Z[:, :24] + layer.bias.data, rtol=1e-12, atol=1e-12)
        G = np.zeros((5, N))
        G[:, :24] = g
        gd = np.empty_like(D)
        for k in reversed(range(3)):
            G, gd[k] = block_backward(G, inputs[k], perms[k], D[k])
        np.testing.assert_allclose(xt.grad, G[:, :40], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(layer.d.grad, gd, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.bias.grad, g.sum(0), rtol=1e-12, atol=1e-12)


def test_float32_training_step_is_bitwise_independent_of_threads():
    rng = np.random.default_rng(12)
    layer = DeepSpectralLinear(300, 1000, depth=4)
    x = rng.standard_normal((200, 300)).astype(np.float32)    # K·rows·N above the parallel threshold
    g = rng.standard_normal((200, 1000)).astype(np.float32)
    threads, results = dreidel.get_num_threads(), []
    try:
        for nt in (1, 2):
            dreidel.set_num_threads(nt)
            xt = dreidel.Tensor(x, requires_grad=True)
            layer.zero_grad()
            y = layer(xt)
            y.backward(g)
            results.append((y.data, xt.grad, layer.d.grad, layer.bias.grad))
    finally:
        dreidel.set_num_threads(threads)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_from_dense_keeps_the_weight_dtype(dtype):
    W = np.random.default_rng(11).standard_normal((12, 20)).astype(dtype)
    for layer in (LinearWHT.from_dense(W), DeepSpectralLinear.from_dense(W, depth=2, sweeps=1)):
        assert all(p.dtype == dtype for p in layer.parameters())
        assert layer(dreidel.Tensor(np.ones((2, 20), dtype=dtype))).dtype == dtype


def test_a_corrupt_permutation_in_a_checkpoint_is_a_clear_error():
    layer = DeepSpectralLinear(16, 16, depth=2)
    state = layer.state_dict()
    state["perms"][1, 0] = state["perms"][1, 1]   # a repeated index: no longer a permutation
    layer.load_state_dict(state)
    with pytest.raises(ValueError, match="permutations"):
        layer(dreidel.Tensor(np.zeros((2, 16), dtype=np.float32)))
    state["perms"][1] = np.arange(16)
    layer.load_state_dict(state)
    assert layer(dreidel.Tensor(np.zeros((2, 16), dtype=np.float32))).shape == (2, 16)
