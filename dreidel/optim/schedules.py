"""Learning-rate schedules in PyTorch's style: `LRScheduler(optimizer)`, then `scheduler.step()` once per
step (or epoch) after `optimizer.step()`; `get_last_lr()` gives the rates just set.

Every schedule here is a closed form lr(t) = base_lr · factor(t) (or a cosine between base_lr and
eta_min), written into each param group's "lr", so it works with every optimizer in dreidel.optim.
Constructing a scheduler sets the rates for t = 0 (as PyTorch does); `base_lr` is each group's
"initial_lr" (set on first use from its "lr").
"""
import math

from dreidel.optim.optimizer import Optimizer, check_number


class LRScheduler:
    def __init__(self, optimizer, last_epoch=-1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__} needs a dreidel Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()

    def lr_at(self, t, base_lr):
        """The learning rate at step t for a group whose base rate is base_lr."""
        raise NotImplementedError

    def get_lr(self):
        return [self.lr_at(self.last_epoch, base) for base in self.base_lrs]

    def get_last_lr(self):
        return list(self._last_lr)

    def step(self):
        self.last_epoch += 1
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr

    def state_dict(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambda")}

    def load_state_dict(self, state_dict):
        self.__dict__.update(state_dict)


class LambdaLR(LRScheduler):
    """lr(t) = base_lr · lr_lambda(t)."""

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        self.lr_lambda = lr_lambda
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t, base_lr):
        return base_lr * self.lr_lambda(t)


class StepLR(LRScheduler):
    """lr(t) = base_lr · gamma^⌊t / step_size⌋."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        if int(step_size) != step_size or step_size < 1:
            raise ValueError(f"step_size must be a positive integer, got {step_size}")
        self.step_size, self.gamma = int(step_size), check_number("gamma", gamma, low=0)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t, base_lr):
        return base_lr * self.gamma ** (t // self.step_size)


def _cosine(t, total, high, low):
    """Half a cosine from `high` (t = 0) to `low` (t = total); stays at `low` after."""
    t = min(t, total)
    return low + (high - low) * (1 + math.cos(math.pi * t / total)) / 2


class CosineAnnealingLR(LRScheduler):
    """lr(t) = eta_min + (base_lr − eta_min)·(1 + cos(π·t/T_max))/2 for t ≤ T_max, then eta_min."""

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        if int(T_max) != T_max or T_max < 1:
            raise ValueError(f"T_max must be a positive integer, got {T_max}")
        self.T_max, self.eta_min = int(T_max), check_number("eta_min", eta_min, low=0)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t, base_lr):
        return _cosine(t, self.T_max, base_lr, self.eta_min)


def _warmup_factor(t, warmup_steps, start_factor):
    """start_factor at t = 0, rising linearly to 1 at t = warmup_steps − 1 (1 from then on)."""
    if t >= warmup_steps - 1:
        return 1.0
    return start_factor + (1 - start_factor) * t / (warmup_steps - 1)


def _check_warmup(warmup_steps, start_factor):
    if int(warmup_steps) != warmup_steps or warmup_steps < 1:
        raise ValueError(f"warmup_steps must be a positive integer, got {warmup_steps}")
    if start_factor is None:
        start_factor = 1 / warmup_steps
    check_number("start_factor", start_factor, low=0, high=1)
    return int(warmup_steps), start_factor


class LinearWarmup(LRScheduler):
    """Linear warm-up: lr(t) = base_lr·(s + (1 − s)·t/(W − 1)) for t < W, then base_lr.

    W = warmup_steps, s = start_factor (default 1/W, so the rates are base_lr·(1/W, …, 1) when
    W > 1; it is never 0, so no step is wasted).
    """

    def __init__(self, optimizer, warmup_steps, start_factor=None, last_epoch=-1):
        self.warmup_steps, self.start_factor = _check_warmup(warmup_steps, start_factor)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t, base_lr):
        return base_lr * _warmup_factor(t, self.warmup_steps, self.start_factor)


class WarmupCosine(LRScheduler):
    """Linear warm-up over `warmup_steps` (as `LinearWarmup`), then a cosine from base_lr down to
    eta_min reached at t = total_steps (and kept after)."""

    def __init__(self, optimizer, warmup_steps, total_steps, eta_min=0.0, start_factor=None, last_epoch=-1):
        self.warmup_steps, self.start_factor = _check_warmup(warmup_steps, start_factor)
        if int(total_steps) != total_steps or total_steps < self.warmup_steps:
            raise ValueError(f"total_steps must be an integer >= warmup_steps ({self.warmup_steps}), "
                             f"got {total_steps}")
        self.total_steps, self.eta_min = int(total_steps), check_number("eta_min", eta_min, low=0)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, t, base_lr):
        if t < self.warmup_steps:
            return base_lr * _warmup_factor(t, self.warmup_steps, self.start_factor)
        decay = self.total_steps - self.warmup_steps
        if decay == 0:
            return self.eta_min
        return _cosine(t - self.warmup_steps, decay, base_lr, self.eta_min)
