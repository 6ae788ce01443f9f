"""Recasting's fitting math: the closed-form and alternating least-squares fits behind every
`from_dense` (replace a dense y = W x + b by a cheaper layer, on the data it sees).

- `InputStatistics`: streamed mean and covariance of a layer's inputs, all a fit needs.
- `DenseProblem`: the dense layer to approximate and those moments, in float64; its relative error
  and optimal offset for any fitted affine map.
- `fit_diagonal`: the least-squares diagonal of y = A (u ⊙ d), the one step of the spectral fits;
  `spectral_als_sweep` runs it over the K blocks of a `DeepSpectralLinear`.
- `output_subspace`: the activation-aware best rank-r output subspace (the low-rank fits).
- `dense_arrays`, `start_fit`, `finish_fit`: the argument handling and the tail shared by the
  `from_dense` of `LinearWHT`, `DeepSpectralLinear`, `LowRankLinear`, `SpectralLowRankLinear` and
  (arguments only: nothing to fit) `ALSHSparseDense`.

Everything runs in float64; the fitted layer gets the dtype of the dense weight (float32 for an
integer weight) unless `dtype=` says otherwise.
"""
import hashlib

import numpy as np

from dreidel import kernels
from dreidel.tensor import Tensor


# -- arguments -------------------------------------------------------------------------------------
def as_numeric_array(value, name):
    """`value` (Tensor, array or nested sequence) as a numpy array of a numeric dtype."""
    if isinstance(value, Tensor):
        value = value.data
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be numeric, got dtype {array.dtype}")
    return array


def dense_arrays(weight, bias=None):
    """(W, b, dtype) of a dense layer given as arrays or Tensors, or as the layer itself (anything with
    `.weight` and `.bias`, e.g. an `nn.Linear`, whose bias is used unless `bias` is given): W (out, in),
    b (out,) or None, both in their own dtype, checked; `dtype` the float dtype a layer built from them
    gets by default."""
    if hasattr(weight, "weight") and not isinstance(weight, np.ndarray):
        weight, bias = weight.weight, (getattr(weight, "bias", None) if bias is None else bias)
    W = as_numeric_array(weight, "weight")
    if W.ndim != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {W.shape}")
    b = None
    if bias is not None:
        b = as_numeric_array(bias, "bias")
        if b.shape != W.shape[:1]:
            raise ValueError(f"bias shape {b.shape} does not match weight {W.shape}: it must be "
                             f"({W.shape[0]},)")
    return W, b, (W.dtype if W.dtype.kind == "f" else np.dtype(np.float32))


# -- data ------------------------------------------------------------------------------------------
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
        """The statistics of one array of inputs (samples..., in_features)."""
        X = as_numeric_array(inputs, "inputs")
        if X.ndim < 2:
            raise ValueError(f"inputs must have shape (samples..., in_features), got {X.shape}")
        return cls(X.shape[-1]).update(X)

    def update(self, batch):
        """Add a batch (..., in_features); returns self."""
        X = as_numeric_array(batch, "inputs")
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
    `inputs` is an array (samples..., in) or an `InputStatistics`.
    """

    def __init__(self, weight, bias=None, inputs=None):
        W, b, self.dtype = dense_arrays(weight, bias)
        self.W = W = W.astype(np.float64)
        self.out_features, self.in_features = W.shape
        self.b = None if b is None else b.astype(np.float64)
        self.fit_intercept = inputs is not None
        if inputs is None:
            self.C, self.mean = np.eye(self.in_features), None
            self.total = float(np.sum(W * W))
            return
        if not isinstance(inputs, InputStatistics):
            X = as_numeric_array(inputs, "inputs")
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

    @property
    def has_bias(self):
        """Whether the fitted layer needs a bias: the dense one has one, or an offset is fitted."""
        return self.b is not None or self.fit_intercept

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


# -- the from_dense head and tail ------------------------------------------------------------------
def start_fit(weight, bias=None, inputs=None, dtype=None):
    """(problem, dtype): the `DenseProblem` of a `from_dense` call and the fitted layer's dtype
    (`dtype`, else the dense weight's). Build the layer with `bias=problem.has_bias`."""
    problem = DenseProblem(weight, bias, inputs)
    return problem, np.dtype(dtype or problem.dtype)


def finish_fit(layer, problem, W_hat, dtype, relative_error=None, iterations=1, **report):
    """Set the fitted layer's bias to the problem's offset for its operator `W_hat` (float64) and
    its `fit_report` {relative_error (of W_hat unless given), iterations, **report, used_inputs}."""
    if layer.bias is not None:
        layer.bias.data = np.asarray(problem.offset(W_hat)).astype(dtype)
    if relative_error is None:
        relative_error = problem.relative_error(W_hat)
    layer.fit_report = {"relative_error": relative_error, "iterations": iterations, **report,
                        "used_inputs": problem.fit_intercept}
    return layer


# -- diagonal fits (spectral layers) ---------------------------------------------------------------
def fit_diagonal(C_u, S_u, A, M, d_old, ridge=1e-9):
    """Least-squares diagonal of the model y = A (u ⊙ d), the one step of every spectral fit.

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


def spectral_output_grams(layer, D):
    """M_k = A_kᵀ A_k (N, N) for every block k of a `DeepSpectralLinear` with diagonals D (K, N)
    (A_k its map after block k, see `DeepSpectralLinear._output_maps`), by M_K = H T H (T the
    truncation's projector) and M_{k−1} = H P_kᵀ D_k M_k D_k P_k H (two FWHTs per step instead of
    an (out·N²) product)."""
    perms = layer.perms.data
    T = np.zeros((layer.size, layer.size))
    T[np.arange(layer.out_features), np.arange(layer.out_features)] = 1
    M = _hxh(T)
    grams = [None] * layer.depth
    grams[-1] = M
    for k in range(layer.depth - 1, 0, -1):
        M = _hxh(_scatter_both(M * np.outer(D[k], D[k]), perms[k]))
        grams[k - 1] = M
    return grams


def spectral_als_sweep(layer, problem, D, ridge):
    """One ALS sweep of a `DeepSpectralLinear`'s diagonals D (K, N, float64) over d_1 … d_K, in
    place, fitting `problem`; returns each update's change of the squared error.

    Everything is carried as second moments, so a sweep costs O(K (N² log N + N³)) whatever
    the number of samples. Block k sees u = P_k z (z its input) and the map A_k after it:
        C_u = P C_z Pᵀ (C_u[i, j] = C_z[perm i, perm j]),   S_u = S_z Pᵀ (columns gathered),
    with C_z = Σ z zᵀ, S_z = Σ y zᵀ (centred), starting from C_z = pad(C), S_z = pad(W C); after
    the update z ← H(u ⊙ d_k) gives C_z ← H D C_u D H and S_z ← S_u D H.
    """
    perms, N = layer.perms.data, layer.size
    maps = layer._output_maps(D)
    gram = spectral_output_grams(layer, D)
    C_z = np.zeros((N, N))
    C_z[:layer.in_features, :layer.in_features] = problem.C
    S_z = np.zeros((layer.out_features, N))
    S_z[:, :layer.in_features] = problem.W @ problem.C
    changes = []
    for k, perm in enumerate(perms):
        C_u, S_u = C_z[np.ix_(perm, perm)], S_z[:, perm]
        D[k], change = fit_diagonal(C_u, S_u, maps[k], gram[k], D[k], ridge)
        changes.append(change)
        C_z = _hxh(C_u * np.outer(D[k], D[k]))
        S_z = kernels.fwht(S_u * D[k])
    return changes


# -- low-rank fits ---------------------------------------------------------------------------------
_last_eigh = {}


def _output_eigh(W, C):
    """Eigenpairs of W C Wᵀ, largest first. The last one is kept, keyed by the bytes of W and C: a
    planner fits several ranks of one layer in a row, and the eigh (seconds at width 1536) is all
    they share; the same input gives the same bits either way."""
    key = (W.shape, C.shape, hashlib.blake2b(W.tobytes() + C.tobytes(), digest_size=16).digest())
    if _last_eigh.get("key") != key:
        values, vectors = np.linalg.eigh(W @ C @ W.T)
        _last_eigh.clear()
        _last_eigh.update(key=key, values=values[::-1], vectors=vectors[:, ::-1])
    return _last_eigh["values"], _last_eigh["vectors"]


def output_subspace(W, C, rank):
    """Top-`rank` left singular vectors P_r of W C^{1/2}, C the centred input covariance.

    min over rank-r Ŵ of ‖(W − Ŵ) C^{1/2}‖_F (the centred output error on the data) is reached at
    Ŵ = [W C^{1/2}]_r C^{−1/2} = P_r P_rᵀ W (Eckart–Young: [W S]_r = P_r P_rᵀ W S), so only P_r is needed:
    the top eigenvectors of W C Wᵀ, the covariance of the outputs. This needs no C^{−1/2}, hence no
    ridge, and stays exact when C is singular; then the directions the data does not reach are taken
    from W itself (truncated SVD of what is left). Without inputs (C = I) it is the truncated SVD.
    """
    values, vectors = _output_eigh(W, C)
    reached = int(np.sum(values > 1e-12 * max(values[0], 1e-300)))
    P = vectors[:, :min(rank, reached)]
    if P.shape[1] < rank:
        extra, _, _ = np.linalg.svd(W - P @ (P.T @ W), full_matrices=False)
        P = np.concatenate([P, extra[:, :rank - P.shape[1]]], axis=1)
    return P
