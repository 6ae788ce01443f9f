"""Low-rank replacement of a dense layer (`LowRankLinear`), the baseline every spectral student is
measured against, and the hybrid `SpectralLowRankLinear` (spectral blocks + a low-rank correction).
"""
import numpy as np

from dreidel import functional as F
from dreidel.nn.module import Module, Parameter
from dreidel.nn.spectral import DeepSpectralLinear, _as_array, _dense_problem, _relative_error
from dreidel.random import generator


def _output_subspace(W, X, rank):
    """Top-`rank` left singular vectors P_r of W C^{1/2}, C the centred covariance of the rows of X.

    min over rank-r Ŵ of ‖(W − Ŵ) C^{1/2}‖_F (the centred output error on the data) is reached at
    Ŵ = [W C^{1/2}]_r C^{−1/2} = P_r P_rᵀ W (Eckart–Young: [W S]_r = P_r P_rᵀ W S), so only P_r is needed:
    the top eigenvectors of W C Wᵀ, the covariance of the outputs. This needs no C^{−1/2}, hence no
    ridge, and is exact even when C is singular. Without inputs (C = I) it is the truncated SVD.
    """
    if X is None:
        P, _, _ = np.linalg.svd(W, full_matrices=False)
        return P[:, :rank]
    Xc = X - X.mean(axis=0)
    Yc = Xc @ W.T
    if Yc.shape[0] >= Yc.shape[1]:
        values, vectors = np.linalg.eigh(Yc.T @ Yc)
        return vectors[:, ::-1][:, :rank]
    _, _, Vt = np.linalg.svd(Yc, full_matrices=False)  # fewer samples than outputs
    P = Vt[:rank].T
    if P.shape[1] < rank:  # the data spans fewer directions: complete with W's own
        extra, _, _ = np.linalg.svd(W - P @ (P.T @ W), full_matrices=False)
        P = np.concatenate([P, extra[:, :rank - P.shape[1]]], axis=1)
    return P


class LowRankLinear(Module):
    """y = (x U) V + b with U (in, rank), V (rank, out): rank·(in + out) multiply-adds per sample.

    Initialisation: U ~ U(±1/√in), V ~ U(±√(3/rank)), so x U V has the output variance of a
    PyTorch-initialised dense Linear (Var(x)/3 per coordinate). The bias starts at zero.
    """

    def __init__(self, in_features, out_features, rank, bias=True, rng=None, dtype=np.float32):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"LowRankLinear needs positive sizes, got {in_features} → {out_features}")
        if not 1 <= int(rank) <= min(in_features, out_features):
            raise ValueError(f"LowRankLinear rank must be in 1..{min(in_features, out_features)} "
                             f"for {in_features} → {out_features}, got {rank}")
        self.in_features, self.out_features, self.rank = int(in_features), int(out_features), int(rank)
        rng = generator(rng)
        self.U = Parameter(rng.uniform(-1, 1, (self.in_features, self.rank)).astype(dtype) / np.sqrt(self.in_features))
        self.V = Parameter(rng.uniform(-1, 1, (self.rank, self.out_features)).astype(dtype) * np.sqrt(3 / self.rank))
        self.bias = Parameter(np.zeros(self.out_features, dtype=dtype)) if bias else None

    def multiply_adds(self):
        return self.rank * (self.in_features + self.out_features) + (self.out_features if self.bias is not None else 0)

    def forward(self, x):
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"LowRankLinear expected input of shape (..., {self.in_features}), got {tuple(x.shape)}")
        y = F.matmul(F.matmul(x, self.U), self.V)
        return y + self.bias if self.bias is not None else y

    def weight(self):
        """The dense (out, in) matrix this layer applies: (U V)ᵀ."""
        return (self.U.data @ self.V.data).T

    @classmethod
    def from_dense(cls, weight, bias=None, inputs=None, rank=None, dtype=None):
        """The best rank-`rank` approximation of y = W x + b.

        Without `inputs`: truncated SVD of W (Frobenius-optimal). With `inputs` X: activation-aware,
        min over rank-r Ŵ and c of Σ_s ‖W x_s + b − Ŵ x_s − c‖², solved by Ŵ = P_r P_rᵀ W (SVD of W C^{1/2}
        after whitening by the centred input covariance C, see `_output_subspace`) and the intercept
        that makes the mean residual zero: c = b + (W − Ŵ) μ, μ the input mean.
        U = Wᵀ P_r, V = P_rᵀ, then each rank-one term is rescaled so ‖U_:j‖ = ‖V_j:‖ (same product).
        `layer.fit_report` holds the relative error ‖Y − Ŷ‖/‖Y‖ on the fitting data (‖W − Ŵ‖/‖W‖
        without inputs).
        """
        X, Y, b, fit_intercept = _dense_problem(weight, bias, inputs)
        W = _as_array(weight, "weight").astype(np.float64)
        out_features, in_features = W.shape
        if rank is None:
            raise ValueError("LowRankLinear.from_dense needs rank=")
        W_dtype = _as_array(weight, "weight").dtype
        dtype = np.dtype(dtype or (W_dtype if W_dtype.kind == "f" else np.float32))
        layer = cls(in_features, out_features, rank, bias=b is not None or fit_intercept, dtype=dtype)
        P = _output_subspace(W, X if fit_intercept else None, layer.rank)
        U, V = W.T @ P, P.T
        scale = np.sqrt(np.maximum(np.linalg.norm(U, axis=0), 1e-30))
        U, V = U / scale, V * scale[:, None]
        W_hat = (U @ V).T
        if fit_intercept:
            c = (b if b is not None else 0) + (W - W_hat) @ X.mean(axis=0)
            error = _relative_error(Y, X @ W_hat.T + c)
        else:
            c = b
            error = _relative_error(W, W_hat)
        layer.U.data, layer.V.data = U.astype(dtype), V.astype(dtype)
        if c is not None:
            layer.bias.data = np.asarray(c).astype(dtype)
        layer.fit_report = {"relative_error": error, "iterations": 1, "used_inputs": fit_intercept}
        return layer

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"bias={self.bias is not None}")
