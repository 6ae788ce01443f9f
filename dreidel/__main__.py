"""The main job on its embedded default: train a spectral MLP and its dense twin on the digits set
that ships with dreidel, and print test accuracy, size and time side by side.

    python -m dreidel [--epochs 30] [--seed 0] [--threads N]
"""
import argparse
import time

import numpy as np

import dreidel
from dreidel import nn
from dreidel import functional as F
from dreidel.data import load_digits
from dreidel.progress import progress


def dense_mlp(hidden, classes, seed):
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Linear(64, hidden, rng=rng), nn.GELU(),
                         nn.Linear(hidden, hidden, rng=rng), nn.GELU(),
                         nn.Linear(hidden, classes, rng=rng))


def spectral_mlp(hidden, classes, seed, depth=2):
    """The dense twin with its two hidden-width layers replaced by DeepSpectralLinear."""
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.DeepSpectralLinear(64, hidden, depth=depth, seed=seed), nn.GELU(),
                         nn.DeepSpectralLinear(hidden, hidden, depth=depth, seed=seed + 1), nn.GELU(),
                         nn.Linear(hidden, classes, rng=rng))


def multiply_adds(model):
    """Multiply-adds per sample: layers report their own, dense ones are in·out."""
    total = 0
    for module in model.modules():
        if hasattr(module, "multiply_adds") and module is not model:
            total += module.multiply_adds()
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features
    return total


def accuracy(model, x, y):
    model.eval()
    with dreidel.no_grad():
        predicted = np.argmax(model(dreidel.Tensor(x)).data, axis=1)
    model.train()
    return float(np.mean(predicted == y))


def train_classifier(model, x, y, epochs, batch_size=64, lr=3e-3, seed=0, description="train"):
    """AdamW with a warm-up + cosine schedule; returns the wall-clock seconds spent."""
    optimizer = dreidel.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = -(-len(x) // batch_size)
    schedule = dreidel.optim.WarmupCosine(optimizer, warmup_steps=steps_per_epoch,
                                          total_steps=epochs * steps_per_epoch)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    bar = progress(range(epochs), description)
    for _ in bar:
        order = rng.permutation(len(x))
        for first in range(0, len(x), batch_size):
            batch = order[first:first + batch_size]
            loss = F.cross_entropy(model(dreidel.Tensor(x[batch])), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        bar.set(loss=float(loss.item()))
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dreidel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--depth", type=int, default=2, help="spectral blocks per DeepSpectralLinear")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="OpenMP threads for the kernels")
    args = parser.parse_args(argv)
    if args.threads:
        dreidel.set_num_threads(args.threads)

    x_train, y_train, x_test, y_test = load_digits(seed=args.seed)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-3
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    print(f"digits (UCI, shipped with dreidel): {len(x_train)} train / {len(x_test)} test images, "
          f"64 features, 10 classes; {dreidel.get_num_threads()} kernel threads")

    rows = []
    for name, build in (("dense", dense_mlp), ("spectral", spectral_mlp)):
        model = build(args.hidden, 10, args.seed) if name == "dense" else build(args.hidden, 10, args.seed, args.depth)
        seconds = train_classifier(model, x_train, y_train, args.epochs, seed=args.seed, description=name)
        rows.append((name, model.parameter_count(), multiply_adds(model),
                     accuracy(model, x_train, y_train), accuracy(model, x_test, y_test), seconds))

    dense_seconds, dense_madds = rows[0][5], rows[0][2]
    print(f"\n{'model':10} {'params':>8} {'mult-adds':>10} {'train acc':>9} {'test acc':>8} "
          f"{'train s':>8} {'time ÷ dense':>12} {'mult-adds ÷ dense':>17}")
    for name, params, madds, train_acc, test_acc, seconds in rows:
        print(f"{name:10} {params:8d} {madds:10d} {train_acc:9.3f} {test_acc:8.3f} {seconds:8.2f} "
              f"{seconds / dense_seconds:12.2f} {madds / dense_madds:17.3f}")
    return rows


if __name__ == "__main__":
    main()
