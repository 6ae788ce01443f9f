"""AdamW (decoupled weight decay, Loshchilov & Hutter) and Adam (L2 decay in the gradient), PyTorch's rules."""
import numpy as np

from dreidel.optim.optimizer import Optimizer, check_number


class AdamW(Optimizer):
    """AdamW exactly as `torch.optim.AdamW` (step t = 1, 2, ...):

        θ ← θ·(1 − lr·weight_decay)                          (decoupled decay)
        m ← β1·m + (1 − β1)·g,   v ← β2·v + (1 − β2)·g²
        v_max ← max(v_max, v)  and use v_max for v           (amsgrad only)
        θ ← θ − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + eps)
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad))

    decoupled = True

    def _check_group(self, group):
        check_number("lr", group["lr"], low=0)
        betas = group["betas"]
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        check_number("beta1", betas[0], low=0, high=1, high_open=True)
        check_number("beta2", betas[1], low=0, high=1, high_open=True)
        check_number("eps", group["eps"], low=0)
        check_number("weight_decay", group["weight_decay"], low=0)

    def step(self, closure=None):
        loss = self._evaluate(closure)
        for group in self.param_groups:
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in self._params_with_grad(group):
                g = p.grad
                if wd and not self.decoupled:  # Adam: L2 decay folded into the gradient
                    g = g + p.dtype.type(wd) * p.data
                state = self.state.setdefault(p, {})
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = np.zeros_like(p.data)
                    state["exp_avg_sq"] = np.zeros_like(p.data)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = np.zeros_like(p.data)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                if wd and self.decoupled:
                    p.data *= p.dtype.type(1 - lr * wd)
                m *= beta1
                m += (1 - beta1) * g
                v *= beta2
                v += (1 - beta2) * (g * g)
                if group["amsgrad"]:
                    np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
                    v = state["max_exp_avg_sq"]
                denom = np.sqrt(v) / np.sqrt(1 - beta2 ** t) + eps
                p.data -= ((lr / (1 - beta1 ** t)) * m / denom).astype(p.dtype, copy=False)
        return loss


class Adam(AdamW):
    """Adam exactly as `torch.optim.Adam`: like AdamW, except that weight decay is an L2 term added to
    the gradient (g ← g + weight_decay·θ) before the moments, and defaults to 0."""

    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
