"""Train a tiny byte-level Llama from scratch on the shipped Shakespeare text, dense and spectral
projections side by side, and report the held-out validation loss (last 10 % of the text).

    python examples/train_tiny_llama.py [--steps 400] [--threads 1]
"""
import argparse
import time

import numpy as np

import dreidel
from dreidel import nn
from dreidel.models.llama.train import byte_splits, tiny_config, train


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        dreidel.set_num_threads(args.threads)
    train_ids, val_ids = byte_splits()
    print(f"text: {len(train_ids)} training bytes, {len(val_ids)} held-out bytes; uniform loss {np.log(256):.3f}")
    variants = {"dense": None, "spectral": lambda i, o, b: nn.DeepSpectralLinear(i, o, depth=2, bias=b)}
    results = {}
    for name, linear in variants.items():
        start = time.perf_counter()
        model, history = train(tiny_config(), train_ids, val_ids, steps=args.steps, linear=linear, seed=args.seed,
                               eval_every=max(1, args.steps // 4),
                               progress=lambda s, t, v, n=name: print(f"  {n:8s} step {s:4d}  train {t:.3f}  val {v:.3f}"))
        seconds = time.perf_counter() - start
        results[name] = (history[-1][2], model.parameter_count(), seconds)
        sample = model.generate(list(b"ROMEO:\n"), max_new_tokens=120, temperature=0.8, top_k=20, seed=0).tokens
        print(f"  {name} sample: {bytes(sample).decode('utf-8', errors='replace')!r}")
    print("\nvariant   params   val loss (nats/byte)   train time")
    for name, (val, params, seconds) in results.items():
        print(f"{name:8s} {params:8d}   {val:.3f}                 {seconds:.0f} s")
    return results


if __name__ == "__main__":
    main()
