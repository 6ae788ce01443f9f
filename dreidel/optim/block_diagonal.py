"""Block-diagonal Fisher preconditioner: each parameter in blocks of ≤ block_size entries, each block's
step solved against its own damped curvature matrix by Cholesky."""
import numpy as np

from dreidel.optim.optimizer import Optimizer, check_number


def split_blocks(n, block_size):
    """(number of full blocks, size of the last partial block or 0) for a flat parameter of n entries."""
    return n // block_size, n % block_size


class BlockDiagonal(Optimizer):
    """Block-wise Gauss–Newton/Fisher preconditioning (step k = 1, 2, ...).

    Each parameter is flattened and cut into consecutive blocks of `block_size` entries; the last
    block holds the remainder, so every entry of every parameter is preconditioned (no skipping).
    For each block b with gradient g_b:

        F_b ← β·F_b + (1 − β)·fisher_scale·g_b g_bᵀ        (empirical Fisher of the mini-batch gradient)
        every `update_freq` steps:  L_b L_bᵀ = F_b/(1 − βᵏ) + damping·I    (Cholesky, refreshed,
                                    and L_b⁻¹ by a solve of the triangular factor against I)
        Δ_b = L_b⁻ᵀ (L_b⁻¹ g_b)                            (two triangular mat-vecs per step)
        θ_b ← θ_b·(1 − lr·weight_decay) − lr·Δ_b

    With only mini-batch gradients, F_b sees the per-sample Fisher through the gradient noise:
    E[g gᵀ] = ḡḡᵀ + Σ/N for a loss averaged over N samples, so fisher_scale=N estimates the
    empirical Fisher (1/N)Σₙ gₙgₙᵀ when the noise dominates. Along a direction of curvature f the
    step is g/(f + damping), so it behaves like SGD with rate lr/damping where curvature is small and
    like a trust region elsewhere (‖Δ_b‖ ≤ 1/(2√damping) while F_b ≈ g_bg_bᵀ).
    A curvature matrix can be supplied instead of the empirical Fisher by a module defining
    `block_curvature(block_size)` → {parameter: (full_blocks, tail)} arrays of shape
    (n_full, B, B) and (r, r) (or None), on the loss's scale; pass `modules=model`.
    `momentum` accumulates Δ (b ← μ·b + Δ, the step uses b).

    Step-length safeguard (`line_search=True`, used whenever step() gets a closure): blocks ignore
    the coupling between blocks and the empirical Fisher is not the Hessian, so the proposed step d
    is scaled by α = min(1, gᵀd / dᵀHd) (the quadratic model's minimiser along d; dᵀHd from one more
    gradient evaluation by finite differences); `last_step_scale` holds α. Without a closure the step
    is the plain formula, and then damping must be large enough for the problem (lr/damping acts
    as an SGD rate in the low-curvature directions).

    Cost per step: O(n·block_size) for the outer products and the two triangular products,
    O(n·block_size²) per refresh (Cholesky and triangular inverse of every block).
    """

    def __init__(self, params, lr=1.0, block_size=64, damping=1e-3, beta=0.95, update_freq=10,
                 fisher_scale=1.0, momentum=0.0, weight_decay=0.0, modules=None,
                 line_search=True):
        if int(block_size) != block_size or block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size}")
        if int(update_freq) != update_freq or update_freq < 1:
            raise ValueError(f"update_freq must be a positive integer, got {update_freq}")
        check_number("fisher_scale", fisher_scale, low=0, low_open=True)
        self.modules = modules
        self.line_search, self.last_step_scale = bool(line_search), 1.0
        super().__init__(params, dict(lr=lr, block_size=int(block_size), damping=damping, beta=beta,
                                      update_freq=int(update_freq), fisher_scale=fisher_scale,
                                      momentum=momentum, weight_decay=weight_decay))

    def _check_group(self, group):
        check_number("lr", group["lr"], low=0)
        check_number("damping", group["damping"], low=0)
        check_number("beta", group["beta"], low=0, high=1, high_open=True)
        check_number("momentum", group["momentum"], low=0, high=1, high_open=True)
        check_number("weight_decay", group["weight_decay"], low=0)

    def _supplied_curvature(self):
        if self.modules is None:
            return {}
        modules = self.modules.modules() if hasattr(self.modules, "modules") else self.modules
        supplied = {}
        for module in modules:
            provide = getattr(module, "block_curvature", None)
            if provide is not None:
                supplied.update(provide(self.param_groups[0]["block_size"]) or {})
        return supplied

    @staticmethod
    def _inverse_factor(factor):
        """L⁻¹ for stacked lower-triangular L (k, B, B), by a solve against the identity."""
        return np.linalg.solve(factor, np.broadcast_to(np.eye(factor.shape[-1]), factor.shape))

    @staticmethod
    def _apply(inverse_factor, g):
        """(L Lᵀ)⁻¹ g = L⁻ᵀ (L⁻¹ g) for stacked L⁻¹ (k, B, B) and g (k, B): two triangular products."""
        y = np.einsum("kij,kj->ki", inverse_factor, g)
        return np.einsum("kji,kj->ki", inverse_factor, y)

    def step(self, closure=None):
        loss = self._evaluate(closure)
        supplied = self._supplied_curvature()
        directions = {}
        for group in self.param_groups:
            B, beta, damping = group["block_size"], group["beta"], group["damping"]
            for p in self._params_with_grad(group):
                n_full, tail = split_blocks(p.size, B)
                g = p.grad.astype(np.float64).ravel()
                state = self.state.setdefault(p, {})
                if not state:
                    state.update(step=0, full=np.zeros((n_full, B, B)), tail=np.zeros((tail, tail)))
                state["step"] += 1
                k = state["step"]
                g_full, g_tail = g[:n_full * B].reshape(n_full, B), g[n_full * B:]
                if p in supplied:
                    sample_full, sample_tail = supplied[p]
                    sample_tail = np.zeros((0, 0)) if sample_tail is None else sample_tail
                    if np.shape(sample_full) != (n_full, B, B) or np.shape(sample_tail) != (tail, tail):
                        raise ValueError(f"block_curvature gave shapes {np.shape(sample_full)} and "
                                         f"{np.shape(sample_tail)} for a parameter of {p.size} entries "
                                         f"(expected ({n_full}, {B}, {B}) and ({tail}, {tail}))")
                else:
                    scale = group["fisher_scale"]
                    sample_full = scale * g_full[:, :, None] * g_full[:, None, :]
                    sample_tail = scale * np.outer(g_tail, g_tail)
                for name, sample in (("full", sample_full), ("tail", sample_tail)):
                    state[name] *= beta
                    state[name] += (1 - beta) * sample
                if (k - 1) % group["update_freq"] == 0:
                    correction = 1 - beta ** k
                    for name, size in (("full", B), ("tail", tail)):
                        damped = state[name] / correction + damping * np.eye(size)
                        try:
                            factor = np.linalg.cholesky(damped)
                        except np.linalg.LinAlgError:
                            raise ValueError("BlockDiagonal: a curvature block is not positive definite; "
                                             f"increase damping (now {damping})") from None
                        state[name + "_inverse_factor"] = self._inverse_factor(factor)
                delta = np.concatenate([self._apply(state["full_inverse_factor"], g_full).ravel(),
                                        self._apply(state["tail_inverse_factor"][None], g_tail[None]).ravel()])
                delta = delta.reshape(p.shape)
                if group["momentum"]:
                    buf = state.setdefault("momentum_buffer", np.zeros(p.shape))
                    buf *= group["momentum"]
                    buf += delta
                    delta = buf
                directions[p] = delta
        self._apply_directions(directions, closure)
        return loss
