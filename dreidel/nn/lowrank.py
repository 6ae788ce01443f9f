"""Low-rank replacement of a dense layer (`LowRankLinear`), the baseline every spectral student is
measured against, and the hybrid `SpectralLowRankLinear` (spectral blocks + a low-rank correction).
"""
import numpy as np

from dreidel import functional as F
from dreidel.nn.layers import squared_column_sums
from dreidel.nn.module import Module, Parameter, check_dtype
from dreidel.progress import progress
from dreidel.nn.fitting import finish_fit, output_subspace, spectral_als_sweep, start_fit
from dreidel.nn.spectral import DeepSpectralLinear
from dreidel.random import generator


class LowRankLinear(Module):
    """y = (x U) V + b with U (in, rank), V (rank, out): rank·(in + out) multiply-adds per sample.

    Initialisation: U ~ U(±1/√in), V ~ U(±√(3/rank)), so x U V has the output variance of a
    PyTorch-initialised dense Linear (Var(x)/3 per coordinate). The bias starts at zero.
    """

    _input_kind = "float"  # input policy: see dreidel.nn.module

    def __init__(self, in_features, out_features, rank, bias=True, rng=None, dtype=np.float32):
        dtype = check_dtype(dtype, type(self).__name__)
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"LowRankLinear needs positive sizes, got {in_features} → {out_features}")
        if not 1 <= int(rank) <= min(in_features, out_features):
            raise ValueError(f"LowRankLinear rank must be in 1..{min(in_features, out_features)} "
                             f"for {in_features} → {out_features}, got {rank}")
        self.in_features, self.out_features, self.rank = int(in_features), int(out_features), int(rank)
        rng = generator(rng)
        U = rng.uniform(-1, 1, (self.in_features, self.rank)) / np.sqrt(self.in_features)
        V = rng.uniform(-1, 1, (self.rank, self.out_features)) * np.sqrt(3 / self.rank)
        self.U, self.V = Parameter(U.astype(dtype)), Parameter(V.astype(dtype))
        self.bias = Parameter(np.zeros(self.out_features, dtype=dtype)) if bias else None
        self.capture_curvature = False
        self._curvature = None

    def multiply_adds(self):
        return self.rank * (self.in_features + self.out_features) + (self.out_features if self.bias is not None else 0)

    def forward(self, x):
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"LowRankLinear expected input of shape (..., {self.in_features}), got {tuple(x.shape)}")
        z = F.matmul(x, self.U)
        if self.capture_curvature:
            (sum_x2, batch), (sum_z2, _) = squared_column_sums(x), squared_column_sums(z)
            self._curvature = (sum_x2, sum_z2, batch)
        y = F.matmul(z, self.V)
        return y + self.bias if self.bias is not None else y

    def gauss_newton_diagonal(self):
        """Diagonal of JᵀJ for the last forward batch (needs `capture_curvature = True`), as the
        spectral layers give it: ∂y_j/∂U_ik = x_i V_kj and ∂y_j/∂V_kj = z_k (z = x U), so
        GN(U_ik) = Σ_s x_si² ‖V_k:‖², GN(V_kj) = Σ_s z_sk², GN(b_j) = batch size."""
        if self._curvature is None:
            raise RuntimeError("no curvature captured: set layer.capture_curvature = True and run a forward pass")
        sum_x2, sum_z2, batch = self._curvature
        v2 = np.sum(self.V.data.astype(np.float64) ** 2, axis=1)
        result = {self.U: np.outer(sum_x2, v2),
                  self.V: np.repeat(sum_z2[:, None], self.out_features, axis=1)}
        if self.bias is not None:
            result[self.bias] = np.full(self.out_features, float(batch))
        return result

    def weight(self):
        """The dense (out, in) matrix this layer applies: (U V)ᵀ."""
        return (self.U.data @ self.V.data).T

    @classmethod
    def from_dense(cls, weight, bias=None, inputs=None, rank=None, dtype=None):
        """The best rank-`rank` approximation of y = W x + b.

        Without `inputs`: truncated SVD of W (Frobenius-optimal). With `inputs` X: activation-aware,
        min over rank-r Ŵ and c of Σ_s ‖W x_s + b − Ŵ x_s − c‖², solved by Ŵ = P_r P_rᵀ W (SVD of W C^{1/2}
        after whitening by the centred input covariance C, see `fitting.output_subspace`) and the intercept
        that makes the mean residual zero: c = b + (W − Ŵ) μ, μ the input mean.
        U = Wᵀ P_r, V = P_rᵀ, then each rank-one term is rescaled so ‖U_:j‖ = ‖V_j:‖ (same product).
        `layer.fit_report` holds the relative error ‖Y − Ŷ‖/‖Y‖ on the fitting data (‖W − Ŵ‖/‖W‖
        without inputs).
        """
        problem, dtype = start_fit(weight, bias, inputs, dtype)
        if rank is None:
            raise ValueError("LowRankLinear.from_dense needs rank=")
        layer = cls(problem.in_features, problem.out_features, rank, bias=problem.has_bias, dtype=dtype)
        P = output_subspace(problem.W, problem.C, layer.rank)
        U, V = problem.W.T @ P, P.T
        scale = np.sqrt(np.maximum(np.linalg.norm(U, axis=0), 1e-30))
        U, V = U / scale, V * scale[:, None]
        layer.U.data, layer.V.data = U.astype(dtype), V.astype(dtype)
        return finish_fit(layer, problem, (U @ V).T, dtype)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"bias={self.bias is not None}")


class SpectralLowRankLinear(Module):
    """y = S(x) + (x U) V + b: a DeepSpectralLinear S (no bias) plus a low-rank correction.

    The spectral part is cheap and full-rank, the low-rank part captures the dominant directions
    of the outputs. Cost per sample: S's K·(FWHT(N) + N) plus rank·(in + out) (+ out for the bias).
    Parameters: `spectral.d`, `low_rank.U`, `low_rank.V`, `bias`; the permutations are buffers.
    """

    _input_kind = "float"  # input policy: see dreidel.nn.module

    def __init__(self, in_features, out_features, rank, depth=4, bias=True, seed=0, rng=None, dtype=np.float32):
        dtype = check_dtype(dtype, type(self).__name__)
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.spectral = DeepSpectralLinear(in_features, out_features, depth=depth, bias=False, seed=seed, dtype=dtype)
        self.low_rank = LowRankLinear(in_features, out_features, rank, bias=False, rng=rng, dtype=dtype)
        self.bias = Parameter(np.zeros(self.out_features, dtype=dtype)) if bias else None

    def multiply_adds(self):
        return (self.spectral.multiply_adds() + self.low_rank.multiply_adds()
                + (self.out_features if self.bias is not None else 0))

    def forward(self, x):
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"SpectralLowRankLinear expected input of shape (..., {self.in_features}), "
                             f"got {tuple(x.shape)}")
        y = self.spectral(x) + self.low_rank(x)
        return y + self.bias if self.bias is not None else y

    def dense_weight(self):
        return self.spectral.dense_weight() + self.low_rank.weight()

    @classmethod
    def from_dense(cls, weight, bias=None, inputs=None, rank=None, depth=4, seed=0, rounds=3, sweeps=2,
                   ridge=1e-9, dtype=None):
        """Fit both parts jointly to y = W x + b by block-coordinate descent on one objective.

        The error is tr((W − Ŝ − L̂) C (W − Ŝ − L̂)ᵀ) (C = the centred input covariance, or I without
        inputs; see `DenseProblem`). Start with L̂ the best rank-r fit of W, then repeat `rounds`
        times: `sweeps` ALS sweeps of the spectral diagonals on the residual W − L̂ (warm-started),
        then the exact best rank-r L̂ of W − Ŝ. Every step minimises the objective over its part, so
        the error never increases, and it is never worse than the low-rank fit alone (the first
        diagonal update can always choose d_k = 0, i.e. Ŝ = 0). Bias: the optimal offset.
        `fit_report`: relative_error, history (after the low-rank start and after each round).
        """
        problem, dtype = start_fit(weight, bias, inputs, dtype)
        if rank is None:
            raise ValueError("SpectralLowRankLinear.from_dense needs rank=")
        layer = cls(problem.in_features, problem.out_features, rank, depth=depth, bias=problem.has_bias,
                    seed=seed, dtype=dtype)
        spectral = layer.spectral
        D = spectral.d.data.astype(np.float64)

        def low_rank_fit(target):
            P = output_subspace(target, problem.C, layer.low_rank.rank)
            return target.T @ P, P.T

        U, V = low_rank_fit(problem.W)
        history = [problem.relative_error((U @ V).T)]
        bar = progress(range(rounds), f"{cls.__name__}.from_dense {problem.out_features}×{problem.in_features}",
                       delay=2.0)
        for _ in bar:
            bar.set(error=history[-1])
            residual = problem.with_weight(problem.W - (U @ V).T)
            for _ in range(sweeps):
                spectral_als_sweep(spectral, residual, D, ridge)
            U, V = low_rank_fit(problem.W - spectral._dense_weight(D))
            history.append(problem.relative_error(spectral._dense_weight(D) + (U @ V).T))
        scale = np.sqrt(np.maximum(np.linalg.norm(U, axis=0), 1e-30))
        U, V = U / scale, V * scale[:, None]
        spectral.d.data = D.astype(dtype)
        layer.low_rank.U.data, layer.low_rank.V.data = U.astype(dtype), V.astype(dtype)
        return finish_fit(layer, problem, spectral._dense_weight(D) + (U @ V).T, dtype,
                          relative_error=history[-1], iterations=rounds, history=history)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.low_rank.rank}, depth={self.spectral.depth}, bias={self.bias is not None}")
