"""Walsh–Hadamard (spectral) replacements for dense layers: `LinearWHT` and `DeepSpectralLinear`.

Notation (used by every docstring here). H is the orthonormal Walsh–Hadamard matrix of a supported
width N (2^k or m·2^k with m ∈ {12, 20, 28}; H = H_m ⊗ H_{2^k} / √N, symmetric, HᵀH = I, every entry
±1/√N). `pad` appends zeros up to N, `trunc` keeps the first `out_features` coordinates. A
permutation `perm` acts by gathering, (P v)[j] = v[perm[j]].

Cost per sample (multiply-adds, additions counted as one): an FWHT of width N = m·2^k costs
N·k + N·m (k butterfly stages plus one dense H_m per group; m = 1 for powers of two), a diagonal N.
A dense layer costs in·out.

`from_dense` fits the layer to a dense y = W x + b by (alternating) least squares; the math is in
`_fit_diagonal`. It runs in float64 and leaves `layer.fit_report` (relative error on the fitting data,
sweeps, per-update objective history).
"""
import math

import numpy as np

from dreidel.nn.module import Module, Parameter
from dreidel.random import generator
from dreidel.tensor import Tensor, _result

from dreidel import kernels


def fwht(x):
    """Orthonormal FWHT along the last axis of a numpy array (a new array)."""
    return kernels.fwht(np.ascontiguousarray(x), normalized=True)


def next_supported_size(n):
    return int(kernels.next_supported_size(n))


def _block_forward(x, perm, d):
    """y = H(P x ⊙ d) for rows of x (fused kernel; perm was validated at construction)."""
    return kernels.spectral_block(x, perm, d, validate=False)


def _block_backward(g, x, perm, d):
    """Given y = H(P x ⊙ d): ∂/∂x = Pᵀ(d ⊙ H g), ∂/∂d = Σ_rows (H g) ⊙ P x  (H is symmetric)."""
    return kernels.spectral_block_backward(g, x, perm, d, validate=False)


def fwht_multiply_adds(n):
    """Multiply-adds of one orthonormal FWHT of width n = m·2^k (k stages of n adds, one H_m of n·m)."""
    odd = n
    while odd % 2 == 0:
        odd //= 2
    m = 4 * odd if odd > 1 else 1   # 12, 20 or 28 (= 4·3, 4·5, 4·7)
    k = (n // m).bit_length() - 1
    return n * k + (n * m if m > 1 else 0)


def hadamard_rows(n, rows, dtype=np.float64):
    """The first `rows` rows of the orthonormal H of width n, as a (rows, n) array."""
    eye = np.zeros((rows, n), dtype=dtype)
    eye[np.arange(rows), np.arange(rows)] = 1
    return fwht(eye)  # row r = H e_r = H[r, :] since H is symmetric


# -- argument handling -----------------------------------------------------------------------------
def _as_array(value, name):
    if isinstance(value, Tensor):
        value = value.data
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be numeric, got dtype {array.dtype}")
    return array


def _dense_problem(weight, bias, inputs):
    """Validate a dense layer (W (out, in), b) and build the fitting problem in float64.

    Returns (X, Y, bias_or_None, fit_intercept): with inputs, X are the samples and Y = X Wᵀ + b, and
    the intercept is refitted; without, X = I (the columns of W are the targets: the Frobenius fit
    of the operator) and the bias is copied.
    """
    W = _as_array(weight, "weight")
    if W.ndim != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {W.shape}")
    out_features, in_features = W.shape
    W = W.astype(np.float64)
    b = None
    if bias is not None:
        b = _as_array(bias, "bias").astype(np.float64)
        if b.shape != (out_features,):
            raise ValueError(f"bias must have shape ({out_features},) to match weight {W.shape}, got {b.shape}")
    if inputs is None:
        return np.eye(in_features), W.T.copy(), b, False
    X = _as_array(inputs, "inputs").astype(np.float64)
    if X.ndim < 2 or X.shape[-1] != in_features:
        raise ValueError(f"inputs must have shape (..., {in_features}) to match weight {W.shape}, got {X.shape}")
    X = X.reshape(-1, in_features)
    if X.shape[0] < 2:
        raise ValueError(f"need at least 2 input samples to fit, got {X.shape[0]}")
    Y = X @ W.T + (b if b is not None else 0)
    return X, Y, b, True


def _fit_diagonal(U, A, Y, d_old, fit_intercept, ridge=1e-9):
    """Least-squares diagonal of the model y = A (u ⊙ d) (+ c), the one step of every fit here.

    For samples u_s (rows of U, width N), targets y_s (rows of Y, width out) and A (out, N):
        Σ_s ‖y_s − c − A diag(u_s) d‖²
    is quadratic in d. With centred u, y (c optimal = mean residual) its normal equations are
        G d = r,   G = (AᵀA) ⊙ (Σ_s u_s u_sᵀ),   r = Σ_s u_s ⊙ (Aᵀ y_s)
    (G_ij = Σ_s u_si u_sj ⟨A_:i, A_:j⟩). We solve the proximal version (G + λI) d = r + λ d_old with
    a tiny λ: it is well posed when G is singular (padding, unused coordinates keep d_old) and never
    increases the objective f(d) = ‖Y‖² − 2 rᵀd + dᵀG d, since f(d) + λ‖d − d_old‖² ≤ f(d_old).

    Returns (d, f(d_old), f(d)) with f the centred residual sum of squares.
    """
    if fit_intercept:
        U = U - U.mean(axis=0)
        Y = Y - Y.mean(axis=0)
    G = (A.T @ A) * (U.T @ U)
    r = np.einsum("sn,sn->n", U, Y @ A)
    yy = float(np.sum(Y * Y))

    def objective(d):
        return yy - 2 * float(r @ d) + float(d @ G @ d)

    lam = ridge * max(float(np.mean(np.diag(G))), 1e-300)
    G[np.diag_indices_from(G)] += lam
    d = np.linalg.solve(G, r + lam * d_old)
    G[np.diag_indices_from(G)] -= lam
    before, after = objective(d_old), objective(d)
    if after > before:  # rounding only; keep the old value so the fit stays monotone
        d, after = d_old.copy(), before
    return d, before, after


def _relative_error(Y, Y_hat):
    return float(np.linalg.norm(Y - Y_hat) / max(np.linalg.norm(Y), 1e-300))


def _check_width(x, in_features, name):
    if x.ndim < 1 or x.shape[-1] != in_features:
        raise ValueError(f"{name} expected input of shape (..., {in_features}), got {tuple(x.shape)}")


# -- LinearWHT -------------------------------------------------------------------------------------
class LinearWHT(Module):
    """One Walsh–Hadamard block: y = trunc(H · pad(x ⊙ d)) + b.

    d has one entry per input feature (the padded coordinates of x are zero, so their entries of d
    would be dead). The operator is W = H[:out, :in] · diag(d): in·N-free, N log N work per sample.

    Initialisation keeps the per-coordinate variance: d_i = ±√(N / in) (random signs) gives
    Var(y_j) = Σ_i H_ji² d_i² Var(x) = Var(x), since H_ji² = 1/N. The bias starts at zero.
    """

    def __init__(self, in_features, out_features, bias=True, rng=None, dtype=np.float32):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"LinearWHT needs positive sizes, got {in_features} → {out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.size = next_supported_size(max(self.in_features, self.out_features))
        signs = generator(rng).choice(np.array([-1.0, 1.0]), size=self.in_features)
        self.d = Parameter((signs * np.sqrt(self.size / self.in_features)).astype(dtype))
        self.bias = Parameter(np.zeros(self.out_features, dtype=dtype)) if bias else None
        self.capture_curvature = False
        self._curvature = None

    def multiply_adds(self):
        """Per sample: the diagonal (in), one FWHT of width N, the bias (out)."""
        return self.in_features + fwht_multiply_adds(self.size) + (self.out_features if self.bias is not None else 0)

    def forward(self, x):
        _check_width(x, self.in_features, "LinearWHT")
        d, n_in, n_out, N = self.d, self.in_features, self.out_features, self.size
        lead = x.shape[:-1]
        X = x.data.reshape(-1, n_in)
        dtype = np.result_type(X.dtype, d.dtype)
        z = np.zeros((X.shape[0], N), dtype=dtype)
        z[:, :n_in] = X * d.data
        y = fwht(z)[:, :n_out]
        if self.capture_curvature:
            self._curvature = (np.sum(X.astype(np.float64) ** 2, axis=0), X.shape[0])

        def backward(g):
            gz = np.zeros((X.shape[0], N), dtype=dtype)
            gz[:, :n_out] = g.reshape(-1, n_out)
            gz = fwht(gz)[:, :n_in]  # Hᵀ = H
            gx = (gz * d.data).reshape(lead + (n_in,)) if x.requires_grad else None
            gd = np.einsum("bn,bn->n", gz, X) if d.requires_grad else None
            return gx, gd

        out = _result(np.ascontiguousarray(y).reshape(lead + (n_out,)), (x, d), backward)
        return out + self.bias if self.bias is not None else out

    def gauss_newton_diagonal(self):
        """Diagonal of JᵀJ for the last forward batch (needs `capture_curvature = True`).

        This is the Gauss–Newton diagonal of the squared loss ½ Σ_s ‖y_s − t_s‖² (summed over the
        batch; it does not depend on the targets or output gradients). ∂y/∂d_i = x_i H[:out, i] and
        ‖H[:out, i]‖² = out/N, so GN(d_i) = (out/N) Σ_s x_si²; GN(b_j) = batch size.
        Returns {Parameter: array of its shape}.
        """
        if self._curvature is None:
            raise RuntimeError("no curvature captured: set layer.capture_curvature = True and run a forward pass")
        sum_x2, batch = self._curvature
        result = {self.d: (sum_x2 * self.out_features / self.size).astype(self.d.dtype)}
        if self.bias is not None:
            result[self.bias] = np.full(self.out_features, batch, dtype=self.bias.dtype)
        return result

    @classmethod
    def from_dense(cls, weight, bias=None, inputs=None, ridge=1e-9, dtype=None):
        """The LinearWHT closest to y = W x + b, by closed-form least squares over d.

        Without `inputs`: min_d ‖W − H[:out, :in] diag(d)‖_F, per coordinate
            d_i = ⟨W_:i, H[:out, i]⟩ / ‖H[:out, i]‖² = (N/out) ⟨W_:i, H[:out, i]⟩.
        With `inputs` X (n, in): min_{d, c} Σ_s ‖W x_s + b − H[:out, :in](x_s ⊙ d) − c‖², whose
        normal equations are (HₜᵀHₜ ⊙ XᵀX) d = Σ_s x_s ⊙ Hₜᵀ(y_s) on centred data, Hₜ = H[:out, :in]
        (diagonal — per coordinate — when out = N, since then HₜᵀHₜ = I); c is the mean residual.
        `layer.fit_report` holds the relative error ‖Y − Ŷ‖/‖Y‖ on the fitting data (on W itself
        without inputs).
        """
        X, Y, b, fit_intercept = _dense_problem(weight, bias, inputs)
        out_features, in_features = Y.shape[1], X.shape[1]
        W_dtype = _as_array(weight, "weight").dtype
        dtype = np.dtype(dtype or (W_dtype if W_dtype.kind == "f" else np.float32))
        layer = cls(in_features, out_features, bias=b is not None or fit_intercept, dtype=dtype)
        A = hadamard_rows(layer.size, out_features)[:, :in_features]
        d, before, after = _fit_diagonal(X, A, Y, np.zeros(in_features), fit_intercept, ridge)
        prediction = (X * d) @ A.T
        if fit_intercept:  # the optimal offset: the mean residual
            c = (Y - prediction).mean(axis=0)
            prediction = prediction + c
        else:  # weight-only: the error is ‖W − Ŵ‖/‖W‖, the bias is copied
            c = b
        if c is not None:
            layer.bias.data = c.astype(dtype)
        layer.d.data = d.astype(dtype)
        layer.fit_report = {"relative_error": _relative_error(Y, prediction), "iterations": 1,
                            "objective": [before, after], "used_inputs": fit_intercept}
        return layer

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, size={self.size}, "
                f"bias={self.bias is not None}")


# -- DeepSpectralLinear ----------------------------------------------------------------------------
def _deep_spectral_forward(Z, perms, D):
    """Run the K blocks z ← H(P_k z ⊙ d_k) on rows of Z; returns every block's input and the output."""
    inputs = []
    for perm, d in zip(perms, D):
        inputs.append(Z)
        Z = _block_forward(Z, perm, d)
    return inputs, Z


class DeepSpectralLinear(Module):
    """K Walsh–Hadamard blocks: z₀ = pad(x), z_k = H(P_k z_{k−1} ⊙ d_k), y = trunc(z_K) + b.

    The permutations P_k are fixed at construction (seeded by `seed`) and kept as int64 buffers
    (`perms`, shape (K, N)) so a saved and reloaded layer is bit-identical; the trainable diagonals
    are one Parameter `d` of shape (K, N). Forward and backward go through the fused kernels
    (`spectral_block`, `spectral_block_backward`) in a single autograd node.

    Initialisation keeps the signal's variance: every block with d = ±1 is orthogonal (norm-
    preserving), and the first diagonal is scaled by √(N/in) so the zero padding does not shrink the
    per-coordinate variance: Var(y_j) ≈ ‖x‖² / in = Var(x) (not the 1/N shrink of the original
    ACDC/Fastfood-style layers, which vanishes with depth).

    Cost per sample: K·(FWHT(N) + N) multiply-adds (+ out for the bias), vs in·out dense.
    """

    def __init__(self, in_features, out_features, depth=4, bias=True, seed=0, dtype=np.float32):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"DeepSpectralLinear needs positive sizes, got {in_features} → {out_features}")
        if int(depth) < 1:
            raise ValueError(f"DeepSpectralLinear depth must be at least 1, got {depth}")
        self.in_features, self.out_features, self.depth = int(in_features), int(out_features), int(depth)
        self.size = N = next_supported_size(max(self.in_features, self.out_features))
        rng = np.random.default_rng(seed)
        self.register_buffer("perms", np.stack([rng.permutation(N) for _ in range(self.depth)]).astype(np.int64))
        d = rng.choice(np.array([-1.0, 1.0]), size=(self.depth, N))
        d[0] *= np.sqrt(N / self.in_features)
        self.d = Parameter(d.astype(dtype))
        self.bias = Parameter(np.zeros(self.out_features, dtype=dtype)) if bias else None
        self.capture_curvature = False
        self._curvature = None

    def multiply_adds(self):
        return self.depth * (fwht_multiply_adds(self.size) + self.size) + (
            self.out_features if self.bias is not None else 0)

    def forward(self, x):
        _check_width(x, self.in_features, "DeepSpectralLinear")
        d, n_in, n_out, N = self.d, self.in_features, self.out_features, self.size
        perms = self.perms.data
        lead = x.shape[:-1]
        dtype = np.result_type(x.dtype, d.dtype)
        Z = np.zeros((int(np.prod(lead)), N), dtype=dtype)
        Z[:, :n_in] = x.data.reshape(-1, n_in)
        D = d.data.astype(dtype, copy=False)
        block_inputs, Z = _deep_spectral_forward(Z, perms, D)
        if self.capture_curvature:  # Σ_s (P_k z)² per block, for gauss_newton_diagonal
            self._curvature = (np.stack([np.sum(z.astype(np.float64) ** 2, axis=0)[p]
                                         for z, p in zip(block_inputs, perms)]), Z.shape[0])

        def backward(g):
            G = np.zeros((Z.shape[0], N), dtype=dtype)
            G[:, :n_out] = g.reshape(-1, n_out)
            gd = np.empty_like(D)
            for k in reversed(range(len(perms))):
                G, gd[k] = _block_backward(G, block_inputs[k], perms[k], D[k])
            gx = G[:, :n_in].reshape(lead + (n_in,)) if x.requires_grad else None
            return gx, gd

        out = _result(np.ascontiguousarray(Z[:, :n_out]).reshape(lead + (n_out,)), (x, d), backward)
        return out + self.bias if self.bias is not None else out

    # -- the operator, for fitting and curvature ---------------------------------------------------
    def _output_maps(self, D):
        """A_k = trunc · B_K ⋯ B_{k+1} · H (out, N) for every k: y = A_k (u_k ⊙ d_k).

        Built backwards from A_K = H[:out, :] with A_{k−1} = A_k D_k P_k H: scaling columns by d_k,
        scattering columns by perm_k (M P has column perm[j] = column j of M), an FWHT of every row.
        """
        perms = self.perms.data
        A = hadamard_rows(self.size, self.out_features)
        maps = [None] * self.depth
        maps[-1] = A
        for k in range(self.depth - 1, 0, -1):
            M = np.empty_like(A)
            M[:, perms[k]] = A * D[k]
            A = fwht(M)
            maps[k - 1] = A
        return maps

    def gauss_newton_diagonal(self, probes=None, seed=0):
        """Diagonal of JᵀJ for the last forward batch (needs `capture_curvature = True`).

        Gauss–Newton diagonal of ½ Σ_s ‖y_s − t_s‖² (summed over the batch, output-gradient free):
        ∂y_s/∂d_{k,i} = u_{s,k,i} A_k[:, i], u_{s,k} = P_k z_{s,k−1}, so
            GN(d_{k,i}) = (Σ_s u_{s,k,i}²) · ‖A_k[:, i]‖².
        The column norms ‖A_k[:, i]‖² are exact (A_k built from `out` basis vectors) when
        `probes` is None and out·N ≤ 2²², else a Hutchinson estimate E_z[(A_kᵀ z)²] with `probes`
        Rademacher vectors z (unbiased). GN(b_j) = batch size. Returns {Parameter: array}.
        """
        if self._curvature is None:
            raise RuntimeError("no curvature captured: set layer.capture_curvature = True and run a forward pass")
        sum_u2, batch = self._curvature
        D = self.d.data.astype(np.float64)
        if probes is None and self.out_features * self.size <= 1 << 22:
            norms = np.stack([np.sum(A * A, axis=0) for A in self._output_maps(D)])
        else:
            probes = probes or 16
            z = np.random.default_rng(seed).choice(np.array([-1.0, 1.0]), size=(probes, self.out_features))
            G = np.zeros((probes, self.size))
            G[:, :self.out_features] = z
            norms = np.empty_like(D)
            perms = self.perms.data
            for k in reversed(range(self.depth)):  # G = A_kᵀ z after the H of block k
                gz = fwht(G)
                norms[k] = np.mean(gz * gz, axis=0)
                G = np.empty_like(gz)
                G[:, perms[k]] = gz * D[k]
        result = {self.d: (sum_u2 * norms).astype(self.d.dtype)}
        if self.bias is not None:
            result[self.bias] = np.full(self.out_features, batch, dtype=self.bias.dtype)
        return result

    @classmethod
    def from_dense(cls, weight, bias=None, inputs=None, depth=4, seed=0, sweeps=8, tol=1e-4,
                   ridge=1e-9, dtype=None):
        """Fit the K diagonals to y = W x + b by alternating least squares (ALS).

        With the others fixed, y = A_k (u_k ⊙ d_k) is linear in d_k (u_k = P_k z_{k−1} the block's
        permuted input, A_k the rest of the network after the block, see `_output_maps`), so each
        update is the closed-form least-squares solve of `_fit_diagonal`. A sweep updates
        d_1 … d_K in order; the objective never increases (each update minimises it given the others).
        With `inputs` the fit is on Y = X Wᵀ + b where the data lives (bias = optimal offset = mean
        residual); without, on the operator itself (X = I, Frobenius norm; the bias is copied).
        Stops after `sweeps` sweeps or when a sweep improves the error by less than `tol` (relative).
        `layer.fit_report`: relative_error, iterations (sweeps), history (relative error after each
        sweep, starting with the initial one), objective (per block update).
        """
        X, Y, b, fit_intercept = _dense_problem(weight, bias, inputs)
        out_features, in_features = Y.shape[1], X.shape[1]
        W_dtype = _as_array(weight, "weight").dtype
        dtype = np.dtype(dtype or (W_dtype if W_dtype.kind == "f" else np.float32))
        layer = cls(in_features, out_features, depth=depth, bias=b is not None or fit_intercept,
                    seed=seed, dtype=dtype)
        N, perms = layer.size, layer.perms.data
        D = layer.d.data.astype(np.float64)
        Z0 = np.zeros((X.shape[0], N))
        Z0[:, :in_features] = X

        def residual_error(D):
            """Relative error with the optimal offset (with inputs), and that offset."""
            prediction = _deep_spectral_forward(Z0, perms, D)[1][:, :out_features]
            offset = (Y - prediction).mean(axis=0) if fit_intercept else 0
            return _relative_error(Y, prediction + offset), offset

        history, objective = [residual_error(D)[0]], []
        sweep = 0
        for sweep in range(1, sweeps + 1):
            maps = layer._output_maps(D)
            Z = Z0
            for k in range(layer.depth):
                U = Z[:, perms[k]]
                D[k], before, after = _fit_diagonal(U, maps[k], Y, D[k], fit_intercept, ridge)
                objective.append(after)
                Z = fwht(U * D[k])
            history.append(residual_error(D)[0])
            if history[-2] - history[-1] <= tol * history[-2]:
                break
        error, offset = residual_error(D)
        layer.d.data = D.astype(dtype)
        if layer.bias is not None:
            layer.bias.data = (offset if fit_intercept else b).astype(dtype)
        layer.fit_report = {"relative_error": error, "iterations": sweep, "history": history,
                            "objective": objective, "used_inputs": fit_intercept}
        return layer

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, depth={self.depth}, "
                f"size={self.size}, bias={self.bias is not None}")
