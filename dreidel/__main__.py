"""The main job: recast the embedded teacher (a 3-block vision transformer trained by dreidel on the
digits that ship in the package) under a few budgets, with real distillation, and print the Pareto
table: parameters, multiply-adds, measured speed-up and quality against the teacher.

    python -m dreidel [--budgets 0.7,0.5,0.35] [--families lowrank,spectral] [--threads N]
    python -m dreidel digits        (the older job: a spectral MLP and its dense twin trained from scratch)

Calibration uses the digits training split (the teacher's own training images); every quality
number is measured on the held-out test split, which neither the teacher nor the recasting saw.
"""
import argparse
import time

import numpy as np

import dreidel
from dreidel import functional as F
from dreidel import nn
from dreidel.data import load_digits
from dreidel.progress import progress


def linear_multiply_adds(model):
    """Multiply-adds per token of the model's Linear-like layers: each layer reports its own
    (`multiply_adds()`), a dense `nn.Linear` is in·out."""
    total = 0
    for _, module in model.named_modules():
        if module is model:
            continue
        if hasattr(module, "multiply_adds"):
            total += module.multiply_adds()
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features
    return total


def _logits(model, x, batch=512):
    model.eval()
    with dreidel.no_grad():
        return np.concatenate([model(dreidel.Tensor(x[i:i + batch])).data for i in range(0, len(x), batch)])


def quality(teacher_logits, logits, labels):
    """Test accuracy, top-1 agreement with the teacher and KL(teacher ‖ student) per image."""
    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))
    t, s = log_softmax(teacher_logits.astype(np.float64)), log_softmax(logits.astype(np.float64))
    return {"accuracy": float(np.mean(logits.argmax(1) == labels)),
            "agreement": float(np.mean(logits.argmax(1) == teacher_logits.argmax(1))),
            "kl": float(np.mean(np.sum(np.exp(t) * (t - s), 1)))}


def interleaved_medians(functions, repeats, description="time"):
    """Median seconds of each function over `repeats` rounds that run them all in turn."""
    from dreidel.recast.cli import interleaved_medians as medians
    return medians(functions, repeats, description)


def recast_job(argv=None):
    """Calibrate once, plan and distil one student per budget, then time and score them all."""
    from dreidel import recast
    from dreidel.data.teacher import load_teacher
    parser = argparse.ArgumentParser(prog="python -m dreidel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default="0.7,0.5,0.35",
                        help="multiply-adds of the recast layers as fractions of the dense ones")
    parser.add_argument("--families", default="lowrank,spectral")
    parser.add_argument("--calibration-images", type=int, default=512)
    parser.add_argument("--steps", type=int, default=None, help="gradient steps per distillation stage")
    parser.add_argument("--stages", default="init,refit,blockwise,global")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=None, help="threads for kernels and BLAS")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        dreidel.set_num_threads(args.threads)
    start = time.perf_counter()
    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())

    teacher = load_teacher()
    x_train, y_train, x_test, y_test = load_digits(seed=0)  # the split the teacher was trained on
    order = np.random.default_rng(args.seed).permutation(len(x_train))[:args.calibration_images]
    x_calib = x_train[np.sort(order)]
    tokens = (teacher.image_size // teacher.patch_size) ** 2
    print(f"teacher: embedded digits transformer, {teacher.parameter_count():,} parameters, "
          f"{len(teacher.encoder.layers)} blocks; calibration: {len(x_calib)} training images; "
          f"evaluation: {len(x_test)} held-out test images; {dreidel.get_num_threads()} threads")

    blocks = recast.find_blocks(teacher)
    targets = recast.find_targets(teacher, blocks)
    calibration = recast.calibrate(teacher, [x_calib[i:i + 128] for i in range(0, len(x_calib), 128)],
                                   targets, blocks)
    students = {}
    for budget in budgets:
        the_plan = recast.plan(teacher, calibration, families=families, budget=budget, budget_kind="macs",
                               repeats=3)
        students[budget], _ = recast.distill(teacher, the_plan, calibration, stages=stages, steps=args.steps,
                                             seed=args.seed, global_loss="kl")

    teacher_logits = _logits(teacher, x_test)
    models = {"teacher": teacher, **{f"budget {b:g}": s for b, s in students.items()}}
    batch = x_test
    runs = {}
    for name, model in models.items():
        model.eval()
        runs[name] = (lambda m: lambda: _forward(m, batch))(model)
    seconds = interleaved_medians(runs, args.repeats, "time teacher and students")

    dense_madds = linear_multiply_adds(teacher)
    rows = []
    for name, model in models.items():
        scores = quality(teacher_logits, _logits(model, x_test), y_test)
        rows.append({"model": name, "params": model.parameter_count(),
                     "linear_madds": linear_multiply_adds(model) * tokens,
                     "madds_fraction": linear_multiply_adds(model) / dense_madds,
                     "seconds": seconds[name], "speedup": seconds["teacher"] / seconds[name], **scores})
    print_table(rows)
    print(f"\nwall-clock {time.perf_counter() - start:.0f} s (speed-up: medians of {args.repeats} interleaved "
          f"runs over the {len(x_test)} test images; multiply-adds of the Linear-like layers per image)")
    return rows


def _forward(model, x):
    with dreidel.no_grad():
        return model(x)


def print_table(rows):
    print(f"\n{'model':12} {'params':>9} {'linear madds':>13} {'÷ dense':>8} {'speed-up':>9} "
          f"{'test acc':>9} {'agree':>7} {'KL':>8}")
    for r in rows:
        print(f"{r['model']:12} {r['params']:9,d} {r['linear_madds']:13,d} {r['madds_fraction']:8.2f} "
              f"{r['speedup']:8.2f}× {r['accuracy']:9.3f} {r['agreement']:7.3f} {r['kl']:8.4f}")


# -- the older job: a spectral MLP beside its dense twin, trained from scratch on digits ---------------
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


def accuracy(model, x, y):
    return float(np.mean(_logits(model, x).argmax(1) == y))


def train_classifier(model, x, y, epochs, batch_size=64, lr=3e-3, seed=0, description="train"):
    """AdamW with a warm-up + cosine schedule; returns the wall-clock seconds spent."""
    optimizer = dreidel.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = -(-len(x) // batch_size)
    schedule = dreidel.optim.WarmupCosine(optimizer, warmup_steps=steps_per_epoch,
                                          total_steps=epochs * steps_per_epoch)
    rng = np.random.default_rng(seed)
    model.train()
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


def digits_job(argv=None):
    """Train a spectral MLP and its dense twin on digits; print accuracy, size and time side by side."""
    parser = argparse.ArgumentParser(prog="python -m dreidel digits",
                                     description="a spectral MLP beside its dense twin, trained on digits")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--depth", type=int, default=2, help="spectral blocks per DeepSpectralLinear")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        dreidel.set_num_threads(args.threads)
    x_train, y_train, x_test, y_test = load_digits(seed=args.seed)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-3
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    rows = []
    for name in ("dense", "spectral"):
        model = dense_mlp(args.hidden, 10, args.seed) if name == "dense" else \
            spectral_mlp(args.hidden, 10, args.seed, args.depth)
        seconds = train_classifier(model, x_train, y_train, args.epochs, seed=args.seed, description=name)
        rows.append((name, model.parameter_count(), linear_multiply_adds(model),
                     accuracy(model, x_train, y_train), accuracy(model, x_test, y_test), seconds))
    dense_seconds, dense_madds = rows[0][5], rows[0][2]
    print(f"\n{'model':10} {'params':>8} {'mult-adds':>10} {'train acc':>9} {'test acc':>8} "
          f"{'train s':>8} {'time ÷ dense':>12} {'mult-adds ÷ dense':>17}")
    for name, params, madds, train_acc, test_acc, seconds in rows:
        print(f"{name:10} {params:8d} {madds:10d} {train_acc:9.3f} {test_acc:8.3f} {seconds:8.2f} "
              f"{seconds / dense_seconds:12.2f} {madds / dense_madds:17.3f}")
    return rows


def main(argv=None):
    """`python -m dreidel [digits] [options]`: the recasting job, or the older digits job."""
    import sys
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "digits":
        return digits_job(argv[1:])
    return recast_job(argv)


if __name__ == "__main__":
    main()
