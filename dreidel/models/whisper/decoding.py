"""Decoding for Whisper: greedy and beam search with Whisper's rules, over a KV cache.

Rules (openai/whisper and transformers agree): the prompt is <|startoftranscript|><|notimestamps|>;
`suppress_tokens` get −inf logits at every step, `begin_suppress_tokens` at the first generated step;
a sequence ends at <|endoftext|> or when it reaches `max_length` ids.

Caching: each decoder layer's self-attention keys/values live in a preallocated StaticKVCache (one
new position written per step); cross-attention keys/values are projected from the encoder output
once per clip, at the first step.  A batch of clips shares one encoder call and one decode loop;
rows whose sequence has ended are dropped from the caches, so they stop costing work.
"""
import contextlib

import numpy as np

import dreidel
from dreidel.audio import log_mel_spectrogram

__all__ = ["greedy", "beam_search", "transcribe", "step_threads"]


def _features(model, input_features):
    x = np.asarray(input_features.numpy() if isinstance(input_features, dreidel.Tensor) else input_features,
                   np.float32)
    if x.ndim == 2:
        x = x[None]
    return x


def _masks(config, vocab):
    suppress = np.zeros(vocab, bool)
    suppress[[t for t in config.suppress_tokens if 0 <= t < vocab]] = True
    begin = suppress.copy()
    begin[[t for t in config.begin_suppress_tokens if 0 <= t < vocab]] = True
    return suppress, begin


def _budget(config, prompt, max_new_tokens):
    limit = min(config.max_length, config.max_target_positions) - len(prompt)
    return limit if max_new_tokens is None else min(limit, int(max_new_tokens))


def greedy(model, input_features, max_new_tokens=None, use_cache=True):
    """Greedy ids (prompt + generated, ending with <|endoftext|> unless cut by the length limit)
    for each clip of `input_features` (N, mels, frames).  `use_cache=False` re-runs the whole prefix
    every step (the reference the cached path must equal)."""
    config = model.config
    prompt = list(config.prompt)
    budget = _budget(config, prompt, max_new_tokens)
    with dreidel.no_grad():
        hidden = model.encode(_features(model, input_features))
        n = hidden.shape[0]
        suppress, begin = _masks(config, config.vocab_size)
        sequences = [list(prompt) for _ in range(n)]
        active = np.arange(n)                      # clip index of each live row
        self_cache, cross_cache = model.new_caches(len(prompt) + budget) if use_cache else (None, None)
        step_ids = np.tile(np.array(prompt, np.int64), (n, 1))
        encoder_states = hidden
        for step in range(budget):
            if use_cache:
                with step_threads(len(active) if step else _SERIAL_ROWS + 1):  # step 0 projects the encoder states
                    logits = model.decode(step_ids, encoder_states, self_cache, cross_cache, last_only=True)
            else:
                prefix = np.array([sequences[i] for i in active], np.int64)
                logits = model.decode(prefix, encoder_states, last_only=True)
            scores = logits.numpy()[:, -1]
            scores = np.where(begin if step == 0 else suppress, -np.inf, scores)
            chosen = scores.argmax(axis=-1)
            for row, clip in enumerate(active):
                sequences[clip].append(int(chosen[row]))
            alive = chosen != config.eos_token_id
            if not alive.any():
                break
            if not alive.all():                     # finished rows leave the batch
                keep = np.flatnonzero(alive)
                active, chosen = active[keep], chosen[keep]
                if use_cache:
                    self_cache.select_rows(keep)
                    cross_cache.select_rows(keep)
                else:
                    encoder_states = dreidel.tensor(encoder_states.numpy()[keep])
            if use_cache:
                step_ids = chosen[:, None].astype(np.int64)
                encoder_states = None  # cross-attention keys/values are cached from here on
    return sequences


_SERIAL_ROWS = 8


@contextlib.contextmanager
def step_threads(rows):
    """A step over a few rows is a chain of small matrix-vector products, memory-bound and too
    short to split: it runs on one thread (measured on the shared 2-core machine: 42 ms per step
    on one thread, 265 ms on two when the cores are oversubscribed).  Larger batches keep the
    caller's thread count."""
    previous = dreidel.get_num_threads()
    if rows > _SERIAL_ROWS or previous == 1:
        yield
        return
    dreidel.set_num_threads(1)
    try:
        yield
    finally:
        dreidel.set_num_threads(previous)


def _log_softmax(scores):
    shifted = scores - scores.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def beam_search(model, input_features, beam_size=5, max_new_tokens=None, length_penalty=None):
    """Beam search as openai/whisper's BeamSearchDecoder (patience 1): each step every beam proposes
    its beam_size + 1 best tokens; candidates are ranked by summed log-probability (after the
    suppression masks), ending ones are set aside until beam_size have ended.  The final choice
    maximises sum_logprob / length (length_penalty None) or sum_logprob / ((5 + length) / 6) ** α,
    length counting the generated tokens without <|endoftext|>.  Returns ids per clip."""
    config = model.config
    prompt = list(config.prompt)
    budget = _budget(config, prompt, max_new_tokens)
    eos = config.eos_token_id
    with dreidel.no_grad():
        hidden = model.encode(_features(model, input_features)).numpy()
        n = hidden.shape[0]
        suppress, begin = _masks(config, config.vocab_size)
        # rows: beam_size per live clip, clip-major
        beams = {c: [(tuple(prompt), 0.0)] * beam_size for c in range(n)}
        finished = {c: {} for c in range(n)}
        live = list(range(n))
        self_cache, cross_cache = model.new_caches(len(prompt) + budget)
        states = dreidel.tensor(np.repeat(hidden, beam_size, axis=0))
        step_ids = np.tile(np.array(prompt, np.int64), (n * beam_size, 1))
        for step in range(budget):
            with step_threads(len(step_ids) if step else _SERIAL_ROWS + 1):
                logits = model.decode(step_ids, states, self_cache, cross_cache, last_only=True).numpy()[:, -1]
            logprobs = _log_softmax(np.where(begin if step == 0 else suppress, -np.inf, logits))
            sources, next_ids, still = [], [], []
            for slot, clip in enumerate(live):
                scores = {}
                for b in range(beam_size):
                    row = slot * beam_size + b
                    seq, total = beams[clip][b]
                    top = np.argpartition(-logprobs[row], beam_size + 1)[:beam_size + 1]
                    for token in top:
                        scores[seq + (int(token),)] = (total + float(logprobs[row, token]), row)
                kept = []
                for seq in sorted(scores, key=lambda s: scores[s][0], reverse=True):
                    total, row = scores[seq]
                    if seq[-1] == eos:
                        if len(finished[clip]) < beam_size:
                            finished[clip][seq] = total
                    else:
                        kept.append((seq, total, row))
                        if len(kept) == beam_size:
                            break
                beams[clip] = [(s, t) for s, t, _ in kept]
                if len(finished[clip]) < beam_size:
                    still.append(clip)
                    sources += [r for _, _, r in kept]
                    next_ids += [s[-1] for s, _, _ in kept]
            live = still
            if not live:
                break
            self_cache.reorder(sources)
            cross_cache.reorder(sources)
            step_ids = np.array(next_ids, np.int64)[:, None]
            states = None
        results = []
        for clip in range(n):
            pool = dict(finished[clip])
            if len(pool) < beam_size:  # ran out of length: unfinished beams compete too
                pool.update({s: t for s, t in beams[clip][:beam_size - len(pool)]})
            def score(item):
                seq, total = item
                length = len(seq) - len(prompt) - (seq[-1] == eos)
                penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
                return total / max(penalty, 1e-9)
            results.append(list(max(pool.items(), key=score)[0]))
    return results


def transcribe(model, audio, beam_size=1, batch_size=8, progress=False):
    """{"text", "token_ids"} per clip (WAV paths or 16 kHz arrays); one dict for a single clip."""
    single = not isinstance(audio, (list, tuple))
    clips = [audio] if single else list(audio)
    if model.tokenizer is None:
        raise ValueError("transcribe needs a tokenizer: load the model from a folder with tokenizer.json "
                         "or set model.tokenizer")
    batches = [clips[i:i + batch_size] for i in range(0, len(clips), batch_size)]
    if progress:
        from dreidel.progress import progress as bar
        batches = bar(batches, "transcribe")
    results = []
    for batch in batches:
        features = log_mel_spectrogram(list(batch), n_mels=model.config.num_mel_bins)
        for ids in model.generate(features, beam_size=beam_size):
            text = model.tokenizer.decode([i for i in ids if i < model.config.eos_token_id]).strip()
            results.append({"text": text, "token_ids": ids})
    return results[0] if single else results
