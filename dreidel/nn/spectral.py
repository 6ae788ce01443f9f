"""Walsh–Hadamard (spectral) replacements for dense layers: `LinearWHT` and `DeepSpectralLinear`.

Notation (used by every docstring here). H is the orthonormal Walsh–Hadamard matrix of a supported
width N (2^k or m·2^k with m ∈ {12, 20, 28}; H = H_m ⊗ H_{2^k} / √N, symmetric, HᵀH = I, every entry
±1/√N). `pad` appends zeros up to N, `trunc` keeps the first `out_features` coordinates. A
permutation `perm` acts by gathering, (P v)[j] = v[perm[j]].

Cost per sample (multiply-adds, additions counted as one): an FWHT of width N = m·2^k costs
N·k + N·m (k butterfly stages plus one dense H_m per group; m = 1 for powers of two), a diagonal N.
A dense layer costs in·out.

`from_dense` fits the layer to a dense y = W x + b by (alternating) least squares; the math is in
`dreidel.nn.fitting` (`fit_diagonal`, `spectral_als_sweep`, `DenseProblem`; fits need only the
inputs' mean and covariance, which `InputStatistics` can accumulate batch by batch). It runs in
float64 and leaves `layer.fit_report` (relative error on the fitting data, sweeps, per-update history).
"""
import numpy as np

from dreidel import kernels
from dreidel.nn.fitting import finish_fit, fit_diagonal, spectral_als_sweep, start_fit
from dreidel.nn.module import Module, Parameter, check_dtype
from dreidel.progress import progress
from dreidel.random import generator
from dreidel.ops.spectral import linear_wht, spectral_stack
from dreidel.tensor import is_grad_enabled


# -- numpy-level building blocks (kernels) ---------------------------------------------------------
def _block_forward(x, perm, d):
    """y = H(P x ⊙ d) for rows of x (fused kernel; perm was validated at construction)."""
    return kernels.spectral_block(x, perm, d, validate=False)


# DeepSpectralLinear keeps its block inputs for the backward when K·rows·N of them would fit in this
# many bytes (it saves K − 1 of them, z_0 being x; they then stay in L3); larger batches recompute them in the backward from x (no K·rows·N activation buffer, but
# K − 1 more FWHTs and K more gathers per row). 16 MiB covers 4096 × 256 at K = 4, where saving
# measured 8% faster per fwd+bwd step than recomputing (bench/profile_spectral.py, 1 thread).
SAVE_MAX_BYTES = 16 << 20

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

    _input_kind = "float"  # input policy: see dreidel.nn.module

    def __init__(self, in_features, out_features, bias=True, rng=None, dtype=np.float32):
        dtype = check_dtype(dtype, type(self).__name__)
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
        problem, dtype = start_fit(weight, bias, inputs, dtype)
        n_out, n_in = problem.out_features, problem.in_features
        layer = cls(n_in, n_out, bias=problem.has_bias, dtype=dtype)
        A = hadamard_rows(layer.size, n_out)[:, :n_in]
        d, _ = fit_diagonal(problem.C, problem.W @ problem.C, A, A.T @ A, np.zeros(n_in), ridge)
        layer.d.data = d.astype(dtype)
        return finish_fit(layer, problem, A * d, dtype)

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
    is, per block from the last, ∂z = Pᵀ(d ⊙ H g), ∂d = Σ_s (H g) ⊙ P z (summed inside the gather
    Pᵀ, against the unpermuted z). The forward keeps the block inputs z_{k−1} when they fit in `SAVE_MAX_BYTES`, else the backward recomputes them
    from x tile by tile (then the layer holds no activations beyond x).

    Initialisation keeps the signal's variance: every block with d = ±1 is orthogonal (norm-
    preserving), and the first diagonal is scaled by √(N/in) so the zero padding does not shrink the
    per-coordinate variance: Var(y_j) ≈ ‖x‖² / in = Var(x) (not the 1/N shrink of the original
    ACDC/Fastfood-style layers, which vanishes with depth).

    Cost per sample: K·(FWHT(N) + N) multiply-adds (+ out for the bias), vs in·out dense.
    """

    _input_kind = "float"  # input policy: see dreidel.nn.module

    def __init__(self, in_features, out_features, depth=4, bias=True, seed=0, dtype=np.float32):
        dtype = check_dtype(dtype, type(self).__name__)
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
        # the block inputs z_{k-1} (unpermuted) for the backward while they fit in the caches,
        # beyond that the backward recomputes them tile by tile from X (cheaper than a memory round trip)
        save = self.capture_curvature or (needs_grad and d.size * rows * itemsize <= SAVE_MAX_BYTES)
        y, saved = spectral_stack(x, perms, d, bias, self.out_features, save)
        if self.capture_curvature:  # Σ_s (P_k z)² per block, for gauss_newton_diagonal (saved holds z)
            X = x.data.reshape(-1, self.in_features).astype(np.float64)
            sum_z2 = np.zeros((self.depth, self.size))
            sum_z2[0, :self.in_features] = np.einsum("sn,sn->n", X, X)     # z_0 = pad(x) is not saved
            sum_z2[1:] = np.einsum("ksn,ksn->kn", saved, saved, dtype=np.float64)
            self._curvature = (np.take_along_axis(sum_z2, self.perms.data, axis=1), rows)
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
        update is the closed-form least-squares solve of `fitting.fit_diagonal`. A sweep
        (`fitting.spectral_als_sweep`) updates d_1 … d_K in order; the objective never increases
        (each update minimises it given the others).
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
        problem, dtype = start_fit(weight, bias, inputs, dtype)
        layer = cls(problem.in_features, problem.out_features, depth=depth, bias=problem.has_bias,
                    seed=seed, dtype=dtype)
        D = layer.d.data.astype(np.float64)
        history, objective, sweep = [problem.relative_error(layer._dense_weight(D))], [], 0
        bar = progress(range(1, sweeps + 1), f"{cls.__name__}.from_dense {problem.out_features}×"
                       f"{problem.in_features}", delay=2.0)
        for sweep in bar:
            bar.set(error=history[-1])
            squared = history[-1] ** 2 * problem.total
            for change in spectral_als_sweep(layer, problem, D, ridge):  # relative error after each update
                squared += change
                objective.append(float(np.sqrt(max(squared, 0.0) / problem.total)))
            history.append(problem.relative_error(layer._dense_weight(D)))
            if history[-2] - history[-1] <= tol * history[-2]:
                break
        layer.d.data = D.astype(dtype)
        return finish_fit(layer, problem, layer._dense_weight(D), dtype, relative_error=history[-1],
                          iterations=sweep, history=history, objective=objective)

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
