"""dreidel.models.llama on small random models: config, cached == uncached decoding, prefill in one
pass == token by token, sampling rules, chat templates, the SmolLM pre-tokenizer, gradients."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import dreidel
from dreidel import nn
from dreidel.models.llama import LlamaConfig
from dreidel.models.llama.chat import ChatTemplate, ChatTemplateError, render_chat
from dreidel.models.llama.generate import next_token_distribution, sample
from dreidel.models.llama.model import LlamaForCausalLM, LlamaMLP, WeightMappingError
from dreidel.models.llama.tokenizer import SmolLMPreTokenizer, tokenizer_from_gguf
from dreidel.tokenizers import scan_gpt2, bytes_to_unicode

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def tiny_config(**overrides):
    values = dict(vocab_size=61, hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=48, rope_theta=10000.0, eos_token_id=None)
    values.update(overrides)
    return LlamaConfig(**values)


def tiny_model(seed=0, **overrides):
    model = LlamaForCausalLM(tiny_config(**overrides), rng=np.random.default_rng(seed))
    for p in model.parameters():  # larger weights than the init: sharper, more varied logits
        if p.ndim == 2:
            p.data *= 3
    return model.eval()


# ---- config ------------------------------------------------------------------------------------
def test_config_round_trips_and_reads_hf_json(tmp_path):
    config = tiny_config(tie_word_embeddings=False)
    assert LlamaConfig.from_dict(config.to_dict()) == config
    path = tmp_path / "config.json"
    config.to_json(path)
    assert LlamaConfig.from_json(path) == config
    path.write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                                "eos_token_id": [7, 8], "torch_dtype": "bfloat16"}))
    loaded = LlamaConfig.from_json(path)
    assert (loaded.head_dim, loaded.num_key_value_heads, loaded.eos_token_id) == (16, 4, 7)


@pytest.mark.parametrize("fields, match", [
    (dict(num_attention_heads=4, num_key_value_heads=3), "multiple"),
    (dict(hidden_size=30, num_attention_heads=4), "divisible"),
    (dict(head_dim=7), "even"),
    (dict(num_hidden_layers=0), "num_hidden_layers"),
    (dict(rope_theta=-1.0), "rope_theta"),
])
def test_config_rejects_inconsistent_fields(fields, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**fields)


def test_config_from_json_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "gpt2"}')
    with pytest.raises(ValueError, match="config.json.*not llama"):
        LlamaConfig.from_json(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        LlamaConfig.from_json(path)


# ---- model -------------------------------------------------------------------------------------
def test_parameter_names_are_hugging_face_names():
    tied, untied = tiny_model(), tiny_model(tie_word_embeddings=False)
    names = set(dict(tied.named_parameters()))
    assert "lm_head.weight" not in names and "lm_head.weight" in dict(untied.named_parameters())
    for name in ("model.embed_tokens.weight", "model.norm.weight", "model.layers.1.input_layernorm.weight",
                 "model.layers.1.post_attention_layernorm.weight", "model.layers.0.self_attn.q_proj.weight",
                 "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight",
                 "model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.gate_proj.weight",
                 "model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight"):
        assert name in names
    assert tied.model.layers[0].self_attn.k_proj.weight.shape == (2 * 6, 24)  # 2 kv heads of 6


def test_forward_matches_a_numpy_reference():
    """The whole forward against an independent numpy transcription of the Llama equations
    (repeat_kv grouped-query attention, rotate_half rotary, explicit causal mask)."""
    model = tiny_model(seed=3)
    c = model.config
    state = {k: np.asarray(v, np.float64) for k, v in model.state_dict().items()}
    ids = np.random.default_rng(0).integers(0, c.vocab_size, 9)

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + c.rms_norm_eps) * w

    def rope(x):  # x (H, L, D)
        half = c.head_dim // 2
        inv = c.rope_theta ** (-np.arange(half) * 2.0 / c.head_dim)
        ang = np.arange(x.shape[1])[:, None] * inv
        cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
        return x * cos + np.concatenate([-x[..., half:], x[..., :half]], -1) * sin

    x = state["model.embed_tokens.weight"][ids]
    L, group = len(ids), c.num_attention_heads // c.num_key_value_heads
    for i in range(c.num_hidden_layers):
        p = lambda name: state[f"model.layers.{i}.{name}.weight"]  # noqa: E731
        h = rms(x, p("input_layernorm"))
        q = rope((h @ p("self_attn.q_proj").T).reshape(L, -1, c.head_dim).transpose(1, 0, 2))
        k = rope((h @ p("self_attn.k_proj").T).reshape(L, -1, c.head_dim).transpose(1, 0, 2))
        v = (h @ p("self_attn.v_proj").T).reshape(L, -1, c.head_dim).transpose(1, 0, 2)
        k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(c.head_dim)
        scores = np.where(np.tril(np.ones((L, L), bool)), scores, -np.inf)
        w = np.exp(scores - scores.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        x = x + (w @ v).transpose(1, 0, 2).reshape(L, -1) @ p("self_attn.o_proj").T
        h = rms(x, p("post_attention_layernorm"))
        g = h @ p("mlp.gate_proj").T
        x = x + (g / (1 + np.exp(-g)) * (h @ p("mlp.up_proj").T)) @ p("mlp.down_proj").T
    expected = rms(x, state["model.norm.weight"]) @ state["model.embed_tokens.weight"].T
    with dreidel.no_grad():
        got = model(ids[None]).numpy()[0]
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4)


def test_prefill_in_one_pass_equals_token_by_token_with_the_cache():
    model = tiny_model(seed=1)
    ids = np.random.default_rng(1).integers(0, 61, 12)
    with dreidel.no_grad():
        full = model(ids[None]).numpy()[0]
        cache = model.new_cache(12)
        stepped = np.concatenate([model(ids[None, t:t + 1], cache=cache).numpy()[0] for t in range(12)])
        cache2 = model.new_cache(12)
        split = np.concatenate([model(ids[None, :5], cache=cache2).numpy()[0],
                                model(ids[None, 5:], cache=cache2).numpy()[0]])
    np.testing.assert_allclose(stepped, full, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(split, full, rtol=1e-4, atol=1e-5)
    assert cache.length == 12 and cache[0].capacity == 12


@pytest.mark.parametrize("options", [dict(), dict(temperature=0.8, top_k=10, top_p=0.9, seed=5),
                                     dict(repetition_penalty=1.3)])
def test_cached_and_uncached_generation_are_identical(options):
    model = tiny_model(seed=2)
    prompt = [3, 14, 15, 9, 2, 6]
    cached = model.generate(prompt, max_new_tokens=20, **options)
    uncached = model.generate(prompt, max_new_tokens=20, use_cache=False, **options)
    assert cached.tokens == uncached.tokens and len(cached.tokens) == 20
    assert len(set(cached.tokens)) > 3  # a real continuation, not one token repeated


def test_generation_stops_streams_and_respects_the_context():
    model = tiny_model(seed=2)
    prompt = [3, 14, 15]
    free = model.generate(prompt, max_new_tokens=10).tokens
    streamed = []
    stopped = model.generate(prompt, max_new_tokens=10, stop_tokens=[free[3]], callback=streamed.append)
    first = free.index(free[3])
    assert stopped.tokens == free[:first + 1] == streamed and stopped.stop_reason == "stop"
    long = model.generate(list(range(40)), max_new_tokens=30)
    assert len(long.tokens) == 48 - 40 and long.stop_reason == "context"
    with pytest.raises(ValueError, match="context"):
        model.generate(list(range(48)))
    with pytest.raises(ValueError, match="vocabulary"):
        model.generate([0, 61])
    with pytest.raises(ValueError, match="temperature"):
        model.generate([1], temperature=-1)


def test_sampling_is_seeded_and_different_seeds_differ():
    model = tiny_model(seed=2)
    runs = [model.generate([1, 2, 3], max_new_tokens=15, temperature=1.5, seed=s).tokens for s in (0, 0, 1)]
    assert runs[0] == runs[1] != runs[2]


@given(st.integers(0, 10**6), st.integers(1, 20), st.floats(0.05, 1.0))
@settings(max_examples=80, deadline=None)
def test_top_k_and_top_p_keep_the_most_likely_tokens(seed, k, top_p):
    logits = np.random.default_rng(seed).standard_normal(20) * 3
    full = next_token_distribution(logits)
    reference = np.exp(logits - logits.max())
    np.testing.assert_allclose(full, reference / reference.sum(), rtol=1e-12)
    p = next_token_distribution(logits, top_k=k)
    assert np.count_nonzero(p) == k and set(np.flatnonzero(p)) == set(np.argsort(-logits)[:k])
    p = next_token_distribution(logits, top_p=top_p)
    kept = np.flatnonzero(p)
    order = np.argsort(-full)
    n = len(kept)
    assert set(kept) == set(order[:n])                      # the most likely ones
    assert full[order[:n]].sum() >= top_p - 1e-12          # enough mass
    assert n == 1 or full[order[:n - 1]].sum() < top_p     # and no more than needed
    np.testing.assert_allclose(p.sum(), 1.0)


def test_repetition_penalty_and_greedy_sampling():
    logits = np.array([2.0, 1.9, -1.0, 0.5])
    rng = np.random.default_rng(0)
    assert sample(logits, rng) == 0
    assert sample(logits, rng, history=[0], repetition_penalty=1.2) == 1   # 2.0/1.2 < 1.9
    p = next_token_distribution(logits, history=[2], repetition_penalty=2.0)
    q = next_token_distribution(np.array([2.0, 1.9, -2.0, 0.5]))
    np.testing.assert_allclose(p, q)                                      # negative logits are multiplied


def test_gradients_of_a_layer_and_the_loss():
    config = tiny_config(vocab_size=11, hidden_size=8, intermediate_size=6, num_attention_heads=2,
                         num_key_value_heads=1, num_hidden_layers=1)
    model = LlamaForCausalLM(config, rng=np.random.default_rng(0)).double()
    layer = model.model.layers[0]
    x = dreidel.tensor(np.random.default_rng(1).standard_normal((1, 4, 8)), requires_grad=True)
    assert dreidel.gradcheck(lambda x: layer(x), x)
    assert dreidel.gradcheck(lambda x: LlamaMLP(8, 6, lambda i, o, b: nn.Linear(i, o, b, rng=np.random.default_rng(2),
                                                                                  dtype=np.float64))(x), x)
    loss = model.loss(np.array([[1, 4, 2, 7, 3]]))
    loss.backward()
    assert all(p.grad is not None and np.isfinite(p.grad).all() for p in model.parameters())


def test_linear_and_ffn_factories_are_used_everywhere():
    made = []

    def linear(i, o, bias):
        made.append((i, o, bias))
        return nn.Linear(i, o, bias)

    class Half(LlamaMLP):
        pass

    model = LlamaForCausalLM(tiny_config(tie_word_embeddings=False), linear=linear,
                             ffn=lambda h, i, lin: Half(h, i // 2, lin))
    assert len(made) == 2 * 7 + 1 and all(b is False for _, _, b in made)
    assert isinstance(model.model.layers[1].mlp, Half) and model.model.layers[1].mlp.gate_proj.out_features == 20
    spectral = LlamaForCausalLM(tiny_config(), linear=lambda i, o, b: nn.DeepSpectralLinear(i, o, depth=2, bias=b))
    assert isinstance(spectral.model.layers[0].self_attn.q_proj, nn.DeepSpectralLinear)
    with dreidel.no_grad():
        assert spectral(np.array([[1, 2, 3]])).shape == (1, 3, 61)


def test_load_weights_lists_every_problem():
    model = tiny_model()
    state = {k: np.array(v) for k, v in model.state_dict().items()}
    state.pop("model.norm.weight")
    state["model.layers.0.mlp.up_proj.weight"] = np.zeros((3, 3), np.float32)
    state["extra.weight"] = np.zeros(2)
    with pytest.raises(WeightMappingError) as error:
        model.load_weights(state, "test weights")
    assert all(s in str(error.value) for s in ("missing model.norm.weight", "unexpected extra.weight",
                                                "mis-shaped model.layers.0.mlp.up_proj.weight"))
    good = {k: np.asarray(v) * 2 for k, v in model.state_dict().items()}
    good["lm_head.weight"] = good["model.embed_tokens.weight"]  # a tied lm_head equal to the embedding is fine
    model.load_weights(good)
    np.testing.assert_array_equal(model.model.norm.weight.numpy(), good["model.norm.weight"])


# ---- chat template -----------------------------------------------------------------------------
def test_smollm2_chat_template():
    user = [{"role": "user", "content": "Hi"}]
    assert render_chat(SMOLLM2_TEMPLATE, user) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello!"}]
    assert render_chat(SMOLLM2_TEMPLATE, conversation, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n")


def test_template_subset_semantics():
    t = ChatTemplate("{%- for m in messages -%} [{{ loop.index }}{% if loop.last %}!{% elif m.role == 'a' %}a"
                     "{% else %}-{% endif %}{{ m['content'] }}] {%- endfor %}{{ \"\\t\" if_not }}".replace(" if_not", ""))
    assert t.render([{"role": "a", "content": "x"}, {"role": "b", "content": "y"},
                     {"role": "a", "content": "z"}]) == "[1ax][2-y][3!z]\t"
    assert ChatTemplate("{% if not (x == 1 or y) and true %}T{% else %}F{% endif %}").render([], x=2, y=False) == "T"


@pytest.mark.parametrize("source, match", [
    ("{{ messages | length }}", "'\\|'"), ("{% set x = 1 %}", "set"), ("{% if true %}x", "unclosed"),
    ("{{ raise_exception('no') }}", "'\\('"), ("{% endfor %}", "endfor"), ("{{ 'a\\q' }}", "escape"),
    ("{{ x }}", "undefined variable 'x'"), ("{% for a, b in c %}{% endfor %}", "for-loop"),
])
def test_unsupported_template_constructs_raise_clear_errors(source, match):
    with pytest.raises(ChatTemplateError, match=match):
        ChatTemplate(source).render([])


# ---- tokenizer ---------------------------------------------------------------------------------
@given(st.lists(st.sampled_from(list("ab Z9 0\n\t'.,é") + ["12", "  ", "٣", "'s", "'ll"]), max_size=30).map("".join))
@settings(max_examples=200, deadline=None)
def test_smollm_pre_tokenizer_isolates_digits_and_splits_the_rest_like_gpt2(text):
    pieces = SmolLMPreTokenizer()(text)
    assert "".join(pieces) == text and all(pieces)
    digit = [p for p in pieces if any(c.isdigit() for c in p)]
    assert all(len(p) == 1 for p in digit)
    # between digits, exactly GPT-2's pieces
    rebuilt, run = [], ""
    for ch in text:
        if ch.isdigit():
            rebuilt += scan_gpt2(run) if run else []
            rebuilt.append(ch)
            run = ""
        else:
            run += ch
    rebuilt += scan_gpt2(run) if run else []
    assert pieces == rebuilt


def _toy_metadata(pre="smollm", **extra):
    table = bytes_to_unicode()
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [table[b] for b in range(256) if b != 7]
    tokens += ["Ġ" + "t", "he", "Ġthe", "<tool>"]
    types = [3, 3, 3] + [1] * 255 + [1, 1, 1, 4]
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": np.array(types, np.int32), "tokenizer.ggml.merges": ["Ġ t", "h e", "Ġt he"],
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}
    meta.update(extra)
    return meta, tokens


def test_gguf_tokenizer_specials_bos_and_missing_bytes():
    meta, tokens = _toy_metadata()
    tok = tokenizer_from_gguf(meta)
    ids = tok.encode("<|im_start|>the 42\x07<tool>")
    assert [tokens[i] for i in ids] == ["<|im_start|>", "t", "he", "Ġ", "4", "2", "<tool>"]  # \x07 has no token
    assert tok.encode("<|im_start|>", allowed_special=()) != [1]
    assert tok.decode(ids, skip_special_tokens=True) == "the 42<tool>"
    with_bos = tokenizer_from_gguf({**meta, "tokenizer.ggml.add_bos_token": True})
    assert with_bos.encode(" the")[0] == 1 and with_bos.encode(" the", add_special_tokens=False) == [tokens.index("Ġthe")]
    assert tok.encode(" the") == [tokens.index("Ġthe")]  # no BOS when the file does not ask for one


@pytest.mark.parametrize("change, match", [
    ({"tokenizer.ggml.model": "llama"}, "tokenizer model 'llama'"),
    ({"tokenizer.ggml.pre": "qwen2"}, "pre-tokenizer 'qwen2'"),
    ({"tokenizer.ggml.bos_token_id": 10**6}, "bos_token_id"),
    ({"tokenizer.ggml.token_type": np.ones(3, np.int32)}, "token_type"),
    ({"tokenizer.ggml.merges": ["a b c"]}, "merge"),
])
def test_gguf_tokenizer_rejects_bad_metadata_naming_the_file(change, match):
    meta, _ = _toy_metadata()
    meta.update(change)
    with pytest.raises(ValueError, match=match) as error:
        tokenizer_from_gguf(meta, "model.gguf")
    assert "model.gguf" in str(error.value)


def test_tied_logits_follow_in_place_weight_updates():
    """Optimizers update weights in place: no cached copy of the tied embedding may go stale."""
    model = tiny_model(seed=4)
    ids = np.array([[1, 2, 3]])
    model.generate([1, 2], max_new_tokens=2)
    with dreidel.no_grad():
        before = model(ids).numpy()
        model.model.embed_tokens.weight.data *= 2   # in place, like AdamW's step
        after = model(ids).numpy()
    assert not np.allclose(before, after)
    assert model._frozen_projection is None


def test_stream_decoder_holds_back_split_characters():
    from dreidel.cli.generate import StreamDecoder
    meta, tokens = _toy_metadata()
    tok = tokenizer_from_gguf(meta)
    ids = tok.encode("é!")                     # é is two byte tokens
    stream = StreamDecoder(tok)
    deltas = [stream.push(i) for i in ids]
    assert deltas[0] == "" and "".join(deltas) + stream.flush() == "é!"


def test_cli_reports_a_missing_file(tmp_path, capsys):
    from dreidel.cli.generate import main
    assert main([str(tmp_path / "missing.gguf"), "hi"]) == 1
    assert "missing.gguf" in capsys.readouterr().err
