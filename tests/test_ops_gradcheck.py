"""Every differentiable op and loss against float64 central differences (`dreidel.gradcheck`).

Hypothesis picks shapes, broadcasting pairs, axes and a seed for the values; sizes stay tiny because
a gradcheck costs O(numel) forward passes. Inputs avoid non-differentiable points by construction
(relu/abs/l1 away from 0, max/min/maximum/minimum/clip without ties or boundary hits).
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import dreidel
from dreidel import Tensor, functional as F, ops
from dreidel.tensor import record

CHECK = settings(max_examples=20, deadline=None)
FEW = settings(max_examples=10, deadline=None)

pytestmark = pytest.mark.usefixtures("single_thread_kernels")
seeds = st.integers(0, 2**32 - 1)
small_shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3)
nonscalar_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3)


def leaf(array):
    return Tensor(np.array(array, dtype=np.float64), requires_grad=True)


def normal(rng, shape):
    return rng.standard_normal(shape)


def positive(rng, shape):
    return 0.5 + rng.random(shape)


def away_from_zero(rng, shape, gap=0.2):
    """|v| ≥ gap: far from kinks at 0 compared with gradcheck's eps of 1e-6."""
    return rng.choice([-1.0, 1.0], size=shape) * (gap + rng.random(shape))


def distinct(rng, count):
    """`count` values at least 0.2 apart (no ties for max/min/maximum), shuffled."""
    return rng.permutation(count) * 0.3 + rng.uniform(0, 0.1, count) - 0.15 * count


def check(fn, *inputs):
    assert dreidel.gradcheck(fn, *inputs)


# -- elementwise, with broadcasting ---------------------------------------------------------------
BINARY = {
    "add": (ops.add, normal, normal),
    "sub": (ops.sub, normal, normal),
    "mul": (ops.mul, normal, normal),
    "div": (ops.div, normal, away_from_zero),
    "pow": (ops.pow, positive, normal),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@CHECK
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3), seed=seeds)
def test_binary_broadcasting(name, shapes, seed):
    op, make_a, make_b = BINARY[name]
    rng = np.random.default_rng(seed)
    a_shape, b_shape = shapes.input_shapes
    check(op, leaf(make_a(rng, a_shape)), leaf(make_b(rng, b_shape)))


@pytest.mark.parametrize("op", [ops.maximum, ops.minimum], ids=["maximum", "minimum"])
@CHECK
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3), seed=seeds)
def test_maximum_minimum_broadcasting(op, shapes, seed):
    rng = np.random.default_rng(seed)
    a_shape, b_shape = shapes.input_shapes
    na, nb = math.prod(a_shape), math.prod(b_shape)
    pool = distinct(rng, na + nb)  # a and b never tie
    check(op, leaf(pool[:na].reshape(a_shape)), leaf(pool[na:].reshape(b_shape)))


@CHECK
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=3), seed=seeds)
def test_where_broadcasting(shapes, seed):
    rng = np.random.default_rng(seed)
    c_shape, a_shape, b_shape = shapes.input_shapes
    condition = rng.random(c_shape) > 0.5
    check(lambda a, b: ops.where(condition, a, b), leaf(normal(rng, a_shape)), leaf(normal(rng, b_shape)))


@CHECK
@given(shape=small_shapes, seed=seeds)
def test_scalar_operands_both_sides(shape, seed):
    rng = np.random.default_rng(seed)
    x = leaf(positive(rng, shape))
    check(lambda t: 2.0 - t * 3.0 + 1.5 / t + t ** 2 + 2.0 ** t - (-t), x)


UNARY = {
    "neg": (ops.neg, normal),
    "exp": (ops.exp, normal),
    "log": (ops.log, positive),
    "sqrt": (ops.sqrt, positive),
    "abs": (ops.abs, away_from_zero),
    "sin": (ops.sin, normal),
    "cos": (ops.cos, normal),
    "tanh": (ops.tanh, normal),
    "sigmoid": (ops.sigmoid, normal),
    "relu": (ops.relu, away_from_zero),
    "silu": (ops.silu, normal),
    "softplus": (ops.softplus, normal),
    "erf": (ops.erf, normal),
    "gelu_erf": (lambda t: ops.gelu(t), normal),
    "gelu_tanh": (lambda t: ops.gelu(t, approximate="tanh"), normal),
    "clip": (lambda t: ops.clip(t, -0.5, 0.5), lambda rng, s: rng.choice([-1.2, -0.3, 0.0, 0.3, 1.2], s)
             + rng.uniform(-0.1, 0.1, s)),
    "clip_min_only": (lambda t: ops.clip(t, min=0.0), away_from_zero),
    "cast_float64": (lambda t: ops.cast(t, np.float64), normal),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@CHECK
@given(shape=small_shapes, seed=seeds)
def test_unary(name, shape, seed):
    op, make = UNARY[name]
    check(op, leaf(make(np.random.default_rng(seed), shape)))


def test_unary_at_large_magnitudes():
    """Saturating functions keep finite, correct gradients far out (no overflow in exp)."""
    x = leaf([-40.0, -12.0, 12.0, 40.0])
    for op in (ops.sigmoid, ops.tanh, ops.silu, ops.softplus, ops.gelu, lambda t: ops.gelu(t, "tanh")):
        check(op, x)


# -- reductions ------------------------------------------------------------------------------------
@st.composite
def shape_and_axis(draw, allow_none=True):
    shape = draw(nonscalar_shapes)
    ndim = len(shape)
    choices = [st.integers(-ndim, ndim - 1), hnp.valid_tuple_axes(ndim, min_size=1)]
    if allow_none:
        choices.append(st.none())
    return shape, draw(st.one_of(*choices)), draw(st.booleans())


def _count(shape, axis):
    if axis is None:
        return math.prod(shape)
    axes = axis if isinstance(axis, tuple) else (axis,)
    return math.prod(shape[a] for a in axes)


@pytest.mark.parametrize("op", [ops.sum, ops.mean, ops.logsumexp], ids=["sum", "mean", "logsumexp"])
@CHECK
@given(case=shape_and_axis(), seed=seeds)
def test_smooth_reductions(op, case, seed):
    shape, axis, keepdims = case
    x = leaf(normal(np.random.default_rng(seed), shape))
    check(lambda t: op(t, axis=axis, keepdims=keepdims), x)


@pytest.mark.parametrize("op", [ops.max, ops.min], ids=["max", "min"])
@CHECK
@given(case=shape_and_axis(), seed=seeds)
def test_max_min_reductions(op, case, seed):
    shape, axis, keepdims = case
    x = leaf(distinct(np.random.default_rng(seed), math.prod(shape)).reshape(shape))
    check(lambda t: op(t, axis=axis, keepdims=keepdims), x)


@CHECK
@given(case=shape_and_axis(), seed=seeds, correction=st.sampled_from([0, 1]))
def test_var(case, seed, correction):
    shape, axis, keepdims = case
    if _count(shape, axis) - correction < 1:
        shape = tuple(n + 1 for n in shape)  # keep the denominator positive
    x = leaf(normal(np.random.default_rng(seed), shape))
    check(lambda t: ops.var(t, axis=axis, keepdims=keepdims, correction=correction), x)


def test_reductions_accept_axis_lists():
    x = leaf(np.random.default_rng(1).standard_normal((2, 3, 2)))
    for op in (ops.sum, ops.mean, ops.var, ops.logsumexp):
        check(lambda t: op(t, axis=[0, 2], keepdims=False), x)


# -- linear algebra --------------------------------------------------------------------------------
@st.composite
def matmul_shapes(draw):
    n, k, m = (draw(st.integers(1, 3)) for _ in range(3))
    batch_a, batch_b = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=2)).input_shapes
    a = (k,) if draw(st.booleans()) else batch_a + (n, k)
    b = (k,) if draw(st.booleans()) else batch_b + (k, m)
    return a, b


@CHECK
@given(shapes=matmul_shapes(), seed=seeds)
def test_matmul_1d_batched_broadcasting(shapes, seed):
    rng = np.random.default_rng(seed)
    a, b = leaf(normal(rng, shapes[0])), leaf(normal(rng, shapes[1]))
    check(ops.matmul, a, b)
    check(lambda u, v: u @ v, a, b)


@CHECK
@given(batch=hnp.array_shapes(min_dims=0, max_dims=2, max_side=3), features=st.tuples(
    st.integers(1, 3), st.integers(1, 3)), bias=st.booleans(), seed=seeds)
def test_linear(batch, features, bias, seed):
    rng = np.random.default_rng(seed)
    fan_in, fan_out = features
    inputs = [leaf(normal(rng, batch + (fan_in,))), leaf(normal(rng, (fan_out, fan_in)))]
    if bias:
        inputs.append(leaf(normal(rng, (fan_out,))))
    check(F.linear, *inputs)


# -- shapes and indexing ---------------------------------------------------------------------------
@CHECK
@given(shape=nonscalar_shapes, seed=seeds)
def test_reshape_flatten_squeeze_unsqueeze(shape, seed):
    x = leaf(normal(np.random.default_rng(seed), shape))
    check(lambda t: ops.reshape(t, tuple(reversed(shape))) * 2, x)
    check(lambda t: t.reshape(-1, 1), x)
    check(lambda t: ops.flatten(t, 0, -1), x)
    check(lambda t: ops.unsqueeze(t, -1), x)
    check(lambda t: ops.squeeze(ops.unsqueeze(t, 0), 0), x)


@CHECK
@given(shape=nonscalar_shapes, data=st.data(), seed=seeds)
def test_transpose_and_swapaxes(shape, data, seed):
    ndim = len(shape)
    perm = data.draw(st.permutations(range(ndim)))
    negative = [a - ndim if data.draw(st.booleans()) else a for a in perm]  # mix negative axes in
    a1, a2 = data.draw(st.integers(-ndim, ndim - 1)), data.draw(st.integers(-ndim, ndim - 1))
    x = leaf(normal(np.random.default_rng(seed), shape))
    check(lambda t: ops.transpose(t, negative), x)
    check(lambda t: ops.swapaxes(t, a1, a2), x)
    check(lambda t: t.T, x)


@CHECK
@given(shape=small_shapes, lead=hnp.array_shapes(min_dims=0, max_dims=2, max_side=2), data=st.data(),
       seed=seeds)
def test_expand(shape, lead, data, seed):
    ones = tuple(1 if data.draw(st.booleans()) else n for n in shape)
    target = lead + tuple(data.draw(st.integers(1, 3)) if n == 1 else n for n in ones)
    x = leaf(normal(np.random.default_rng(seed), ones))
    check(lambda t: ops.expand(t, target), x)


@CHECK
@given(shape=nonscalar_shapes, data=st.data(), seed=seeds)
def test_getitem_basic(shape, data, seed):
    index = tuple(data.draw(st.one_of(st.slices(n), st.integers(-n, n - 1))) for n in shape)
    x = leaf(normal(np.random.default_rng(seed), shape))
    check(lambda t: t[index], x)
    check(lambda t: t[(Ellipsis, None) + index[-1:]], x)


@CHECK
@given(shape=nonscalar_shapes, seed=seeds)
def test_getitem_integer_arrays_with_repeats(shape, seed):
    rng = np.random.default_rng(seed)
    rows = rng.integers(-shape[0], shape[0], size=4)
    rows[-1] = rows[0]  # a repeated index must accumulate, not overwrite
    x = leaf(normal(rng, shape))
    check(lambda t: t[rows], x)
    check(lambda t: t[Tensor(rows)], x)
    check(lambda t: t[rows.tolist()], x)
    check(lambda t: t[..., np.array([0, 0, -1])], x)
    mask = rng.random(shape) > 0.3
    check(lambda t: t[mask], x)


@CHECK
@given(shape=nonscalar_shapes, data=st.data(), seed=seeds)
def test_take_any_axis_with_repeats(shape, data, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, shape[axis], size=(2, 3))
    indices[1, 2] = indices[0, 0]
    check(lambda t: ops.take(t, indices, axis=axis), leaf(normal(rng, shape)))


@CHECK
@given(shape=nonscalar_shapes, data=st.data(), seed=seeds)
def test_concat_stack_split(shape, data, seed):
    rng = np.random.default_rng(seed)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    pieces = [leaf(normal(rng, shape[:axis % len(shape)] + (s,) + shape[axis % len(shape) + 1:])) for s in sizes]
    check(lambda *ts: ops.concat(ts, axis=axis), *pieces)
    same = [leaf(normal(rng, shape)) for _ in sizes]
    new_axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    check(lambda *ts: ops.stack(ts, axis=new_axis), *same)
    joined = leaf(normal(rng, shape[:axis % len(shape)] + (sum(sizes),) + shape[axis % len(shape) + 1:]))
    check(lambda t: ops.split(t, sizes, axis=axis), joined)
    check(lambda t: ops.split(t, 2, axis=axis), joined)


@CHECK
@given(shape=nonscalar_shapes, data=st.data(), seed=seeds)
def test_pad_numpy_and_torch_order(shape, data, seed):
    widths = [tuple(data.draw(st.integers(0, 2)) for _ in range(2)) for _ in shape]
    x = leaf(normal(np.random.default_rng(seed), shape))
    check(lambda t: ops.pad(t, widths, value=0.5), x)
    flat = [w for pair in reversed(widths) for w in pair]
    check(lambda t: F.pad(t, flat, value=-1.0), x)


# -- normalisation and probabilities ---------------------------------------------------------------
@pytest.mark.parametrize("op", [ops.softmax, ops.log_softmax], ids=["softmax", "log_softmax"])
@CHECK
@given(shape=nonscalar_shapes, data=st.data(), seed=seeds)
def test_softmax_log_softmax(op, shape, data, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    rng = np.random.default_rng(seed)
    check(lambda t: op(t, axis=axis), leaf(3 * normal(rng, shape)))
    # a -inf attention mask: masked entries get no gradient and nothing turns NaN
    mask = rng.random(shape) > 0.4
    mask = mask | (np.arange(shape[axis]) == 0).reshape((-1,) + (1,) * (len(shape) - 1 - axis % len(shape)))
    check(lambda t: ops.where(mask, op(ops.where(mask, t, -np.inf), axis=axis), 0.0), leaf(normal(rng, shape)))


@pytest.mark.parametrize("norm", ["layer_norm", "rms_norm"])
@CHECK
@given(shape=nonscalar_shapes, data=st.data(), seed=seeds)
def test_layer_norm_rms_norm(norm, shape, data, seed):
    trailing = shape[len(shape) - data.draw(st.integers(1, len(shape))):]
    if math.prod(trailing) < 2:
        trailing, shape = (2,), shape[:-1] + (2,)
    rng = np.random.default_rng(seed)
    inputs = [leaf(normal(rng, shape))]
    with_weight, with_bias = data.draw(st.booleans()), data.draw(st.booleans()) and norm == "layer_norm"
    if with_weight:
        inputs.append(leaf(normal(rng, trailing)))
    if with_bias:
        inputs.append(leaf(normal(rng, trailing)))

    def fn(x, *params):
        weight = params[0] if with_weight else None
        if norm == "rms_norm":
            return F.rms_norm(x, trailing, weight)
        return F.layer_norm(x, trailing, weight, params[-1] if with_bias else None)
    check(fn, *inputs)


@FEW
@given(seed=seeds)
def test_embedding_repeated_rows(seed):
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, 4, size=(2, 3))
    indices[1, 1] = indices[0, 0]
    check(lambda w: F.embedding(indices, w), leaf(normal(rng, (4, 3))))


@FEW
@given(shape=nonscalar_shapes, seed=seeds, p=st.sampled_from([0.1, 0.5]))
def test_dropout_fixed_rng(shape, seed, p):
    x = leaf(normal(np.random.default_rng(seed), shape))
    check(lambda t: F.dropout(t, p, training=True, rng=np.random.default_rng(seed)), x)


# -- losses ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@FEW
@given(shape=nonscalar_shapes, seed=seeds)
def test_mse_l1(reduction, shape, seed):
    rng = np.random.default_rng(seed)
    target = normal(rng, shape)
    x = leaf(target + away_from_zero(rng, shape))  # l1 has a kink where input == target
    check(lambda t, y: F.mse_loss(t, y, reduction), x, leaf(target))
    check(lambda t, y: F.l1_loss(t, y, reduction), x, leaf(target))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@CHECK
@given(batch=st.integers(1, 4), classes=st.integers(2, 4), spatial=st.sampled_from([(), (2,)]),
       smoothing=st.sampled_from([0.0, 0.1]), seed=seeds)
def test_cross_entropy_ignore_index_label_smoothing(reduction, batch, classes, spatial, smoothing, seed):
    rng = np.random.default_rng(seed)
    logits = leaf(2 * normal(rng, (batch, classes) + spatial))
    target = rng.integers(0, classes, size=(batch,) + spatial)
    target.flat[0] = -100  # ignored
    check(lambda t: F.cross_entropy(t, target, label_smoothing=smoothing, reduction=reduction), logits)
    other = target.copy()
    other.flat[0] = 0
    check(lambda t: F.cross_entropy(t, other, ignore_index=int(other.flat[-1]), reduction=reduction), logits)


@FEW
@given(batch=st.integers(1, 4), classes=st.integers(2, 4), seed=seeds)
def test_nll_loss(batch, classes, seed):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, classes, size=batch)
    target[0] = -100
    check(lambda t: F.nll_loss(ops.log_softmax(t), target), leaf(normal(rng, (batch, classes))))


@pytest.mark.parametrize("log_target", [False, True])
@FEW
@given(batch=st.integers(1, 3), classes=st.integers(2, 4), seed=seeds)
def test_kl_div(log_target, batch, classes, seed):
    rng = np.random.default_rng(seed)
    model = leaf(normal(rng, (batch, classes)))
    target = leaf(normal(rng, (batch, classes)))
    if log_target:
        check(lambda m, t: F.kl_div(ops.log_softmax(m), ops.log_softmax(t), log_target=True), model, target)
    else:
        check(lambda m, t: F.kl_div(ops.log_softmax(m), ops.softmax(t)), model, target)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@FEW
@given(shape=nonscalar_shapes, seed=seeds)
def test_binary_cross_entropy_with_logits(reduction, shape, seed):
    rng = np.random.default_rng(seed)
    logits = leaf(3 * away_from_zero(rng, shape, gap=0.05))
    targets = leaf(rng.random(shape))
    check(lambda x, y: F.binary_cross_entropy_with_logits(x, y, reduction), logits, targets)


def test_binary_cross_entropy_with_logits_gradient_at_zero_logit():
    """A zero-initialised output layer gives logits of exactly 0: d/dx = sigmoid(0) − t = 0.5 − t."""
    x = leaf([0.0, 0.0])
    F.binary_cross_entropy_with_logits(x, np.array([1.0, 0.0]), reduction="sum").backward()
    np.testing.assert_allclose(x.grad, [-0.5, 0.5])


# -- the checker itself ----------------------------------------------------------------------------
class _WrongSquare(dreidel.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        x, = ctx.saved_tensors
        return grad * x  # should be 2·x


def test_gradcheck_catches_a_wrong_backward():
    x = leaf([0.5, -1.0, 2.0])
    with pytest.raises(dreidel.GradcheckError, match="input 0"):
        dreidel.gradcheck(_WrongSquare.apply, x)
    assert dreidel.gradcheck(_WrongSquare.apply, x, raise_exception=False) is False


def test_gradcheck_catches_a_wrong_broadcast_reduction():
    """A backward that forgets one parent's gradient (returns zeros) must fail too."""
    def bad_mul(a, b):
        return record(a.data * b.data, (a, b), lambda g: (g * b.data, np.zeros_like(g)))
    with pytest.raises(dreidel.GradcheckError, match="input 1"):
        dreidel.gradcheck(bad_mul, leaf([[1.0, 2.0]]), leaf([3.0, 4.0]))


def test_gradcheck_rejects_float32_and_no_grad_inputs():
    with pytest.raises(TypeError, match="float64"):
        dreidel.gradcheck(ops.exp, Tensor(np.ones(2, np.float32), requires_grad=True))
    with pytest.raises(ValueError, match="requires_grad"):
        dreidel.gradcheck(ops.exp, Tensor(np.ones(2)))


def test_gradcheck_handles_non_contiguous_inputs():
    x = leaf(np.arange(6.0).reshape(2, 3))
    x.data = x.data.T  # Fortran order: a reshape(-1) would be a copy, and perturbing it would do nothing
    check(lambda t: t * t, x)


# -- the ops the ONNX importer needs (values against references: tests/test_ops_reference.py) ------
@pytest.mark.parametrize("exclusive", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_cumsum(exclusive, reverse):
    x = leaf(np.random.default_rng(1).standard_normal((3, 4)))
    for dim in (0, 1, -1):
        check(lambda t: ops.cumsum(t, dim, exclusive, reverse), x)
    check(lambda t: ops.cumsum(t, 0, exclusive, reverse), leaf(np.array(2.5)))


@CHECK
@given(shape=nonscalar_shapes, data=st.data(), seed=seeds, zeros=st.integers(0, 2))
def test_prod_with_zeros(shape, data, seed, zeros):
    rng = np.random.default_rng(seed)
    values = normal(rng, shape).reshape(-1)
    values[rng.permutation(values.size)[:zeros]] = 0.0  # exact zeros: the gradient must not divide by x
    x = leaf(values.reshape(shape))
    dim = data.draw(st.sampled_from([None, 0, -1, tuple(range(len(shape)))]))
    keepdim = data.draw(st.booleans())
    check(lambda t: ops.prod(t, dim, keepdim), x)


def test_einsum():
    rng = np.random.default_rng(2)
    a, b, c = leaf(rng.standard_normal((2, 3))), leaf(rng.standard_normal((3, 4))), leaf(rng.standard_normal(4))
    check(lambda p, q: ops.einsum("ij,jk->ik", p, q), a, b)
    check(lambda p, q, r: ops.einsum("ij,jk,k->i", p, q, r), a, b, c)
    check(lambda p, q: ops.einsum("ij,jk", p, q), a, b)
    check(lambda p: ops.einsum("ij->", p), a)
    check(lambda p, r: ops.einsum("ij,k->ijk", p, r), a, c)  # outer product
    check(lambda p, r: ops.einsum("ij,k->i", p, r), a, c)  # letters one operand carries alone
    batch, single = leaf(rng.standard_normal((2, 1, 2, 3))), leaf(rng.standard_normal((3, 3, 2)))
    check(lambda p, q: ops.einsum("...ij,...jk->...ik", p, q), batch, single)  # broadcast ellipsis


def test_tile():
    x = leaf(np.random.default_rng(3).standard_normal((2, 3)))
    for repeats in [(2, 3), (1, 2), (3,), (2, 1, 2)]:
        check(lambda t: ops.tile(t, repeats), x)


def test_gather_elements_with_repeats():
    rng = np.random.default_rng(4)
    x = leaf(rng.standard_normal((3, 4)))
    for dim in (0, 1):
        index = rng.integers(-x.shape[dim], x.shape[dim], size=(2, 3) if dim else (5, 4))
        check(lambda t: ops.gather_elements(t, index, dim), x)


@pytest.mark.parametrize("reduction", ["none", "add"])
def test_scatter_nd(reduction):
    rng = np.random.default_rng(5)
    data, updates = leaf(rng.standard_normal((4, 3))), leaf(rng.standard_normal((3, 3)))
    indices = np.array([[1], [3], [1]])  # a repeated index: for "none" only the last written update counts
    check(lambda d, u: ops.scatter_nd(d, indices, u, reduction), data, updates)
    fixed = Tensor(rng.standard_normal(2))  # updates needing no gradient; element indices (k = 2)
    check(lambda d: ops.scatter_nd(d, np.array([[0, 2], [3, 1]]), fixed, reduction), data)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_modes_with_cropping(mode):
    x = leaf(np.random.default_rng(6).standard_normal((4, 5)))
    check(lambda t: ops.pad(t, [(3, -1), (-2, 4)], mode=mode, value=0.5), x)
    check(lambda t: ops.pad(t, [(2, 2), (0, 1)], mode=mode), x)


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_pools_with_per_side_pads(ceil_mode):
    rng = np.random.default_rng(7)
    x = leaf(rng.permutation(2 * 5 * 6).reshape(1, 2, 5, 6) * 0.1)  # distinct values: no ties in max
    pads = ((1, 0), (0, 2))
    check(lambda t: ops.max_pool(t, (3, 2), (2, 2), pads, (1, 2), ceil_mode), x)
    for include in (False, True):
        check(lambda t: ops.avg_pool(t, (3, 2), (2, 2), pads, ceil_mode, include, dilation=(1, 2)), x)


@pytest.mark.parametrize("mode,transform", [("nearest", "half_pixel"), ("nearest", "asymmetric"),
                                            ("linear", "half_pixel"), ("linear", "align_corners"),
                                            ("cubic", "half_pixel"), ("cubic", "pytorch_half_pixel")])
def test_resize(mode, transform):
    x = leaf(np.random.default_rng(8).standard_normal((1, 2, 4, 3)))
    for size in [(7, 5), (3, 2)]:
        check(lambda t: ops.resize(t, size=size, axes=(2, 3), mode=mode, coordinate_transformation_mode=transform), x)
    check(lambda t: ops.resize(t, size=(6, 3), axes=(2, 3), mode="cubic", exclude_outside=True), x)


def test_interpolate_bicubic():
    x = leaf(np.random.default_rng(9).standard_normal((1, 1, 4, 3)))
    check(lambda t: ops.interpolate(t, size=(6, 5), mode="bicubic"), x)
    check(lambda t: ops.interpolate(t, size=(3, 5), mode="bicubic", align_corners=True), x)
