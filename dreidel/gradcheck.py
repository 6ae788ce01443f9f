"""Check analytic gradients against float64 central differences."""
import numpy as np

from dreidel.tensor import Tensor


class GradcheckError(AssertionError):
    pass


def _outputs(fn, inputs):
    out = fn(*inputs)
    return out if isinstance(out, (tuple, list)) else (out,)


def gradcheck(fn, *inputs, eps=1e-6, atol=1e-5, rtol=1e-3, projections=2, seed=0, raise_exception=True):
    """Compare the gradients autograd gives with central differences (PyTorch's tolerances).

    Every floating Tensor input with `requires_grad` must be float64. The outputs are projected onto
    `projections` random directions r: the analytic gradient of Σ r·f is checked coordinate by
    coordinate against (Σ r·f(x + eps·e_i) − Σ r·f(x − eps·e_i)) / 2eps. Returns True, or raises
    `GradcheckError` naming the input, the coordinate and both values.
    """
    checked = [t for t in inputs if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck needs at least one input with requires_grad=True")
    for t in checked:
        if t.dtype != np.float64:
            raise TypeError(f"gradcheck inputs must be float64 (got {t.dtype}): float32 differences are noise")
    for t in checked:
        if not (t.data.flags.c_contiguous and t.data.flags.writeable):
            t.data = np.array(t.data, order="C")  # the checks perturb a flat view in place: it must be one
    rng = np.random.default_rng(seed)
    outputs = _outputs(fn, inputs)
    weights_per_projection = [[rng.standard_normal(o.shape) for o in outputs] for _ in range(projections)]

    def projected(ws):
        return sum(float(np.sum(w * o.data)) for w, o in zip(ws, _outputs(fn, inputs)) if o.dtype.kind == "f")

    for ws in weights_per_projection:
        for t in checked:
            t.grad = None
        outs = _outputs(fn, inputs)
        total = None
        for w, o in zip(ws, outs):
            if o.requires_grad:
                term = (o * Tensor(w)).sum()
                total = term if total is None else total + term
        analytic = []
        if total is not None:
            total.backward()
        for t in checked:
            analytic.append(np.zeros(t.shape) if t.grad is None else t.grad.copy())
        for k, (t, a) in enumerate(zip(checked, analytic)):
            flat = t.data.reshape(-1)  # a view: perturbs the input in place
            numeric = np.zeros(flat.size)
            for i in range(flat.size):
                original = flat[i]
                flat[i] = original + eps
                plus = projected(ws)
                flat[i] = original - eps
                minus = projected(ws)
                flat[i] = original
                numeric[i] = (plus - minus) / (2 * eps)
            a = a.reshape(-1)
            bad = np.abs(a - numeric) > atol + rtol * np.abs(numeric)
            if bad.any():
                i = int(np.argmax(bad))
                message = (f"gradient of input {k} (shape {t.shape}) is wrong at flat index {i}: "
                           f"analytic {a[i]:.8g}, numerical {numeric[i]:.8g} "
                           f"({int(bad.sum())} of {bad.size} entries off)")
                if raise_exception:
                    raise GradcheckError(message)
                return False
    for t in checked:
        t.grad = None
    return True
