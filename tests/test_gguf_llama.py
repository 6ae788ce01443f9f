"""Llama-family GGUF files: names, Q/K row permutation, config, `load_gguf`, unsupported features.

Synthetic files are written with the gguf package's GGUFWriter from Hugging Face layout weights,
q/k rows permuted with llama.cpp's converter definition; loading them must give the original
weights back. The permutation is also checked against its purpose: ggml's interleaved rotary
embedding on the file's rows and dreidel's rotate_half RotaryEmbedding on the un-permuted rows give
the same attention scores.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q, GGUFWriter, RopeScalingType  # noqa: E402
from gguf import quants as ref_quants  # noqa: E402

import dreidel  # noqa: E402
from dreidel import nn  # noqa: E402
from importers.gguf_to_dreidel import (GGUFFormatError, GGUFUnsupportedError, hf_name, load_gguf,  # noqa: E402
                                       permute_rows, read_gguf, unpermute_rows)
from importers.gguf_to_dreidel import llama as gguf_llama  # noqa: E402

PROPERTY = settings(max_examples=50, deadline=None, derandomize=True)


def converter_permute(weights, n_head, n_head_kv):
    """llama.cpp convert_hf_to_gguf.py `LlamaModel.permute`, restated from its source: called as
    permute(q, n_head, n_head) and permute(k, n_head, n_head_kv)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def test_names():
    expected = {
        "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
        "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight",
        "blk.12.attn_k.weight": "model.layers.12.self_attn.k_proj.weight",
        "blk.3.attn_v.weight": "model.layers.3.self_attn.v_proj.weight",
        "blk.3.attn_q.bias": "model.layers.3.self_attn.q_proj.bias",
        "blk.29.attn_output.weight": "model.layers.29.self_attn.o_proj.weight",
        "blk.1.ffn_gate.weight": "model.layers.1.mlp.gate_proj.weight",
        "blk.1.ffn_up.weight": "model.layers.1.mlp.up_proj.weight",
        "blk.1.ffn_down.weight": "model.layers.1.mlp.down_proj.weight",
        "blk.7.attn_norm.weight": "model.layers.7.input_layernorm.weight",
        "blk.7.ffn_norm.weight": "model.layers.7.post_attention_layernorm.weight",
    }
    for gguf_name, name in expected.items():
        assert hf_name(gguf_name) == name
    for unknown in ("rope_freqs.weight", "blk.01.attn_q.weight", "blk.0.ffn_gate_exps.weight", "blk.x.attn_q.weight",
                    "token_embd", "output.scale"):
        assert hf_name(unknown) is None, unknown


def test_permutation_small_examples():
    """By hand: HF rows (first half | second half) of each head interleave in the file."""
    np.testing.assert_array_equal(permute_rows(np.arange(4), 1), [0, 2, 1, 3])
    np.testing.assert_array_equal(permute_rows(np.arange(6), 1), [0, 3, 1, 4, 2, 5])
    np.testing.assert_array_equal(permute_rows(np.arange(8), 2), [0, 2, 1, 3, 4, 6, 5, 7])
    np.testing.assert_array_equal(unpermute_rows(np.array([0, 3, 1, 4, 2, 5]), 1), np.arange(6))


@PROPERTY
@given(heads=st.integers(1, 6), half=st.integers(1, 8), cols=st.sampled_from([None, 1, 5]), kv_div=st.integers(1, 3))
def test_unpermute_inverts_the_converter(heads, half, cols, kv_div):
    rng = np.random.default_rng(heads * 100 + half)
    kv_heads = max(1, heads // kv_div)
    for n, (n_head, n_head_kv) in ((heads, (heads, heads)), (kv_heads, (heads, kv_heads))):  # q, then k
        shape = (n * 2 * half,) if cols is None else (n * 2 * half, cols)
        w = rng.standard_normal(shape)
        stored = converter_permute(w, n_head, n_head_kv)
        np.testing.assert_array_equal(permute_rows(w, n), stored)
        np.testing.assert_array_equal(unpermute_rows(stored, n), w)
        np.testing.assert_array_equal(permute_rows(unpermute_rows(w, n), n), w)
        if half > 1:
            assert not np.array_equal(stored, w)


def test_unpermute_refuses_odd_heads():
    with pytest.raises(ValueError, match="heads"):
        unpermute_rows(np.zeros((6, 2)), 2)


def interleaved_rope(x, positions, base):
    """ggml's rotary embedding (mode 0, used for llama): rotates pairs (2i, 2i+1) by p * base^(-2i/D)."""
    d = x.shape[-1]
    angle = positions[:, None] * base ** (-np.arange(0, d, 2) / d)
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = even * cos - odd * sin, even * sin + odd * cos
    return out


def test_unpermuted_rows_give_llama_cpp_attention_scores_with_rotate_half():
    rng = np.random.default_rng(0)
    hidden, heads, kv_heads, d, length, base = 24, 4, 2, 6, 7, 500.0
    wq_file = rng.standard_normal((heads * d, hidden))
    wk_file = rng.standard_normal((kv_heads * d, hidden))
    x = rng.standard_normal((length, hidden))
    positions = np.arange(length, dtype=np.float64)

    def scores(q, k):  # (L, H, D), (L, Hkv, D) -> (H, L, L), kv heads shared by groups of q heads
        k = np.repeat(k, heads // kv_heads, axis=1)
        return np.einsum("lhd,mhd->hlm", q, k)

    q = interleaved_rope((x @ wq_file.T).reshape(length, heads, d), positions, base)
    k = interleaved_rope((x @ wk_file.T).reshape(length, kv_heads, d), positions, base)
    reference = scores(q, k)

    rope = nn.RotaryEmbedding(d, base=base)

    def hf_scores(wq, wk):
        with dreidel.no_grad():
            q = rope(dreidel.tensor((x @ wq.T).reshape(length, heads, d).transpose(1, 0, 2))).data
            k = rope(dreidel.tensor((x @ wk.T).reshape(length, kv_heads, d).transpose(1, 0, 2))).data
        return scores(q.transpose(1, 0, 2), k.transpose(1, 0, 2))

    np.testing.assert_allclose(hf_scores(unpermute_rows(wq_file, heads), unpermute_rows(wk_file, kv_heads)),
                               reference, rtol=1e-10, atol=1e-10)
    assert not np.allclose(hf_scores(wq_file, wk_file), reference, atol=1e-3)  # the permutation matters


# ---- synthetic Llama files --------------------------------------------------------------------

TINY = dict(vocab_size=40, hidden_size=32, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=128, rope_theta=5000.0, rms_norm_eps=1e-6)


def hf_weights(rng, tied=True, config=TINY, bias=False):
    h, i, v, d = config["hidden_size"], config["intermediate_size"], config["vocab_size"], config["head_dim"]
    q, kv = config["num_attention_heads"] * d, config["num_key_value_heads"] * d
    w = {"model.embed_tokens.weight": (v, h)}
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}."
        w.update({p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                  p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                  p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                  p + "mlp.down_proj.weight": (h, i), p + "input_layernorm.weight": (h,),
                  p + "post_attention_layernorm.weight": (h,)})
        if bias:
            w.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                      p + "self_attn.v_proj.bias": (kv,), p + "self_attn.o_proj.bias": (h,)})
    w["model.norm.weight"] = (h,)
    if not tied:
        w["lm_head.weight"] = (v, h)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in w.items()}


GGUF_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
              "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def to_gguf_name(name):
    parts = name.split(".")
    if parts[1] == "layers":
        return f"blk.{parts[2]}.{GGUF_NAMES['.'.join(parts[3:-1])]}.{parts[-1]}"
    return f"{GGUF_NAMES['.'.join(parts[:-1])]}.{parts[-1]}"


def write_llama(path, weights, config=TINY, arch="llama", quantise=(), extra_tensors=(), scaling=None,
                tokenizer="gpt2", bos=1):
    """Write `weights` (HF names/layout) as a llama GGUF the way llama.cpp's converter does; the
    tensors named in `quantise` are stored as Q8_0. Returns the weights the file should load as."""
    writer = GGUFWriter(str(path), arch)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(config["head_dim"])
    if scaling:
        writer.add_rope_scaling_type(scaling)
    writer.add_tokenizer_model(tokenizer)
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list([f"t{i}" for i in range(config["vocab_size"])])
    writer.add_token_merges(["t 1"])
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(2)
    writer.add_chat_template("{{ messages }}")
    expected = {}
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    for name, w in weights.items():
        stored = w
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            stored = converter_permute(w, heads, heads)
        elif name.endswith(("k_proj.weight", "k_proj.bias")):
            stored = converter_permute(w, heads, kv_heads)
        expected[name] = w
        if name in quantise:
            packed = ref_quants.quantize(stored, Q.Q8_0)
            writer.add_tensor(to_gguf_name(name), packed, raw_dtype=Q.Q8_0)
            restored = ref_quants.dequantize(packed, Q.Q8_0)
            expected[name] = restored if stored is w else unpermute_rows(restored, heads if "q_proj" in name else kv_heads)
        else:
            writer.add_tensor(to_gguf_name(name), np.ascontiguousarray(stored))
    for name, array, qtype in extra_tensors:
        writer.add_tensor(name, array, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def fields_and_state(path):
    with read_gguf(path) as f:
        assert gguf_llama.unsupported_features(f) == []
        fields = gguf_llama.config_fields(f)
        return fields, gguf_llama.state_dict(f, fields)


@pytest.mark.parametrize("tied", [True, False])
def test_synthetic_llama_round_trips(tmp_path, rng, tied):
    weights = hf_weights(rng, tied)
    quantise = {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
                "model.layers.0.mlp.up_proj.weight"}
    expected = write_llama(tmp_path / "tiny.gguf", weights, quantise=quantise)
    fields, state = fields_and_state(tmp_path / "tiny.gguf")
    assert {k: fields[k] for k in TINY} == TINY
    assert fields["tie_word_embeddings"] is tied and fields["attention_bias"] is False
    assert (fields["bos_token_id"], fields["eos_token_id"], fields["chat_template"]) == (1, 2, "{{ messages }}")
    assert list(state) == list(weights)  # Hugging Face order and names
    for name, w in expected.items():
        assert state[name].dtype == np.float32 and state[name].shape == w.shape, name
        np.testing.assert_array_equal(state[name], w, err_msg=name)
    for name in quantise:  # quantised tensors are close to the originals, not equal
        assert 0 < np.abs(state[name] - weights[name]).max() < 0.05


def test_attention_biases_are_unpermuted_too(tmp_path, rng):
    weights = hf_weights(rng, bias=True)
    write_llama(tmp_path / "bias.gguf", weights)
    fields, state = fields_and_state(tmp_path / "bias.gguf")
    assert fields["attention_bias"] is True and set(state) == set(weights)
    for name, w in weights.items():
        np.testing.assert_array_equal(state[name], w, err_msg=name)
    del weights["model.layers.1.self_attn.o_proj.bias"]
    write_llama(tmp_path / "some_bias.gguf", weights)
    with pytest.raises(GGUFFormatError, match="o_proj.bias missing"):
        fields_and_state(tmp_path / "some_bias.gguf")


def test_load_gguf_builds_config_and_tokenizer(tmp_path, rng):
    from dreidel.models.llama import LlamaConfig
    from dreidel.models.llama.tokenizer import GGUFTokenizer
    weights = hf_weights(rng)
    write_llama(tmp_path / "tiny.gguf", weights)
    config, state, tokenizer = load_gguf(tmp_path / "tiny.gguf")
    assert isinstance(config, LlamaConfig) and isinstance(tokenizer, GGUFTokenizer)
    for key, value in TINY.items():
        assert getattr(config, key) == value, key
    assert config.tie_word_embeddings and config.chat_template == "{{ messages }}" and set(state) == set(weights)
    assert (config.bos_token_id, config.eos_token_id) == (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 2)


def test_every_unsupported_feature_in_one_error(tmp_path, rng):
    weights = hf_weights(rng)
    q2k = np.zeros((2, 84), np.uint8)
    write_llama(tmp_path / "odd.gguf", weights, arch="qwen2", scaling=RopeScalingType.LINEAR, tokenizer="llama",
                extra_tensors=[("rope_freqs.weight", np.ones(2, np.float32), None),
                               ("blk.0.ffn_gate_exps.weight", q2k, Q.Q2_K)])
    with pytest.raises(GGUFUnsupportedError) as info:
        load_gguf(tmp_path / "odd.gguf")
    text = str(info.value)
    assert "odd.gguf" in text and len(info.value.problems) == 5, text
    for fragment in ("architecture 'qwen2'", "'rope_freqs.weight' has no Hugging Face", "Q2_K", "tokenizer model 'llama'",
                     "'blk.0.ffn_gate_exps.weight' has no Hugging Face"):
        assert fragment in text, fragment
    write_llama(tmp_path / "scaled.gguf", weights, scaling=RopeScalingType.YARN)
    with pytest.raises(GGUFUnsupportedError, match="rope scaling 'yarn'"):
        load_gguf(tmp_path / "scaled.gguf")


def test_metadata_that_contradicts_the_tensors(tmp_path, rng):
    weights = hf_weights(rng)
    write_llama(tmp_path / "wide.gguf", weights, config={**TINY, "intermediate_size": 32})
    with pytest.raises(GGUFFormatError, match=r"wide\.gguf.*ffn_gate.*\(24, 32\).*\(32, 32\)"):
        fields_and_state(tmp_path / "wide.gguf")
    del weights["model.layers.1.mlp.down_proj.weight"]
    write_llama(tmp_path / "short.gguf", weights)
    with pytest.raises(GGUFFormatError, match="model.layers.1.mlp.down_proj.weight missing"):
        fields_and_state(tmp_path / "short.gguf")
    write_llama(tmp_path / "heads.gguf", hf_weights(rng), config={**TINY, "num_attention_heads": 2,
                                                                   "num_key_value_heads": 4, "head_dim": 16})
    with pytest.raises(GGUFFormatError, match="2 attention heads are not a multiple of 4 kv heads"):
        fields_and_state(tmp_path / "heads.gguf")


def test_tokenizer_errors_are_gguf_errors(tmp_path, rng):
    write_llama(tmp_path / "bos.gguf", hf_weights(rng), bos=99)
    with pytest.raises(GGUFFormatError, match=r"bos\.gguf.*bos_token_id = 99 is outside the vocabulary"):
        load_gguf(tmp_path / "bos.gguf")


def test_partial_rotary_is_unsupported(tmp_path, rng):
    write_llama(tmp_path / "partial.gguf", hf_weights(rng), config={**TINY, "head_dim": 4})  # rope dims 4 of 8
    with pytest.raises(GGUFUnsupportedError, match="llama.rope.dimension_count = 4 differs from the head size 8"):
        load_gguf(tmp_path / "partial.gguf")


def test_missing_metadata_is_named(tmp_path):
    writer = GGUFWriter(str(tmp_path / "bare.gguf"), "llama")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with read_gguf(tmp_path / "bare.gguf") as f:
        with pytest.raises(GGUFFormatError, match=r"bare\.gguf.*'llama\.attention\.head_count' is missing"):
            gguf_llama.config_fields(f)


def test_dreidel_does_not_import_the_importer_at_module_level():
    """importers.gguf_to_dreidel imports dreidel.models.llama at import time, never the other way
    round (no import cycle); a function-level import inside dreidel would be called lazily."""
    import ast
    import pathlib
    root = pathlib.Path(dreidel.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if "gguf_to_dreidel" in n]
    assert offenders == []
