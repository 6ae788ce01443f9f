"""Student families: how to replace one dense `nn.Linear` (y = W x + b) by a cheaper layer.

A family is one class registered with `@register_student(name)`:
- `fit(weight, bias, stats, **options) -> nn.Module`: the closed-form / ALS fit to y = W x + b on
  inputs with statistics `stats` (`InputStatistics`, or None for the weight-only fit);
  `from_dense(linear, stats, **options)` is the same for an `nn.Linear`;
- `candidates(in_features, out_features) -> list[dict]`: the option sets the planner tries;
- `operator(module) -> (W_hat, b_hat)`: the affine map the student applies (every family here is
  affine, so held-out errors follow exactly from held-out input moments, see `heldout_error`);
- `multiply_adds(module)`, `parameter_count(module)`.
"""
import numpy as np

from dreidel import nn
from dreidel.nn.spectral import DeepSpectralLinear, LinearWHT
from dreidel.nn.lowrank import LowRankLinear, SpectralLowRankLinear
from dreidel.recast.structure import as_array

STUDENTS = {}


def register_student(name):
    """Class decorator: register a student family under `name` in `STUDENTS`."""
    def decorate(cls):
        cls.name = name
        STUDENTS[name] = cls
        return cls
    return decorate


def family(name):
    if name not in STUDENTS:
        raise ValueError(f"unknown student family {name!r}; known: {sorted(STUDENTS)}")
    return STUDENTS[name]


class Family:
    """Shared defaults: the module's own multiply_adds(), its parameter count."""

    options = {}  # option name -> type, for plan validation

    @classmethod
    def from_dense(cls, linear, stats=None, **options):
        bias = None if linear.bias is None else as_array(linear.bias)
        return cls.fit(as_array(linear.weight), bias, stats, **options)

    @classmethod
    def empty(cls, n_in, n_out, bias=True, **options):
        """An unfitted module of this family's structure (to load a saved student's state into)."""
        return cls.fit(np.zeros((n_out, n_in)), np.zeros(n_out) if bias else None, None, **options)

    @staticmethod
    def multiply_adds(module):
        if isinstance(module, nn.Linear):
            return module.in_features * module.out_features + (module.out_features if module.bias is not None else 0)
        return int(module.multiply_adds())

    @staticmethod
    def parameter_count(module):
        return int(module.parameter_count())

    @classmethod
    def check_options(cls, options, where):
        for key, value in options.items():
            if key not in cls.options:
                raise ValueError(f"{where}: family {cls.name!r} has no option {key!r} (options: {sorted(cls.options)})")
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{where}: option {key}={value!r} of family {cls.name!r} must be a positive integer")


def _bias_of(module):
    return np.zeros(module.out_features) if module.bias is None else as_array(module.bias).astype(np.float64)


@register_student("dense")
class Dense(Family):
    """Keep the teacher's layer (a copy)."""

    @classmethod
    def fit(cls, weight, bias, stats, **options):
        return nn.Linear.from_weights(np.asarray(weight, dtype=np.float32),
                                      None if bias is None else np.asarray(bias, dtype=np.float32))

    @staticmethod
    def candidates(n_in, n_out):
        return [{}]

    @staticmethod
    def operator(module):
        return as_array(module.weight).astype(np.float64), _bias_of(module)


def _rank_for(fraction, n_in, n_out):
    return int(np.clip(round(fraction * n_in * n_out / (n_in + n_out)), 1, min(n_in, n_out)))


@register_student("lowrank")
class LowRank(Family):
    """`LowRankLinear`, activation-aware (SVD of W C^{1/2}); option `rank`."""

    options = {"rank": int}
    fractions = (0.125, 0.25, 0.375, 0.5, 0.75)

    @classmethod
    def fit(cls, weight, bias, stats, rank):
        return LowRankLinear.from_dense(weight, bias, inputs=stats, rank=rank, dtype=np.float32)

    @classmethod
    def candidates(cls, n_in, n_out):
        ranks = sorted({_rank_for(f, n_in, n_out) for f in cls.fractions})
        return [{"rank": r} for r in ranks]

    @staticmethod
    def operator(module):
        return module.weight(), _bias_of(module)


@register_student("spectral")
class Spectral(Family):
    """`DeepSpectralLinear` with K = `depth` blocks, fitted by ALS on the activations."""

    options = {"depth": int, "sweeps": int}
    depths = (1, 2, 4, 8)

    @classmethod
    def fit(cls, weight, bias, stats, depth=4, sweeps=2):
        return DeepSpectralLinear.from_dense(weight, bias, inputs=stats, depth=depth, sweeps=sweeps,
                                             dtype=np.float32)

    @classmethod
    def candidates(cls, n_in, n_out):
        return [{"depth": k} for k in cls.depths]

    @classmethod
    def empty(cls, n_in, n_out, bias=True, depth=4, sweeps=None):
        return DeepSpectralLinear(n_in, n_out, depth=depth, bias=bias)

    @staticmethod
    def operator(module):
        return module.dense_weight(), _bias_of(module)


@register_student("wht")
class WHT(Family):
    """`LinearWHT`: one Walsh–Hadamard block (closed form)."""

    @classmethod
    def fit(cls, weight, bias, stats):
        return LinearWHT.from_dense(weight, bias, inputs=stats, dtype=np.float32)

    @staticmethod
    def candidates(n_in, n_out):
        return [{}]

    @staticmethod
    def operator(module):
        return module.dense_weight(), _bias_of(module)


@register_student("hybrid")
class Hybrid(Family):
    """`SpectralLowRankLinear`: `depth` spectral blocks plus a rank-`rank` correction, fitted jointly."""

    options = {"rank": int, "depth": int}
    fractions = (0.125, 0.25, 0.5)

    @classmethod
    def fit(cls, weight, bias, stats, rank, depth=1):
        return SpectralLowRankLinear.from_dense(weight, bias, inputs=stats, rank=rank, depth=depth, rounds=2,
                                                sweeps=1, dtype=np.float32)

    @classmethod
    def candidates(cls, n_in, n_out):
        ranks = sorted({_rank_for(f, n_in, n_out) for f in cls.fractions})
        return [{"rank": r, "depth": 1} for r in ranks]

    @classmethod
    def empty(cls, n_in, n_out, bias=True, rank=1, depth=1):
        return SpectralLowRankLinear(n_in, n_out, rank, depth=depth, bias=bias)

    @staticmethod
    def operator(module):
        return module.dense_weight(), _bias_of(module)


def heldout_error(weight, bias, W_hat, b_hat, stats):
    """Relative output error ‖Y − Ŷ‖/‖Y‖ of the affine student (Ŵ, b̂) against y = W x + b on the data
    summarised by `stats`: Σ‖E x + δ‖² = tr(E C Eᵀ) + n‖E μ + δ‖² (E = W − Ŵ, δ = b − b̂, C the centred
    scatter, μ the mean), so no sample needs to be kept."""
    W = np.asarray(weight, dtype=np.float64)
    b = np.zeros(W.shape[0]) if bias is None else np.asarray(bias, dtype=np.float64)
    C, mu, n = stats.covariance, stats.mean, stats.count

    def energy(A, c):
        return float(np.sum((A @ C) * A)) + n * float(np.sum((A @ mu + c) ** 2))

    E = W - W_hat
    return float(np.sqrt(max(energy(E, b - b_hat), 0.0) / max(energy(W, b), 1e-300)))


def describe(module):
    """(family name, options) of a student module, or None when no family makes this kind of module."""
    if isinstance(module, SpectralLowRankLinear):
        return "hybrid", {"rank": module.low_rank.rank, "depth": module.spectral.depth}
    if isinstance(module, LowRankLinear):
        return "lowrank", {"rank": module.rank}
    if isinstance(module, DeepSpectralLinear):
        return "spectral", {"depth": module.depth}
    if isinstance(module, LinearWHT):
        return "wht", {}
    if isinstance(module, nn.Linear):
        return "dense", {}
    return None
