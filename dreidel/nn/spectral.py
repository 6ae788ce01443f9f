"""Walsh–Hadamard (spectral) replacements for dense layers: `LinearWHT` and `DeepSpectralLinear`.

Notation (used by every docstring here). H is the orthonormal Walsh–Hadamard matrix of a supported
width N (2^k or m·2^k with m ∈ {12, 20, 28}; H = H_m ⊗ H_{2^k} / √N, symmetric, HᵀH = I, every entry
±1/√N). `pad` appends zeros up to N, `trunc` keeps the first `out_features` coordinates. A
permutation `perm` acts by gathering, (P v)[j] = v[perm[j]].

Cost per sample (multiply-adds, additions counted as one): an FWHT of width N = m·2^k costs
N·k + N·m (k butterfly stages plus one dense H_m per group; m = 1 for powers of two), a diagonal N.
A dense layer costs in·out.

`from_dense` fits the layer to a dense y = W x + b by (alternating) least squares; the math is in
`_fit_diagonal` and `DenseProblem` (fits need only the inputs' mean and covariance, which
`InputStatistics` can accumulate batch by batch). It runs in float64 and leaves `layer.fit_report`
(relative error on the fitting data, sweeps, per-update history).
"""
import numpy as np

from dreidel import kernels
from dreidel.nn.module import Module, Parameter
from dreidel.random import generator
from dreidel.ops.spectral import linear_wht, spectral_stack
from dreidel.tensor import Tensor, is_grad_enabled


# -- numpy-level building blocks (kernels) ---------------------------------------------------------
def _block_forward(x, perm, d):
    """y = H(P x ⊙ d) for rows of x (fused kernel; perm was validated at construction)."""
    return kernels.spectral_block(x, perm, d, validate=False)


# DeepSpectralLinear keeps its K block inputs for the backward up to this many bytes (they then stay
# in L2/L3); larger batches recompute them in the backward from x: about as fast there (measured at
# 4096 × 256, K = 4: within noise) and no K·rows·N activation buffer.
SAVE_MAX_BYTES = 12 << 20

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
    return kernels.fwht(eye)  # row r = H e_r = H[r, :] since H is symmetric


# -- argument handling -----------------------------------------------------------------------------
def _as_array(value, name):
    if isinstance(value, Tensor):
        value = value.data
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be numeric, got dtype {array.dtype}")
    return array


class InputStatistics:
    """Streaming first and second moments of a layer's inputs: all that `from_dense` needs.

    `stats = InputStatistics(in_features); stats.update(batch)` for each batch (any leading shape),
    then pass `inputs=stats` to any `from_dense`: activations never need to be kept in memory, and one
    set of statistics serves every fit of the same layer. Accumulated in float64 as n, Σv, Σvvᵀ of
    v = x − x₀ (x₀ the first batch's mean, so large means do not cancel digits); the centred
    covariance is C = Σvvᵀ − (Σv)(Σv)ᵀ/n.
    """

    def __init__(self, in_features):
        self.in_features = int(in_features)
        self.count = 0
        self.shift = None
        self.total = np.zeros(self.in_features)
        self.outer = np.zeros((self.in_features, self.in_features))

    @classmethod
    def of(cls, inputs):
        X = _as_array(inputs, "inputs")
        if X.ndim < 2:
            raise ValueError(f"inputs must have shape (samples..., in_features), got {X.shape}")
        return cls(X.shape[-1]).update(X)

    def update(self, batch):
        X = _as_array(batch, "inputs")
        if X.ndim < 1 or X.shape[-1] != self.in_features:
            raise ValueError(f"inputs must have shape (..., {self.in_features}), got {X.shape}")
        X = X.reshape(-1, self.in_features).astype(np.float64)
        if X.shape[0] == 0:
            return self
        if self.shift is None:
            self.shift = X.mean(axis=0)
        X = X - self.shift
        self.count += X.shape[0]
        self.total += X.sum(axis=0)
        self.outer += X.T @ X
        return self

    @property
    def mean(self):
        return (self.shift if self.shift is not None else 0) + self.total / max(self.count, 1)

    @property
    def covariance(self):
        """Σ_s (x_s − μ)(x_s − μ)ᵀ (a sum, not divided by n)."""
        return self.outer - np.outer(self.total, self.total) / max(self.count, 1)


class DenseProblem:
    """A dense layer y = W x + b to approximate, and the data it is approximated on, in float64.

    Every fit here depends on the data only through its second moments, so they are all we keep:
    with inputs X (n, in), μ their mean and C = Σ_s (x_s − μ)(x_s − μ)ᵀ, the squared output error of
    any affine Ŵ x + ĉ with its optimal offset ĉ = b + (W − Ŵ)μ is tr((W − Ŵ) C (W − Ŵ)ᵀ). Without
    inputs, C = I and no offset is fitted (the bias is copied): the error is ‖W − Ŵ‖_F², the fit of
    the operator itself. `total` is ‖Y‖² (‖W‖² without inputs), the denominator of relative errors.
    """

    def __init__(self, weight, bias=None, inputs=None):
        W = _as_array(weight, "weight")
        if W.ndim != 2:
            raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {W.shape}")
        self.dtype = W.dtype if W.dtype.kind == "f" else np.dtype(np.float32)
        self.W = W = W.astype(np.float64)
        self.out_features, self.in_features = W.shape
        self.b = None
        if bias is not None:
            self.b = _as_array(bias, "bias").astype(np.float64)
            if self.b.shape != (self.out_features,):
                raise ValueError(f"bias must have shape ({self.out_features},) to match weight {W.shape}, "
                                 f"got {self.b.shape}")
        self.fit_intercept = inputs is not None
        if inputs is None:
            self.C, self.mean = np.eye(self.in_features), None
            self.total = float(np.sum(W * W))
            return
        if not isinstance(inputs, InputStatistics):
            X = _as_array(inputs, "inputs")
            if X.ndim < 2 or X.shape[-1] != self.in_features:
                raise ValueError(f"inputs must have shape (..., {self.in_features}) to match weight {W.shape}, "
                                 f"got {X.shape}")
            inputs = InputStatistics.of(X)
        if inputs.in_features != self.in_features:
            raise ValueError(f"input statistics of width {inputs.in_features} do not match weight {W.shape}")
        if inputs.count < 2:
            raise ValueError(f"need at least 2 input samples to fit, got {inputs.count}")
        self.mean, self.C = inputs.mean, inputs.covariance
        y_mean = W @ self.mean + (self.b if self.b is not None else 0)
        self.total = float(np.sum((W @ self.C) * W)) + inputs.count * float(y_mean @ y_mean)

    def with_weight(self, W):
        """The same data with another target weight (used to fit one part of a sum to a residual)."""
        other = object.__new__(DenseProblem)
        other.__dict__.update(self.__dict__)
        other.W = np.asarray(W, dtype=np.float64)
        return other

    def offset(self, W_hat):
        """The bias of the fitted layer: optimal with inputs (mean residual zero), else copied."""
        if self.fit_intercept:
            return (self.b if self.b is not None else 0) + (self.W - W_hat) @ self.mean
        return self.b

    def relative_error(self, W_hat):
        E = self.W - W_hat
        return float(np.sqrt(max(float(np.sum((E @ self.C) * E)), 0.0) / max(self.total, 1e-300)))


def _fit_diagonal(C_u, S_u, A, M, d_old, ridge=1e-9):
    """Least-squares diagonal of the model y = A (u ⊙ d), the one step of every fit here.

    For (centred) samples u_s of width N, targets y_s of width out and A (out, N), the error
        f(d) = Σ_s ‖y_s − A diag(u_s) d‖²
    is quadratic in d, with normal equations
        G d = r,   G = (AᵀA) ⊙ C_u,   r = colsum(A ⊙ S_u),
    where C_u = Σ_s u_s u_sᵀ (N, N) and S_u = Σ_s y_s u_sᵀ (out, N): G_ij = Σ_s u_si u_sj ⟨A_:i, A_:j⟩
    and r_i = Σ_s u_si ⟨A_:i, y_s⟩. `M` is AᵀA. We solve the proximal version
    (G + λI) d = r + λ d_old with a tiny λ: well posed when G is singular (padding; unused coordinates
    keep d_old), and it never increases f, since f(d) + λ‖d − d_old‖² ≤ f(d_old).

    Returns (d, f(d) − f(d_old)) (f up to the constant Σ‖y_s‖²).
    """
    G = M * C_u
    r = np.einsum("on,on->n", A, S_u)

    def objective(d):
        return float(d @ G @ d) - 2 * float(r @ d)

    lam = ridge * max(float(np.mean(np.diag(G))), 1e-300)
    G[np.diag_indices_from(G)] += lam
    d = np.linalg.solve(G, r + lam * d_old)
    G[np.diag_indices_from(G)] -= lam
    change = objective(d) - objective(d_old)
    if change > 0:  # rounding only; keep the old value so the fit stays monotone
        return d_old.copy(), 0.0
    return d, change


def _hxh(X):
    """H X H for a square X (both FWHTs along rows, H symmetric)."""
    return kernels.fwht(kernels.fwht(X).T).T


def _scatter_both(X, perm):
    """Pᵀ X P: Y[perm[i], perm[j]] = X[i, j]."""
    Y = np.empty_like(X)
    Y[np.ix_(perm, perm)] = X
    return Y


def _check_width(x, in_features, name):
    if x.ndim < 1 or x.shape[-1] != in_features:
        raise ValueError(f"{name} expected input of shape (..., {in_features}), got {tuple(x.shape)}")


# -- LinearWHT -------------------------------------------------------------------------------------
class LinearWHT(Module):
    """One Walsh–Hadamard block: y = trunc(H · pad(x ⊙ d)) + b.

    d has one entry per input feature (the padded coordinates of x are zero, so their entries of d
    would be dead). The operator is W = H[:out, :in] · diag(d), applied without forming it: one FWHT
    (N log N) per sample instead of in·out.

    Initialisation keeps the per-coordinate variance: d_i = ±√(N / in) (random signs) gives
    Var(y_j) = Σ_i H_ji² d_i² Var(x) = Var(x), since H_ji² = 1/N. The bias starts at zero.
    """

    def __init__(self, in_features, out_features, bias=True, rng=None, dtype=np.float32):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"LinearWHT needs positive sizes, got {in_features} → {out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.size = kernels.next_supported_size(max(self.in_features, self.out_features))
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
        y, X = linear_wht(x, self.d, self.bias, self.size, self.out_features)
        if self.capture_curvature:
            self._curvature = (np.sum(X.astype(np.float64) ** 2, axis=0), X.shape[0])
        return y

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
        problem = DenseProblem(weight, bias, inputs)
        n_out, n_in = problem.out_features, problem.in_features
        dtype = np.dtype(dtype or problem.dtype)
        layer = cls(n_in, n_out, bias=problem.b is not None or problem.fit_intercept, dtype=dtype)
        A = hadamard_rows(layer.size, n_out)[:, :n_in]
        d, _ = _fit_diagonal(problem.C, problem.W @ problem.C, A, A.T @ A, np.zeros(n_in), ridge)
        W_hat = A * d
        layer.d.data = d.astype(dtype)
        if layer.bias is not None:
            layer.bias.data = problem.offset(W_hat).astype(dtype)
        layer.fit_report = {"relative_error": problem.relative_error(W_hat), "iterations": 1,
                            "used_inputs": problem.fit_intercept}
        return layer

    def dense_weight(self):
        """The (out, in) matrix this layer applies, H[:out, :in] diag(d), in float64."""
        return hadamard_rows(self.size, self.out_features)[:, :self.in_features] * self.d.data.astype(np.float64)

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
    are one Parameter `d` of shape (K, N). The whole stack is one autograd node and one kernel call
    each way (`kernels.spectral_stack`, `kernels.spectral_stack_backward`: a tile of rows runs
    through all K blocks while it sits in L1, padding, truncation and bias fused in); the backward
    is, per block from the last, ∂z = Pᵀ(d ⊙ H g), ∂d = Σ_s (H g) ⊙ P z. The forward keeps the
    block inputs P_k z_{k−1} when they fit in `SAVE_MAX_BYTES`, else the backward recomputes them
    from x tile by tile (then the layer holds no activations beyond x).

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
        self.size = N = kernels.next_supported_size(max(self.in_features, self.out_features))
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
        d, bias = self.d, self.bias
        perms = self._kernel_perms()
        parents = (x, d) if bias is None else (x, d, bias)
        needs_grad = is_grad_enabled() and any(p.requires_grad for p in parents)
        rows = x.size // x.shape[-1]
        itemsize = np.result_type(x.dtype, d.dtype).itemsize
        # the whole stack in one kernel call, a tile of rows through all K blocks at a time; it keeps
        # the permuted block inputs u_k = P_k z_{k-1} for the backward while they fit in the caches,
        # beyond that the backward recomputes them tile by tile from X (cheaper than a memory round trip)
        save = self.capture_curvature or (needs_grad and d.size * rows * itemsize <= SAVE_MAX_BYTES)
        y, saved = spectral_stack(x, perms, d, bias, self.out_features, save)
        if self.capture_curvature:  # Σ_s (P_k z)² per block, for gauss_newton_diagonal
            self._curvature = (np.einsum("ksn,ksn->kn", saved, saved, dtype=np.float64), rows)
        return y

    def _checked_perms(self):
        """The permutation buffer, validated whenever it was replaced (e.g. by load_state_dict): the
        kernels run unchecked, so a corrupt checkpoint must fail here, not read out of bounds."""
        perms = self.perms.data
        if perms is not self.__dict__.get("_validated_perms"):
            if perms.shape != (self.depth, self.size) or perms.dtype != np.int64 or not all(
                    kernels.is_permutation(p) for p in perms):
                raise ValueError(f"DeepSpectralLinear.perms must be {self.depth} permutations of "
                                 f"range({self.size}) as int64, got shape {perms.shape}, dtype {perms.dtype}")
            self.__dict__["_validated_perms"] = perms
            self.__dict__["_kernel_perms_cache"] = perms.astype(np.intc)
        return perms

    def _kernel_perms(self):
        """The validated permutations as the stack kernel's int32, cached with the validation (like
        it, keyed on the buffer's identity: replace `perms` (load_state_dict does), don't edit it in place)."""
        self._checked_perms()
        return self.__dict__["_kernel_perms_cache"]

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
            A = kernels.fwht(M)
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
                gz = kernels.fwht(G)
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
        Cost: the data enters only through its covariance (pass an `InputStatistics` to reuse it);
        each sweep is K dense N×N solves plus O(K² N² log N) transforms, and keeps 2K float64
        N×N-sized arrays (N = 4096, K = 4: ~1 GB).
        `layer.fit_report`: relative_error, iterations (sweeps), history (relative error after each
        sweep, starting with the initial one), objective (relative error after each block update,
        from the quadratic form).
        """
        problem = DenseProblem(weight, bias, inputs)
        dtype = np.dtype(dtype or problem.dtype)
        layer = cls(problem.in_features, problem.out_features, depth=depth,
                    bias=problem.b is not None or problem.fit_intercept, seed=seed, dtype=dtype)
        D = layer.d.data.astype(np.float64)
        history, objective, sweep = [problem.relative_error(layer._dense_weight(D))], [], 0
        for sweep in range(1, sweeps + 1):
            squared = history[-1] ** 2 * problem.total
            for change in layer._als_sweep(problem, D, ridge):  # relative error after each update
                squared += change
                objective.append(float(np.sqrt(max(squared, 0.0) / problem.total)))
            history.append(problem.relative_error(layer._dense_weight(D)))
            if history[-2] - history[-1] <= tol * history[-2]:
                break
        layer.d.data = D.astype(dtype)
        if layer.bias is not None:
            layer.bias.data = problem.offset(layer._dense_weight(D)).astype(dtype)
        layer.fit_report = {"relative_error": history[-1], "iterations": sweep, "history": history,
                            "objective": objective, "used_inputs": problem.fit_intercept}
        return layer

    def _als_sweep(self, problem, D, ridge):
        """One ALS sweep over d_1 … d_K in place; returns each update's change of the error.

        Everything is carried as second moments, so a sweep costs O(K (N² log N + N³)) whatever
        the number of samples. Block k sees u = P_k z (z its input) and the map A_k after it:
            C_u = P C_z Pᵀ (C_u[i, j] = C_z[perm i, perm j]),   S_u = S_z Pᵀ (columns gathered),
        with C_z = Σ z zᵀ, S_z = Σ y zᵀ (centred), starting from C_z = pad(C), S_z = pad(W C); after
        the update z ← H(u ⊙ d_k) gives C_z ← H D C_u D H and S_z ← S_u D H.
        """
        perms, N = self.perms.data, self.size
        maps = self._output_maps(D)
        gram = self._output_grams(D)
        C_z = np.zeros((N, N))
        C_z[:self.in_features, :self.in_features] = problem.C
        S_z = np.zeros((self.out_features, N))
        S_z[:, :self.in_features] = problem.W @ problem.C
        changes = []
        for k, perm in enumerate(perms):
            C_u, S_u = C_z[np.ix_(perm, perm)], S_z[:, perm]
            D[k], change = _fit_diagonal(C_u, S_u, maps[k], gram[k], D[k], ridge)
            changes.append(change)
            C_z = _hxh(C_u * np.outer(D[k], D[k]))
            S_z = kernels.fwht(S_u * D[k])
        return changes

    def _output_grams(self, D):
        """M_k = A_kᵀ A_k (N, N) for every k, by M_K = H T H (T the truncation's projector) and
        M_{k−1} = H P_kᵀ D_k M_k D_k P_k H (two FWHTs per step instead of an (out·N²) product)."""
        perms = self.perms.data
        T = np.zeros((self.size, self.size))
        T[np.arange(self.out_features), np.arange(self.out_features)] = 1
        M = _hxh(T)
        grams = [None] * self.depth
        grams[-1] = M
        for k in range(self.depth - 1, 0, -1):
            M = _hxh(_scatter_both(M * np.outer(D[k], D[k]), perms[k]))
            grams[k - 1] = M
        return grams

    def _dense_weight(self, D):
        Z = np.zeros((self.in_features, self.size))
        Z[np.arange(self.in_features), np.arange(self.in_features)] = 1
        return _deep_spectral_forward(Z, self.perms.data, D)[1][:, :self.out_features].T

    def dense_weight(self):
        """The (out, in) matrix this layer applies (without the bias), in float64."""
        return self._dense_weight(self.d.data.astype(np.float64))

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, depth={self.depth}, "
                f"size={self.size}, bias={self.bias is not None}")
