"""Loading pretrained weights into a zoo model by Hugging Face names, with one clear error."""
import numpy as np

__all__ = ["WeightMappingError", "load_named_weights"]


class WeightMappingError(ValueError):
    """Weights that do not fit the model: lists every missing, unexpected and mis-shaped tensor."""


def load_named_weights(model, state, source="weights", tied=None, contiguous=False):
    """Copy a {name: array} dict into `model`'s parameters after checking that it names exactly the
    model's tensors with the right shapes (every problem listed in one `WeightMappingError`).

    `tied=(name, embedding)`: the model ties `name` to `embedding`, so `name` may be given but then
    must equal it. Arrays are copied in the parameter's dtype (C-contiguous with `contiguous=True`)."""
    state = dict(state)
    own = dict(model.named_parameters())
    tied_value = state.pop(tied[0], None) if tied else None
    problems = [f"missing {k} {tuple(p.shape)}" for k, p in own.items() if k not in state]
    problems += [f"unexpected {k} {tuple(np.shape(v))}" for k, v in state.items() if k not in own]
    problems += [f"mis-shaped {k}: got {tuple(np.shape(v))}, model has {tuple(own[k].shape)}"
                 for k, v in state.items() if k in own and tuple(np.shape(v)) != tuple(own[k].shape)]
    embed = state.get(tied[1]) if tied else None
    if tied_value is not None and embed is not None and (
            np.shape(tied_value) != np.shape(embed) or not np.array_equal(tied_value, embed)):
        problems.append(f"{tied[0]} differs from {tied[1]} (the model ties them)")
    if problems:
        raise WeightMappingError(f"{source} do not fit {type(model).__name__} ({len(problems)} problems):\n  "
                                 + "\n  ".join(problems))
    for name, parameter in own.items():
        parameter.data = (np.ascontiguousarray if contiguous else np.array)(state[name], dtype=parameter.dtype)
