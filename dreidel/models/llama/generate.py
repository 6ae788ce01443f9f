"""Autoregressive generation for `LlamaForCausalLM`: one forward over the whole prompt into a KV cache
preallocated to the needed length, then one token per step.

Sampling follows Hugging Face's processor order: repetition penalty, then temperature, top-k, top-p;
`temperature=0` (the default) is greedy decoding.
"""
import time
from dataclasses import dataclass, field

import numpy as np

import dreidel

__all__ = ["generate", "Generation", "next_token_distribution", "sample"]


@dataclass
class Generation:
    """The result of `generate`: the new token ids (a stop token included when one ended it), why it
    ended ("stop", "length" or "context"), and wall-clock seconds of prefill and of decoding."""
    tokens: list = field(default_factory=list)
    prompt_length: int = 0
    stop_reason: str = "length"
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def prefill_tokens_per_second(self):
        return self.prompt_length / self.prefill_seconds if self.prefill_seconds > 0 else float("nan")

    @property
    def decode_tokens_per_second(self):
        """New tokens after the first (which the prefill produced) per second of decoding."""
        steps = len(self.tokens) - 1
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else float("nan")


def next_token_distribution(logits, history=(), temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0):
    """Probabilities (vocab,) of the next token from last-position logits (vocab,), float64.

    `repetition_penalty` (CTRL / Hugging Face) divides positive and multiplies negative logits of the
    tokens in `history`; `top_k` keeps the k most likely; `top_p` keeps the smallest set of most
    likely tokens whose probability reaches p (always at least one)."""
    z = np.array(logits, dtype=np.float64).reshape(-1)
    if repetition_penalty != 1.0 and len(history):
        seen = np.unique(np.asarray(history, dtype=np.int64))
        z[seen] = np.where(z[seen] > 0, z[seen] / repetition_penalty, z[seen] * repetition_penalty)
    z = z / temperature
    if top_k is not None and 0 < top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cumulative = np.cumsum(p[order])
        keep = np.searchsorted(cumulative, top_p) + 1  # tokens up to and including the one reaching p
        mask = np.zeros_like(p, dtype=bool)
        mask[order[:keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return p


def sample(logits, rng, history=(), temperature=0.0, top_k=None, top_p=None, repetition_penalty=1.0):
    """One next-token id: the argmax when `temperature == 0` (after the repetition penalty), else a
    draw from `next_token_distribution`."""
    if temperature == 0:
        z = np.asarray(logits, dtype=np.float64).reshape(-1)
        if repetition_penalty != 1.0 and len(history):
            z = next_token_distribution(z, history, 1.0, repetition_penalty=repetition_penalty)
        return int(np.argmax(z))
    p = next_token_distribution(logits, history, temperature, top_k, top_p, repetition_penalty)
    return int(rng.choice(p.size, p=p))


def _check(max_new_tokens, temperature, top_k, top_p, repetition_penalty):
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")


def generate(model, input_ids, max_new_tokens=32, temperature=0.0, top_k=None, top_p=None,
             repetition_penalty=1.0, stop_tokens=None, seed=None, callback=None, use_cache=True):
    """Continue the prompt `input_ids` (a list of ids) by up to `max_new_tokens` tokens.

    `stop_tokens` (default: the config's eos_token_id) end generation, the stop token included in the
    result. `seed` fixes the sampling generator. `callback(token_id)` is called with each new token as
    soon as it exists (streaming). `use_cache=False` recomputes the whole sequence every step (the
    reference the cached path is tested against). Returns a `Generation`."""
    _check(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
    prompt = [int(t) for t in np.asarray(input_ids).reshape(-1)]
    if not prompt:
        raise ValueError("generate needs a non-empty prompt (at least a BOS token)")
    config = model.config
    bad = [t for t in prompt if not 0 <= t < config.vocab_size]
    if bad:
        raise ValueError(f"prompt token ids {bad[:5]} are outside the vocabulary of {config.vocab_size}")
    context = config.max_position_embeddings
    if len(prompt) >= context:
        raise ValueError(f"prompt of {len(prompt)} tokens leaves no room in the context of {context}")
    stops = {config.eos_token_id} if stop_tokens is None else {int(t) for t in stop_tokens}
    stops.discard(None)
    budget = min(max_new_tokens, context - len(prompt))
    rng = np.random.default_rng(seed)
    result = Generation(prompt_length=len(prompt))
    if budget == 0:
        return result
    options = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty)
    history = list(prompt)
    was_training = model.training
    model.eval()
    if model.lm_head is None:
        model._frozen_projection = np.ascontiguousarray(model.model.embed_tokens.weight.numpy().T)
    try:
        with dreidel.no_grad():
            cache = model.new_cache(len(prompt) + budget) if use_cache else None
            start = time.perf_counter()
            logits = model(np.asarray([prompt]), cache=cache, last_only=True).numpy()[0, -1]
            token = sample(logits, rng, history, **options)
            result.prefill_seconds = time.perf_counter() - start
            start = time.perf_counter()
            while True:
                result.tokens.append(token)
                history.append(token)
                if callback is not None:
                    callback(token)
                if token in stops:
                    result.stop_reason = "stop"
                    break
                if len(result.tokens) == budget:
                    result.stop_reason = "length" if budget == max_new_tokens else "context"
                    break
                step = np.asarray([[token]]) if use_cache else np.asarray([history])
                logits = model(step, cache=cache, last_only=True).numpy()[0, -1]
                token = sample(logits, rng, history, **options)
            result.decode_seconds = time.perf_counter() - start
    finally:
        model.train(was_training)
        model._frozen_projection = None
    return result
