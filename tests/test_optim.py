"""dreidel.optim: update rules against hand-written numpy references of PyTorch's documented rules,
param groups and checkpoints, schedules, clipping, and the curvature-aware optimizers."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import dreidel
import dreidel.functional as F
import dreidel.nn as nn
from dreidel import optim


def make_params(rng, shapes=((3, 4), (5,)), dtype=np.float64):
    return [nn.Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]


def random_grads(rng, params):
    for p in params:
        p.grad = rng.standard_normal(p.shape).astype(p.dtype)


# -- references written from PyTorch's documentation (not from this package) ----------------------
def sgd_reference(theta, grads, lr, momentum, dampening, nesterov, weight_decay):
    buf = None
    for t, g in enumerate(grads):
        g = g + weight_decay * theta
        if momentum != 0:
            buf = g.copy() if t == 0 else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        theta = theta - lr * g
    return theta


def adamw_reference(theta, grads, lr, beta1, beta2, eps, weight_decay, amsgrad):
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    v_max = np.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        theta = theta - lr * weight_decay * theta
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g ** 2
        m_hat = m / (1 - beta1 ** t)
        if amsgrad:
            v_max = np.maximum(v_max, v)
            v_hat = v_max / (1 - beta2 ** t)
        else:
            v_hat = v / (1 - beta2 ** t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
    return theta


def run_steps(optimizer, param, grads):
    for g in grads:
        param.grad = g.copy()
        optimizer.step()
    return param.data


@settings(max_examples=40, deadline=None)
@given(lr=st.floats(1e-3, 1.0), momentum=st.sampled_from([0.0, 0.5, 0.9]),
       dampening=st.sampled_from([0.0, 0.3]), nesterov=st.booleans(),
       weight_decay=st.sampled_from([0.0, 1e-2]), seed=st.integers(0, 2 ** 16))
def test_sgd_matches_pytorch_rule(lr, momentum, dampening, nesterov, weight_decay, seed):
    if nesterov and (momentum == 0 or dampening != 0):
        return
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((4, 3))
    grads = [rng.standard_normal((4, 3)) for _ in range(5)]
    p = nn.Parameter(theta.copy())
    opt = optim.SGD([p], lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                    weight_decay=weight_decay)
    expected = sgd_reference(theta, grads, lr, momentum, dampening, nesterov, weight_decay)
    np.testing.assert_allclose(run_steps(opt, p, grads), expected, rtol=1e-10, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(lr=st.floats(1e-4, 1e-1), beta1=st.sampled_from([0.0, 0.9]), beta2=st.sampled_from([0.9, 0.999]),
       eps=st.sampled_from([1e-8, 1e-3]), weight_decay=st.sampled_from([0.0, 1e-2, 0.3]),
       amsgrad=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_adamw_matches_pytorch_rule(lr, beta1, beta2, eps, weight_decay, amsgrad, seed):
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(7)
    grads = [rng.standard_normal(7) * (0.1 if t % 2 else 2.0) for t in range(6)]
    p = nn.Parameter(theta.copy())
    opt = optim.AdamW([p], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
    expected = adamw_reference(theta, grads, lr, beta1, beta2, eps, weight_decay, amsgrad)
    np.testing.assert_allclose(run_steps(opt, p, grads), expected, rtol=1e-9, atol=1e-12)


def test_float32_parameters_stay_float32_and_update_in_place():
    p = nn.Parameter(np.ones(3, np.float32))
    buffer = p.data
    for opt in (optim.SGD([p], lr=0.1, momentum=0.9), optim.AdamW([p], lr=0.1)):
        p.grad = np.full(3, 0.5, np.float32)
        opt.step()
        assert p.data is buffer and p.dtype == np.float32
    assert np.all(p.data < 1)


# -- param groups, skipping, checkpoints --------------------------------------------------------------
def test_param_groups_use_their_own_hyper_parameters_and_skip_missing_grads():
    rng = np.random.default_rng(0)
    a, b, c = make_params(rng, ((2,), (3,), (4,)))
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    opt.add_param_group({"params": c, "lr": 0.0})
    before = [p.data.copy() for p in (a, b, c)]
    a.grad, c.grad = np.ones(2), np.ones(4)
    opt.step()
    np.testing.assert_allclose(a.data, before[0] - 0.1)
    np.testing.assert_array_equal(b.data, before[1])          # grad None: skipped
    np.testing.assert_array_equal(c.data, before[2])          # lr 0
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5, 0.0]
    opt.zero_grad()
    assert a.grad is None and c.grad is None


def test_duplicate_and_bad_parameters_are_rejected():
    p = nn.Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="more than once"):
        optim.SGD([p, p], lr=0.1)
    opt = optim.SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="more than once"):
        opt.add_param_group({"params": [p]})
    with pytest.raises(TypeError):
        optim.SGD(p, lr=0.1)
    with pytest.raises(TypeError):
        optim.SGD([np.zeros(2)], lr=0.1)
    with pytest.raises(ValueError, match="empty"):
        optim.AdamW([], lr=0.1)


@pytest.mark.parametrize("build, message", [
    (lambda p: optim.SGD(p, lr=-1), "lr"),
    (lambda p: optim.SGD(p, lr=0.1, momentum=-0.5), "momentum"),
    (lambda p: optim.SGD(p, lr=0.1, nesterov=True), "Nesterov"),
    (lambda p: optim.SGD(p, lr=float("nan")), "lr"),
    (lambda p: optim.AdamW(p, betas=(1.0, 0.999)), "beta1"),
    (lambda p: optim.AdamW(p, betas=(0.9, -0.1)), "beta2"),
    (lambda p: optim.AdamW(p, eps=-1e-8), "eps"),
    (lambda p: optim.AdamW(p, weight_decay=-1), "weight_decay"),
    (lambda p: optim.DiagonalNewton(p, beta=1.5), "beta"),
    (lambda p: optim.DiagonalNewton(p, damping=-1), "damping"),
    (lambda p: optim.DiagonalNewton(p, curvature="exact"), "curvature"),
    (lambda p: optim.BlockDiagonal(p, block_size=0), "block_size"),
    (lambda p: optim.BlockDiagonal(p, damping=-1e-3), "damping"),
])
def test_bad_hyper_parameters_raise_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build([nn.Parameter(np.zeros(3))])


def test_kfac_rejects_bad_settings():
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="update_freq"):
        optim.KFAC(model, update_freq=0)
    with pytest.raises(ValueError, match="damping"):
        optim.KFAC(model, damping=-1)
    with pytest.raises(TypeError, match="Module"):
        optim.KFAC(list(model.parameters()))


def plain_values(value):
    """True if value is made only of arrays, numbers, strings, booleans, None, lists/tuples/dicts."""
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and plain_values(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(plain_values(v) for v in value)
    return value is None or isinstance(value, (np.ndarray, int, float, str, bool, np.number))


@pytest.mark.parametrize("build", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
    lambda ps: optim.AdamW(ps, lr=0.1, amsgrad=True),
    lambda ps: optim.DiagonalNewton(ps, curvature="fisher", line_search=False),
    lambda ps: optim.BlockDiagonal(ps, block_size=4, update_freq=2, momentum=0.5, line_search=False),
])
def test_state_dict_round_trip_continues_identically(build):
    rng = np.random.default_rng(1)
    params = make_params(rng)
    opt = build(params)
    grads = [[rng.standard_normal(p.shape) for p in params] for _ in range(6)]
    for step in grads[:3]:
        for p, g in zip(params, step):
            p.grad = g.copy()
        opt.step()
    saved = opt.state_dict()
    assert plain_values(saved)
    twins = [nn.Parameter(p.data.copy()) for p in params]
    twin_opt = build(twins)
    twin_opt.load_state_dict(saved)
    for step in grads[3:]:
        for ps in (params, twins):
            for p, g in zip(ps, step):
                p.grad = g.copy()
        opt.step()
        twin_opt.step()
    for p, q in zip(params, twins):
        np.testing.assert_array_equal(p.data, q.data)


def test_load_state_dict_checks_layout():
    rng = np.random.default_rng(0)
    opt = optim.AdamW(make_params(rng), lr=0.1)
    other = optim.AdamW(make_params(rng, ((3, 4),)), lr=0.1)
    with pytest.raises(ValueError, match="param group sizes"):
        other.load_state_dict(opt.state_dict())


# -- schedules ------------------------------------------------------------------------------------------
def lrs_over(scheduler, optimizer, steps):
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        assert scheduler.get_last_lr()[0] == seen[-1]
        optimizer.step()
        scheduler.step()
    return seen


def test_cosine_step_and_warmup_schedules_follow_their_formulas():
    p = nn.Parameter(np.zeros(1))
    opt = optim.SGD([p], lr=0.4)
    got = lrs_over(optim.CosineAnnealingLR(opt, T_max=10, eta_min=0.1), opt, 13)
    expected = [0.1 + 0.3 * (1 + math.cos(math.pi * min(t, 10) / 10)) / 2 for t in range(13)]
    np.testing.assert_allclose(got, expected)

    opt = optim.SGD([p], lr=1.0)
    got = lrs_over(optim.StepLR(opt, step_size=3, gamma=0.5), opt, 7)
    np.testing.assert_allclose(got, [1, 1, 1, 0.5, 0.5, 0.5, 0.25])

    opt = optim.SGD([p], lr=2.0)
    got = lrs_over(optim.LinearWarmup(opt, warmup_steps=4), opt, 6)
    np.testing.assert_allclose(got, [0.5, 1.0, 1.5, 2.0, 2.0, 2.0])


def test_warmup_cosine_rises_then_decays_to_eta_min():
    p = nn.Parameter(np.zeros(1))
    opt = optim.AdamW([p], lr=1e-2)
    got = lrs_over(optim.WarmupCosine(opt, warmup_steps=5, total_steps=25, eta_min=1e-4), opt, 30)
    assert np.all(np.diff(got[:5]) > 0) and got[4] == pytest.approx(1e-2)
    assert np.all(np.diff(got[5:25]) <= 1e-15)
    np.testing.assert_allclose(got[25:], 1e-4)
    mid = 5 + 10  # half-way through the cosine
    assert got[mid] == pytest.approx(1e-4 + (1e-2 - 1e-4) / 2)


@pytest.mark.parametrize("name", ["SGD", "AdamW", "DiagonalNewton", "BlockDiagonal", "KFAC"])
def test_schedules_drive_every_optimizer(name):
    model = nn.Linear(3, 2, rng=np.random.default_rng(0))
    params = list(model.parameters())
    opt = {"SGD": lambda: optim.SGD(params, lr=0.3), "AdamW": lambda: optim.AdamW(params, lr=0.3),
           "DiagonalNewton": lambda: optim.DiagonalNewton(params, lr=0.3, curvature="fisher"),
           "BlockDiagonal": lambda: optim.BlockDiagonal(params, lr=0.3),
           "KFAC": lambda: optim.KFAC(model, lr=0.3)}[name]()
    optim.StepLR(opt, step_size=1, gamma=0.5).step()
    assert all(g["lr"] == pytest.approx(0.15) for g in opt.param_groups)


def test_scheduler_rejects_bad_arguments():
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="T_max"):
        optim.CosineAnnealingLR(opt, T_max=0)
    with pytest.raises(ValueError, match="total_steps"):
        optim.WarmupCosine(opt, warmup_steps=10, total_steps=5)
    with pytest.raises(TypeError):
        optim.StepLR(object(), step_size=1)


# -- clipping ---------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(max_norm=st.floats(0.01, 10.0), scale=st.floats(0.01, 10.0), seed=st.integers(0, 2 ** 16),
       norm_type=st.sampled_from([1.0, 2.0, 3.0, math.inf]))
def test_clip_grad_norm_matches_numpy(max_norm, scale, seed, norm_type):
    rng = np.random.default_rng(seed)
    params = make_params(rng, ((3, 2), (4,), (1,)))
    random_grads(rng, params)
    for p in params:
        p.grad *= scale
    flat = np.concatenate([p.grad.ravel() for p in params])
    expected_total = np.linalg.norm(flat, ord=norm_type)
    total = optim.clip_grad_norm_(params + [nn.Parameter(np.zeros(2))], max_norm, norm_type=norm_type)
    assert total == pytest.approx(expected_total, rel=1e-9)
    clipped = np.concatenate([p.grad.ravel() for p in params])
    expected = flat * min(1.0, max_norm / (expected_total + 1e-6))
    np.testing.assert_allclose(clipped, expected, rtol=1e-9)
    assert np.linalg.norm(clipped, ord=norm_type) <= max_norm * (1 + 1e-9) or expected_total <= max_norm


def test_clip_grad_value_and_errors():
    p = nn.Parameter(np.zeros(4))
    p.grad = np.array([-3.0, -0.5, 0.5, 3.0])
    optim.clip_grad_value_([p], 1.0)
    np.testing.assert_array_equal(p.grad, [-1.0, -0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match="max_norm"):
        optim.clip_grad_norm_([p], -1.0)
    with pytest.raises(ValueError, match="clip_value"):
        optim.clip_grad_value_([p], -1.0)
    p.grad = np.array([np.inf, 0.0, 0.0, 0.0])
    with pytest.raises(RuntimeError, match="norm"):
        optim.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)


# -- curvature-aware optimizers -------------------------------------------------------------------------
def diagonal_quadratic(rng, n=6):
    """L(θ) = ½ Σ hᵢ (θᵢ − θ*ᵢ)², curvatures spread over four orders of magnitude."""
    h = 10.0 ** rng.uniform(-2, 2, n)
    target = rng.standard_normal(n)
    theta = nn.Parameter(np.zeros(n))

    def loss_fn():
        diff = theta - dreidel.Tensor(target)
        return (dreidel.Tensor(h) * diff * diff).sum() * 0.5
    return theta, target, loss_fn


def test_diagonal_newton_hutchinson_solves_a_diagonal_quadratic_in_a_few_steps():
    rng = np.random.default_rng(3)
    theta, target, loss_fn = diagonal_quadratic(rng)
    opt = optim.DiagonalNewton([theta], damping=0.0, rng=np.random.default_rng(0))

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss
    first = float(closure().item())
    for _ in range(3):
        opt.step(closure)
    np.testing.assert_allclose(theta.data, target, atol=1e-6)
    assert float(loss_fn().item()) < 1e-10 * first


class DiagonalScale(nn.Module):
    """y = x ⊙ d, which reports its exact Gauss–Newton diagonal for the mean squared error."""

    def __init__(self, n):
        super().__init__()
        self.d = nn.Parameter(np.ones(n))

    def forward(self, x):
        self.last_input = x.data
        return x * self.d

    def gauss_newton_diagonal(self):
        x = self.last_input                   # L = mean over N·n entries of (x ⊙ d − t)²
        return {self.d: 2 * (x * x).sum(0) / x.size}


def test_diagonal_newton_uses_module_gauss_newton_diagonals_without_a_closure():
    rng = np.random.default_rng(0)
    model = DiagonalScale(5)
    x = rng.standard_normal((32, 5)) * np.array([0.01, 0.1, 1, 10, 100])
    d_true = rng.standard_normal(5)
    opt = optim.DiagonalNewton(model.parameters(), modules=model, damping=0.0, line_search=False)
    for _ in range(2):
        opt.zero_grad()
        F.mse_loss(model(dreidel.Tensor(x)), x * d_true).backward()
        opt.step()
    np.testing.assert_allclose(model.d.data, d_true, rtol=1e-8)


def test_diagonal_newton_needs_a_closure_for_hutchinson():
    p = nn.Parameter(np.ones(3))
    p.grad = np.ones(3)
    with pytest.raises(ValueError, match="closure"):
        optim.DiagonalNewton([p]).step()


def block_diagonal_reference(grads, block_size, damping, beta, fisher_scale):
    """Dense numpy reference: F = EMA of the block-masked outer products, solve (F̂ + λI) Δ = g."""
    n = grads[0].size
    mask = np.zeros((n, n))
    for start in range(0, n, block_size):
        mask[start:start + block_size, start:start + block_size] = 1
    F_ = np.zeros((n, n))
    steps = []
    for k, g in enumerate(grads, start=1):
        F_ = beta * F_ + (1 - beta) * fisher_scale * np.outer(g, g) * mask
        steps.append(np.linalg.solve(F_ / (1 - beta ** k) + damping * np.eye(n), g))
    return steps


@pytest.mark.parametrize("size, block_size", [(10, 4), (7, 7), (5, 8), (12, 3), (1, 2)])
def test_block_diagonal_matches_dense_block_solve_for_any_size(size, block_size):
    rng = np.random.default_rng(size)
    p = nn.Parameter(rng.standard_normal(size))
    grads = [rng.standard_normal(size) for _ in range(4)]
    opt = optim.BlockDiagonal([p], lr=1.0, block_size=block_size, damping=0.1, beta=0.8,
                              update_freq=1, fisher_scale=3.0, line_search=False)
    expected = block_diagonal_reference(grads, block_size, 0.1, 0.8, 3.0)
    for g, delta in zip(grads, expected):
        before = p.data.copy()
        p.grad = g.copy()
        opt.step()
        np.testing.assert_allclose(before - p.data, delta, rtol=1e-9, atol=1e-12)


def test_block_diagonal_matrix_parameter_is_blocked_in_flat_order():
    rng = np.random.default_rng(0)
    p = nn.Parameter(rng.standard_normal((3, 5)))
    g = rng.standard_normal((3, 5))
    opt = optim.BlockDiagonal([p], block_size=4, damping=0.5, beta=0.0, fisher_scale=2.0, line_search=False)
    before = p.data.copy()
    p.grad = g.copy()
    opt.step()
    [expected] = block_diagonal_reference([g.ravel()], 4, 0.5, 0.0, 2.0)
    np.testing.assert_allclose((before - p.data).ravel(), expected, rtol=1e-9)


def test_kfac_solves_linear_regression_in_one_step_at_zero_damping():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 5))
    true_w, true_b = rng.standard_normal((3, 5)), rng.standard_normal(3)
    y = x @ true_w.T + true_b + 0.1 * rng.standard_normal((64, 3))
    design = np.concatenate([x, np.ones((64, 1))], axis=1)
    solution = np.linalg.lstsq(design, y, rcond=None)[0].T        # (3, 6): [W b]
    model = nn.Linear(5, 3, rng=rng, dtype=np.float64)
    opt = optim.KFAC(model, lr=1.0, damping=0.0, line_search=False)
    out = model(dreidel.Tensor(x))
    loss = F.mse_loss(out, y)
    opt.curvature_backward(out, "mse", exact=True)
    assert model.weight.grad is None                       # the curvature pass leaves gradients alone
    loss.backward()
    opt.step()
    np.testing.assert_allclose(model.weight.data, solution[:, :5], atol=1e-10)
    np.testing.assert_allclose(model.bias.data, solution[:, 5], atol=1e-10)


def test_kfac_step_is_the_damped_kronecker_solve():
    """With damping λ and the π split, vec(Δ) = ((A + π√λ I) ⊗ (G + √λ/π I))⁻¹ vec(∇[W b])."""
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((16, 4)), rng.standard_normal((16, 2))
    model = nn.Linear(4, 2, rng=rng, dtype=np.float64)
    before = np.concatenate([model.weight.data, model.bias.data[:, None]], axis=1)
    damping = 0.3
    opt = optim.KFAC(model, lr=1.0, damping=damping, line_search=False)
    out = model(dreidel.Tensor(x))
    loss = F.mse_loss(out, y)
    loss.backward()
    grad = np.concatenate([model.weight.grad, model.bias.grad[:, None]], axis=1)
    opt.step()
    # empirical-Fisher factors, written out: A = mean āāᵀ, G = N Σ gₙgₙᵀ with gₙ = ∂L/∂yₙ
    a = np.concatenate([x, np.ones((16, 1))], axis=1)
    A = a.T @ a / 16
    g_rows = 2 * (x @ before[:, :4].T + before[:, 4] - y) / y.size
    G = 16 * g_rows.T @ g_rows
    pi = np.sqrt((np.trace(A) / 5) / (np.trace(G) / 2))
    K = np.kron(A + pi * np.sqrt(damping) * np.eye(5), G + np.sqrt(damping) / pi * np.eye(2))
    delta = np.linalg.solve(K, grad.ravel(order="F")).reshape(grad.shape, order="F")
    after = np.concatenate([model.weight.data, model.bias.data[:, None]], axis=1)
    np.testing.assert_allclose(before - after, delta, rtol=1e-8, atol=1e-12)


def test_kfac_cross_entropy_curvature_is_unbiased():
    """The sampled-label vectors average to the softmax cross-entropy Hessian, (diag p − ppᵀ)/N per row."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 4))
    opt = optim.KFAC(nn.Linear(2, 4), rng=np.random.default_rng(1))
    total = np.zeros((2, 4, 4))
    draws = 20000
    for _ in range(draws):
        [eps] = opt._curvature_vectors(logits, "cross_entropy", False, "mean")
        total += eps[:, :, None] * eps[:, None, :]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = np.stack([np.diag(r) - np.outer(r, r) for r in p]) / 2
    np.testing.assert_allclose(total / draws, expected, atol=5e-3)


# -- every optimizer trains a small real model ------------------------------------------------------------
def digits_subset():
    from dreidel.data import load_digits
    x, y, _, _ = load_digits()
    return x[:512], y[:512]


OPTIMIZERS = {
    "SGD": lambda m: optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
    "AdamW": lambda m: optim.AdamW(m.parameters(), lr=1e-2),
    "DiagonalNewton": lambda m: optim.DiagonalNewton(m.parameters(), rng=np.random.default_rng(0)),
    "DiagonalNewton-fisher": lambda m: optim.DiagonalNewton(m.parameters(), curvature="fisher", fisher_scale=64),
    "BlockDiagonal": lambda m: optim.BlockDiagonal(m.parameters(), block_size=32, fisher_scale=64),
    "KFAC": lambda m: optim.KFAC(m, rng=np.random.default_rng(0)),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_reduces_a_real_training_loss(name):
    x, y = digits_subset()
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Linear(64, 32, rng=rng), nn.Tanh(), nn.Linear(32, 10, rng=rng))
    opt = OPTIMIZERS[name](model)
    schedule = optim.CosineAnnealingLR(opt, T_max=40, eta_min=0.0)

    def full_loss():
        with dreidel.no_grad():
            return float(F.cross_entropy(model(dreidel.Tensor(x)), y).item())
    start = full_loss()
    for step in range(40):
        batch = rng.choice(len(x), 64, replace=False)

        def closure():
            opt.zero_grad()
            out = model(dreidel.Tensor(x[batch]))
            loss = F.cross_entropy(out, y[batch])
            if name == "KFAC":
                opt.curvature_backward(out, "cross_entropy")
            loss.backward()
            optim.clip_grad_norm_(model.parameters(), 5.0)
            return loss
        opt.step(closure)
        schedule.step()
    end = full_loss()
    assert end < 0.5 * start, f"{name}: loss {start:.3f} → {end:.3f}"


def test_diagonal_newton_with_linear_wht_gauss_newton_solves_its_least_squares_in_one_step():
    from dreidel.nn.spectral import LinearWHT
    rng = np.random.default_rng(0)
    teacher = LinearWHT(8, 8, bias=False, rng=rng, dtype=np.float64)
    teacher.d.data = rng.standard_normal(8)
    x = rng.standard_normal((40, 8)) * np.array([0.01, 0.1, 0.5, 1, 2, 5, 10, 100])
    with dreidel.no_grad():
        target = teacher(dreidel.Tensor(x)).data
    model = LinearWHT(8, 8, bias=False, rng=rng, dtype=np.float64)
    # LinearWHT reports diag(JᵀJ) for ½Σ‖y − t‖²; F.mse_loss averages over the N·m entries
    opt = optim.DiagonalNewton(model.parameters(), modules=model, damping=0.0, line_search=False,
                               module_curvature_scale=2 / target.size)
    assert model.capture_curvature
    opt.zero_grad()
    F.mse_loss(model(dreidel.Tensor(x)), target).backward()
    opt.step()
    np.testing.assert_allclose(model.d.data, teacher.d.data, rtol=1e-8)


def conv2d_patches(x, kernel, padding):
    """Naive patches (N·P, C·k·k) of a stride-1 2-D convolution, written with loops."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh, ow = h + 2 * padding - kernel + 1, w + 2 * padding - kernel + 1
    rows = []
    for i in range(n):
        for r in range(oh):
            for s in range(ow):
                rows.append(xp[i, :, r:r + kernel, s:s + kernel].ravel())
    return np.array(rows), (oh, ow)


def test_kfac_solves_single_conv_regression_in_one_step_at_zero_damping():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 2, 5, 5))
    patches, (oh, ow) = conv2d_patches(x, 3, 1)
    true_w = rng.standard_normal((3, 2 * 9))
    y_rows = patches @ true_w.T + 0.1 * rng.standard_normal((len(patches), 3))
    y = y_rows.reshape(6, oh, ow, 3).transpose(0, 3, 1, 2)
    design = np.concatenate([patches, np.ones((len(patches), 1))], axis=1)
    solution = np.linalg.lstsq(design, y_rows, rcond=None)[0].T          # (3, 19)
    from dreidel.nn.conv import Conv2d
    model = Conv2d(2, 3, 3, padding=1, rng=rng, dtype=np.float64)
    opt = optim.KFAC(model, lr=1.0, damping=0.0, line_search=False)
    out = model(dreidel.Tensor(x))
    loss = F.mse_loss(out, y)
    opt.curvature_backward(out, "mse", exact=True)
    loss.backward()
    opt.step()
    np.testing.assert_allclose(model.weight.data.reshape(3, -1), solution[:, :-1], atol=1e-9)
    np.testing.assert_allclose(model.bias.data, solution[:, -1], atol=1e-9)


def test_kfac_keeps_one_param_group():
    opt = optim.KFAC(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="one group"):
        opt.add_param_group({"params": [nn.Parameter(np.zeros(1))]})


def test_diagonal_newton_fisher_follows_its_formula_without_a_closure():
    rng = np.random.default_rng(4)
    p = nn.Parameter(rng.standard_normal(5))
    theta = p.data.copy()
    opt = optim.DiagonalNewton([p], lr=0.5, beta=0.9, damping=0.1, curvature="fisher", fisher_scale=8.0,
                               momentum=0.5)
    h = np.zeros(5)
    m = np.zeros(5)
    for k in range(1, 4):
        g = rng.standard_normal(5)
        p.grad = g.copy()
        opt.step()
        h = 0.9 * h + 0.1 * 8.0 * g ** 2
        m = 0.5 * m + 0.5 * g
        theta = theta - 0.5 * (m / (1 - 0.5 ** k)) / (h / (1 - 0.9 ** k) + 0.1)
        np.testing.assert_allclose(p.data, theta, rtol=1e-12)


class BlockQuadratic(nn.Module):
    """L(θ) = ½ (θ − θ*)ᵀ M (θ − θ*) with M block-diagonal in blocks of 4; reports M's blocks."""

    def __init__(self, rng):
        super().__init__()
        self.theta = nn.Parameter(np.zeros(6))
        self.target = rng.standard_normal(6)
        full, tail = rng.standard_normal((4, 4)), rng.standard_normal((2, 2))
        self.blocks = (full @ full.T + np.eye(4), tail @ tail.T + np.eye(2))

    def loss(self):
        diff = self.theta - dreidel.Tensor(self.target)
        m = np.zeros((6, 6))
        m[:4, :4], m[4:, 4:] = self.blocks
        return (diff * (dreidel.Tensor(m) @ diff)).sum() * 0.5

    def block_curvature(self, block_size):
        assert block_size == 4
        return {self.theta: (self.blocks[0][None], self.blocks[1])}


def test_block_diagonal_with_supplied_curvature_is_a_newton_step():
    module = BlockQuadratic(np.random.default_rng(5))
    opt = optim.BlockDiagonal(module.parameters(), block_size=4, damping=0.0, modules=module, line_search=False)
    module.loss().backward()
    opt.step()
    np.testing.assert_allclose(module.theta.data, module.target, atol=1e-10)


def test_step_length_safeguard_is_the_exact_line_minimiser_on_a_quadratic():
    """On L = ½θᵀMθ (coupled M), the proposed diagonal step is scaled by α = gᵀd / dᵀMd."""
    rng = np.random.default_rng(6)
    root = rng.standard_normal((5, 5))
    M = root @ root.T + 0.1 * np.eye(5)
    theta = nn.Parameter(rng.standard_normal(5))
    h = np.diag(M)
    opt = optim.DiagonalNewton([theta], damping=0.0, modules=[_FixedDiagonal(theta, h)])

    def closure():
        opt.zero_grad()
        loss = (theta * (dreidel.Tensor(M) @ theta)).sum() * 0.5
        loss.backward()
        return loss
    start = theta.data.copy()
    g = M @ start
    d = g / h
    opt.step(closure)
    alpha = min(1.0, g @ d / (d @ M @ d))
    assert opt.last_step_scale == pytest.approx(alpha, rel=1e-5)
    np.testing.assert_allclose(theta.data, start - alpha * d, rtol=1e-5)


class _FixedDiagonal(nn.Module):
    def __init__(self, parameter, diagonal):
        super().__init__()
        self.parameter, self.diagonal = parameter, diagonal

    def gauss_newton_diagonal(self):
        return {self.parameter: self.diagonal}


def test_diagonal_newton_trace_scale_measures_the_loss_curvature_per_module():
    # loss c/2 ‖X Wᵀ − T‖² with orthogonal input columns: H = c·diag(GN) exactly, so the trace probe
    # must find the scale c and the first Newton step must land on the solution
    rng = np.random.default_rng(4)
    c = 7.3
    X = np.linalg.qr(rng.standard_normal((32, 6)))[0] * np.array([0.5, 1, 2, 3, 4, 8])
    W_true = rng.standard_normal((3, 6))
    layer = nn.Linear(6, 3, bias=False, rng=rng)
    layer.weight.data = layer.weight.data.astype(np.float64)

    def closure():
        opt.zero_grad()
        loss = ((layer(dreidel.Tensor(X)) - X @ W_true.T) ** 2).sum() * (c / 2)
        loss.backward()
        return loss
    opt = optim.DiagonalNewton(layer.parameters(), modules=layer, damping=0.0, line_search=False,
                               curvature="fisher", module_curvature_scale="trace", rng=np.random.default_rng(0))
    opt.step(closure)
    assert opt._trace_scales[layer] == pytest.approx(c, rel=1e-4)
    np.testing.assert_allclose(layer.weight.data, W_true, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="closure"):
        optim.DiagonalNewton(layer.parameters(), modules=layer, curvature="fisher",
                             module_curvature_scale="trace").step()


def test_line_search_backtracks_where_the_curvature_along_the_step_is_negative():
    # L(θ) = −exp(−θ²) at θ = 1.5: L'' < 0 there, and the Fisher step 1/L' lands at θ ≈ −1.66, higher
    # than where it started; the safeguard must shorten it to a step that lowers the loss
    def run(line_search):
        p = nn.Parameter(np.array([1.5]))
        opt = optim.DiagonalNewton([p], lr=1.0, damping=0.0, curvature="fisher", line_search=line_search)

        def closure():
            opt.zero_grad()
            loss = -F.exp(-(p * p)).sum()
            loss.backward()
            return loss
        opt.step(closure)
        return float(-np.exp(-p.data[0] ** 2)), opt.last_step_scale
    start = -np.exp(-1.5 ** 2)
    plain, _ = run(False)
    safe, alpha = run(True)
    assert plain > start  # the unguarded step goes uphill: the case is real
    assert safe < start and 0 < alpha < 1


def test_backtracking_trial_points_use_the_closures_loss_only_without_backward():
    # same problem as above; with `closure.loss_only` the trial points run no backward pass, and the
    # step found is the same as with the full closure
    def run(with_loss_only):
        p = nn.Parameter(np.array([1.5]))
        opt = optim.DiagonalNewton([p], lr=1.0, damping=0.0, curvature="fisher", line_search=True)
        calls = {"backward": 0, "loss_only": 0}

        def closure():
            opt.zero_grad()
            loss = -F.exp(-(p * p)).sum()
            loss.backward()
            calls["backward"] += 1
            return loss

        def loss_only():
            calls["loss_only"] += 1
            return -F.exp(-(p * p)).sum()
        if with_loss_only:
            closure.loss_only = loss_only
        opt.step(closure)
        return float(p.data[0]), opt.last_step_scale, calls
    p_full, alpha_full, full = run(False)
    p_fast, alpha_fast, fast = run(True)
    assert p_fast == p_full and alpha_fast == alpha_full and 0 < alpha_fast < 1
    assert full["loss_only"] == 0 and fast["loss_only"] >= 2
    assert fast["backward"] == full["backward"] - fast["loss_only"]
