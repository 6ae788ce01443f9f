"""K-FAC (Martens & Grosse, 2015; KFC for convolutions, Grosse & Martens, 2016): Kronecker-factored
Gauss–Newton / natural-gradient steps for Linear and Conv layers."""
import math

import numpy as np

from dreidel.ops import convolution
from dreidel.nn.conv import Conv1d, Conv2d, Conv3d
from dreidel.nn.layers import Linear
from dreidel.optim.optimizer import Optimizer, check_number
from dreidel.random import generator
from dreidel.tensor import is_grad_enabled


def _is_supported(module):
    if isinstance(module, Linear):
        return True
    return isinstance(module, (Conv1d, Conv2d, Conv3d)) and module.groups == 1


def _input_rows(layer, x):
    """The layer's input as rows a (R, fan_in) with y_r = W a_r + b: the rows themselves for Linear,
    the im2col patches (one row per sample and output position) for a convolution."""
    if isinstance(layer, Linear):
        return x.reshape(-1, layer.in_features)
    return convolution.patch_rows(x, layer.kernel_size, layer.stride, layer.padding, layer.dilation)


def _output_rows(layer, grad):
    """Output gradients as rows (R, out) matching `_input_rows`."""
    if isinstance(layer, Linear):
        return grad.reshape(-1, layer.out_features)
    return convolution.output_rows(grad)


class KFAC(Optimizer):
    """K-FAC for every `dreidel.nn.Linear` and `Conv1d/2d/3d` (groups = 1) in `model`; any other
    parameter (norms, embeddings, transposed or grouped convolutions, spectral layers) gets a plain
    gradient step with the same lr, momentum and weight decay.

    A layer is y_r = W a_r + b over R rows: the rows of a Linear's input, or for a convolution the
    im2col patches (R = batch × output positions; W reshaped to (out, in·kernel)). With ā = [a, 1]
    (the 1 only with a bias) and g_r = ∂L/∂y_r captured by forward/gradient hooks:

        A = (1/R)·Σ_r ā_r ā_rᵀ,      G = Σ_r g_r g_rᵀ  (from a curvature backward, see below)
        curvature of L in vec([W b]) ≈ A ⊗ G
        A, G ← EMAs with decay `factor_decay` (the first sample is taken as is)
        every `update_freq` steps: π = √((tr A / dim A) / (tr G / dim G)),
            A⁻¹ ← (A + π√λ·I)⁻¹,  G⁻¹ ← (G + √λ/π·I)⁻¹      (λ = damping; Tikhonov split by π)
        Δ = G⁻¹ ∇[W b] A⁻¹,       [W b] ← [W b] − lr·Δ

    G's sample, each step, is one of:
    - the exact or sampled Gauss–Newton factor, when `curvature_backward(output, loss)` was called
      on the model's output before `loss.backward()`: it backpropagates vectors ε with
      E[εₙεₙᵀ] = ∂²L/∂yₙ² (the loss's Hessian in the outputs), with retain_graph, so the hooks see
      g_r = J_rᵀε and Σ g_r g_rᵀ estimates Σ J_rᵀ Λ J_r. For loss="mse" with exact=True the columns of
      Λ^{1/2} are backpropagated one by one (exact GN; one extra backward pass per output entry of a
      sample, e.g. m for an (N, m) output); otherwise one
      Rademacher (mse) or one sampled-label (cross_entropy, where Fisher = GN) pass. Parameter
      gradients are left untouched. With exact GN, lr = 1 and damping = 0, one step solves linear
      least squares.
    - otherwise the empirical Fisher from the ordinary backward: G = S·Σ_r g_r g_rᵀ, S the number of
      terms the loss averages (rows of a Linear's input, the batch of a convolution's). Cheap, but
      biased, and not a Newton step.

    Step-length safeguard (`line_search=True`, when step() gets a closure): the step is scaled by
    α = min(1, gᵀΔ / ΔᵀHΔ) with ΔᵀHΔ from one extra gradient (finite difference along Δ), like the
    rescaling of Martens & Grosse §6.4 but with the true Hessian; `last_step_scale` holds α.

    Limits: a layer called more than once in one forward keeps only its last call's input.
    """

    def __init__(self, model, lr=1.0, damping=1e-3, update_freq=10, factor_decay=0.95, momentum=0.0,
                 weight_decay=0.0, line_search=True, rng=None):
        if int(update_freq) != update_freq or update_freq < 1:
            raise ValueError(f"update_freq must be a positive integer, got {update_freq}")
        check_number("factor_decay", factor_decay, low=0, high=1, high_open=True)
        if not hasattr(model, "modules"):
            raise TypeError(f"KFAC needs a dreidel.nn.Module (it hooks its Linear layers), got {type(model).__name__}")
        self.model, self.update_freq, self.factor_decay = model, int(update_freq), factor_decay
        self.rng = generator(rng)
        self.line_search, self.last_step_scale = bool(line_search), 1.0
        self.layers = [m for m in model.modules() if _is_supported(m)]
        self._inputs, self._output_grads, self._curvature = {}, {}, {}
        self._collecting = False
        self.steps = 0
        self._handles = [layer.register_forward_hook(self._forward_hook) for layer in self.layers]
        super().__init__(model.parameters(), dict(lr=lr, damping=damping, momentum=momentum,
                                                  weight_decay=weight_decay))

    def _check_group(self, group):
        check_number("lr", group["lr"], low=0)
        check_number("damping", group["damping"], low=0)
        check_number("momentum", group["momentum"], low=0)
        check_number("weight_decay", group["weight_decay"], low=0)

    def add_param_group(self, group):
        if self.param_groups:
            raise ValueError("KFAC keeps all of the model's parameters in one group; build it from the model")
        super().add_param_group(group)

    def remove_hooks(self):
        for handle in self._handles:
            handle.remove()

    # -- statistics captured by hooks --------------------------------------------------------
    def _forward_hook(self, layer, inputs, output):
        if not is_grad_enabled() or not output.requires_grad:
            return
        x = inputs[0].data
        self._inputs[layer] = (_input_rows(layer, x), x.shape[0] if not isinstance(layer, Linear) else None)
        self._curvature.pop(layer, None)

        def grad_hook(grad):
            rows = _output_rows(layer, grad).astype(np.float64)
            if self._collecting:
                self._curvature[layer] = self._curvature.get(layer, 0) + rows.T @ rows
            else:
                self._output_grads[layer] = rows
        output.register_hook(grad_hook)

    def curvature_backward(self, output, loss="mse", exact=False, reduction="mean"):
        """Backpropagate curvature vectors from the model's `output` so each layer's G is the
        Gauss–Newton factor of `loss` ("mse": mean or sum of squared errors over all elements;
        "cross_entropy": logits with the class axis 1, mean or sum over rows). Call it after the
        forward and before `loss.backward()`; parameter gradients are not changed."""
        if loss not in ("mse", "cross_entropy"):
            raise ValueError(f"loss must be 'mse' or 'cross_entropy', got {loss!r}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        if not output.requires_grad:
            raise RuntimeError("curvature_backward needs the model output with its graph (not under no_grad)")
        saved = [(p, p.grad) for group in self.param_groups for p in group["params"]]
        for layer in self.layers:
            self._curvature.pop(layer, None)
        self._collecting = True
        try:
            for epsilon in self._curvature_vectors(output.data, loss, exact, reduction):
                output.backward(epsilon.astype(output.dtype), retain_graph=True)
        finally:
            self._collecting = False
            for p, g in saved:
                p.grad = g

    def _curvature_vectors(self, y, loss, exact, reduction):
        """Vectors ε (shaped like the output) whose Σ ε εᵀ (per row) is the loss's Hessian in that
        row's outputs, exactly or in expectation."""
        if loss == "mse":
            scale = math.sqrt(2.0 / (y.size if reduction == "mean" else 1))    # Λ = 2/(N·m)·I per row
            if exact:  # every entry of a sample in turn (all samples at once: they are independent)
                for index in np.ndindex(*y.shape[1:]):
                    epsilon = np.zeros(y.shape)
                    epsilon[(slice(None),) + index] = scale
                    yield epsilon
            else:
                yield scale * (self.rng.integers(0, 2, size=y.shape) * 2.0 - 1)
            return
        if y.ndim < 2:
            raise ValueError(f"cross_entropy curvature needs logits with a class axis 1, got shape {y.shape}")
        logits = np.moveaxis(y.astype(np.float64), 1, -1)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        flat = p.reshape(-1, p.shape[-1])
        rows = flat.shape[0]
        # a label drawn from the model: E[(p − e_y)(p − e_y)ᵀ] = diag p − p pᵀ, the softmax CE Hessian
        sampled = (flat.cumsum(-1) < self.rng.random((rows, 1))).sum(-1).clip(0, flat.shape[1] - 1)
        epsilon = flat.copy()
        epsilon[np.arange(rows), sampled] -= 1
        epsilon /= math.sqrt(rows if reduction == "mean" else 1)
        yield np.moveaxis(epsilon.reshape(p.shape), -1, 1)

    # -- the step ----------------------------------------------------------------------------
    def _update_factors(self, layer):
        a, batch = self._inputs[layer]
        a = a.astype(np.float64)
        if layer.bias is not None:
            a = np.concatenate([a, np.ones((a.shape[0], 1))], axis=1)
        A = a.T @ a / a.shape[0]
        if layer in self._curvature:
            G = self._curvature.pop(layer)
        else:
            g = self._output_grads[layer]
            if g.shape[0] != a.shape[0]:
                raise RuntimeError(f"KFAC: captured {a.shape[0]} input rows but {g.shape[0]} gradient rows")
            G = (g.shape[0] if batch is None else batch) * (g.T @ g)
        state = self.state.setdefault(layer.weight, {})
        if "A" not in state:
            state["A"], state["G"] = A, G
        else:
            d = self.factor_decay
            state["A"] = d * state["A"] + (1 - d) * A
            state["G"] = d * state["G"] + (1 - d) * G
        return state

    @staticmethod
    def _inverse(matrix, shift):
        try:
            return np.linalg.inv(matrix + shift * np.eye(len(matrix)))
        except np.linalg.LinAlgError:
            raise ValueError("KFAC: a Kronecker factor is singular; use damping > 0") from None

    def _invert(self, state, damping):
        A, G = state["A"], state["G"]
        root = math.sqrt(damping)
        trace_a, trace_g = np.trace(A) / len(A), np.trace(G) / len(G)
        pi = math.sqrt(trace_a / trace_g) if trace_a > 0 and trace_g > 0 else 1.0
        state["A_inv"] = self._inverse(A, pi * root)
        state["G_inv"] = self._inverse(G, root / pi)

    def _preconditioned(self, group, refresh):
        """{parameter: Δ} for every hooked layer that has fresh statistics and a weight gradient."""
        result = {}
        decay = group["weight_decay"]
        for layer in self.layers:
            W, b = layer.weight, layer.bias
            if W.grad is None or layer not in self._inputs:
                continue
            if layer not in self._curvature and layer not in self._output_grads:
                continue
            state = self._update_factors(layer)
            if refresh or "A_inv" not in state:
                self._invert(state, group["damping"])
            gradient = W.grad.astype(np.float64).reshape(W.shape[0], -1) + decay * W.data.reshape(W.shape[0], -1)
            if b is not None:
                gb = (np.zeros(b.shape) if b.grad is None else b.grad.astype(np.float64)) + decay * b.data
                gradient = np.concatenate([gradient, gb[:, None]], axis=1)
            delta = state["G_inv"] @ gradient @ state["A_inv"]
            if b is not None:
                result[b] = delta[:, -1]
                delta = delta[:, :-1]
            result[W] = delta.reshape(W.shape)
        return result

    def step(self, closure=None):
        loss = self._evaluate(closure)
        self.steps += 1
        group = self.param_groups[0]
        preconditioned = self._preconditioned(group, refresh=(self.steps - 1) % self.update_freq == 0)
        self._forget_captures()
        directions = {}
        for p in group["params"]:
            if p in preconditioned:
                directions[p] = preconditioned[p]
            elif p.grad is not None:
                directions[p] = p.grad + group["weight_decay"] * p.data
        scale = 1.0
        if self.line_search and closure is not None:
            scale = self._step_scale(closure, directions)
            self._forget_captures()
        self.last_step_scale = scale
        lr, momentum = group["lr"], group["momentum"]
        for p, direction in directions.items():
            delta = scale * direction
            if momentum:
                buf = self.state.setdefault(p, {}).get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = np.array(delta, dtype=np.float64)
                else:
                    buf *= momentum
                    buf += delta
                delta = buf
            p.data -= (lr * delta).astype(p.dtype)
        return loss

    def _forget_captures(self):
        self._inputs.clear()
        self._output_grads.clear()
        self._curvature.clear()
