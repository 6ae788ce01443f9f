"""3-D UNet: blocks' gradients, the twins' shapes and parameters, Dice + CE, sliding windows, the data set."""
import math

import numpy as np
import pytest

import dreidel
from dreidel import nn
from dreidel.data.volumes import KINDS, load_volumes, object_mask, synthetic_volumes
from dreidel.models.unet3d import (ChannelMix, ConvBlock, SpectralConvTranspose3d, UNet3D, UNet3DConfig,
                                   count_multiply_adds, dense_factories, dice_ce_loss, dice_scores,
                                   sliding_window_inference, spectral_factories, window_weights)


def _x(shape, seed=0):
    return dreidel.tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)


def _check_module(module, x, projections=2):
    """gradcheck of the module's output in its input and every parameter (float64)."""
    module.double()
    params = list(module.parameters())
    assert dreidel.gradcheck(lambda inp, *ps: module(inp), x, *params, projections=projections)


# -- gradients of every block, tiny shapes, float64 ---------------------------------------------------
@pytest.mark.parametrize("variant", ["spectral", "dense"])
def test_gradcheck_conv_block(variant):
    dreidel.random.manual_seed(1)
    conv = (spectral_factories() if variant == "spectral" else dense_factories())["conv"]
    _check_module(ConvBlock(2, 3, conv), _x((1, 2, 3, 2, 3)), projections=1)


@pytest.mark.parametrize("variant", ["spectral", "dense"])
def test_gradcheck_upsampling(variant):
    dreidel.random.manual_seed(2)
    up = (spectral_factories() if variant == "spectral" else dense_factories())["up"]
    _check_module(up(3, 2), _x((2, 3, 2, 1, 2)))


def test_gradcheck_channel_mix():
    dreidel.random.manual_seed(3)
    mix = ChannelMix(6, 3)
    mix.layer.bias.data[:] = np.arange(3)  # a non-zero bias so its gradient is checked meaningfully
    _check_module(mix, _x((1, 6, 2, 2, 1)))


def _whole_unet(skip, dtype=np.float64):
    dreidel.random.manual_seed(4)
    model = UNet3D(UNet3DConfig(in_channels=1, num_classes=3, channels=(2, 3), skip=skip)).to(dtype)
    target = np.random.default_rng(5).integers(0, 3, size=(1, 2, 2, 4))
    return model, _x((1, 1, 2, 2, 4)), target


@pytest.mark.parametrize("skip", ["concat", "add"])
def test_gradcheck_whole_unet_input_and_decoder(skip):
    """Dice + CE of the whole model: the input's gradient runs through every layer's backward; the
    encoder's parameters are checked block by block above (all of them: the slow test below)."""
    model, x, target = _whole_unet(skip)
    params = list(model.decoder.parameters()) + list(model.head.parameters())
    assert dreidel.gradcheck(lambda inp, *ps: dice_ce_loss(model(inp), target), x, *params, projections=1)


@pytest.mark.slow
@pytest.mark.parametrize("skip", ["concat", "add"])
def test_gradcheck_whole_unet_every_parameter(skip):
    model, x, target = _whole_unet(skip)
    assert dreidel.gradcheck(lambda inp, *ps: dice_ce_loss(model(inp), target), x, *model.parameters())


def test_spectral_upsampling_is_a_depthwise_transposed_conv_then_mixing():
    """The broadcast stage equals ConvTranspose3d(groups=C) with the same weight (the engine's op)."""
    dreidel.random.manual_seed(6)
    up = SpectralConvTranspose3d(4, 3)
    x = dreidel.tensor(np.random.default_rng(7).standard_normal((2, 4, 3, 2, 5)).astype(np.float32))
    reference = up.mixing(up.depthwise(x))
    np.testing.assert_allclose(up(x).data, reference.data, rtol=1e-5, atol=1e-6)


# -- the twins ------------------------------------------------------------------------------------
def _conv_count(c_in, c_out, k=27):
    return c_in * c_out * k


def test_dense_and_spectral_twins_shapes_and_parameters():
    config = dict(in_channels=1, num_classes=4, channels=(8, 16, 32))
    spectral = UNet3D(UNet3DConfig(**config, variant="spectral"))
    dense = UNet3D(UNet3DConfig(**config, variant="dense"))
    x = dreidel.tensor(np.random.default_rng(8).standard_normal((2, 1, 8, 8, 16)).astype(np.float32))
    assert spectral(x).shape == dense(x).shape == (2, 4, 8, 8, 16)
    # the same layout with other layers: every role sits at the same path with the same output shape
    shapes = []
    for model in (spectral, dense):
        seen = {}
        handles = [m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, out.shape))
                   for name, m in model.named_modules() if name.count(".") <= 2 and name]
        model(x)
        for h in handles:
            h.remove()
        shapes.append(seen)
    assert shapes[0] == shapes[1] and "decoder.0.up" in shapes[0] and "decoder.1.mix" in shapes[0]
    assert shapes[0]["decoder.0.up"] == (2, 16, 4, 4, 8)
    assert isinstance(spectral.encoder[1].conv1, nn.Conv3DSpectral) and isinstance(dense.encoder[1].conv1, nn.Conv3d)
    assert isinstance(spectral.decoder[0].up, SpectralConvTranspose3d)
    assert isinstance(dense.decoder[0].up, nn.ConvTranspose3d)
    # parameter counts by hand (norms: 2 per channel per norm; stem and head dense in both)
    ch = (8, 16, 32)
    norms = sum(2 * 2 * c for c in ch) + sum(2 * 2 * c for c in ch[:-1])
    stem_head = _conv_count(1, 8) + 8 * 4 + 4
    dense_convs = (_conv_count(8, 8) + _conv_count(8, 16) + _conv_count(16, 16) + _conv_count(16, 32)
                   + _conv_count(32, 32) + 2 * _conv_count(16, 16) + 2 * _conv_count(8, 8))
    dense_up = 32 * 16 * 8 + 16 + 16 * 8 * 8 + 8
    dense_mix = 32 * 16 + 16 * 8
    assert dense.parameter_count() == norms + stem_head + dense_convs + dense_up + dense_mix
    # spectral: depthwise c·27 plus LinearWHT's one diagonal entry per input channel (no conv bias)
    spectral_convs = sum(27 * i + i for i, _ in [(8, 8), (8, 16), (16, 16), (16, 32), (32, 32), (16, 16),
                                                 (16, 16), (8, 8), (8, 8)])
    spectral_up = (32 * 8 + 32 + 16) + (16 * 8 + 16 + 8)  # depthwise taps, diagonal, bias
    spectral_mix = 32 + 16
    assert spectral.parameter_count() == norms + stem_head + spectral_convs + spectral_up + spectral_mix
    assert spectral.parameter_count() < dense.parameter_count() / 10


def test_parameter_groups_partition_the_parameters():
    model = UNet3D(UNet3DConfig(channels=(4, 8)))
    groups = model.parameter_groups()
    ids = [id(p) for g in groups.values() for p in g]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert all(p.shape[1] == 1 and p.ndim == 5 for p in groups["spatial"])  # depthwise kernels
    mixing = {id(p) for m in model.modules() if isinstance(m, nn.LinearWHT) for p in m.parameters()}
    assert {id(p) for p in groups["mixing"]} == mixing
    dense = UNet3D(UNet3DConfig(channels=(4, 8), variant="dense")).parameter_groups()
    assert not dense["spatial"] and not dense["mixing"]


def test_multiply_adds_counted_by_hand_for_a_one_level_dense_model():
    model = UNet3D(UNet3DConfig(in_channels=2, num_classes=3, channels=(4,), variant="dense"))
    voxels = 4 * 4 * 4
    expected = voxels * (2 * 4 * 27 + 4 * 4 * 27 + 4 * 3)
    assert count_multiply_adds(model, (1, 2, 4, 4, 4)) == expected
    spectral = UNet3D(UNet3DConfig(in_channels=2, num_classes=3, channels=(4,)))
    wht = spectral.encoder[0].conv2.mixing.multiply_adds()  # 4 + FWHT(4) = 4 + 8, no bias
    assert wht == 4 + 4 * 2
    assert count_multiply_adds(spectral, (1, 2, 4, 4, 4)) == voxels * (2 * 4 * 27 + 4 * 27 + wht + 4 * 3)


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="skip"):
        UNet3DConfig(skip="mul")
    with pytest.raises(ValueError, match="variant"):
        UNet3DConfig(variant="sparse")
    with pytest.raises(ValueError, match="num_classes"):
        UNet3DConfig(num_classes=1)
    with pytest.raises(ValueError, match="unknown fields"):
        UNet3DConfig.from_dict({"chanels": (4,)})
    assert UNet3DConfig.from_dict(UNet3DConfig(channels=(2, 4)).to_dict()).channels == (2, 4)
    model = UNet3D(UNet3DConfig(channels=(2, 4, 8)))
    with pytest.raises(ValueError, match="divisible by 4"):
        model(np.zeros((1, 1, 8, 8, 6), np.float32))
    with pytest.raises(ValueError, match=r"\(N, 1, D, H, W\)"):
        model(np.zeros((1, 2, 8, 8, 8), np.float32))


# -- loss and metric ------------------------------------------------------------------------------
def test_dice_ce_loss_against_numpy():
    rng = np.random.default_rng(9)
    logits = rng.standard_normal((2, 3, 4, 3, 2))
    target = rng.integers(0, 3, size=(2, 4, 3, 2))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    dice = []
    for k in (1, 2):
        pk, yk = p[:, k], (target == k)
        dice.append((2 * np.sum(pk * yk) + 1e-5) / (np.sum(pk) + np.sum(yk) + 1e-5))
    ce = -np.mean(np.log(np.take_along_axis(p, target[:, None], axis=1)))
    expected = 1 - np.mean(dice) + ce
    got = dice_ce_loss(dreidel.tensor(logits), target)
    assert got.data == pytest.approx(expected, rel=1e-10)
    # perfect, confident predictions: Dice → 1, CE → 0
    perfect = 50.0 * np.moveaxis(np.eye(3)[target], -1, 1)
    assert float(dice_ce_loss(dreidel.tensor(perfect), target).data) < 1e-4


def test_dice_ce_loss_errors():
    logits = dreidel.tensor(np.zeros((1, 3, 2, 2, 2)))
    with pytest.raises(ValueError, match="do not match"):
        dice_ce_loss(logits, np.zeros((1, 2, 2, 3), np.int64))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        dice_ce_loss(logits, np.full((1, 2, 2, 2), 3))
    with pytest.raises(TypeError, match="class indices"):
        dice_ce_loss(logits, np.zeros((1, 2, 2, 2)))


def test_dice_scores():
    target = np.array([[0, 1, 1, 2], [0, 0, 0, 0]])
    prediction = np.array([[1, 1, 0, 2], [0, 0, 0, 2]])
    scores = dice_scores(prediction, target, 3)
    np.testing.assert_allclose(scores[0], [2 * 1 / 4, 1.0])
    assert np.isnan(scores[1, 0]) and scores[1, 1] == 0.0


# -- sliding-window inference ---------------------------------------------------------------------
def test_sliding_window_equals_forward_when_one_window_covers_the_volume():
    dreidel.random.manual_seed(10)
    model = UNet3D(UNet3DConfig(channels=(4, 8)))
    x = np.random.default_rng(11).standard_normal((2, 1, 8, 8, 8)).astype(np.float32)
    model.train()
    out = sliding_window_inference(model, x, 8, overlap=0.5)
    assert model.training  # the mode is restored
    with dreidel.no_grad():
        direct = model.eval()(dreidel.tensor(x)).data
    np.testing.assert_allclose(out, direct, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("blend", ["gaussian", "linear", "constant"])
def test_sliding_window_blends_a_translation_equivariant_model_exactly(blend):
    """A pointwise model gives the same output in every window, so any weighted average of the
    overlapping windows must reproduce the direct forward: this checks the tiling, weights and
    normalisation on a volume that needs many windows (uneven sides, one smaller than the patch)."""
    dreidel.random.manual_seed(12)
    model = ChannelMix(2, 3, layer=nn.Linear)
    x = np.random.default_rng(13).standard_normal((1, 2, 13, 9, 3)).astype(np.float32)
    out = sliding_window_inference(model, x, (6, 4, 4), overlap=0.5, blend=blend, batch_size=3)
    with dreidel.no_grad():
        direct = model(dreidel.tensor(x)).data
    assert out.shape == direct.shape
    np.testing.assert_allclose(out, direct, rtol=1e-5, atol=1e-5)


def test_sliding_window_blending_weights_each_window():
    """A model that outputs a constant per window (its mean input): the blend is Σ w·c / Σ w; by
    hand for two windows along one axis."""

    class Mean(nn.Module):
        def forward(self, x):
            return x.mean(axis=(2, 3, 4), keepdims=True) * dreidel.tensor(np.ones((1, 1) + x.shape[2:], np.float32))

    x = np.zeros((1, 1, 1, 1, 6), np.float32)
    x[..., 4:] = 4.0  # window [0, 4) has mean 0, window [2, 6) has mean 2
    out = sliding_window_inference(Mean(), x, (1, 1, 4), overlap=0.5, blend="linear")
    w = window_weights((1, 1, 4), "linear")[0, 0]
    expected = np.array([0, 0, w[0] * 2 / (w[2] + w[0]), w[1] * 2 / (w[3] + w[1]), 2, 2])
    np.testing.assert_allclose(out[0, 0, 0, 0], expected, rtol=1e-6)


def test_window_weights_and_errors():
    g = window_weights((5, 5, 5))
    assert g.shape == (5, 5, 5) and g[2, 2, 2] == 1.0 and g.min() > 0
    assert np.allclose(g, g[::-1, ::-1, ::-1])
    with pytest.raises(ValueError, match="blend"):
        window_weights((2, 2, 2), "cosine")
    model = ChannelMix(1, 1)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_inference(model, np.zeros((1, 1, 4, 4, 4)), 2, overlap=1.0)
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\)"):
        sliding_window_inference(model, np.zeros((1, 4, 4, 4)), 2)


# -- the synthetic data set -----------------------------------------------------------------------
def test_volumes_are_deterministic_per_seed_and_split():
    a = load_volumes(3, 2, size=16, seed=5)
    b = load_volumes(3, 2, size=16, seed=5)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    c = load_volumes(3, 2, size=16, seed=6)
    assert not np.array_equal(a[0], c[0])
    # volume i depends only on (seed, stream, i): a longer set starts with the shorter one
    longer, _ = synthetic_volumes(5, size=16, seed=5)
    np.testing.assert_array_equal(longer[:3], a[0])
    # train and held-out volumes differ
    assert not any(np.array_equal(t, h) for t in a[0] for h in a[2])


def test_volume_contents():
    x, y = synthetic_volumes(6, size=24, seed=0)
    assert x.shape == (6, 1, 24, 24, 24) and x.dtype == np.float32 and y.dtype == np.int64
    assert set(np.unique(y)) <= set(range(len(KINDS)))
    assert set(np.unique(y)) == {0, 1, 2, 3}  # every kind appears in six volumes
    np.testing.assert_allclose(x.mean(axis=(1, 2, 3, 4)), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(1, 2, 3, 4)), 1, atol=1e-4)
    for i in range(6):  # objects are brighter than the background on average, whatever their kind
        assert x[i, 0][y[i] > 0].mean() > x[i, 0][y[i] == 0].mean() + 1


def test_object_masks_against_geometry():
    """Voxel counts of each rasterised kind against the solid's volume (a few % at these radii), and
    the rotation moves the cube but keeps its count."""
    grid = np.stack(np.meshgrid(*(np.arange(40.0),) * 3, indexing="ij"), axis=-1)
    centre, r, eye = np.array([20.0, 19.5, 20.3]), 8.0, np.eye(3)
    ball = object_mask(1, grid, centre, r, eye)
    assert ball.sum() == pytest.approx(4 / 3 * math.pi * r ** 3, rel=0.03)
    assert np.linalg.norm(np.argwhere(ball) - centre, axis=1).max() <= r
    cube = object_mask(2, grid, centre, r, eye)
    assert cube.sum() == pytest.approx((2 * 0.8 * r) ** 3, rel=0.2)  # lattice counting of a cube edge
    q = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))[0]
    turned = object_mask(2, grid, centre, r, q)
    assert not np.array_equal(turned, cube) and turned.sum() == pytest.approx(cube.sum(), rel=0.05)
    ellipsoid = object_mask(3, grid, centre, r, eye, axes=(1.6, 0.7, 0.6))
    assert ellipsoid.sum() == pytest.approx(4 / 3 * math.pi * r ** 3 * 1.6 * 0.7 * 0.6, rel=0.05)
    extent = np.ptp(np.argwhere(ellipsoid), axis=0)
    assert extent[0] > 2 * extent[2]  # elongated along its first axis
    with pytest.raises(ValueError, match="kind"):
        object_mask(4, grid, centre, r, eye)


def test_binary_labels():
    _, kinds = synthetic_volumes(2, size=16, seed=1)
    _, binary = synthetic_volumes(2, size=16, seed=1, labels="binary")
    np.testing.assert_array_equal(binary, kinds > 0)
    with pytest.raises(ValueError, match="labels"):
        synthetic_volumes(1, labels="shape")


def test_volume_errors():
    with pytest.raises(ValueError, match="size"):
        synthetic_volumes(1, size=4)
    with pytest.raises(ValueError, match="count"):
        synthetic_volumes(-1)
    with pytest.raises(ValueError, match="seed"):
        synthetic_volumes(1, seed=-2)
