"""Shape ops: reshape, transpose, expand, squeeze, concat, stack, split, pad."""
import builtins

import numpy as np

from dreidel.ops.index import getitem
from dreidel.tensor import as_tensor, record


# -- shape and indexing ----------------------------------------------------------------------------
def reshape(x, *shape):
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return record(x.data.reshape(shape), (x,), lambda g: (g.reshape(x.shape),))


def transpose(x, *axes):
    """Permute axes (no arguments: reverse them, like numpy)."""
    axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
    axes = tuple(a % x.ndim for a in axes) if axes else tuple(reversed(range(x.ndim)))
    if sorted(axes) != list(range(x.ndim)):
        raise ValueError(f"transpose axes {axes} are not a permutation of the {x.ndim} axes of {x.shape}")
    inverse = tuple(np.argsort(axes))  # needs non-negative axes: -1 would sort first
    return record(np.transpose(x.data, axes), (x,), lambda g: (np.transpose(g, inverse),))


def swapaxes(x, axis1, axis2):
    axes = list(range(x.ndim))
    axes[axis1], axes[axis2] = axes[axis2], axes[axis1]
    return transpose(x, axes)


def expand(x, *shape):
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    new = len(shape) - x.ndim
    if new < 0 or any(n == -1 for n in shape[:new]):
        raise ValueError(f"cannot expand shape {x.shape} to {tuple(shape)} (-1 only keeps an existing axis)")
    shape = tuple(x.shape[i - new] if n == -1 else n for i, n in enumerate(shape))
    return record(np.broadcast_to(x.data, shape), (x,), lambda g: (g,))


def squeeze(x, axis=None):
    return reshape(x, np.squeeze(x.data, axis=axis).shape)


def unsqueeze(x, axis):
    return reshape(x, np.expand_dims(x.data, axis).shape)


def flatten(x, start_axis=0, end_axis=-1):
    start, end = start_axis % builtins.max(x.ndim, 1), end_axis % builtins.max(x.ndim, 1)
    shape = x.shape[:start] + (-1,) + x.shape[end + 1:]
    return reshape(x, shape)


def concat(tensors, axis=0):
    tensors = [as_tensor(t) for t in tensors]
    sizes = np.cumsum([t.shape[axis] for t in tensors])[:-1]
    return record(np.concatenate([t.data for t in tensors], axis=axis), tensors,
                   lambda g: tuple(np.split(g, sizes, axis=axis)))


def stack(tensors, axis=0):
    tensors = [as_tensor(t) for t in tensors]
    out = np.stack([t.data for t in tensors], axis=axis)
    return record(out, tensors,
                   lambda g: tuple(np.take(g, i, axis=axis) for i in range(len(tensors))))


def split(x, split_size_or_sections, axis=0):
    """Split into pieces of a given size (int) or of the listed sizes, like torch.split."""
    length = x.shape[axis]
    if isinstance(split_size_or_sections, (int, np.integer)):
        sizes = [split_size_or_sections] * (length // split_size_or_sections)
        if length % split_size_or_sections:
            sizes.append(length % split_size_or_sections)
    else:
        sizes = list(split_size_or_sections)
    if np.sum(sizes) != length:
        raise ValueError(f"split sizes {sizes} do not add up to axis length {length}")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    return tuple(getitem(x, (slice(None),) * (axis % x.ndim) + (slice(int(s), int(e)),))
                 for s, e in zip(starts[:-1], starts[1:]))


def pad(x, pad_width, value=0.0):
    """Constant padding; `pad_width` as numpy's ((before, after), ...) per axis."""
    pad_width = [tuple(p) for p in pad_width]
    inner = tuple(slice(b, b + n) for (b, _), n in zip(pad_width, x.shape))
    return record(np.pad(x.data, pad_width, constant_values=value), (x,), lambda g: (g[inner],))
