"""The Tensor and its graph: forward values vs numpy, dtypes, broadcasting, backward mechanics,
no_grad, hooks, custom Functions, numerical stability."""
import math
import sys
import threading
import weakref

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import dreidel
from dreidel import Tensor, functional as F, ops

FAST = settings(max_examples=25, deadline=None)
pytestmark = pytest.mark.usefixtures("single_thread_kernels")
seeds = st.integers(0, 2**32 - 1)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)
float_dtypes = st.sampled_from([np.float32, np.float64])

_erf = np.vectorize(math.erf, otypes=[np.float64])


def tolerance(dtype):
    return dict(rtol=2e-6, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


# -- forward values and dtypes vs numpy ------------------------------------------------------------
UNARY = {  # name: (op, float64 reference, domain)
    "neg": (ops.neg, np.negative, None),
    "exp": (ops.exp, np.exp, None),
    "log": (ops.log, np.log, "positive"),
    "sqrt": (ops.sqrt, np.sqrt, "positive"),
    "abs": (ops.abs, np.abs, None),
    "sin": (ops.sin, np.sin, None),
    "cos": (ops.cos, np.cos, None),
    "tanh": (ops.tanh, np.tanh, None),
    "sigmoid": (ops.sigmoid, lambda v: 1 / (1 + np.exp(-v)), None),
    "relu": (ops.relu, lambda v: np.maximum(v, 0), None),
    "silu": (ops.silu, lambda v: v / (1 + np.exp(-v)), None),
    "softplus": (ops.softplus, lambda v: np.logaddexp(0, v), None),
    "erf": (ops.erf, _erf, None),
    "gelu": (ops.gelu, lambda v: 0.5 * v * (1 + _erf(v / math.sqrt(2))), None),
    "gelu_tanh": (lambda t: ops.gelu(t, approximate="tanh"),
                  lambda v: 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3))), None),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@FAST
@given(shape=shapes, dtype=float_dtypes, seed=seeds)
def test_unary_forward_matches_numpy_and_keeps_dtype(name, shape, dtype, seed):
    op, reference, domain = UNARY[name]
    rng = np.random.default_rng(seed)
    values = (0.1 + 3 * rng.random(shape)) if domain == "positive" else 3 * rng.standard_normal(shape)
    values = np.asarray(values, dtype=dtype)
    out = op(Tensor(values))
    assert out.dtype == dtype and out.shape == values.shape
    np.testing.assert_allclose(out.data, reference(values.astype(np.float64)), **tolerance(dtype))


BINARY = {
    "add": (ops.add, np.add), "sub": (ops.sub, np.subtract), "mul": (ops.mul, np.multiply),
    "div": (ops.div, np.divide), "maximum": (ops.maximum, np.maximum), "minimum": (ops.minimum, np.minimum),
    "pow": (ops.pow, np.power), "matmul_like_mul": (lambda a, b: a * b, np.multiply),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@FAST
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3), dtype=float_dtypes,
       seed=seeds)
def test_binary_forward_broadcasts_like_numpy_and_grads_keep_input_shapes(name, shapes, dtype, seed):
    op, reference = BINARY[name]
    rng = np.random.default_rng(seed)
    a_shape, b_shape = shapes.input_shapes
    a = Tensor((0.5 + rng.random(a_shape)).astype(dtype), requires_grad=True)
    b = Tensor(rng.standard_normal(b_shape).astype(dtype), requires_grad=True)
    out = op(a, b)
    assert out.dtype == dtype
    np.testing.assert_allclose(out.data, reference(a.data.astype(np.float64), b.data.astype(np.float64)),
                               **(tolerance(dtype) if name != "pow" else dict(rtol=1e-5)))
    out.sum().backward()
    assert a.grad.shape == a_shape and b.grad.shape == b_shape
    assert a.grad.dtype == dtype and b.grad.dtype == dtype


def test_python_scalars_keep_the_tensor_dtype():
    for dtype in (np.float32, np.float64):
        x = Tensor(np.array([1.0, 2.0], dtype=dtype))
        for out in (x + 1.5, 1.5 + x, x - 2, 2 - x, x * 0.5, 0.5 * x, x / 3, 3 / x, x ** 2, 2.0 ** x, -x,
                    abs(x), np.float64(2.0) * x, ops.where(x.data > 1, x, 0.0), ops.clip(x, 0.0, 1.5)):
            assert out.dtype == dtype, out


def test_tensor_construction_dtypes():
    assert Tensor(1.5).dtype == np.float32
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(np.ones(2)).dtype == np.float64
    assert Tensor(np.ones(2, np.float16)).dtype == np.float32
    assert Tensor([1, 2]).dtype.kind == "i"
    assert dreidel.tensor([1.0], dtype=np.float64).dtype == np.float64
    with pytest.raises(TypeError, match="floating"):
        Tensor([1, 2], requires_grad=True)


@pytest.mark.parametrize("reduction", ["sum", "mean", "max", "min", "var"])
@FAST
@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=2, max_side=4), data=st.data(),
       dtype=float_dtypes, seed=seeds)
def test_reductions_match_numpy(reduction, shape, data, dtype, seed):
    axis = data.draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1),
                               hnp.valid_tuple_axes(len(shape), min_size=1)))
    keepdims = data.draw(st.booleans())
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    out = getattr(Tensor(x), reduction)(axis=axis, keepdims=keepdims)
    kwargs = dict(ddof=1) if reduction == "var" else {}
    expected = getattr(np, reduction)(x.astype(np.float64), axis=axis, keepdims=keepdims, **kwargs)
    assert out.dtype == dtype and out.shape == np.shape(expected)
    np.testing.assert_allclose(out.data, expected, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5)


@FAST
@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=4), seed=seeds, dtype=float_dtypes)
def test_softmax_logsumexp_match_numpy(shape, seed, dtype):
    x = (5 * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)
    ref = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    np.testing.assert_allclose(ops.softmax(Tensor(x)).data, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.log_softmax(Tensor(x)).data, np.log(ref), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ops.logsumexp(Tensor(x)).data, np.log(np.exp(x.astype(np.float64)).sum(-1)),
                               rtol=1e-5)
    for op in (ops.softmax, ops.log_softmax, ops.logsumexp):
        assert op(Tensor(x)).dtype == dtype


@FAST
@given(a_batch=hnp.array_shapes(min_dims=0, max_dims=2, max_side=3), seed=seeds, dtype=float_dtypes)
def test_matmul_and_linear_match_numpy(a_batch, seed, dtype):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(a_batch + (2, 3)).astype(dtype)
    b = rng.standard_normal((3, 4)).astype(dtype)
    bias = rng.standard_normal(4).astype(dtype)
    np.testing.assert_allclose((Tensor(a) @ Tensor(b)).data, a @ b, rtol=1e-6)
    out = F.linear(Tensor(a), Tensor(b.T.copy()), Tensor(bias))
    assert out.dtype == dtype
    np.testing.assert_allclose(out.data, a @ b + bias, rtol=1e-5, atol=1e-6)


def test_linear_rejects_mismatched_features():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        F.linear(Tensor(np.ones((2, 3))), Tensor(np.ones((4, 5))))


def test_indexing_and_shapes_match_numpy(rng):
    x = rng.standard_normal((3, 4, 5))
    t = Tensor(x)
    for index in (1, -1, slice(None, None, 2), (Ellipsis, 2), (None, 1, slice(1, 3)), np.array([2, 0, 2]),
                  ([0, 2], slice(None), [1, 1]), x > 0):
        np.testing.assert_array_equal(t[index].data, x[index])
    np.testing.assert_array_equal(ops.take(t, np.array([[4, 0], [1, 1]]), axis=-1).data,
                                  np.take(x, [[4, 0], [1, 1]], axis=-1))
    np.testing.assert_array_equal(t.transpose(2, 0, 1).data, x.transpose(2, 0, 1))
    np.testing.assert_array_equal(t.permute(-1, 0, 1).data, x.transpose(2, 0, 1))
    np.testing.assert_array_equal(t.T.data, x.T)
    np.testing.assert_array_equal(t.flatten(1).data, x.reshape(3, 20))
    np.testing.assert_array_equal(ops.pad(t, [(0, 0), (1, 0), (0, 2)], value=7).data,
                                  np.pad(x, [(0, 0), (1, 0), (0, 2)], constant_values=7))
    np.testing.assert_array_equal(F.pad(t, (0, 2, 1, 0), value=7).data,
                                  np.pad(x, [(0, 0), (1, 0), (0, 2)], constant_values=7))
    parts = ops.split(t, [1, 3], axis=1)
    np.testing.assert_array_equal(parts[1].data, x[:, 1:])
    with pytest.raises(ValueError, match="add up"):
        ops.split(t, [1, 1], axis=1)
    with pytest.raises(ValueError, match="permutation"):
        t.transpose(0, 1)


# -- gradients: broadcasting, ties, accumulation, retain_graph -------------------------------------
def test_broadcast_gradients_reduce_to_each_input_shape():
    a = Tensor(np.ones((3, 1)), requires_grad=True)
    b = Tensor(np.ones((2, 1, 4)), requires_grad=True)
    (a * b).sum().backward()
    np.testing.assert_array_equal(a.grad, np.full((3, 1), 8.0))
    np.testing.assert_array_equal(b.grad, np.full((2, 1, 4), 3.0))


def test_max_ties_share_the_gradient():
    x = Tensor(np.array([1.0, 3.0, 3.0, 2.0]), requires_grad=True)
    x.max().backward()
    np.testing.assert_array_equal(x.grad, [0, 0.5, 0.5, 0])


def test_gradients_accumulate_across_backward_calls():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * x).sum().backward()
    (3 * x).sum().backward()
    np.testing.assert_array_equal(x.grad, 2 * x.data + 3)


def test_a_node_used_twice_gets_both_contributions():
    x = Tensor(np.array([2.0]), requires_grad=True)
    y = x * x
    (y + y * x).sum().backward()  # d/dx (x² + x³) = 2x + 3x²
    np.testing.assert_allclose(x.grad, [4 + 12])


def test_retain_graph_allows_a_second_backward_and_without_it_the_error_is_clear():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    loss = (x.exp() * x).sum()
    loss.backward(retain_graph=True)
    first = x.grad.copy()
    loss.backward()
    np.testing.assert_allclose(x.grad, 2 * first)
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()


def test_backward_argument_errors():
    x = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="single-element"):
        (x * 2).backward()
    with pytest.raises(ValueError, match="shape"):
        (x * 2).backward(np.ones(2))
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(1)).backward()
    y = x * 2
    y.backward(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(x.grad, [2, 4, 6])


def test_deep_chain_has_no_recursion_limit():
    x = Tensor(np.array([1.0]), requires_grad=True)
    y = x
    for _ in range(20_000):
        y = y * 1.0001
    assert 20_000 > sys.getrecursionlimit()
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0001 ** 20_000], rtol=1e-9)


def test_deep_chain_can_be_dropped_without_backward():
    """Freeing a long unused graph must not overflow the C stack through nested deallocation."""
    x = Tensor(np.array([1.0]), requires_grad=True)
    y = x
    for _ in range(100_000):
        y = y + 1.0
    first = weakref.ref(x + 1.0)  # a node nobody holds is freed at once: the graph has no cycles
    assert first() is None
    last = weakref.ref(y)
    del y
    assert last() is None


def test_detach_and_leaf_flags():
    x = Tensor(np.ones(2), requires_grad=True)
    y = x * 2
    assert x.is_leaf and not y.is_leaf and y.requires_grad
    d = y.detach()
    assert not d.requires_grad and d.is_leaf
    np.testing.assert_array_equal(d.numpy(), y.data)


def test_cast_gradient_comes_back_in_the_input_dtype():
    x = Tensor(np.ones(3, np.float32), requires_grad=True)
    y = x.double()
    assert y.dtype == np.float64
    (y * 2).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad, [2, 2, 2])
    assert ops.cast(x, np.int64).dtype == np.int64 and not ops.cast(x, np.int64).requires_grad


# -- no_grad ---------------------------------------------------------------------------------------
def test_no_grad_records_nothing_and_restores_the_mode():
    x = Tensor(np.ones(2), requires_grad=True)
    with dreidel.no_grad():
        y = (x * 2).exp()
        with dreidel.enable_grad():
            z = x * 3
        assert not dreidel.is_grad_enabled()
    assert not y.requires_grad and y._parents == () and y.is_leaf
    assert z.requires_grad
    assert dreidel.is_grad_enabled()
    with pytest.raises(ZeroDivisionError):
        with dreidel.no_grad():
            1 / 0
    assert dreidel.is_grad_enabled()


def test_no_grad_as_decorator_and_per_thread():
    @dreidel.no_grad()
    def infer(t):
        return t * 2
    x = Tensor(np.ones(2), requires_grad=True)
    assert not infer(x).requires_grad and infer.__name__ == "infer"
    seen = []
    with dreidel.no_grad():
        thread = threading.Thread(target=lambda: seen.append(dreidel.is_grad_enabled()))
        thread.start()
        thread.join()
    assert seen == [True]  # grad mode is per thread, like PyTorch


# -- hooks -----------------------------------------------------------------------------------------
def test_tensor_hooks_see_and_can_replace_gradients():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x * 3
    seen = []
    y.register_hook(lambda g: seen.append(g.copy()))
    x.register_hook(lambda g: g * 10)
    (y * y).sum().backward()
    np.testing.assert_allclose(seen[0], 2 * y.data)
    np.testing.assert_allclose(x.grad, 10 * 18 * x.data)


# -- custom Functions ------------------------------------------------------------------------------
class ScaledCube(dreidel.Function):
    """y = scale · x³ with a non-tensor argument."""

    @staticmethod
    def forward(ctx, x, scale, offset=0.0):
        ctx.save_for_backward(x)
        ctx.scale = scale
        return scale * x ** 3 + offset

    @staticmethod
    def backward(ctx, grad):
        x, = ctx.saved_tensors
        return grad * 3 * ctx.scale * x ** 2, None


class SinCos(dreidel.Function):
    """Two outputs from two inputs: (sin(a)·b, cos(a))."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return np.sin(a) * b, np.cos(a)

    @staticmethod
    def backward(ctx, grad_first, grad_second):
        a, b = ctx.saved_tensors
        return grad_first * np.cos(a) * b - grad_second * np.sin(a), grad_first * np.sin(a)


def test_function_with_non_tensor_args_and_kwargs():
    x = Tensor(np.array([1.0, -2.0, 0.5]), requires_grad=True)
    y = ScaledCube.apply(x, 2.0, offset=1.0)
    np.testing.assert_allclose(y.data, 2 * x.data ** 3 + 1)
    assert dreidel.gradcheck(lambda t: ScaledCube.apply(t, 2.0, offset=1.0), x)


def test_function_with_multiple_outputs():
    rng = np.random.default_rng(0)
    a = Tensor(rng.standard_normal(4), requires_grad=True)
    b = Tensor(rng.standard_normal(4), requires_grad=True)
    first, second = SinCos.apply(a, b)
    np.testing.assert_allclose(second.data, np.cos(a.data))
    assert dreidel.gradcheck(SinCos.apply, a, b)
    a.grad = None
    (first.sum() + 2 * second.sum()).backward()
    np.testing.assert_allclose(a.grad, np.cos(a.data) * b.data - 2 * np.sin(a.data))


def test_function_wrong_gradient_count_is_a_clear_error():
    class Bad(dreidel.Function):
        @staticmethod
        def forward(ctx, x, y):
            return x * y

        @staticmethod
        def backward(ctx, grad):
            return grad

    x = Tensor(np.ones(2), requires_grad=True)
    with pytest.raises(RuntimeError, match="1 gradients for 2"):
        Bad.apply(x, Tensor(np.ones(2))).sum().backward()


def test_function_records_nothing_without_grad():
    x = Tensor(np.ones(2), requires_grad=True)
    with dreidel.no_grad():
        assert not ScaledCube.apply(x, 1.0).requires_grad
    assert not ScaledCube.apply(Tensor(np.ones(2)), 1.0).requires_grad


# -- numerical stability ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_saturating_functions_do_not_overflow(dtype):
    x = Tensor(np.array([-1e4, -100.0, 0.0, 100.0, 1e4], dtype=dtype), requires_grad=True)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        for op in (ops.sigmoid, ops.silu, ops.softplus, ops.tanh):
            x.grad = None
            out = op(x)
            out.sum().backward()
            assert np.all(np.isfinite(out.data)) and np.all(np.isfinite(x.grad)), op
        np.testing.assert_allclose(ops.sigmoid(x).data, [0, 0, 0.5, 1, 1], atol=1e-30)
        np.testing.assert_allclose(ops.softplus(x).data, [0, math.log1p(math.exp(-100)), math.log(2), 100, 1e4],
                                   rtol=1e-6, atol=1e-40)


def test_masked_softmax_and_log_softmax_stay_finite():
    x = Tensor(np.array([[1000.0, -np.inf, 999.0], [-np.inf, 0.0, -np.inf]], np.float32), requires_grad=True)
    p = ops.softmax(x)
    np.testing.assert_allclose(p.data, [[1 / (1 + math.exp(-1)), 0, 1 / (1 + math.exp(1))], [0, 1, 0]], rtol=1e-6)
    (p * Tensor(np.arange(6.0, dtype=np.float32).reshape(2, 3))).sum().backward()
    assert np.all(np.isfinite(x.grad)) and x.grad[0, 1] == 0
    x.grad = None
    logp = ops.log_softmax(x)
    assert np.isfinite(logp.data[[0, 0, 1], [0, 2, 1]]).all()
    logp[np.array([0, 1]), np.array([0, 1])].sum().backward()
    assert np.all(np.isfinite(x.grad))
    assert np.isfinite(ops.logsumexp(x).data).all()


def test_float32_layer_norm_is_accurate_with_a_large_offset(rng):
    x = (1e4 + rng.standard_normal((4, 64))).astype(np.float32)
    out = F.layer_norm(Tensor(x), 64)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.data, ref, atol=2e-3)  # float32 spacing at 1e4 is ~1e-3


def test_leaf_gradients_never_alias_each_other_or_the_callers_array():
    """Optimizers and clipping update `.grad` in place: two leaves must not share one array."""
    a = Tensor(np.ones(3), requires_grad=True)
    b = Tensor(np.ones(3), requires_grad=True)
    seed = np.array([1.0, 2.0, 3.0])
    (a + b).backward(seed)  # add hands the same gradient array to both parents
    a.grad *= 10
    np.testing.assert_array_equal(b.grad, seed)
    np.testing.assert_array_equal(seed, [1, 2, 3])
    c = Tensor(np.ones(3), requires_grad=True)
    c.backward(seed)
    c.grad *= 10
    np.testing.assert_array_equal(seed, [1, 2, 3])
    kept = []
    d = Tensor(np.ones(3), requires_grad=True)
    d.register_hook(kept.append)
    (d * 2).sum().backward()
    d.grad *= 10
    np.testing.assert_array_equal(kept[0], [2, 2, 2])


def test_function_integer_outputs_carry_no_gradient():
    class MaxWithIndex(dreidel.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.max(-1), x.argmax(-1)

        @staticmethod
        def backward(ctx, grad, grad_index):
            x, = ctx.saved_tensors
            out = np.zeros_like(x)
            np.put_along_axis(out, x.argmax(-1)[..., None], grad[..., None], -1)
            return out

    x = Tensor(np.array([[1.0, 3.0, 2.0], [5.0, 4.0, 0.0]]), requires_grad=True)
    values, index = MaxWithIndex.apply(x)
    assert values.requires_grad and not index.requires_grad and index.dtype.kind == "i"
    assert dreidel.gradcheck(lambda t: MaxWithIndex.apply(t)[0], x)


def test_expand_rejects_minus_one_on_new_axes():
    x = Tensor(np.ones(3))
    assert ops.expand(x, 2, -1).shape == (2, 3)
    with pytest.raises(ValueError, match="expand"):
        ops.expand(x, -1, 3)
    with pytest.raises(ValueError, match="expand"):
        ops.expand(Tensor(np.ones((2, 3))), 3)


def test_a_gradient_kept_by_an_intermediate_hook_is_not_adopted_by_a_leaf():
    x = Tensor(np.ones(2), requires_grad=True)
    y = x + 0.0  # add passes its gradient through unchanged
    kept = []
    y.register_hook(kept.append)
    (y * 3).sum().backward()
    x.grad *= 10  # what an in-place optimizer or clip_grad_norm_ does
    np.testing.assert_array_equal(kept[0], [3, 3])


def test_a_function_returning_a_saved_array_as_gradient_does_not_alias_it():
    class Dot(dreidel.Function):
        @staticmethod
        def forward(ctx, a, b):
            ctx.save_for_backward(a, b)
            return np.dot(a, b)

        @staticmethod
        def backward(ctx, grad):
            a, b = ctx.saved_tensors
            return b, a  # lazy but right for a scalar gradient of 1

    a = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    b = Tensor(np.array([3.0, 4.0]), requires_grad=True)
    Dot.apply(a, b).backward()
    a.grad *= 10
    np.testing.assert_array_equal(b.data, [3, 4])
    np.testing.assert_array_equal(a.grad, [30, 40])


# -- PyTorch tensor idioms -----------------------------------------------------------------------------
def test_reductions_take_dim_and_keepdim():
    x = np.arange(24.0).reshape(2, 3, 4)
    t = Tensor(x)
    np.testing.assert_array_equal(t.sum(dim=1).data, x.sum(axis=1))
    np.testing.assert_array_equal(t.sum(axis=1).data, x.sum(axis=1))  # numpy's spelling still works
    np.testing.assert_array_equal(t.mean(dim=(0, 2), keepdim=True).data, x.mean(axis=(0, 2), keepdims=True))
    np.testing.assert_array_equal(t.var(dim=2).data, x.var(axis=2, ddof=1))
    np.testing.assert_allclose(t.logsumexp(dim=0).data, np.log(np.exp(x).sum(axis=0)))
    np.testing.assert_array_equal(t.prod(axis=2).data, x.prod(axis=2))
    np.testing.assert_array_equal(t.max(dim=(1, 2)).data, x.max(axis=(1, 2)))  # several dims: values only
    with pytest.raises(TypeError, match="not both"):
        t.sum(axis=0, dim=1)


def test_max_and_min_with_one_dim_return_values_and_indices():
    x = np.array([[1.0, 7.0, 7.0, 2.0], [5.0, 3.0, 0.0, 0.0]])
    t = Tensor(x, requires_grad=True)
    values, indices = t.max(dim=1)
    assert values.data.tolist() == [7.0, 5.0] and indices.data.tolist() == [1, 0] and indices.dtype == np.int64
    values.sum().backward()
    assert t.grad.tolist() == [[0.0, 0.5, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0]]  # ties share, as ops.max does
    values, indices = Tensor(x).min(dim=-1, keepdim=True)
    assert values.shape == (2, 1) and indices.data.tolist() == [[0], [2]]  # the first minimum
    assert ops.max(Tensor(x), 1).data.tolist() == [7.0, 5.0]  # positional axis: values only, as before
    assert float(Tensor(x).max().data) == 7.0


def test_argmax_argmin_dim():
    x = np.array([[1.0, 9.0, 3.0], [8.0, 2.0, 8.0]])
    t = Tensor(x)
    assert t.argmax(dim=1).data.tolist() == [1, 0] and t.argmax().data == 1
    assert t.argmin(dim=0, keepdim=True).data.tolist() == [[0, 1, 0]]
    assert t.argmax(axis=1, keepdims=True).shape == (2, 1)


def test_size_numel_clone_zero_():
    t = Tensor(np.ones((2, 3, 4)), requires_grad=True)
    assert t.size == 24 and t.numel() == 24  # numpy's .size, still an int
    assert t.size() == (2, 3, 4) and t.size(1) == 3 and t.size(-1) == 4
    assert np.zeros(t.size).shape == (24,)
    copy = t.clone()
    assert copy.data is not t.data and not np.shares_memory(copy.data, t.data)
    (copy * 3).sum().backward()
    assert np.all(t.grad == 3)
    buffer = Tensor(np.broadcast_to(np.float32(2), (2, 2)))
    assert buffer.zero_() is buffer and buffer.data.tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_clone_gradcheck():
    assert dreidel.gradcheck(lambda a: a.clone() * a, Tensor(np.random.default_rng(0).standard_normal(3),
                                                              requires_grad=True))
