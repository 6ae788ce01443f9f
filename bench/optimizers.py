"""Optimizer benchmark: steps and wall-clock to a target training loss on one small problem.

Problem: the digits dataset shipped in dreidel.data (1,437 training images of 8×8), a 2-layer MLP
64 → 64 → tanh → 10 with softmax cross-entropy, mini-batches of 128, fixed seeds. Each optimizer
trains until the loss on the whole training set falls below --target (checked every --check steps,
outside the timer) or --max-steps is reached. Seeds are interleaved (seed 0: every optimizer, then
seed 1, ...) so machine load affects all alike; the table shows medians over seeds and ratios to
SGD measured in the same run. "passes" counts forward+backward evaluations per step (curvature
estimates and the step-length safeguard cost extra passes).

    python bench/optimizers.py [--seeds 3] [--target 0.1] [--max-steps 1500] [--threads 1]
"""
import argparse
import os
import statistics
import time


def parse():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.1)
    parser.add_argument("--max-steps", type=int, default=1500)
    parser.add_argument("--check", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads (set before numpy loads)")
    return parser.parse_args()


def contenders(batch):
    from dreidel import optim
    return {  # name: (build(model, seed), uses curvature_backward)
        "SGD (lr 0.1, momentum 0.9)": (lambda m, s: optim.SGD(m.parameters(), lr=0.1, momentum=0.9), False),
        "AdamW (lr 1e-2)": (lambda m, s: optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.0), False),
        "DiagonalNewton hutchinson": (lambda m, s: optim.DiagonalNewton(m.parameters(), rng=s), False),
        "DiagonalNewton fisher": (lambda m, s: optim.DiagonalNewton(
            m.parameters(), curvature="fisher", fisher_scale=batch), False),
        "BlockDiagonal (B=64)": (lambda m, s: optim.BlockDiagonal(
            m.parameters(), block_size=64, fisher_scale=batch), False),
        "KFAC empirical Fisher": (lambda m, s: optim.KFAC(m, rng=s), False),
        "KFAC sampled Fisher": (lambda m, s: optim.KFAC(m, rng=s), True),
    }


def train(build, curvature_pass, x, y, seed, args):
    import numpy as np
    import dreidel
    from dreidel import nn, functional as F

    rng = np.random.default_rng(seed)
    model = nn.Sequential(nn.Linear(64, args.hidden, rng=rng), nn.Tanh(), nn.Linear(args.hidden, 10, rng=rng))
    optimizer = build(model, np.random.default_rng(seed + 100))
    passes = [0]
    xs = dreidel.Tensor(x)

    def full_loss():
        with dreidel.no_grad():
            return float(F.cross_entropy(model(xs), y).item())

    elapsed = 0.0
    for step in range(1, args.max_steps + 1):
        batch = rng.choice(len(x), args.batch, replace=False)
        xb, yb = dreidel.Tensor(x[batch]), y[batch]

        def closure():
            passes[0] += 1
            optimizer.zero_grad()
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            if curvature_pass:
                optimizer.curvature_backward(out, "cross_entropy")
            loss.backward()
            return loss
        start = time.perf_counter()
        optimizer.step(closure)
        elapsed += time.perf_counter() - start
        if step % args.check == 0:
            loss = full_loss()
            if not np.isfinite(loss):
                return None, elapsed, passes[0] / step, loss
            if loss <= args.target:
                return step, elapsed, passes[0] / step, loss
    return None, elapsed, passes[0] / args.max_steps, full_loss()


def main():
    args = parse()
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(args.threads)
    import numpy as np
    import dreidel
    from dreidel.data import load_digits
    dreidel.set_num_threads(args.threads)
    x, y, _, _ = load_digits()
    runs = {name: [] for name in contenders(args.batch)}
    for seed in range(args.seeds):
        for name, (build, curvature_pass) in contenders(args.batch).items():
            runs[name].append(train(build, curvature_pass, x, y, seed, args))
    print(f"digits MLP 64→{args.hidden}→10, batch {args.batch}, target full-train CE ≤ {args.target}, "
          f"max {args.max_steps} steps, {args.seeds} seeds; threads: BLAS/OMP env {args.threads}, "
          f"dreidel kernels {dreidel.get_num_threads()}")

    def medians(name):
        results = runs[name]
        reached = [r for r in results if r[0] is not None]
        if len(reached) * 2 <= len(results):  # the median run did not reach the target
            return None, None, statistics.median(r[2] for r in results), len(reached)
        # runs that missed count as max_steps / their full time (so the median stays honest)
        steps = statistics.median(r[0] if r[0] is not None else float("inf") for r in results)
        seconds = statistics.median(r[1] if r[0] is not None else float("inf") for r in results)
        return steps, seconds, statistics.median(r[2] for r in results), len(reached)

    base_steps, base_seconds, _, _ = medians(next(iter(runs)))
    header = f"{'optimizer':28s} {'reached':>7s} {'steps':>6s} {'seconds':>8s} {'passes/step':>11s} " \
             f"{'steps ÷ SGD':>11s} {'time ÷ SGD':>10s} {'final losses':>s}"
    print(header)
    print("-" * len(header))
    for name in runs:
        steps, seconds, passes, reached = medians(name)
        finals = " ".join(f"{r[3]:.3g}" for r in runs[name])
        if steps is None:
            print(f"{name:28s} {reached}/{args.seeds:<5d} {'—':>6s} {'—':>8s} {passes:11.1f} {'—':>11s} {'—':>10s} {finals}")
            continue
        step_ratio = f"{steps / base_steps:.2f}" if base_steps else "—"
        time_ratio = f"{seconds / base_seconds:.2f}" if base_seconds else "—"
        print(f"{name:28s} {reached}/{args.seeds:<5d} {steps:6.0f} {seconds:8.2f} {passes:11.1f} "
              f"{step_ratio:>11s} {time_ratio:>10s} {finals}")


if __name__ == "__main__":
    main()
