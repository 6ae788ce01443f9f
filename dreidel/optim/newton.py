"""Diagonal Newton: θ ← θ − lr·ĝ / (ĥ + damping) with ĥ an EMA of a diagonal curvature estimate."""
import numpy as np

from dreidel.optim.optimizer import Optimizer, check_number
from dreidel.random import generator
from dreidel.tensor import Tensor


def curvature_modules(modules):
    """The modules among `modules` (a Module tree or a list) that define `gauss_newton_diagonal()`."""
    if modules is None:
        return []
    if hasattr(modules, "modules") and callable(modules.modules):
        modules = modules.modules()
    return [m for m in modules if callable(getattr(m, "gauss_newton_diagonal", None))]


def module_curvature(modules, scale=1.0):
    """{parameter: scale · array} from every module's `gauss_newton_diagonal()`."""
    curvature = {}
    for module in modules:
        provide = getattr(module, "gauss_newton_diagonal", None)
        if provide is None:
            continue
        for p, h in (provide() or {}).items():
            h = np.asarray(h.data if isinstance(h, Tensor) else h)
            if h.shape != p.shape:
                raise ValueError(f"{type(module).__name__}.gauss_newton_diagonal() gave shape {h.shape} "
                                 f"for a parameter of shape {p.shape}")
            curvature[p] = scale * h.astype(np.float64)
    return curvature


class DiagonalNewton(Optimizer):
    """Diagonal Newton step with a curvature EMA, bias-corrected (step k = 1, 2, ...):

        h ← β·h + (1 − β)·s,         ĥ = h / (1 − βᵏ)          (s: this step's curvature sample)
        m ← μ·m + (1 − μ)·g,         ĝ = m / (1 − μᵏ)          (ĝ = g when momentum μ = 0)
        θ ← θ·(1 − lr·weight_decay) − lr·ĝ / (ĥ + damping)

    With s the exact Hessian diagonal this is Newton's method on a separable objective, so lr = 1 is
    the natural rate (a diagonal quadratic ½Σ hᵢ(θᵢ − θᵢ*)² is solved in one step once ĥ = h).

    Where s comes from, per parameter (the first that applies):

    1. Gauss–Newton diagonal from its module. Pass `modules=model` (or a list of modules); any module
       defining `gauss_newton_diagonal()` is asked, after the backward pass, for {parameter: array},
       and its `capture_curvature` flag (if it has one) is switched on. Consumed as
       s = module_curvature_scale · array. The dreidel.nn.spectral layers return diag(JᵀJ) of their
       own output for the summed squared loss ½Σ_s‖y_s − t_s‖² (Λ = I, no output gradients needed):
       LinearWHT y = trunc(H(x ⊙ d)) + b gives GN(dᵢ) = (out/N)·Σ_s x_{s,i}² (‖H[:out, i]‖² = out/N),
       GN(b_j) = batch; DeepSpectralLinear gives GN(d_{k,i}) = Σ_s u_{s,k,i}²·‖A_k[:, i]‖², u_k the
       permuted block input and A_k the map from block k's output to y. For F.mse_loss (mean over the
       N·m output entries) set module_curvature_scale = 2/(N·m); for a layer that is not the model's
       output, this treats the loss's curvature in that layer's output as a multiple of I (an
       approximation; the step-length safeguard below only shortens steps, so a scale that is too
       large stays too short). `module_curvature_scale="trace"` measures that multiple per module
       instead, for any loss: one Hutchinson probe restricted to the module's parameters estimates
       tr(H_m) = E[vᵀ H_m v], and the module's diagonal is rescaled so its sum equals that trace
       (the layer gives the shape, the probe the scale; a whole module's sum averages away the
       probe's per-coordinate noise). Re-measured every `trace_every` curvature refreshes (it costs
       two gradient evaluations through `step(closure)`).
    2. `curvature="hutchinson"` (default): s = |v ⊙ Hv| with Rademacher v (E[v ⊙ Hv] = diag H; the
       absolute value, as in AdaHessian, keeps negative curvature from reversing the step). The
       engine has no double backward, so Hv is a central difference of gradients,
       Hv ≈ (∇L(θ + εv) − ∇L(θ − εv)) / 2ε, through `step(closure)`: closure() must zero the
       gradients, recompute the loss deterministically (no dropout) and call backward(). One sample
       costs two extra forward+backward passes; `hutchinson_samples` averages more.
    3. `curvature="fisher"`: s = fisher_scale·g² (the squared mini-batch gradient; no closure needed).
       This is the diagonal empirical Fisher only up to scale: for a loss averaged over N samples
       whose per-sample gradients are mostly noise, E[g²] ≈ Fisher/N, so pass fisher_scale=N.
       The step g/(ĥ + damping) is then bounded by lr/(2√damping) per coordinate.

    Step-length safeguard (`line_search=True`, used whenever step() gets a closure): a diagonal
    model ignores the coupling between parameters, so on a real network the joint step overshoots
    (by up to the number of strongly correlated coordinates). The proposed step d = ĝ/(ĥ + damping)
    is scaled by α = min(1, gᵀd / dᵀHd), the minimiser of the quadratic model along d, with dᵀHd from
    one more gradient evaluation (a finite difference along d); `last_step_scale` holds α. Without
    a closure (or with line_search=False) the step is the plain formula above.

    `update_every=k` refreshes the curvature only every k steps (ĥ is reused in between), which
    amortises Hutchinson's extra passes.
    """

    def __init__(self, params, lr=1.0, beta=0.95, damping=1e-4, curvature="hutchinson", modules=None,
                 momentum=0.0, weight_decay=0.0, hutchinson_eps=1e-3, hutchinson_samples=1,
                 fisher_scale=1.0, update_every=1, line_search=True, module_curvature_scale=1.0, trace_every=4,
                 rng=None):
        if curvature not in ("hutchinson", "fisher"):
            raise ValueError(f"curvature must be 'hutchinson' or 'fisher', got {curvature!r}")
        if int(hutchinson_samples) != hutchinson_samples or hutchinson_samples < 1:
            raise ValueError(f"hutchinson_samples must be a positive integer, got {hutchinson_samples}")
        if int(update_every) != update_every or update_every < 1:
            raise ValueError(f"update_every must be a positive integer, got {update_every}")
        check_number("hutchinson_eps", hutchinson_eps, low=0, low_open=True)
        check_number("fisher_scale", fisher_scale, low=0, low_open=True)
        if module_curvature_scale != "trace":
            check_number("module_curvature_scale", module_curvature_scale, low=0, low_open=True)
        if int(trace_every) != trace_every or trace_every < 1:
            raise ValueError(f"trace_every must be a positive integer, got {trace_every}")
        self.trace_every, self._trace_scales, self._refreshes = int(trace_every), {}, 0
        self.curvature, self.modules = curvature, curvature_modules(modules)
        self.module_curvature_scale = module_curvature_scale
        for module in self.modules:
            if hasattr(module, "capture_curvature"):
                module.capture_curvature = True
        self.hutchinson_eps, self.hutchinson_samples = hutchinson_eps, int(hutchinson_samples)
        self.fisher_scale, self.update_every = fisher_scale, int(update_every)
        self.rng = generator(rng)
        self.line_search, self.last_step_scale = bool(line_search), 1.0
        self.steps = 0
        super().__init__(params, dict(lr=lr, beta=beta, damping=damping, momentum=momentum,
                                      weight_decay=weight_decay))

    def _check_group(self, group):
        check_number("lr", group["lr"], low=0)
        check_number("beta", group["beta"], low=0, high=1, high_open=True)
        check_number("damping", group["damping"], low=0)
        check_number("momentum", group["momentum"], low=0, high=1, high_open=True)
        check_number("weight_decay", group["weight_decay"], low=0)

    def _hutchinson(self, params, closure, signed=False):
        """|v ⊙ Hv| (v ⊙ Hv when `signed`) per parameter by central differences of gradients along
        Rademacher v."""
        if closure is None:
            raise ValueError("DiagonalNewton with curvature='hutchinson' needs step(closure): a function "
                             "that zeroes the gradients, recomputes the loss and calls backward(); or use "
                             "curvature='fisher', or modules that define gauss_newton_diagonal()")
        all_params = [p for g in self.param_groups for p in g["params"]]
        saved_grads = {p: p.grad for p in all_params}
        saved_data = {p: p.data.copy() for p in params}
        eps = self.hutchinson_eps
        estimate = {p: np.zeros(p.shape, dtype=np.float64) for p in params}
        try:
            for _ in range(self.hutchinson_samples):
                v = {p: self.rng.integers(0, 2, size=p.shape).astype(p.dtype) * 2 - 1 for p in params}
                gradients = []
                for sign in (1, -1):
                    for p in params:
                        p.data[...] = saved_data[p] + sign * eps * v[p]
                    self._evaluate(closure)
                    gradients.append({p: np.zeros(p.shape) if p.grad is None else p.grad.astype(np.float64)
                                      for p in params})
                for p in params:
                    hv = (gradients[0][p] - gradients[1][p]) / (2 * eps)
                    vhv = v[p] * hv
                    estimate[p] += (vhv if signed else np.abs(vhv)) / self.hutchinson_samples
        finally:
            for p in params:
                p.data[...] = saved_data[p]
            for p, g in saved_grads.items():
                p.grad = g
        return estimate

    def _module_samples(self, closure):
        """The modules' Gauss–Newton diagonals, scaled (by a number, or per module by its trace)."""
        if self.module_curvature_scale != "trace":
            return module_curvature(self.modules, self.module_curvature_scale)
        per_module = [module_curvature([m]) for m in self.modules]
        per_module = [{p: h for p, h in c.items() if p.grad is not None} for c in per_module]
        if self._refreshes % self.trace_every == 0:
            if closure is None:
                raise ValueError("DiagonalNewton with module_curvature_scale='trace' needs step(closure)")
            probed = self._hutchinson([p for c in per_module for p in c], closure, signed=True)
            for m, c in zip(self.modules, per_module):
                total = sum(float(np.sum(h)) for h in c.values())
                trace = sum(float(np.sum(probed[p])) for p in c)
                if not trace > 0:  # negative along this probe: keep the last scale, else use |v ⊙ Hv|
                    if m in self._trace_scales:
                        continue
                    trace = sum(float(np.sum(np.abs(probed[p]))) for p in c)
                self._trace_scales[m] = trace / total if total > 0 and trace > 0 else 1.0
        self._refreshes += 1
        return {p: self._trace_scales.get(m, 1.0) * h for m, c in zip(self.modules, per_module) for p, h in c.items()}

    def step(self, closure=None):
        loss = self._evaluate(closure)
        self.steps += 1
        refresh = (self.steps - 1) % self.update_every == 0
        samples = {}
        if refresh:
            samples = self._module_samples(closure)
            rest = [p for g in self.param_groups for p in self._params_with_grad(g) if p not in samples]
            if rest and self.curvature == "hutchinson":
                samples.update(self._hutchinson(rest, closure))
            elif rest:
                samples.update({p: self.fisher_scale * p.grad.astype(np.float64) ** 2 for p in rest})
        directions = {}
        for group in self.param_groups:
            beta, mu = group["beta"], group["momentum"]
            for p in self._params_with_grad(group):
                state = self.state.setdefault(p, {})
                if not state:
                    state.update(step=0, curvature_steps=0, hessian=np.zeros(p.shape))
                    if mu:
                        state["exp_avg"] = np.zeros(p.shape)
                state["step"] += 1
                if p in samples:
                    state["curvature_steps"] += 1
                    state["hessian"] *= beta
                    state["hessian"] += (1 - beta) * samples[p]
                if state["curvature_steps"] == 0:
                    raise ValueError("DiagonalNewton has no curvature yet for a parameter that got its first "
                                     "gradient between curvature refreshes (update_every > 1)")
                h_hat = state["hessian"] / (1 - beta ** state["curvature_steps"])
                g = p.grad.astype(np.float64)
                if mu:
                    state["exp_avg"] *= mu
                    state["exp_avg"] += (1 - mu) * g
                    g = state["exp_avg"] / (1 - mu ** state["step"])
                directions[p] = g / (h_hat + group["damping"])
        self._apply_directions(directions, closure, self.hutchinson_eps)
        return loss
