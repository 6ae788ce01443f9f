"""Convolution, pooling, resampling and channel-norm ops and layers.

References are written here independently of dreidel.ops: direct convolution by explicit loops
on tiny shapes, window loops for pooling, per-output formulas for interpolation, and onnxruntime running one-node ONNX graphs.
"""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import dreidel
from dreidel import Tensor, nn
from dreidel import ops as C
from dreidel.nn import conv as layers
from dreidel.ops import convolution
from dreidel.ops.convolution import _conv_transpose_flat, _flat_plan


# -- independent references -------------------------------------------------------------------------
def naive_conv(x, w, b=None, stride=1, pads=0, dilation=1, groups=1):
    """Direct convolution: y[n, o, p] = Σ_c Σ_k w[o, c, k] x_pad[n, g·C/g + c, p·s + k·d] + b[o]."""
    d = x.ndim - 2
    stride = (stride,) * d if np.isscalar(stride) else stride
    dilation = (dilation,) * d if np.isscalar(dilation) else dilation
    pads = [(pads, pads)] * d if np.isscalar(pads) else pads
    xp = np.pad(x, [(0, 0), (0, 0)] + list(pads))
    n_out, k = w.shape[0], w.shape[2:]
    c_group, o_group = x.shape[1] // groups, n_out // groups
    sizes = [(xp.shape[2 + i] - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1 for i in range(d)]
    y = np.zeros((x.shape[0], n_out, *sizes))
    for n, o in itertools.product(range(x.shape[0]), range(n_out)):
        first = (o // o_group) * c_group
        for p in itertools.product(*map(range, sizes)):
            total = 0.0 if b is None else b[o]
            for c in range(c_group):
                for off in itertools.product(*map(range, k)):
                    at = tuple(p[i] * stride[i] + off[i] * dilation[i] for i in range(d))
                    total += w[(o, c) + off] * xp[(n, first + c) + at]
            y[(n, o) + p] = total
    return y


def naive_pool(x, k, stride, pads, reduce, ceil_mode=False, count_include_pad=True):
    """Window loops; windows are clipped to the input (and, when counted, to the padding)."""
    d = x.ndim - 2
    out_sizes = []
    for i in range(d):
        span = x.shape[2 + i] + 2 * pads[i] - k[i]
        o = (-(-span // stride[i]) if ceil_mode else span // stride[i]) + 1
        if ceil_mode and (o - 1) * stride[i] >= x.shape[2 + i] + pads[i]:
            o -= 1
        out_sizes.append(o)
    y = np.zeros(x.shape[:2] + tuple(out_sizes))
    for p in itertools.product(*map(range, out_sizes)):
        starts = [p[i] * stride[i] - pads[i] for i in range(d)]
        ends = [s + k[i] for i, s in enumerate(starts)]
        inside = tuple(slice(max(s, 0), min(e, x.shape[2 + i])) for i, (s, e) in enumerate(zip(starts, ends)))
        window = x[(slice(None), slice(None)) + inside].reshape(x.shape[0], x.shape[1], -1)
        if reduce == "max":
            y[(slice(None), slice(None)) + p] = window.max(-1)
        else:
            if count_include_pad:  # clipped to input + padding, as PyTorch
                count = np.prod([min(e, x.shape[2 + i] + pads[i]) - max(s, -pads[i])
                                 for i, (s, e) in enumerate(zip(starts, ends))])
            else:
                count = window.shape[-1]
            y[(slice(None), slice(None)) + p] = window.sum(-1) / count
    return y


def t64(rng, *shape, grad=True):
    return Tensor(rng.standard_normal(shape), requires_grad=grad)


# -- convolution forward against the loops ------------------------------------------------------------
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 0, 1, 1), (2, 1, 1, 2), (1, 2, 2, 1), (3, 1, 2, 4)])
def test_conv_matches_direct_loops(rng, d, stride, padding, dilation, groups):
    x = rng.standard_normal((2, 4) + (6,) * d)
    w = rng.standard_normal((4, 4 // groups) + (3 if d < 3 else 2,) * d)
    b = rng.standard_normal(4)
    got = C.conv(Tensor(x), Tensor(w), Tensor(b), stride, padding, dilation, groups).data
    np.testing.assert_allclose(got, naive_conv(x, w, b, stride, padding, dilation, groups), atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(d=st.integers(1, 2), length=st.integers(3, 7), k=st.integers(1, 3), stride=st.integers(1, 3),
       dilation=st.integers(1, 2), groups=st.sampled_from([1, 2]), pad_begin=st.integers(0, 2),
       pad_end=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_conv_property_asymmetric_padding(d, length, k, stride, dilation, groups, pad_begin, pad_end, seed):
    extent = dilation * (k - 1) + 1
    if extent > length + pad_begin + pad_end:
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 2) + (length,) * d)
    w = rng.standard_normal((4, 2 // groups) + (k,) * d)
    padding = (pad_begin,) * d + (pad_end,) * d  # ONNX order: begins, then ends
    got = C.conv(Tensor(x), Tensor(w), None, stride, padding, dilation, groups).data
    want = naive_conv(x, w, None, stride, [(pad_begin, pad_end)] * d, dilation, groups)
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_conv_same_padding_keeps_size_and_matches_loops(rng):
    x, w = rng.standard_normal((1, 2, 7, 6)), rng.standard_normal((3, 2, 4, 3))
    got = C.conv(Tensor(x), Tensor(w), padding="same").data
    assert got.shape == (1, 3, 7, 6)
    # PyTorch's rule: total padding d·(k−1), the smaller half in front
    np.testing.assert_allclose(got, naive_conv(x, w, pads=[(1, 2), (1, 1)]), atol=1e-12)


def test_conv_float32_stays_float32(rng):
    x = Tensor(rng.standard_normal((1, 2, 5, 5)).astype(np.float32))
    w = Tensor(rng.standard_normal((3, 2, 3, 3)).astype(np.float32))
    assert C.conv(x, w, padding=1).dtype == np.float32


# -- gradients ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("d,stride,padding,dilation,groups", [
    (1, 2, 1, 2, 2), (2, 2, (1, 0), 1, 1), (2, 1, (0, 1, 2, 0), 2, 2), (3, 2, 1, 1, 2), (3, 1, 0, 1, 4),
    (2, 2, 1, 2, 4)])
def test_conv_gradcheck(rng, d, stride, padding, dilation, groups):
    """groups=4 on 4 channels is depthwise (its own code path), here with 2 outputs per channel in 2-D."""
    size = {1: 7, 2: 5, 3: 4}[d]
    out = 8 if (d, groups) == (2, 4) else 4
    x = t64(rng, 2, 4, *(size,) * d)
    w = t64(rng, out, 4 // groups, *(2,) * d)
    b = t64(rng, out)
    assert dreidel.gradcheck(lambda x, w, b: C.conv(x, w, b, stride, padding, dilation, groups), x, w, b)


@pytest.mark.parametrize("d,stride,padding,output_padding,dilation,groups", [
    (1, 2, 1, 1, 1, 2), (2, 2, (1, 0), (1, 0), 1, 1), (2, 3, 0, 2, 1, 1), (3, 2, 0, 1, 1, 2), (2, 1, 1, 1, 2, 1)])
def test_conv_transpose_gradcheck(rng, d, stride, padding, output_padding, dilation, groups):
    size = {1: 4, 2: 3, 3: 2}[d]
    x = t64(rng, 2, 4, *(size,) * d)
    w = t64(rng, 4, 6 // groups if groups == 2 else 3, *(2,) * d)
    b = t64(rng, w.shape[1] * groups)
    fn = lambda x, w, b: C.conv_transpose(x, w, b, stride, padding, output_padding, dilation, groups)  # noqa: E731
    assert dreidel.gradcheck(fn, x, w, b)


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 3), k=st.integers(1, 3), stride=st.integers(1, 3), dilation=st.integers(1, 2),
       groups=st.sampled_from([1, 2]), pad_begin=st.integers(0, 2), pad_end=st.integers(0, 2),
       extra=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_conv_transpose_is_the_adjoint_of_conv(d, k, stride, dilation, groups, pad_begin, pad_end, extra, seed):
    """⟨conv(z, W), y⟩ = ⟨z, conv_transpose(y, W)⟩ for every geometry (when output_padding ≥ stride,
    conv(z) has extra trailing positions that the transpose never reaches: compare the first L)."""
    output_padding = min(extra, max(stride, dilation) - 1)
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((2, 4) + (3,) * d)
    w = rng.standard_normal((4, 6 // groups) + (k,) * d)  # conv: 6 → 4 channels; transpose: 4 → 6
    padding = (pad_begin,) * d + (pad_end,) * d
    full = (3 - 1) * stride + dilation * (k - 1) + 1 + output_padding
    if full - pad_begin - pad_end < 1:
        return
    zt = C.conv_transpose(Tensor(y), Tensor(w), None, stride, padding, output_padding, dilation, groups).data
    z = rng.standard_normal(zt.shape)
    conv_z = C.conv(Tensor(z), Tensor(w), None, stride, padding, dilation, groups).data
    if output_padding < stride:
        assert conv_z.shape == y.shape
    conv_z = conv_z[(slice(None), slice(None)) + (slice(0, 3),) * d]
    np.testing.assert_allclose(np.sum(conv_z * y), np.sum(z * zt), rtol=1e-10, atol=1e-10)


def naive_conv_transpose(x, w, stride, pads, output_padding, dilation, groups):
    """Scatter definition: x[n, c, p] adds w[c, o, k]·x to y_full[n, g·O/g + o, p·s + k·d]; crop pads."""
    d = x.ndim - 2
    c_group, o_group = x.shape[1] // groups, w.shape[1]
    full = [(x.shape[2 + i] - 1) * stride[i] + dilation[i] * (w.shape[2 + i] - 1) + 1 + output_padding[i]
            for i in range(d)]
    y = np.zeros((x.shape[0], o_group * groups, *full))
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        first = (c // c_group) * o_group
        for p in itertools.product(*map(range, x.shape[2:])):
            for o in range(o_group):
                for off in itertools.product(*map(range, w.shape[2:])):
                    at = tuple(p[i] * stride[i] + off[i] * dilation[i] for i in range(d))
                    y[(n, first + o) + at] += w[(c, o) + off] * x[(n, c) + p]
    return y[(slice(None), slice(None)) + tuple(slice(b, f - e) for f, (b, e) in zip(full, pads))]


@settings(max_examples=40, deadline=None)
@given(d=st.integers(1, 3), data=st.data(), groups=st.sampled_from([1, 2]), seed=st.integers(0, 2**16))
def test_conv_transpose_matches_the_scatter_definition(d, data, groups, seed):
    """conv_transpose against the direct scatter loops, over strides, dilations (also dilation >
    stride and not coprime), kernels smaller than the stride, crops larger than a stride and
    output_padding."""
    ints = lambda lo, hi: tuple(data.draw(st.lists(st.integers(lo, hi), min_size=d, max_size=d)))  # noqa: E731
    size, k, stride, dilation = ints(1, 3), ints(1, 4), ints(1, 3), ints(1, 3)
    output_padding = tuple(data.draw(st.integers(0, max(s, dl) - 1)) for s, dl in zip(stride, dilation))
    pads = [(data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3))) for _ in range(d)]
    full = [(n - 1) * s + dl * (kk - 1) + 1 + op for n, s, dl, kk, op in zip(size, stride, dilation, k, output_padding)]
    if any(f - b - e < 1 for f, (b, e) in zip(full, pads)):
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 2 * groups) + size)
    w = rng.standard_normal((2 * groups, 2) + k)
    padding = tuple(b for b, _ in pads) + tuple(e for _, e in pads)
    got = C.conv_transpose(Tensor(x), Tensor(w), None, stride, padding, output_padding, dilation, groups).data
    want = naive_conv_transpose(x, w, stride, pads, output_padding, dilation, groups)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # the flat GEMM path directly, also where its padding is too costly for conv_transpose to take it
    plan = _flat_plan(size, want.shape[2:], pads, k, stride, dilation, limit=float("inf"))
    flat = _conv_transpose_flat(x, w, want.shape[2:], pads, stride, dilation, groups, plan)
    np.testing.assert_allclose(flat, want, rtol=1e-12, atol=1e-12)


def test_conv_transpose_flat_path_in_the_op(rng):
    """The ViT head's layer kind (k4 s2 p1) takes the flat GEMM path; float32, with bias, against
    the scatter reference."""
    assert _flat_plan((32, 32), (64, 64), [(1, 1)] * 2, (4, 4), (2, 2), (1, 1)) is not None
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    w = rng.standard_normal((3, 128, 4, 4)).astype(np.float32)
    b = rng.standard_normal(128).astype(np.float32)
    got = C.conv_transpose(Tensor(x), Tensor(w), Tensor(b), 2, 1).data
    want = naive_conv_transpose(x[:, :, :4, :4].astype(np.float64), w.astype(np.float64), (2, 2), [(1, 1)] * 2,
                                (0, 0), (1, 1), 1) + b[:, None, None]
    assert got.dtype == np.float32 and got.shape == (2, 128, 64, 64)
    np.testing.assert_allclose(got[:, :, :6, :6], want[:, :, :6, :6], rtol=1e-4, atol=1e-4)



@pytest.mark.parametrize("d,stride,padding,output_padding,dilation,groups", [
    (1, 2, 1, 1, 1, 2), (2, 2, (1, 0), (1, 0), 1, 1), (2, 3, 0, 2, 1, 1), (3, 2, 0, 1, 1, 2), (2, 2, 1, 1, 3, 1)])
def test_conv_transpose_flat_path_gradcheck(rng, monkeypatch, d, stride, padding, output_padding, dilation, groups):
    """The flat GEMM forward with the (unchanged) backward, forced on for small shapes."""
    plan = convolution._flat_plan
    monkeypatch.setattr(convolution, "_flat_plan", lambda *args: plan(*args, limit=float("inf")))
    x = t64(rng, 2, 4, *(3 if d < 3 else 2,) * d)
    w = t64(rng, 4, 3, *(3,) * d)
    b = t64(rng, 3 * groups)
    fn = lambda x, w, b: C.conv_transpose(x, w, b, stride, padding, output_padding, dilation, groups)  # noqa: E731
    assert dreidel.gradcheck(fn, x, w, b)


# -- against onnxruntime ---------------------------------------------------------------------------------
def run_onnx(op, inputs, attributes, output_rank, opset=17):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper
    names = [f"i{i}" for i in range(len(inputs))]
    node = helper.make_node(op, names, ["y"], **attributes)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape) for n, a in zip(names, inputs)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * output_rank)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, dict(zip(names, inputs)))[0]


@pytest.mark.parametrize("d", [1, 2, 3])
def test_conv_and_conv_transpose_match_onnxruntime(rng, d):
    x = rng.standard_normal((2, 4) + (5,) * d).astype(np.float32)
    w = rng.standard_normal((6, 2) + (3,) * d).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    pads = [1] * d + [0] * d
    attributes = dict(strides=[2] * d, pads=pads, dilations=[1] * d, group=2)
    want = run_onnx("Conv", [x, w, b], attributes, d + 2)
    got = C.conv(Tensor(x), Tensor(w), Tensor(b), 2, pads, 1, 2).data
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    wt = rng.standard_normal((4, 3) + (3,) * d).astype(np.float32)  # (in, out/groups, *k)
    bt = rng.standard_normal(6).astype(np.float32)
    attributes = dict(strides=[2] * d, pads=pads, output_padding=[1] * d, group=2, dilations=[1] * d)
    want = run_onnx("ConvTranspose", [x, wt, bt], attributes, d + 2)
    got = C.conv_transpose(Tensor(x), Tensor(wt), Tensor(bt), 2, pads, 1, 1, 2).data
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_pools_match_onnxruntime(rng, ceil_mode):
    x = rng.standard_normal((1, 3, 6, 7)).astype(np.float32)
    attributes = dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1], ceil_mode=int(ceil_mode))
    want = run_onnx("MaxPool", [x], attributes, 4)
    np.testing.assert_allclose(C.max_pool(Tensor(x), (3, 2), 2, (1, 0, 1, 1), ceil_mode=ceil_mode).data, want)
    for include in (0, 1):
        want = run_onnx("AveragePool", [x], dict(attributes, count_include_pad=include), 4)
        got = C.avg_pool(Tensor(x), (3, 2), 2, (1, 0, 1, 1), ceil_mode, count_include_pad=bool(include)).data
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ceil_mode", [0, 1])
@pytest.mark.parametrize("include", [0, 1])
def test_dilated_avg_pool_matches_onnxruntime_opset19(rng, ceil_mode, include):
    x = rng.standard_normal((2, 3, 7, 8)).astype(np.float32)
    attributes = dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 2, 1], dilations=[2, 3],
                      ceil_mode=ceil_mode, count_include_pad=include)
    want = run_onnx("AveragePool", [x], attributes, 4, opset=19)
    got = C.avg_pool(Tensor(x), (3, 2), (2, 1), (1, 0, 2, 1), bool(ceil_mode), bool(include), dilation=(2, 3)).data
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_max_pool_indices(rng):
    out, indices = C.max_pool(Tensor(np.array([[[1.0, 5.0, 2.0, 2.0]]])), 2, return_indices=True)
    np.testing.assert_array_equal(indices.data, [[[1, 2]]])
    x = rng.standard_normal((2, 3, 5, 6))
    out, indices = C.max_pool(Tensor(x), (2, 3), 2, 1, ceil_mode=True, return_indices=True)
    assert indices.dtype == np.int64 and indices.shape == out.shape
    gathered = np.take_along_axis(x.reshape(2, 3, -1), indices.data.reshape(2, 3, -1), axis=-1)
    np.testing.assert_array_equal(gathered.reshape(out.shape), out.data)


def test_dilated_max_pool_matches_onnxruntime(rng):
    x = rng.standard_normal((2, 2, 9)).astype(np.float32)
    want = run_onnx("MaxPool", [x], dict(kernel_shape=[3], strides=[1], dilations=[2], pads=[1, 1]), 3)
    np.testing.assert_allclose(C.max_pool(Tensor(x), 3, 1, 1, dilation=2).data, want)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scale", [2, 1.5, 0.6])
def test_resampling_matches_onnxruntime_resize(rng, mode, scale):
    # no output axis of length 1: there ONNX's pytorch_half_pixel samples position 0, PyTorch (and
    # dreidel) sample (0.5/scale − 0.5)
    x = rng.standard_normal((1, 2, 4, 5, 6)).astype(np.float32)
    scales = np.array([1, 1, scale, scale, scale], np.float32)
    roi = np.array([], np.float32)
    onnx_mode = dict(mode=mode, coordinate_transformation_mode="pytorch_half_pixel" if mode == "linear"
                     else "asymmetric", nearest_mode="floor")
    want = run_onnx("Resize", [x, roi, scales], onnx_mode, 5)
    got = C.interpolate(Tensor(x), scale_factor=scale, mode="trilinear" if mode == "linear" else "nearest").data
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# -- pooling --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_pools_match_window_loops(rng, d, ceil_mode):
    x = rng.standard_normal((2, 3) + (7 if d < 3 else 5,) * d)
    k, s, p = (3,) * d, (2,) * d, (1,) * d
    np.testing.assert_allclose(C.max_pool(Tensor(x), k, s, p, ceil_mode=ceil_mode).data,
                               naive_pool(x, k, s, p, "max", ceil_mode))
    for include in (True, False):
        got = C.avg_pool(Tensor(x), k, s, p, ceil_mode=ceil_mode, count_include_pad=include).data
        np.testing.assert_allclose(got, naive_pool(x, k, s, p, "avg", ceil_mode, include), atol=1e-12)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_pool_gradcheck(rng, d):
    x = t64(rng, 2, 2, *(5 if d < 3 else 4,) * d)
    assert dreidel.gradcheck(lambda x: C.max_pool(x, 2, padding=1, ceil_mode=True), x)
    assert dreidel.gradcheck(lambda x: C.max_pool(x, 3, 1, 1, dilation=2 if d == 1 else 1), x)
    assert dreidel.gradcheck(lambda x: C.avg_pool(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), x)
    assert dreidel.gradcheck(lambda x: C.avg_pool(x, 2, divisor_override=3), x)
    assert dreidel.gradcheck(lambda x: C.avg_pool(x, 2, 1, 1, count_include_pad=False, dilation=2), x)
    assert dreidel.gradcheck(lambda x: C.adaptive_avg_pool(x, 3), x)


def test_max_pool_gradient_goes_to_the_maximum_only():
    x = Tensor(np.array([[[1.0, 5.0, 2.0, 2.0]]]), requires_grad=True)
    C.max_pool(x, 2).sum().backward()
    np.testing.assert_array_equal(x.grad, [[[0, 1, 1, 0]]])  # [2, 2]: the first of a tie


def test_adaptive_avg_pool_matches_torch_windows(rng):
    x = rng.standard_normal((1, 2, 7, 5))
    got = C.adaptive_avg_pool(Tensor(x), (3, 2)).data
    want = np.zeros((1, 2, 3, 2))
    for i, j in itertools.product(range(3), range(2)):
        rows = slice((i * 7) // 3, -(-((i + 1) * 7) // 3))
        cols = slice((j * 5) // 2, -(-((j + 1) * 5) // 2))
        want[:, :, i, j] = x[:, :, rows, cols].mean(axis=(-2, -1))
    np.testing.assert_allclose(got, want, atol=1e-12)


# -- interpolation --------------------------------------------------------------------------------------
def reference_linear_1d(x, n_out, align_corners, scale=None):
    n_in = x.shape[-1]
    y = np.zeros(x.shape[:-1] + (n_out,))
    for j in range(n_out):
        if align_corners:
            src = j * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            src = max((j + 0.5) * (scale if scale else n_in / n_out) - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        y[..., j] = x[..., i0] * (1 - (src - i0)) + x[..., i1] * (src - i0)
    return y


def test_linear_interpolation_known_values():
    x = Tensor(np.array([[[0.0, 1.0]]]))
    # PyTorch: half-pixel centres give [0, .25, .75, 1]; align_corners keeps the end points
    np.testing.assert_allclose(C.interpolate(x, scale_factor=2, mode="linear").data, [[[0, 0.25, 0.75, 1]]])
    np.testing.assert_allclose(C.interpolate(x, size=3, mode="linear", align_corners=True).data, [[[0, 0.5, 1]]])
    np.testing.assert_array_equal(C.interpolate(x, scale_factor=2).data, [[[0, 0, 1, 1]]])


@pytest.mark.parametrize("n_out,align", [(7, False), (7, True), (3, False), (2, True), (11, False)])
def test_linear_interpolation_matches_formula(rng, n_out, align):
    x = rng.standard_normal((2, 3, 5))
    got = C.interpolate(Tensor(x), size=n_out, mode="linear", align_corners=align).data
    np.testing.assert_allclose(got, reference_linear_1d(x, n_out, align), atol=1e-12)


def test_trilinear_is_separable_linear(rng):
    x = rng.standard_normal((1, 2, 3, 4, 2))
    got = C.interpolate(Tensor(x), size=(5, 3, 4), mode="trilinear").data
    want = reference_linear_1d(x, 4, False)
    want = np.swapaxes(reference_linear_1d(np.swapaxes(want, -1, -2), 3, False), -1, -2)
    want = np.swapaxes(reference_linear_1d(np.swapaxes(want, -1, -3), 5, False), -1, -3)
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_nearest_interpolation_matches_index_formula(rng):
    x = rng.standard_normal((1, 2, 5, 4))
    got = C.interpolate(Tensor(x), size=(7, 3)).data
    rows = np.minimum(np.floor(np.arange(7) * 5 / 7).astype(int), 4)
    cols = np.minimum(np.floor(np.arange(3) * 4 / 3).astype(int), 3)
    np.testing.assert_array_equal(got, x[:, :, rows][:, :, :, cols])
    exact = C.interpolate(Tensor(x), size=(7, 3), mode="nearest-exact").data
    rows = np.minimum(np.floor((np.arange(7) + 0.5) * 5 / 7).astype(int), 4)
    cols = np.minimum(np.floor((np.arange(3) + 0.5) * 4 / 3).astype(int), 3)
    np.testing.assert_array_equal(exact, x[:, :, rows][:, :, :, cols])


@pytest.mark.parametrize("mode,d,kwargs", [
    ("nearest", 3, dict(scale_factor=2)), ("nearest", 2, dict(size=(5, 2))), ("linear", 1, dict(size=7)),
    ("bilinear", 2, dict(scale_factor=(2, 1.5))), ("trilinear", 3, dict(scale_factor=2)),
    ("bilinear", 2, dict(size=(4, 5), align_corners=True))])
def test_interpolate_gradcheck(rng, mode, d, kwargs):
    x = t64(rng, 1, 2, *(3,) * d)
    assert dreidel.gradcheck(lambda x: C.interpolate(x, mode=mode, **kwargs), x)


# -- normalisation and PReLU ------------------------------------------------------------------------------
def reference_norm(x, groups, eps=1e-5):
    n, c = x.shape[:2]
    flat = x.reshape(n, groups, -1)
    return ((flat - flat.mean(-1, keepdims=True)) / np.sqrt(flat.var(-1, keepdims=True) + eps)).reshape(x.shape)


def test_group_instance_batch_norm_values(rng):
    x = rng.standard_normal((3, 4, 2, 3)) * 2 + 1
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    affine = lambda y: y * w[None, :, None, None] + b[None, :, None, None]  # noqa: E731
    np.testing.assert_allclose(C.group_norm(Tensor(x), 2, Tensor(w), Tensor(b)).data,
                               affine(reference_norm(x, 2)), atol=1e-12)
    np.testing.assert_allclose(C.instance_norm(Tensor(x), Tensor(w), Tensor(b)).data,
                               affine(reference_norm(x, 4)), atol=1e-12)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    batch = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    running_mean, running_var = np.zeros(4), np.ones(4)
    got = C.batch_norm(Tensor(x), running_mean, running_var, Tensor(w), Tensor(b), training=True, momentum=0.1).data
    np.testing.assert_allclose(got, affine(batch), atol=1e-12)
    count = x.size // 4
    np.testing.assert_allclose(running_mean, 0.1 * mean)
    np.testing.assert_allclose(running_var, 0.9 + 0.1 * var * count / (count - 1))
    evaluated = C.batch_norm(Tensor(x), running_mean, running_var, Tensor(w), Tensor(b), training=False).data
    expected = (x - running_mean[None, :, None, None]) / np.sqrt(running_var[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(evaluated, affine(expected), atol=1e-12)


def test_norm_gradchecks(rng):
    x = t64(rng, 2, 4, 3, 2)
    w, b = t64(rng, 4), t64(rng, 4)
    assert dreidel.gradcheck(lambda x, w, b: C.group_norm(x, 2, w, b), x, w, b)
    assert dreidel.gradcheck(lambda x: C.group_norm(x, 4), x)
    assert dreidel.gradcheck(lambda x, w, b: C.instance_norm(x, w, b), x, w, b)
    assert dreidel.gradcheck(lambda x, w, b: C.batch_norm(x, None, None, w, b, training=True), x, w, b)
    rm, rv = rng.standard_normal(4), rng.random(4) + 0.5
    assert dreidel.gradcheck(lambda x, w, b: C.batch_norm(x, rm, rv, w, b, training=False), x, w, b)
    x2 = t64(rng, 5, 3)  # BatchNorm1d on (N, C)
    assert dreidel.gradcheck(lambda x: C.batch_norm(x, None, None, training=True), x2)


def test_prelu_values_and_gradcheck(rng):
    x = rng.standard_normal((2, 3, 4))
    a = np.array([0.1, -0.5, 2.0])
    got = C.prelu(Tensor(x), Tensor(a)).data
    np.testing.assert_allclose(got, np.where(x > 0, x, a[None, :, None] * x))
    assert dreidel.gradcheck(lambda x, a: C.prelu(x, a), t64(rng, 2, 3, 4), Tensor(a, requires_grad=True))
    assert dreidel.gradcheck(lambda x, a: C.prelu(x, a), t64(rng, 2, 3, 4), Tensor([0.25], dtype=np.float64,
                                                                                     requires_grad=True))


# -- layers -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls,d", [(layers.Conv1d, 1), (layers.Conv2d, 2), (layers.Conv3d, 3)])
def test_conv_layers_shapes_init_and_from_weights(rng, cls, d):
    layer = cls(4, 6, 3, stride=2, padding=1, groups=2, rng=rng)
    assert layer.weight.shape == (6, 2) + (3,) * d and layer.bias.shape == (6,)
    bound = 1 / np.sqrt(2 * 3 ** d)
    assert np.abs(layer.weight.data).max() <= bound and np.abs(layer.weight.data).max() > 0.8 * bound
    x = Tensor(rng.standard_normal((2, 4) + (5,) * d).astype(np.float32))
    assert layer(x).shape == (2, 6) + (3,) * d
    again = cls.from_weights(layer.weight.data, layer.bias.data, stride=2, padding=1, groups=2)
    np.testing.assert_array_equal(again(x).data, layer(x).data)
    assert set(layer.state_dict()) == {"weight", "bias"}
    with pytest.raises(ValueError, match="channels"):
        layer(Tensor(np.zeros((1, 3) + (5,) * d, np.float32)))
    with pytest.raises(ValueError, match="axes"):
        layer(Tensor(np.zeros((4,) + (5,) * d, np.float32)))


def test_conv_transpose3d_layer_undoes_the_stride(rng):
    layer = layers.ConvTranspose3d(4, 2, 2, stride=2, rng=rng).double()
    assert layer.weight.shape == (4, 2, 2, 2, 2)
    x = t64(rng, 1, 4, 2, 3, 2)
    assert layer(x).shape == (1, 2, 4, 6, 4)
    assert dreidel.gradcheck(lambda x, *p: layer(x), x, *layer.parameters())


def test_conv3d_layer_gradcheck(rng):
    layer = layers.Conv3d(2, 3, (2, 3, 2), stride=(1, 2, 1), padding=(1, 1, 0), rng=rng).double()
    assert dreidel.gradcheck(lambda x, *p: layer(x), t64(rng, 1, 2, 3, 4, 3), *layer.parameters())


def test_batchnorm_layer_tracks_and_uses_running_stats(rng):
    layer = layers.BatchNorm2d(3).double()
    assert set(layer.state_dict()) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    xs = [rng.standard_normal((4, 3, 2, 2)) * 3 + 2 for _ in range(3)]
    mean, var = np.zeros(3), np.ones(3)
    for x in xs:
        layer(Tensor(x))
        count = x.size // 3
        mean = 0.9 * mean + 0.1 * x.mean(axis=(0, 2, 3))
        var = 0.9 * var + 0.1 * x.var(axis=(0, 2, 3)) * count / (count - 1)
    np.testing.assert_allclose(layer.running_mean.data, mean)
    np.testing.assert_allclose(layer.running_var.data, var)
    assert int(layer.num_batches_tracked.data) == 3
    layer.eval()
    x = t64(rng, 2, 3, 2, 2)
    want = (x.data - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(layer(x).data, want, atol=1e-12)
    assert dreidel.gradcheck(lambda x, *p: layer(x), x, *layer.parameters())


def test_norm_and_activation_layers(rng):
    x = t64(rng, 2, 4, 3, 2, 2)
    for layer in (layers.GroupNorm(2, 4).double(), layers.InstanceNorm3d(4, affine=True).double(),
                  layers.PReLU(4).double(), layers.PReLU().double()):
        assert dreidel.gradcheck(lambda x, *p: layer(x), x, *layer.parameters())
    tracked = layers.InstanceNorm1d(2, track_running_stats=True).double()
    y = rng.standard_normal((3, 2, 5))
    tracked(Tensor(y))
    np.testing.assert_allclose(tracked.running_mean.data, 0.1 * y.mean(axis=(0, 2)))
    tracked.eval()
    want = (y - tracked.running_mean.data[None, :, None]) / np.sqrt(tracked.running_var.data[None, :, None] + 1e-5)
    np.testing.assert_allclose(tracked(Tensor(y)).data, want, atol=1e-12)


def test_pool_and_upsample_layers(rng):
    x = Tensor(rng.standard_normal((1, 2, 4, 4, 4)))
    assert layers.MaxPool3d(2)(x).shape == (1, 2, 2, 2, 2)
    assert layers.AvgPool3d(2, stride=1)(x).shape == (1, 2, 3, 3, 3)
    assert layers.AdaptiveAvgPool3d(1)(x).shape == (1, 2, 1, 1, 1)
    np.testing.assert_allclose(layers.AdaptiveAvgPool3d(1)(x).data[..., 0, 0, 0], x.data.mean(axis=(2, 3, 4)))
    up = layers.Upsample(scale_factor=2, mode="trilinear")(x)
    assert up.shape == (1, 2, 8, 8, 8)
    np.testing.assert_allclose(up.data.mean(axis=(2, 3, 4)), x.data.mean(axis=(2, 3, 4)))  # linear 2×: mean kept
    assert layers.MaxPool2d(2)(Tensor(np.zeros((1, 1, 4, 4)))).shape == (1, 1, 2, 2)
    assert layers.AvgPool1d(2)(Tensor(np.zeros((1, 1, 4)))).shape == (1, 1, 2)


def test_conv3d_spectral_is_depthwise_then_channel_mixing(rng):
    mixing = lambda i, o, b: nn.Linear(i, o, bias=b, rng=rng)  # noqa: E731
    layer = layers.Conv3DSpectral(3, 5, 3, padding=1, mixing=mixing, rng=rng).double()
    x = t64(rng, 1, 3, 3, 2, 3)
    depthwise = naive_conv(x.data, layer.depthwise.weight.data, pads=1, groups=3)
    want = np.einsum("oc,ncdhw->nodhw", layer.mixing.weight.data, depthwise) + layer.mixing.bias.data[None, :, None,
                                                                                                          None, None]
    np.testing.assert_allclose(layer(x).data, want, atol=1e-12)
    assert dreidel.gradcheck(lambda x, *p: layer(x), x, *layer.parameters())


def test_conv3d_spectral_uses_linear_wht_by_default(rng):
    spectral = pytest.importorskip("dreidel.nn.spectral")
    if not hasattr(spectral, "LinearWHT"):
        pytest.skip("LinearWHT not available yet")
    layer = layers.Conv3DSpectral(4, 6, 2, padding=(1, 0, 0), rng=rng).double()
    assert isinstance(layer.mixing, spectral.LinearWHT)
    x = t64(rng, 1, 4, 2, 2, 2)
    assert layer(x).shape == (1, 6, 3, 1, 1)
    # LinearWHT's own parameters are gradchecked in its tests; here the path through both stages
    assert dreidel.gradcheck(lambda x, w: layer(x), x, layer.depthwise.weight, projections=1)


def test_conv3d_spectral_from_dense_is_exact_on_its_own_form(rng):
    spectral = pytest.importorskip("dreidel.nn.spectral")
    if not hasattr(spectral, "LinearWHT"):
        pytest.skip("LinearWHT not available yet")
    size = 8  # LinearWHT(4 → 6) works at width 8: its matrix is H[:6, :4]·diag(d)
    hadamard = np.array([[1.0]])
    while hadamard.shape[0] < size:
        hadamard = np.block([[hadamard, hadamard], [hadamard, -hadamard]])
    d, taps = rng.standard_normal(4), rng.standard_normal((4, 2, 2, 2))
    mixing = hadamard[:6, :4] / np.sqrt(size) * d
    weight = mixing[:, :, None, None, None] * taps[None]  # (6, 4, 2, 2, 2) = M[o, c]·w_c[k]
    bias = rng.standard_normal(6)
    layer = layers.Conv3DSpectral.from_dense(weight, bias, padding=1)
    assert layer.fit_report["relative_error"] < 1e-6
    x = rng.standard_normal((1, 4, 3, 2, 3))
    np.testing.assert_allclose(layer(Tensor(x)).data, naive_conv(x, weight, bias, pads=1), atol=1e-6)
    # a generic kernel: a projection, so never better than its best separable form and never worse than 0
    generic = rng.standard_normal((6, 4, 2, 2, 2))
    plain = layers.Conv3DSpectral.from_dense(generic, padding=1)
    assert plain.fit_report["separable_relative_error"] <= plain.fit_report["relative_error"] <= 1.0
    # fitted on inputs, the mixing stage is closer to the separable kernel's output on those inputs
    u, sv, vt = np.linalg.svd(np.moveaxis(generic.reshape(6, 4, 8), 1, 0), full_matrices=False)
    separable = (u[:, :, 0] * sv[:, :1]).T[:, :, None] * vt[None, :, 0, :]
    target = naive_conv(x, separable.reshape(6, 4, 2, 2, 2), pads=1)
    on_data = layers.Conv3DSpectral.from_dense(generic, padding=1, inputs=x)
    assert np.linalg.norm(on_data(Tensor(x)).data - target) <= np.linalg.norm(plain(Tensor(x)).data - target)


def test_norm_and_prelu_from_weights(rng):
    w, b, mean, var = rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal(3), rng.random(3) + 0.1
    layer = layers.BatchNorm2d.from_weights(w, b, mean, var, eps=1e-3).eval()
    x = rng.standard_normal((2, 3, 2, 2))
    want = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-3) * w[:, None, None] + b[:, None, None]
    np.testing.assert_allclose(layer(Tensor(x)).data, want, atol=1e-12)
    with pytest.raises(ValueError):
        layers.BatchNorm2d.from_weights(w, b[:2])
    slope = layers.PReLU.from_weights(np.array([[0.5], [0.1], [2.0]]))
    np.testing.assert_allclose(slope(Tensor(x)).data, np.where(x > 0, x, np.array([0.5, 0.1, 2.0])[:, None, None] * x))


# -- bad input ----------------------------------------------------------------------------------------------
def test_bad_arguments_raise_clear_errors(rng):
    x = Tensor(rng.standard_normal((1, 4, 5, 5)))
    w = Tensor(rng.standard_normal((6, 4, 3, 3)))
    with pytest.raises(ValueError, match="input channels"):
        C.conv(x, Tensor(rng.standard_normal((6, 3, 3, 3))))
    with pytest.raises(ValueError, match="groups"):
        C.conv(x, w, groups=3)
    with pytest.raises(ValueError, match="larger than"):
        C.conv(x, Tensor(rng.standard_normal((6, 4, 7, 7))))
    with pytest.raises(ValueError, match="padding"):
        C.conv(x, w, padding=(1, 2, 3))
    with pytest.raises(ValueError, match="padding"):
        C.conv(x, w, padding=-1)
    with pytest.raises(ValueError, match="stride"):
        C.conv(x, w, stride=0)
    with pytest.raises(ValueError, match="bias"):
        C.conv(x, w, Tensor(np.zeros(5)))
    with pytest.raises(ValueError, match="spatial"):
        C.conv(Tensor(np.zeros((4, 5))), w)
    with pytest.raises(ValueError, match="output_padding"):
        C.conv_transpose(x, Tensor(rng.standard_normal((4, 2, 3, 3))), stride=2, output_padding=2)
    with pytest.raises(ValueError, match="exactly one"):
        C.interpolate(x)
    with pytest.raises(ValueError, match="mode"):
        C.interpolate(x, scale_factor=2, mode="trilinear")
    with pytest.raises(ValueError, match="num_groups"):
        C.group_norm(x, 3)
    with pytest.raises(ValueError, match="running_mean"):
        C.batch_norm(x, np.zeros(3), np.ones(4))
    with pytest.raises(ValueError, match="larger than"):
        C.max_pool(x, 7)
    with pytest.raises(ValueError, match="groups"):
        layers.Conv2d(4, 6, 3, groups=4)
