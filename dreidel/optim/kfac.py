"""K-FAC (Martens & Grosse, 2015): Kronecker-factored natural-gradient / Gauss–Newton steps for Linear layers."""
import numpy as np

from dreidel.nn.layers import Linear
from dreidel.optim.optimizer import Optimizer, check_number
from dreidel.random import generator
from dreidel.tensor import is_grad_enabled


class KFAC(Optimizer):
    """K-FAC for every `dreidel.nn.Linear` in `model` (other parameters get plain SGD with momentum).

    For a Linear layer y = W a + b seen on N rows (batch × positions) of a loss L, with
    ā = [a, 1] (the 1 only with a bias) and g = ∂L/∂y captured by hooks:

        A = (1/N)·Σₙ āₙ āₙᵀ,      G = Σₙ gₙ gₙᵀ  (from a curvature backward, see below)
        curvature of L in vec([W b]) ≈ A ⊗ G
        A, G ← EMAs with decay `factor_decay` (the first sample is taken as is)
        every `update_freq` steps: π = √((tr A / dim A) / (tr G / dim G)),
            A⁻¹ ← (A + π√λ·I)⁻¹,  G⁻¹ ← (G + √λ/π·I)⁻¹      (λ = damping; Tikhonov split by π)
        Δ = G⁻¹ ∇[W b] A⁻¹,       [W b] ← [W b] − lr·Δ

    G's sample, each step, is one of:
    - the exact or sampled Gauss–Newton factor, when `curvature_backward(output, loss)` was called
      on the model's output before `loss.backward()`: it backpropagates vectors ε with
      E[εₙεₙᵀ] = ∂²L/∂yₙ² (the loss's Hessian in the outputs), with retain_graph, so the hooks see
      gₙ = Jₙᵀεₙ and Σ gₙgₙᵀ estimates Σ Jₙᵀ Λₙ Jₙ. For loss="mse" with exact=True the m columns of
      Λ^{1/2} are backpropagated one by one (exact GN; m extra backward passes); otherwise one
      Rademacher (mse) or one sampled-label (cross_entropy, Fisher = GN there) pass. Gradients are
      left untouched. With exact GN, lr = 1 and damping = 0, one step solves linear least squares.
    - otherwise the empirical Fisher from the ordinary backward: G = N·Σₙ gₙ gₙᵀ (this assumes L is
      a mean over the N rows; cheap, but biased, and not a Newton step).

    Limits: each Linear must be called once per forward (a layer reused in one forward keeps only its
    last call's input); convolution layers are not preconditioned yet (plain SGD).
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
        self.layers = [m for m in model.modules() if isinstance(m, Linear)]
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

    def remove_hooks(self):
        for handle in self._handles:
            handle.remove()

    # -- statistics captured by hooks --------------------------------------------------------
    def _forward_hook(self, layer, inputs, output):
        if not is_grad_enabled() or not output.requires_grad:
            return
        self._inputs[layer] = inputs[0].data.reshape(-1, layer.in_features)
        self._curvature.pop(layer, None)

        def grad_hook(grad):
            rows = grad.reshape(-1, layer.out_features).astype(np.float64)
            if self._collecting:
                previous = self._curvature.get(layer, 0)
                self._curvature[layer] = previous + rows.T @ rows
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
        """Vectors ε (shaped like the output) with Σ over them of ε εᵀ (per row) = the loss Hessian
        in that row's outputs (exactly, or in expectation)."""
        if loss == "mse":
            scale = np.sqrt(2.0 / (y.size if reduction == "mean" else 1))    # Λ = 2/(N·m)·I per row
            if exact:
                for k in range(y.shape[-1]):
                    epsilon = np.zeros(y.shape)
                    epsilon[..., k] = scale
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
        epsilon /= np.sqrt(rows if reduction == "mean" else 1)
        yield np.moveaxis(epsilon.reshape(p.shape), -1, 1)

    # -- the step ----------------------------------------------------------------------------
    def _update_factors(self, layer):
        a = self._inputs[layer].astype(np.float64)
        if layer.bias is not None:
            a = np.concatenate([a, np.ones((a.shape[0], 1))], axis=1)
        A = a.T @ a / a.shape[0]
        if layer in self._curvature:
            G = self._curvature.pop(layer)
        else:
            g = self._output_grads[layer]
            if g.shape[0] != a.shape[0]:
                raise RuntimeError(f"KFAC: captured {a.shape[0]} input rows but {g.shape[0]} gradient rows")
            G = g.shape[0] * (g.T @ g)
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
        root = np.sqrt(damping)
        trace_a, trace_g = np.trace(A) / len(A), np.trace(G) / len(G)
        pi = np.sqrt(trace_a / trace_g) if trace_a > 0 and trace_g > 0 else 1.0
        state["A_inv"] = self._inverse(A, pi * root)
        state["G_inv"] = self._inverse(G, root / pi)

    def step(self, closure=None):
        loss = self._evaluate(closure)
        self.steps += 1
        refresh = (self.steps - 1) % self.update_freq == 0
        preconditioned = {}
        group = self.param_groups[0]
        for layer in self.layers:
            W, b = layer.weight, layer.bias
            if W.grad is None or layer not in self._inputs:
                continue
            if layer not in self._curvature and layer not in self._output_grads:
                continue
            state = self._update_factors(layer)
            if refresh or "A_inv" not in state:
                self._invert(state, group["damping"])
            gradient = W.grad.astype(np.float64)
            if group["weight_decay"]:
                gradient = gradient + group["weight_decay"] * W.data
            if b is not None:
                gb = np.zeros(b.shape) if b.grad is None else b.grad.astype(np.float64)
                if group["weight_decay"]:
                    gb = gb + group["weight_decay"] * b.data
                gradient = np.concatenate([gradient, gb[:, None]], axis=1)
            delta = state["G_inv"] @ gradient @ state["A_inv"]
            preconditioned[W] = delta[:, :layer.in_features]
            if b is not None:
                preconditioned[b] = delta[:, -1]
        self._forget_captures()
        directions = {}
        for group in self.param_groups:
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
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p not in directions:
                    continue
                delta = scale * directions[p]
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
