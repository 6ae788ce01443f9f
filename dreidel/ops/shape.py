"""Shape ops: reshape, transpose, expand, squeeze, concat, stack, split, pad, tile."""
import builtins

import numpy as np

from dreidel.ops.index import getitem
from dreidel.tensor import as_tensor, record


# -- shape ---------------------------------------------------------------------------------------------
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


_PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _pad_widths(pad_width, ndim):
    widths = [tuple(int(v) for v in p) for p in pad_width]
    if len(widths) == 1 and ndim > 1:  # numpy's shorthand: one (before, after) for every axis
        widths = widths * ndim
    if len(widths) != ndim or any(len(w) != 2 for w in widths):
        raise ValueError(f"pad needs one (before, after) pair per axis ({ndim}), got {pad_width}")
    return widths


def pad(x, pad_width, mode="constant", value=0.0):
    """Pad (or, with negative widths, crop) each axis; `pad_width` as numpy's ((before, after), ...)
    per axis. Modes as ONNX Pad / numpy: "constant" (fill `value`), "reflect" (mirror without the
    edge), "edge" (repeat the edge) and "wrap" (periodic). The gradient of a padded position goes to
    the element it copies (none for constant fill); cropped elements get none."""
    if mode not in _PAD_MODES:
        raise ValueError(f"pad mode must be one of {_PAD_MODES}, got {mode!r}")
    widths = _pad_widths(pad_width, x.ndim)
    crop = tuple(slice(builtins.max(-b, 0), n - builtins.max(-e, 0)) for (b, e), n in zip(widths, x.shape))
    kept = [n - builtins.max(-b, 0) - builtins.max(-e, 0) for (b, e), n in zip(widths, x.shape)]
    if any(k < 0 for k in kept):
        raise ValueError(f"pad: negative widths {widths} crop more than the input shape {x.shape}")
    grow = [(builtins.max(b, 0), builtins.max(e, 0)) for b, e in widths]
    if mode != "constant" and any(k == 0 and (b or e) for k, (b, e) in zip(kept, grow)):
        raise ValueError(f"pad mode {mode!r} cannot pad an empty axis (shape {x.shape}, widths {widths})")
    core = x.data[crop]
    if mode == "constant":
        out = np.pad(core, grow, mode="constant", constant_values=value)
    else:
        out = np.pad(core, grow, mode=mode)

    def backward(g):
        for axis, ((b, e), n) in enumerate(zip(grow, kept)):
            if not (b or e):
                continue
            moved = np.moveaxis(g, axis, 0)
            inner = moved[b:b + n].copy()
            if mode != "constant":  # each padded slab adds to the slab it copies
                source = np.pad(np.arange(n), (b, e), mode=mode)
                for j in (*range(b), *range(b + n, len(source))):
                    inner[source[j]] += moved[j]
            g = np.moveaxis(inner, 0, axis)
        if all(c == slice(0, n) for c, n in zip(crop, x.shape)):
            return g,
        full = np.zeros(x.shape, dtype=g.dtype)
        full[crop] = g
        return full,
    return record(out, (x,), backward)


def tile(x, repeats):
    """Repeat the whole tensor `repeats[i]` times along axis i, as `numpy.tile`/ONNX Tile (fewer
    repeats than axes repeat the trailing axes; more add leading axes). The gradient sums the copies."""
    repeats = tuple(int(r) for r in (repeats if isinstance(repeats, (tuple, list, np.ndarray)) else (repeats,)))
    if any(r < 0 for r in repeats):
        raise ValueError(f"tile repeats must be non-negative, got {repeats}")
    ndim = builtins.max(x.ndim, len(repeats))
    shape = (1,) * (ndim - x.ndim) + x.shape
    repeats = (1,) * (ndim - len(repeats)) + repeats

    def backward(g):
        split = []
        for r, n in zip(repeats, shape):
            split += [r, n]
        return g.reshape(split).sum(axis=tuple(range(0, 2 * ndim, 2))).reshape(x.shape),
    return record(np.tile(x.data.reshape(shape), repeats), (x,), backward)


def clone(x):
    """A copy with its own memory; differentiable (the gradient passes through)."""
    return record(x.data.copy(), (x,), lambda g: (g,))
