"""ALSHSparseDense: exact on its active set, sparse gradients, recall, rebuild schedule."""
import numpy as np
import pytest

import dreidel
from dreidel import Tensor, gradcheck, hashing
from dreidel import functional as F
from dreidel.nn.alsh import ALSHSparseDense


def clustered_layer(rng, n_in, n_out, batch, hash="simhash", bits=8, tables=32, max_active=None,
                    n_centres=None, noise=0.5, dtype=np.float32, **kw):
    """Weight rows and inputs around shared random unit centres (what a trained layer looks like)."""
    n_centres = n_centres or n_out // 16
    centres = rng.standard_normal((n_centres, n_in))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    w = centres[rng.integers(0, n_centres, n_out)] + noise * rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)
    x = centres[rng.integers(0, n_centres, batch)] + noise * rng.standard_normal((batch, n_in)) / np.sqrt(n_in)
    kw.setdefault("rng", np.random.default_rng(rng.integers(2**31)))  # the bias: not the global stream
    layer = ALSHSparseDense(n_in, n_out, hash=hash, bits=bits, tables=tables, max_active=max_active,
                            dtype=dtype, **kw)
    layer.weight.data[...] = w / np.sqrt(n_in)
    return layer, x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hash", ["simhash", "dwta"])
def test_forward_is_exact_on_active_set_and_zero_elsewhere(rng, dtype, hash):
    bits = 4 if hash == "simhash" else 2  # DWTA: 3 bits per hash with the default bin_size 8
    layer = ALSHSparseDense(24, 300, hash=hash, bits=bits, tables=6, max_active=40, dtype=dtype, rng=rng)
    x = rng.standard_normal((2, 3, 24)).astype(dtype)
    y = layer(Tensor(x))
    assert y.shape == (2, 3, 300) and y.dtype == dtype
    active = layer.active
    assert 0 < active.size <= 40 and np.all(np.diff(active) > 0)
    assert layer.active_fraction == active.size / 300
    dense = x @ layer.weight.data.T + layer.bias.data
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.allclose(y.data[..., active], dense[..., active], atol=tol)
    inactive = np.setdiff1d(np.arange(300), active)
    assert np.all(y.data[..., inactive] == 0)


def test_backward_touches_only_active_rows(rng):
    layer = ALSHSparseDense(16, 200, bits=4, tables=4, max_active=30, rng=rng, dtype=np.float64)
    x = Tensor(rng.standard_normal((5, 16)), requires_grad=True)
    g = rng.standard_normal((5, 200))
    layer(x).backward(g)
    a = layer.active
    inactive = np.setdiff1d(np.arange(200), a)
    assert np.all(layer.weight.grad[inactive] == 0) and np.all(layer.bias.grad[inactive] == 0)
    assert np.allclose(layer.weight.grad[a], g[:, a].T @ x.data)
    assert np.allclose(layer.bias.grad[a], g[:, a].sum(0))
    assert np.allclose(x.grad, g[:, a] @ layer.weight.data[a])
    # a second backward accumulates, like any leaf gradient
    first = layer.weight.grad.copy()
    layer(x, active=a).backward(g)
    assert np.allclose(layer.weight.grad, 2 * first)


@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_with_fixed_active_set(rng, bias):
    layer = ALSHSparseDense(5, 12, bits=3, tables=2, bias=bias, rng=rng).double()
    x = Tensor(rng.standard_normal((3, 5)), requires_grad=True)
    active = np.array([0, 4, 5, 11])
    params = (layer.weight, layer.bias) if bias else (layer.weight,)
    assert gradcheck(lambda x, *p: layer(x, active=active), x, *params)
    assert np.array_equal(layer.active, active)


def test_recall_on_clustered_data():
    # 64 -> 4096, 16 inputs, at most 10% active (chance: 0.10). Measured recall@5 at data seeds 0-3:
    # simhash 8x64: 0.75, 0.81, 0.86, 0.71; dwta 3x48: 0.80, 0.80, 0.71, 0.83. Seed 0 asserted.
    for hash, bits, tables, floor in (("simhash", 8, 64, 0.6), ("dwta", 3, 48, 0.65)):
        layer, x = clustered_layer(np.random.default_rng(0), 64, 4096, 16, hash=hash, bits=bits,
                                   tables=tables, max_active=410)
        recall = layer.measure_recall(x, 5)
        layer(Tensor(x))
        assert layer.active.size <= 410
        assert recall >= floor, (hash, recall)


def test_recall_on_random_data_beats_chance():
    # i.i.d. Gaussian weights and inputs: the hard case. 32 -> 2048, 16 inputs, 25% active
    # (chance: 0.25). Measured recall@5 with simhash 4 bits x 32 tables at seeds 0-3: 0.46, 0.53,
    # 0.51, 0.58. Seed 0 asserted.
    layer = ALSHSparseDense(32, 2048, bits=4, tables=32, max_active=512, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((16, 32)).astype(np.float32)
    recall = layer.measure_recall(x, 5)
    assert recall >= 0.35


def test_include_forces_neurons_and_cap_holds(rng):
    layer = ALSHSparseDense(16, 500, bits=3, tables=8, max_active=20, rng=rng)
    x = rng.standard_normal((8, 16)).astype(np.float32)
    layer(Tensor(x), include=np.array([7, 499]))
    assert {7, 499} <= set(layer.active.tolist()) and layer.active.size <= 20


def test_rebuild_schedule_and_drift(rng):
    layer = ALSHSparseDense(16, 256, bits=4, tables=4, rebuild_every=3, drift_threshold=0.05, rng=rng)
    x = Tensor(rng.standard_normal((4, 16)).astype(np.float32))
    layer(x)
    assert layer.rebuilds == 1
    layer(x); layer(x)
    assert layer.rebuilds == 1
    layer(x)  # fourth training forward: three since the build
    assert layer.rebuilds == 2
    layer.eval()
    for _ in range(5):
        layer(x)  # eval forwards do not count as steps
    assert layer.rebuilds == 2
    layer.train()
    layer.weight.data *= 1.01  # 1% drift: below the threshold
    layer(x)
    assert layer.rebuilds == 2
    layer.weight.data += 0.5 * rng.standard_normal(layer.weight.shape).astype(np.float32)
    layer(x)
    assert layer.rebuilds == 3
    layer.load_state_dict(layer.state_dict())  # replaces the weight array
    layer(x)
    assert layer.rebuilds == 4


def test_exact_eval_is_dense(rng):
    layer = ALSHSparseDense(10, 64, bits=3, tables=2, max_active=5, exact_eval=True, rng=rng)
    x = Tensor(rng.standard_normal((3, 10)).astype(np.float32))
    layer.eval()
    assert np.allclose(layer(x).data, F.linear(x, layer.weight, layer.bias).data)
    assert layer.active_fraction == 1.0
    layer.train()
    assert np.count_nonzero(layer(x).data[0]) <= 5


def test_clear_errors(rng):
    layer = ALSHSparseDense(10, 64, bits=3, tables=2, rng=rng)
    with pytest.raises(ValueError, match="last dimension 10.*\\(3, 11\\)"):
        layer(Tensor(np.zeros((3, 11), np.float32)))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        layer(Tensor(np.zeros((3, 10), np.float32)), active=np.array([1, 64]))
    with pytest.raises(TypeError, match="1-D integer"):
        layer(Tensor(np.zeros((3, 10), np.float32)), active=np.array([1.0]))
    with pytest.raises(ValueError, match="hash"):
        ALSHSparseDense(10, 64, hash="minhash")
    with pytest.raises(ValueError, match="bits"):
        ALSHSparseDense(10, 64, bits=30)
    with pytest.raises(ValueError, match="tables"):
        ALSHSparseDense(10, 64, tables=0)
    with pytest.raises(ValueError, match="k must be"):
        layer.measure_recall(np.zeros((2, 10), np.float32), 0)


def test_training_reduces_loss_on_active_targets(rng):
    """SGD through the sparse layer (targets forced active, as SLIDE does with labels)."""
    layer, x = clustered_layer(np.random.default_rng(0), 32, 512, 32, bits=5, tables=8, max_active=64,
                               rebuild_every=5)
    labels = np.random.default_rng(1).integers(0, 512, 32)
    target = np.zeros((32, 512), np.float32)
    target[np.arange(32), labels] = 1
    losses = []
    for _ in range(30):
        y = layer(Tensor(x), include=labels)
        loss = F.mse_loss(y, target, reduction="sum")
        layer.zero_grad()
        loss.backward()
        for p in layer.parameters():
            p.data -= 0.005 * p.grad
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_layer_identical_with_one_and_two_threads(monkeypatch):
    monkeypatch.setattr(hashing, "PARALLEL_MIN_WORK", 0)
    before = dreidel.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            dreidel.set_num_threads(threads)
            layer, x = clustered_layer(np.random.default_rng(0), 32, 1024, 16, bits=6, tables=8, max_active=100)
            xt = Tensor(x, requires_grad=True)
            layer(xt).backward(np.ones((16, 1024), np.float32))
            results.append((layer.active, layer.weight.grad, xt.grad))
    finally:
        dreidel.set_num_threads(before)
    for a, b in zip(*results):
        assert np.array_equal(a, b)


def test_from_dense_copies_and_is_exact_on_active_set(rng):
    w = rng.standard_normal((50, 8))
    b = rng.standard_normal(50)
    layer = ALSHSparseDense.from_dense(w, b, bits=3, tables=4, max_active=10)
    assert layer.weight.dtype == np.float64 and layer.weight.data is not w
    x = rng.standard_normal((4, 8))
    y = layer(Tensor(x)).data
    a = layer.active
    assert np.allclose(y[:, a], (x @ w.T + b)[:, a])
    with pytest.raises(ValueError, match="bias shape"):
        ALSHSparseDense.from_dense(w, b[:3])
