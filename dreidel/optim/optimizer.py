"""The `Optimizer` base class: parameter groups, per-parameter state, and a pickle-free state_dict.

Parameters are `dreidel.Tensor`s (usually `nn.Parameter`); updates write `p.data` in place with plain
numpy, so no graph is ever recorded. A parameter whose `.grad` is None is skipped by every step.
"""
import numbers

import numpy as np

from dreidel.tensor import Tensor, enable_grad, no_grad


def check_number(name, value, low=None, high=None, low_open=False, high_open=False):
    """Raise ValueError unless `value` is a finite real number within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


class Optimizer:
    """Base class: `Optimizer(params, defaults)`.

    `params` is an iterable of Tensors or of dicts `{"params": [...], **hyper_parameters}` (param
    groups); a group's missing hyper-parameters come from `defaults`. Subclasses implement `step`
    and may override `_check_group` to validate hyper-parameters (bad values raise ValueError).
    `state[p]` is a dict of arrays and numbers kept for parameter p.
    """

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of Tensors or dicts, got a single Tensor; "
                            "wrap it in a list")
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group):
        """Add a dict with "params" (Tensors) and optional hyper-parameters overriding the defaults."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"a param group must be a dict with a 'params' key, got {type(group).__name__}")
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, got {type(p).__name__}")
            if p.dtype.kind != "f":
                raise TypeError(f"optimizer can only optimize floating-point tensors, got {p.dtype}")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in params}) != len(params) or any(id(p) in seen for p in params):
            raise ValueError("a parameter appears more than once across the optimizer's param groups")
        full = dict(self.defaults)
        full.update(group)
        full["params"] = params
        self._check_group(full)
        self.param_groups.append(full)

    def _check_group(self, group):
        check_number("lr", group.get("lr", 0.0), low=0)

    def zero_grad(self, set_to_none=True):
        """Clear every parameter's gradient (None by default, as in PyTorch ≥ 2.0)."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad[...] = 0

    def _evaluate(self, closure):
        """Run a closure that recomputes the loss and its gradients (grad mode on)."""
        if closure is None:
            return None
        with enable_grad():
            return closure()

    def step(self, closure=None):
        raise NotImplementedError

    def _step_scale(self, closure, directions, eps=1e-3):
        """α = clip(gᵀd / dᵀHd, 0, 1): the exact minimiser along the proposed step d of the loss's
        quadratic model, with dᵀHd from one more gradient, dᵀ(∇L(θ + εd) − ∇L(θ))/ε, via closure.

        A preconditioner that ignores coupling between parameters (diagonal, block-diagonal) proposes
        steps that overshoot along correlated directions; this safeguard shrinks them (never grows
        them). Parameters and gradients are restored. Where the curvature along d is not positive the
        quadratic model says nothing about length, so α backtracks (1, ½, ¼, …) to the first step that
        lowers the loss, and is 0 if none of ten does: a full step there can land anywhere.
        """
        params = [p for p in directions if p.grad is not None]
        if closure is None or not params:
            return 1.0
        slope = sum(float(np.vdot(p.grad.astype(np.float64), directions[p])) for p in params)
        size = np.sqrt(sum(float(np.vdot(d, d)) for d in directions.values()) /
                       max(1, sum(d.size for d in directions.values())))
        if size == 0 or slope <= 0:
            return 1.0
        step = eps / size
        saved_data = {p: p.data.copy() for p in params}
        saved_grads = {p: p.grad for g in self.param_groups for p in g["params"]}
        try:
            for p in params:
                p.data[...] = saved_data[p] + step * directions[p]
            self._evaluate(closure)
            curvature = sum(float(np.vdot(directions[p], (p.grad.astype(np.float64) - saved_grads[p])))
                            for p in params if p.grad is not None) / step
        finally:
            for p in params:
                p.data[...] = saved_data[p]
            for p, g in saved_grads.items():
                p.grad = g
        if not np.isfinite(curvature) or curvature <= 0:
            return self._backtrack(closure, params, directions, saved_data, saved_grads)
        return float(min(1.0, slope / curvature))

    def _backtrack(self, closure, params, directions, saved_data, saved_grads, tries=10, shrink=0.25):
        """The first α of 1, ¼, 1/16, … (`tries` of them, down to ~4e-6) that lowers the loss, else 0.
        Trial points need only the loss: a closure that carries `loss_only` (a callable returning the
        loss, no gradients) is spared its backward pass there, about two thirds of each trial's cost."""
        loss_only = getattr(closure, "loss_only", None)

        def loss_at(alpha):
            for p in params:
                p.data[...] = saved_data[p] - alpha * directions[p]
            if loss_only is not None:
                with no_grad():
                    loss = loss_only()
                return float(np.asarray(getattr(loss, "data", loss)))
            return float(np.asarray(getattr(self._evaluate(closure), "data", np.nan)))
        try:
            start, alpha = loss_at(0.0), 1.0
            for _ in range(tries):
                if loss_at(alpha) < start:
                    return alpha
                alpha *= shrink
            return 0.0
        finally:
            for p in params:
                p.data[...] = saved_data[p]
            for p, g in saved_grads.items():
                p.grad = g

    def _apply_directions(self, directions, closure, eps=1e-3):
        """p ← p·(1 − lr·decay) − lr·α·d for every proposed step d, α from `_step_scale` when the
        line search is on (the safeguard shared by the curvature-aware optimizers)."""
        scale = self._step_scale(closure, directions, eps) if self.line_search else 1.0
        self.last_step_scale = scale
        for group in self.param_groups:
            lr = group["lr"]
            for p in self._params_with_grad(group):
                if group["weight_decay"]:
                    p.data *= p.dtype.type(1 - lr * group["weight_decay"])
                p.data -= (lr * scale * directions[p]).astype(p.dtype)

    def _params_with_grad(self, group):
        return [p for p in group["params"] if p.grad is not None]

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self):
        """{"state": {index: {name: array or number}}, "param_groups": [{..., "params": [index]}]}.

        Parameters are referred to by their position across the groups (as in PyTorch), so the
        dict holds only arrays, numbers, strings and lists of those: no pickle needed.
        """
        index = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                packed["params"].append(index[id(p)])
            groups.append(packed)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state:
                    state[index[id(p)]] = {k: (v.copy() if isinstance(v, np.ndarray) else v)
                                           for k, v in self.state[p].items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore hyper-parameters and state saved by `state_dict` for the same parameter layout."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} param groups, optimizer has {len(self.param_groups)}")
        by_index = {}
        for saved, own in zip(groups, self.param_groups):
            if len(saved["params"]) != len(own["params"]):
                raise ValueError(f"param group sizes differ: state_dict {len(saved['params'])}, "
                                 f"optimizer {len(own['params'])}")
            for i, p in zip(saved["params"], own["params"]):
                by_index[int(i)] = p
        new_state = {}
        for i, values in state_dict["state"].items():
            p = by_index.get(int(i))
            if p is None:
                raise ValueError(f"state_dict has state for parameter {i}, which the optimizer does not hold")
            restored = {}
            for name, value in values.items():
                if isinstance(value, np.ndarray):
                    if name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer") \
                            and value.shape != p.shape:
                        raise ValueError(f"state {name!r} of parameter {i} has shape {value.shape}, "
                                         f"parameter has {p.shape}")
                    value = value.copy()
                restored[name] = value
            new_state[p] = restored
        for saved, own in zip(groups, self.param_groups):
            for key, value in saved.items():
                if key != "params":
                    own[key] = value
        self.state = new_state

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]}")
        return "\n".join(lines) + "\n)"
