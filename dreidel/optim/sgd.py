"""Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay (PyTorch's rules)."""
import numpy as np

from dreidel.optim.optimizer import Optimizer, check_number


class SGD(Optimizer):
    """SGD exactly as `torch.optim.SGD`:

        g ← ∇θ + weight_decay·θ
        if momentum ≠ 0:
            b ← g (first step),  b ← momentum·b + (1 − dampening)·g (later steps)
            g ← g + momentum·b (nesterov)  or  g ← b
        θ ← θ − lr·g
    """

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      nesterov=nesterov, weight_decay=weight_decay))

    def _check_group(self, group):
        check_number("lr", group["lr"], low=0)
        check_number("momentum", group["momentum"], low=0)
        check_number("dampening", group["dampening"])
        check_number("weight_decay", group["weight_decay"], low=0)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum needs momentum > 0 and dampening = 0, got "
                             f"momentum={group['momentum']}, dampening={group['dampening']}")

    def step(self, closure=None):
        loss = self._evaluate(closure)
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in self._params_with_grad(group):
                g = p.grad
                if wd:
                    g = g + wd * p.data
                if momentum:
                    state = self.state.setdefault(p, {})
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = np.array(g, dtype=p.dtype, copy=True)
                    else:
                        buf *= momentum
                        buf += (1 - group["dampening"]) * g
                    g = g + momentum * buf if group["nesterov"] else buf
                p.data -= (lr * g).astype(p.dtype, copy=False)
        return loss
