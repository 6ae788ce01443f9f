"""Train small ViTs on the handwritten digits that ship with dreidel (8×8 images, 2×2 patches: 16
patch tokens + the class token), dense vs spectral vs Walsh–Hadamard attention, side by side.

    python examples/train_vit_digits.py [--epochs 30] [--threads 1] [--variants dense wht spectral spectral+wht]

Variants (same sizes: hidden 64, 4 heads of 16, 2 blocks, MLP 128):
  dense          nn.Linear projections, softmax attention
  wht            nn.Linear projections, Walsh–Hadamard attention (m = 32 features per head)
  spectral       DeepSpectralLinear (depth 2) for the patch projection, Q/K/V/out and the MLP, softmax
  spectral+wht   the seeds' spectral ViT: DeepSpectralLinear everywhere + Walsh–Hadamard attention
Prints test accuracy (held-out 20 % split of `load_digits`), parameters, multiply-adds per image,
and the median measured time of one training step (batch 64: forward, backward, AdamW).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dreidel  # noqa: E402
import numpy as np  # noqa: E402
from dreidel import functional as F  # noqa: E402
from dreidel.data import load_digits  # noqa: E402
from dreidel.models.vit import ViT, ViTConfig, spectral_factories  # noqa: E402
from dreidel.nn.wht_attention import WalshHadamardAttention  # noqa: E402

VARIANTS = ("dense", "wht", "spectral", "spectral+wht")


def digits_config():
    return ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                     image_size=8, patch_size=2, num_channels=1, num_labels=10, layer_norm_eps=1e-6)


def build(variant, seed=0):
    """A digits ViT of the given variant (deterministic for a seed)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    dreidel.random.manual_seed(seed)
    attention = (lambda head_dim, heads: WalshHadamardAttention(head_dim, num_features=32, seed=seed)) \
        if variant.endswith("wht") else None
    linear = spectral_factories(depth=2)[0] if variant.startswith("spectral") else None
    return ViT(digits_config(), linear=linear, attention=attention)


def images(x):
    """load_digits' flattened rows (N, 64) in [0, 1] → standardised (N, 1, 8, 8) images."""
    return ((x - 0.3) / 0.4).reshape(-1, 1, 8, 8).astype(np.float32)


def accuracy(model, x, y, batch=256):
    model.eval()
    correct = 0
    with dreidel.no_grad():
        for start in range(0, len(x), batch):
            correct += int(np.sum(model(x[start:start + batch]).data.argmax(axis=1) == y[start:start + batch]))
    model.train()
    return correct / len(x)


def train(variant, epochs=30, batch=64, lr=3e-3, seed=0, steps=None):
    """Train one variant with AdamW (cosine-free, constant lr); returns a dict of its results.
    `steps` stops early after that many steps (for quick checks); losses holds every step's loss."""
    x_train, y_train, x_test, y_test = load_digits()
    x_train, x_test = images(x_train), images(x_test)
    model = build(variant, seed)
    optimizer = dreidel.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    losses, times = [], []
    for _ in range(epochs):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order) - batch + 1, batch):
            index = order[start:start + batch]
            begin = time.perf_counter()
            loss = F.cross_entropy(model(x_train[index]), y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - begin)
            losses.append(float(loss.item()))
            if steps is not None and len(losses) >= steps:
                break
        if steps is not None and len(losses) >= steps:
            break
    return {"variant": variant, "accuracy": accuracy(model, x_test, y_test), "parameters": model.parameter_count(),
            "multiply_adds": model.multiply_adds(), "step_ms": 1e3 * statistics.median(times), "losses": losses,
            "steps": len(losses)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS/OpenMP threads (1: these GEMMs are too small to gain from more)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args()
    dreidel.set_num_threads(args.threads)
    print(f"digits ViT, {args.epochs} epochs, batch 64, AdamW lr 3e-3, {args.threads} threads\n")
    print("| variant | test accuracy | parameters | multiply-adds / image | ms / step | steps |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for variant in args.variants:
        r = train(variant, epochs=args.epochs)
        print(f"| {variant} | {r['accuracy']:.3f} | {r['parameters']:,} | {r['multiply_adds']:,} | "
              f"{r['step_ms']:.1f} | {r['steps']} |", flush=True)


if __name__ == "__main__":
    main()
