"""Values of the engine ops the ONNX importer needs (cumsum, prod, einsum, tile, gather_elements,
scatter_nd, pad modes, per-side pooling, resize) against references written here: element loops and
closed formulas in numpy, and onnxruntime running the one-node ONNX graph. Their gradients are in
tests/test_ops_gradcheck.py."""
import itertools
import math

import numpy as np
import pytest

from dreidel import Tensor, functional as F, ops


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def run_onnx(op, inputs, attributes, output_rank, opset=18, dtypes=None):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper
    names = [f"i{i}" if a is not None else "" for i, a in enumerate(inputs)]  # None: an omitted optional input
    kinds = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64}
    node = helper.make_node(op, names, ["y"], **attributes)
    given = [(n, a) for n, a in zip(names, inputs) if a is not None]
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, kinds[a.dtype], a.shape) for n, a in given],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * output_rank)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, dict(given))[0]


# -- cumsum ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("exclusive", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cumsum_against_loops(rng, exclusive, reverse, dim):
    x = rng.standard_normal((3, 4, 2))
    axis = dim % 3
    want = np.zeros_like(x)
    n = x.shape[axis]
    for i in range(n):
        if reverse:
            picked = range(i + 1 if exclusive else i, n)
        else:
            picked = range(0, i if exclusive else i + 1)
        total = sum((np.take(x, j, axis=axis) for j in picked), np.zeros(np.take(x, 0, axis=axis).shape))
        index = [slice(None)] * 3
        index[axis] = i
        want[tuple(index)] = total
    np.testing.assert_allclose(ops.cumsum(Tensor(x), dim, exclusive, reverse).data, want, rtol=1e-12, atol=1e-12)


def test_cumsum_matches_onnxruntime(rng):
    x = rng.standard_normal((3, 5)).astype(np.float32)
    for exclusive, reverse in itertools.product((0, 1), repeat=2):
        want = run_onnx("CumSum", [x, np.array(1, np.int64)], dict(exclusive=exclusive, reverse=reverse), 2)
        np.testing.assert_allclose(ops.cumsum(Tensor(x), 1, bool(exclusive), bool(reverse)).data, want, rtol=1e-6)


def test_cumsum_rejects_a_bad_dim():
    with pytest.raises(ValueError, match="dim"):
        ops.cumsum(Tensor(np.ones((2, 3))), 2)


# -- prod -----------------------------------------------------------------------------------------------
def test_prod_values_and_gradient_with_zeros():
    x = np.array([[2.0, 0.0, 3.0], [0.0, 0.0, 5.0], [1.0, 4.0, -2.0]])
    t = Tensor(x, requires_grad=True)
    out = ops.prod(t, 1)
    np.testing.assert_array_equal(out.data, [0.0, 0.0, -8.0])
    out.sum().backward()
    # d/dx_ij Π_k x_ik = Π_{k≠j} x_ik, by deleting the element
    want = np.array([[np.prod(np.delete(x[i], j)) for j in range(3)] for i in range(3)])
    np.testing.assert_array_equal(t.grad, want)
    assert want[0, 1] == 6.0 and want[1, 0] == 0.0  # one zero: only it gets a gradient; two: none does


def test_prod_over_several_axes_and_keepdim(rng):
    x = rng.standard_normal((2, 3, 4))
    out = ops.prod(Tensor(x), (0, 2), keepdim=True)
    want = np.ones((1, 3, 1))
    for i, j, k in itertools.product(range(2), range(3), range(4)):
        want[0, j, 0] *= x[i, j, k]
    np.testing.assert_allclose(out.data, want, rtol=1e-12)
    assert ops.prod(Tensor(x)).data == pytest.approx(float(np.multiply.reduce(x.reshape(-1))))


# -- einsum ---------------------------------------------------------------------------------------------
def test_einsum_against_closed_forms(rng):
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 5))
    batch_a, batch_b = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 4, 5))
    v, w = rng.standard_normal(4), rng.standard_normal(4)
    square = rng.standard_normal((4, 4))
    T = Tensor
    cases = [
        (ops.einsum("ij,jk->ik", T(a), T(b)), a @ b),
        (ops.einsum("ij,jk", T(a), T(b)), a @ b),  # implicit output: the letters used once, sorted
        (ops.einsum("bij,bjk->bik", T(batch_a), T(batch_b)), np.stack([batch_a[i] @ batch_b[i] for i in range(2)])),
        (ops.einsum("...ij,...jk->...ik", T(batch_a), T(b)), np.stack([batch_a[i] @ b for i in range(2)])),
        (ops.einsum("i,i->", T(v), T(w)), sum(v[i] * w[i] for i in range(4))),
        (ops.einsum("i,j->ij", T(v), T(w)), v[:, None] * w[None, :]),
        (ops.einsum("ij->ji", T(a)), a.T),
        (ops.einsum("ii->i", T(square)), np.array([square[i, i] for i in range(4)])),
        (ops.einsum("ij->", T(a)), a.sum()),
    ]
    for got, want in cases:
        np.testing.assert_allclose(got.data, want, rtol=1e-12, atol=1e-12)


def test_einsum_errors():
    a = Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(ValueError, match="operands"):
        ops.einsum("ij,jk->ik", a)
    with pytest.raises(ValueError, match="rank"):
        ops.einsum("ijk->i", a)
    with pytest.raises(ValueError, match="repeated"):
        ops.einsum("ii->i", Tensor(np.ones((2, 2)), requires_grad=True))


# -- tile -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("repeats", [(2, 3), (1, 1), (3,), (2, 1, 2), (0, 2)])
def test_tile_against_loops(rng, repeats):
    x = rng.standard_normal((2, 3))
    got = ops.tile(Tensor(x), repeats).data
    full = (1,) * (len(repeats) - 2) + (2, 3) if len(repeats) > 2 else (2, 3)
    reps = (1,) * (len(full) - len(repeats)) + tuple(repeats)
    want = np.zeros([n * r for n, r in zip(full, reps)])
    base = x.reshape(full)
    for index in itertools.product(*[range(n) for n in want.shape]):
        want[index] = base[tuple(i % n for i, n in zip(index, full))]
    np.testing.assert_array_equal(got, want)


# -- gather_elements / scatter_nd -----------------------------------------------------------------------
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_gather_elements_against_loops(rng, dim):
    x = rng.standard_normal((3, 4))
    axis = dim % 2
    index = rng.integers(-x.shape[axis], x.shape[axis], size=(2, 3))  # shorter than x off dim: allowed
    got = ops.gather_elements(Tensor(x), index, dim).data
    want = np.zeros(index.shape)
    for i, j in itertools.product(range(2), range(3)):
        k = index[i, j] % x.shape[axis]
        want[i, j] = x[k, j] if axis == 0 else x[i, k]
    np.testing.assert_array_equal(got, want)
    if dim == 1:  # and onnxruntime agrees
        want = run_onnx("GatherElements", [x.astype(np.float32), index], dict(axis=1), 2)
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_gather_elements_errors():
    x = Tensor(np.ones((2, 3)))
    with pytest.raises(IndexError, match="out of range"):
        ops.gather_elements(x, np.array([[3]]), 1)
    with pytest.raises(ValueError, match="rank"):
        ops.gather_elements(x, np.array([0]), 1)
    with pytest.raises(TypeError, match="integers"):
        ops.gather_elements(x, np.array([[0.5]]), 1)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_nd_against_loops(rng, reduction):
    data = rng.standard_normal((4, 3, 2))
    indices = np.array([[1, 0], [3, 2], [-3, 0], [0, 1]])  # (1, 0) twice (as -3 = 1)
    updates = rng.standard_normal((4, 2))
    want = data.copy()
    for (i, j), u in zip(indices, updates):
        i %= 4
        if reduction == "none":
            want[i, j] = u
        elif reduction == "add":
            want[i, j] += u
        elif reduction == "mul":
            want[i, j] *= u
        elif reduction == "max":
            want[i, j] = np.maximum(want[i, j], u)
        else:
            want[i, j] = np.minimum(want[i, j], u)
    got = ops.scatter_nd(Tensor(data), indices, Tensor(updates), reduction).data
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_scatter_nd_matches_onnxruntime(rng):
    data = rng.standard_normal((4, 3)).astype(np.float32)
    indices = np.array([[2], [0]], np.int64)
    updates = rng.standard_normal((2, 3)).astype(np.float32)
    for reduction in ("none", "add", "mul"):
        want = run_onnx("ScatterND", [data, indices, updates], dict(reduction=reduction), 2)
        got = ops.scatter_nd(Tensor(data), indices, Tensor(updates), reduction).data
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_scatter_nd_errors():
    data = Tensor(np.zeros((3, 2)), requires_grad=True)
    with pytest.raises(ValueError, match="updates shape"):
        ops.scatter_nd(data, np.array([[0]]), Tensor(np.ones((1, 3))))
    with pytest.raises(IndexError, match="out of range"):
        ops.scatter_nd(data, np.array([[3]]), Tensor(np.ones((1, 2))))
    with pytest.raises(ValueError, match="gradient"):
        ops.scatter_nd(data, np.array([[0]]), Tensor(np.ones((1, 2))), "mul")
    with pytest.raises(ValueError, match="reduction"):
        ops.scatter_nd(data, np.array([[0]]), Tensor(np.ones((1, 2))), "sum")


# -- pad ------------------------------------------------------------------------------------------------
def _source(i, n, mode):
    """Which input element position i (of the padded axis, 0 = first input element) copies."""
    if 0 <= i < n:
        return i
    if mode == "edge":
        return min(max(i, 0), n - 1)
    if mode == "wrap":
        return i % n
    period = 2 * (n - 1)  # reflect: ... 2 1 | 0 1 2 ... n-1 | n-2 ...
    i %= period
    return i if i < n else period - i


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_modes_and_cropping_against_loops(rng, mode):
    x = rng.standard_normal((4, 5))
    widths = [(2, -1), (-2, 3)]  # pad 2 before / crop 1 after on axis 0; crop 2 before / pad 3 after on axis 1
    got = ops.pad(Tensor(x), widths, mode=mode, value=7.0).data
    kept = x[:3, 2:]  # after cropping
    want = np.zeros((3 + 2, 3 + 3))
    for i, j in itertools.product(range(5), range(6)):
        si, sj = i - 2, j
        inside = 0 <= si < 3 and 0 <= sj < 3
        if mode == "constant":
            want[i, j] = kept[si, sj] if inside else 7.0
        else:
            want[i, j] = kept[_source(si, 3, mode), _source(sj, 3, mode)]
    np.testing.assert_array_equal(got, want)


def test_pad_matches_onnxruntime(rng):
    x = rng.standard_normal((3, 4)).astype(np.float32)
    pads = np.array([1, 2, 2, 1], np.int64)  # begin axis 0, begin axis 1, end axis 0, end axis 1
    for mode in ("constant", "reflect", "edge", "wrap"):
        want = run_onnx("Pad", [x, pads], dict(mode=mode), 2, opset=19)
        np.testing.assert_array_equal(ops.pad(Tensor(x), [(1, 2), (2, 1)], mode=mode).data, want)


def test_torch_pad_modes_and_errors(rng):
    x = Tensor(rng.standard_normal((1, 2, 4)))
    np.testing.assert_array_equal(F.pad(x, (1, 2), mode="replicate").data, ops.pad(x, [(0, 0), (0, 0), (1, 2)], "edge").data)
    np.testing.assert_array_equal(F.pad(x, (1, 2), mode="circular").data, ops.pad(x, [(0, 0), (0, 0), (1, 2)], "wrap").data)
    with pytest.raises(ValueError, match="mode"):
        ops.pad(x, [(0, 0)] * 3, mode="symmetric")
    with pytest.raises(ValueError, match="crop more"):
        ops.pad(x, [(0, 0), (0, 0), (-3, -2)])
    with pytest.raises(ValueError, match="pair per axis"):
        ops.pad(x, [(0, 0), (1, 1)])


# -- pooling with per-side pads ------------------------------------------------------------------------
def _pool_loops(x, kernel, stride, pads, dilation, ceil_mode, kind, count_include_pad=False):
    """Pooling by explicit window loops (ONNX: a ceil-mode window must start inside the input or its
    begin padding; averages count real elements, plus explicit padding with count_include_pad)."""
    spatial = x.shape[2:]
    d = len(spatial)
    out_shape = []
    for i in range(d):
        padded = spatial[i] + pads[i][0] + pads[i][1]
        extent = dilation[i] * (kernel[i] - 1) + 1
        o = (math.ceil if ceil_mode else math.floor)((padded - extent) / stride[i]) + 1
        if ceil_mode and (o - 1) * stride[i] >= spatial[i] + pads[i][0]:
            o -= 1
        out_shape.append(o)
    out = np.zeros(x.shape[:2] + tuple(out_shape))
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for position in itertools.product(*[range(o) for o in out_shape]):
            values, count = [], 0
            for offset in itertools.product(*[range(k) for k in kernel]):
                coords = [p * s + k * dl - b for p, s, k, dl, (b, _) in zip(position, stride, offset, dilation, pads)]
                inside = all(0 <= q < n_ for q, n_ in zip(coords, spatial))
                in_padding = all(-b <= q < n_ + e for q, n_, (b, e) in zip(coords, spatial, pads))
                if inside:
                    values.append(x[(n, c) + tuple(coords)])
                    count += 1
                elif in_padding and count_include_pad:
                    count += 1
            if kind == "max":
                out[(n, c) + position] = max(values) if values else -np.inf
            else:
                out[(n, c) + position] = sum(values) / max(count, 1)
    return out


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("pads", [((1, 0), (0, 1)), ((0, 2), (1, 1))])
def test_pools_with_per_side_pads_against_loops(rng, ceil_mode, pads):
    x = rng.standard_normal((1, 2, 6, 7))
    kernel, stride, dilation = (3, 2), (2, 2), (1, 2)
    want = _pool_loops(x, kernel, stride, pads, dilation, ceil_mode, "max")
    got = ops.max_pool(Tensor(x), kernel, stride, pads, dilation, ceil_mode).data
    np.testing.assert_array_equal(got, want)
    flat = tuple(b for b, _ in pads) + tuple(e for _, e in pads)  # ONNX order: the same pads
    np.testing.assert_array_equal(ops.max_pool(Tensor(x), kernel, stride, flat, dilation, ceil_mode).data, want)
    for include in (False, True):
        want = _pool_loops(x, kernel, stride, pads, dilation, ceil_mode, "avg", include)
        got = ops.avg_pool(Tensor(x), kernel, stride, pads, ceil_mode, include, dilation=dilation).data
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_pool_pads_errors():
    x = Tensor(np.ones((1, 1, 4, 4)))
    with pytest.raises(ValueError, match="pairs"):
        ops.max_pool(x, 2, 2, ((1, 0),))
    with pytest.raises(ValueError, match="pairs"):
        ops.avg_pool(x, 2, 2, ((1, -1), (0, 0)))


# -- resize ---------------------------------------------------------------------------------------------
def _onnx_coordinate(i, n_in, n_out, scale, mode):
    if mode == "asymmetric":
        return i / scale
    if mode == "half_pixel":
        return (i + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (i + 0.5) / scale - 0.5 if n_out > 1 else 0.0
    if mode == "align_corners":  # ONNX: the resized length is n_in · scale, possibly fractional
        length = n_in * scale
        return 0.0 if length == 1 else i * (n_in - 1) / (length - 1)
    raise AssertionError(mode)


def _keys(d, a):
    d = abs(d)
    if d <= 1:
        return (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1
    if d < 2:
        return a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a
    return 0.0


def _resize_1d(v, n_out, scale, mode, transform, nearest_mode="round_prefer_floor", a=-0.75, exclude=False):
    """One axis of ONNX Resize, one output at a time."""
    n_in = len(v)
    out = np.zeros(n_out)
    for i in range(n_out):
        s = _onnx_coordinate(i, n_in, n_out, scale, transform)
        if mode == "nearest":
            r = {"round_prefer_floor": math.ceil(s - 0.5), "round_prefer_ceil": math.floor(s + 0.5),
                 "floor": math.floor(s), "ceil": math.ceil(s)}[nearest_mode]
            out[i] = v[min(max(r, 0), n_in - 1)]
        elif mode == "linear":
            s = min(max(s, 0.0), n_in - 1)
            lo = int(math.floor(s))
            hi = min(lo + 1, n_in - 1)
            out[i] = v[lo] * (1 - (s - lo)) + v[hi] * (s - lo)
        else:
            base = math.floor(s)
            taps = [(base + k, _keys(s - (base + k), a)) for k in (-1, 0, 1, 2)]
            if exclude:
                taps = [(j, w) for j, w in taps if 0 <= j < n_in]
                total = sum(w for _, w in taps)
                taps = [(j, w / total) for j, w in taps]
            out[i] = sum(v[min(max(j, 0), n_in - 1)] * w for j, w in taps)
    return out


def _resize_loops(x, axes, sizes, scales, **options):
    out = x
    for axis, n_out, scale in zip(axes, sizes, scales):
        out = np.apply_along_axis(_resize_1d, axis, out, n_out, scale, **options)
    return out


@pytest.mark.parametrize("mode,transform,extra", [
    ("nearest", "asymmetric", dict(nearest_mode="floor")),
    ("nearest", "half_pixel", dict(nearest_mode="round_prefer_floor")),
    ("nearest", "half_pixel", dict(nearest_mode="round_prefer_ceil")),
    ("nearest", "align_corners", dict(nearest_mode="ceil")),
    ("linear", "half_pixel", {}),
    ("linear", "align_corners", {}),
    ("linear", "pytorch_half_pixel", {}),
    ("linear", "asymmetric", {}),
    ("cubic", "half_pixel", dict(a=-0.5)),
    ("cubic", "half_pixel", dict(a=-0.75, exclude=True)),
    ("cubic", "align_corners", {}),
])
@pytest.mark.parametrize("scale", [2.0, 1.5, 0.6])
def test_resize_against_loops(rng, mode, transform, extra, scale):
    x = rng.standard_normal((1, 2, 5, 4))
    axes, sizes = (2, 3), [int(math.floor(5 * scale)), int(math.floor(4 * scale))]
    options = dict(mode=mode, transform=transform, **extra)
    want = _resize_loops(x, axes, sizes, [scale, scale], **options)
    got = ops.resize(Tensor(x), scale_factor=[scale, scale], axes=axes, mode=mode,
                     coordinate_transformation_mode=transform, nearest_mode=extra.get("nearest_mode", "round_prefer_floor"),
                     cubic_coeff_a=extra.get("a", -0.75), exclude_outside=extra.get("exclude", False)).data
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("transform", ["half_pixel", "align_corners", "asymmetric", "pytorch_half_pixel"])
def test_resize_matches_onnxruntime(rng, mode, transform):
    x = rng.standard_normal((1, 2, 4, 5)).astype(np.float32)
    sizes = np.array([1, 2, 7, 3], np.int64)  # up on one axis, down on the other
    want = run_onnx("Resize", [x, None, None, sizes],
                    dict(mode=mode, coordinate_transformation_mode=transform), 4, opset=18)
    got = ops.resize(Tensor(x), size=sizes, mode=mode, coordinate_transformation_mode=transform).data
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_resize_errors():
    x = Tensor(np.ones((1, 1, 3, 3)))
    with pytest.raises(ValueError, match="mode"):
        ops.resize(x, size=(6, 6), axes=(2, 3), mode="area")
    with pytest.raises(ValueError, match="coordinate_transformation_mode"):
        ops.resize(x, size=(6, 6), axes=(2, 3), coordinate_transformation_mode="tf_crop_and_resize")
    with pytest.raises(ValueError, match="size"):
        ops.resize(x, size=(6,), axes=(2, 3))
    with pytest.raises(ValueError, match="empty"):
        ops.resize(x, scale_factor=(0.1, 1), axes=(2, 3))
    with pytest.raises(ValueError, match="needs size or scale_factor"):
        ops.resize(x)


def test_interpolate_bicubic_against_loops(rng):
    x = rng.standard_normal((1, 1, 4, 5))
    got = ops.interpolate(Tensor(x), size=(7, 3), mode="bicubic").data
    # PyTorch's bicubic with align_corners=False: half-pixel sources (not clamped), a = -0.75, edge clamp
    want = _resize_loops(x, (2, 3), (7, 3), (7 / 4, 3 / 5), mode="cubic", transform="half_pixel")
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
