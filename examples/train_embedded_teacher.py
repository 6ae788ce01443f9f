"""Reproduce the main job's embedded teacher: a small vision transformer trained with dreidel on
the digits set that ships in the package, written to dreidel/data/digits_teacher.{safetensors,json}.

    python examples/train_embedded_teacher.py [--epochs 60] [--out dreidel/data]

Training: the digits training split of `load_digits(seed=0)` (the main job calibrates on it and
evaluates on the held-out test split), random shifts of up to one pixel, AdamW with warm-up +
cosine decay, label smoothing 0.1.
"""
import argparse
import time
from pathlib import Path

import numpy as np

import dreidel
from dreidel import functional as F
from dreidel.data import load_digits
from dreidel.data.teacher import DigitsTransformer, save_teacher
from dreidel.progress import progress


def shifted(images, rng):
    """Each 8×8 image moved by up to one pixel in each direction (zeros fill in)."""
    out = np.zeros_like(images)
    grid = images.reshape(-1, 8, 8)
    padded = np.pad(grid, ((0, 0), (1, 1), (1, 1)))
    dy, dx = rng.integers(0, 3, len(images)), rng.integers(0, 3, len(images))
    for i in range(len(images)):
        out[i] = padded[i, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8].reshape(-1)
    return out


def accuracy(model, x, y, batch=512):
    model.eval()
    with dreidel.no_grad():
        predicted = np.concatenate([model(x[i:i + batch]).data.argmax(1) for i in range(0, len(x), batch)])
    model.train()
    return float(np.mean(predicted == y))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "dreidel" / "data"))
    args = parser.parse_args(argv)

    x_train, y_train, x_test, y_test = load_digits(seed=0)
    model = DigitsTransformer(seed=args.seed)
    optimizer = dreidel.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = -(-len(x_train) // args.batch_size)
    schedule = dreidel.optim.WarmupCosine(optimizer, warmup_steps=min(3, args.epochs) * steps, total_steps=args.epochs * steps)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    bar = progress(range(args.epochs), "train teacher", lines=10)
    for epoch in bar:
        order = rng.permutation(len(x_train))
        images = shifted(x_train, rng)
        for first in range(0, len(order), args.batch_size):
            batch = order[first:first + args.batch_size]
            loss = F.cross_entropy(model(images[batch]), y_train[batch], label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        bar.set(loss=float(loss.item()))
    seconds = time.perf_counter() - start
    train_acc, test_acc = accuracy(model, x_train, y_train), accuracy(model, x_test, y_test)
    save_teacher(model, args.out)
    print(f"{model.parameter_count()} parameters, {args.epochs} epochs in {seconds:.0f} s: "
          f"train accuracy {train_acc:.4f}, test accuracy {test_acc:.4f}; saved to {args.out}")
    return test_acc


if __name__ == "__main__":
    main()
