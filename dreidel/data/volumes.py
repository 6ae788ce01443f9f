"""A synthetic volumetric segmentation set, generated in the repo (no downloads), seeded.

Each volume (1, S, S, S) holds 2–5 objects of three kinds on a background, labelled per voxel:

    0 background, 1 sphere, 2 cube (randomly rotated), 3 ellipsoid (randomly rotated, elongated)

with radii 0.12–0.22·S (cubes of half-side 0.8·radius, ellipsoids of semi-axes 1.6, 0.6–0.8, 0.5–0.7 ·radius).

Later objects overwrite earlier ones where they overlap. The intensity does not give the kind away:
every object gets its own random contrast above a random background level, and the image is
multiplied by a smooth bias field exp(Σ a_ij x_i x_j + Σ b_i x_i) (as MRI inhomogeneity) before
Gaussian noise of a random level is added; each volume is then standardised (zero mean, unit
variance). Telling the kinds apart needs the objects' shape, i.e. spatial context.

Determinism: volume i of a stream depends only on (seed, stream, i) through numpy's SeedSequence,
so a longer set starts with the shorter one, and the train and held-out streams never share a volume
seed. `load_volumes` returns the train/held-out split.
"""
import numpy as np

KINDS = ("background", "sphere", "cube", "ellipsoid")
_TRAIN, _HELD_OUT = 0, 1


def _check_positive_int(value, name, minimum=1):
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _rotation(rng):
    """A uniformly random 3-D rotation (QR of a Gaussian matrix, signs fixed so det = +1)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def object_mask(kind, grid, centre, radius, rotation, axes=None):
    """Voxels (grid (..., 3) of coordinates) inside one object: kind 1 a ball of `radius`, 2 a cube of
    half-side 0.8·radius, 3 an ellipsoid of semi-axes radius·`axes`, rotated by `rotation` (3 × 3)."""
    local = (grid - centre) @ rotation  # coordinates in the object's frame
    if kind == 1:
        return np.sum(local ** 2, axis=-1) <= radius ** 2
    if kind == 2:
        return np.max(np.abs(local), axis=-1) <= radius * 0.8  # about the sphere's volume scale
    if kind == 3:
        return np.sum((local / (radius * np.asarray(axes))) ** 2, axis=-1) <= 1
    raise ValueError(f"object kind must be 1 (sphere), 2 (cube) or 3 (ellipsoid), got {kind!r}")


def make_volume(rng, size=32, max_objects=5, dtype=np.float32):
    """One volume from generator `rng`: (image (1, S, S, S) standardised, labels (S, S, S) int64)."""
    size = _check_positive_int(size, "size", 8)
    grid = np.stack(np.meshgrid(*(np.arange(size, dtype=np.float64),) * 3, indexing="ij"), axis=-1)  # (S,S,S,3)
    labels = np.zeros((size,) * 3, dtype=np.int64)
    background = rng.uniform(0.0, 0.3)
    image = np.full((size,) * 3, background)
    for _ in range(int(rng.integers(2, max_objects + 1))):
        kind = int(rng.integers(1, 4))
        radius = rng.uniform(0.12, 0.22) * size
        centre = rng.uniform(radius, size - radius, size=3)
        axes = np.array([1.6, rng.uniform(0.6, 0.8), rng.uniform(0.5, 0.7)]) if kind == 3 else None
        inside = object_mask(kind, grid, centre, radius, _rotation(rng), axes)
        labels[inside] = kind
        image[inside] = background + rng.uniform(0.4, 1.0)
    x = grid / (size - 1) * 2 - 1  # in [-1, 1]
    quadratic = rng.normal(0, 0.15, size=(3, 3))
    field = np.exp(np.einsum("...i,ij,...j->...", x, quadratic, x) + x @ rng.normal(0, 0.2, size=3))
    image = image * field + rng.normal(0, rng.uniform(0.05, 0.2), size=image.shape)
    image = (image - image.mean()) / max(image.std(), 1e-12)
    return image[None].astype(dtype), labels


def synthetic_volumes(count, size=32, seed=0, stream=_TRAIN, max_objects=5, labels="kind", dtype=np.float32):
    """`count` volumes of stream `stream` (0 train, 1 held-out): (images (n, 1, S, S, S), labels (n, S, S, S)),
    labels per `KINDS` (`labels="kind"`) or 0/1 background/object (`labels="binary"`)."""
    if labels not in ("kind", "binary"):
        raise ValueError(f"labels must be 'kind' or 'binary', got {labels!r}")
    count = _check_positive_int(count, "count", 0)
    size = _check_positive_int(size, "size", 8)
    max_objects = _check_positive_int(max_objects, "max_objects", 2)
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    images = np.empty((count, 1) + (size,) * 3, dtype=dtype)
    maps = np.empty((count,) + (size,) * 3, dtype=np.int64)
    for i in range(count):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(stream), i]))
        images[i], maps[i] = make_volume(rng, size, max_objects, dtype)
    return images, (maps > 0).astype(np.int64) if labels == "binary" else maps


def load_volumes(n_train=48, n_test=16, size=32, seed=0, max_objects=5, labels="kind", dtype=np.float32):
    """(x_train, y_train, x_test, y_test): images (n, 1, S, S, S) and voxel labels (n, S, S, S) in 0..3
    (see `KINDS`; 0/1 with `labels="binary"`), the held-out volumes drawn from their own seed stream."""
    x_train, y_train = synthetic_volumes(n_train, size, seed, _TRAIN, max_objects, labels, dtype)
    x_test, y_test = synthetic_volumes(n_test, size, seed, _HELD_OUT, max_objects, labels, dtype)
    return x_train, y_train, x_test, y_test


__all__ = ["KINDS", "object_mask", "make_volume", "synthetic_volumes", "load_volumes"]
