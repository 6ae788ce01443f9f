"""Train the spectral 3-D UNet and its dense twin on the synthetic volumes; print the table.

    python examples/train_unet3d.py                      # spectral + dense with AdamW, spectral with the split
    python examples/train_unet3d.py --runs spectral:adamw --steps 50 --volumes 8 4

Training sees random `--patch`³ crops (random flips) of the training volumes; Dice is measured on the
held-out volumes (their own seed stream) by sliding-window inference at the full volume size, so the
windows blend as they would on a scan larger than the patch. Dice: mean over volumes of the mean
over the foreground classes present (sphere, cube, ellipsoid).

Optimisers: "adamw" (every parameter), and "split", the seeds' curvature-aware split through param
groups: `BlockDiagonal` on the depthwise (spatial) kernels, one block per channel's kernel (27 taps
for the 3×3×3 convs, 8 for the ×2 upsampling), and `DiagonalNewton` on the rest, with LinearWHT's
Gauss–Newton diagonal (`modules=model`) for the mixing diagonals and the squared-gradient Fisher for
the stem, norms and head. Both take the one gradient of the step (no closure: no extra passes).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dreidel  # noqa: E402
from dreidel import optim  # noqa: E402
from dreidel.data.volumes import KINDS, load_volumes  # noqa: E402
from dreidel.models.unet3d import (UNet3D, UNet3DConfig, count_multiply_adds, dice_ce_loss,  # noqa: E402
                                   dice_scores, sliding_window_inference)


class SplitOptimizer:
    """Several optimisers over disjoint parameters, stepped together. Without a closure each uses the
    step's one gradient; with one (`step(closure)`), each re-evaluates the gradient and runs its own
    step-length safeguard (its line search), i.e. about four passes per step for two optimisers."""

    def __init__(self, *optimizers):
        self.optimizers = optimizers

    def zero_grad(self):
        for o in self.optimizers:
            o.zero_grad()

    def step(self, closure=None):
        """Returns the loss the first optimiser evaluated (None without a closure)."""
        losses = [o.step(closure) for o in self.optimizers]
        return losses[0]


def make_optimizer(model, name, lr=None, voxels=1, line_search=False, damping=1e-3):
    """AdamW, or the split: BlockDiagonal (spatial) + DiagonalNewton (mixing, other).

    Curvature scales for a loss averaged over `voxels` voxels: the per-voxel Fisher is `voxels`·g²
    when the mini-batch gradient is mostly noise (fisher_scale = voxels), and the LinearWHT
    Gauss–Newton diagonal, a sum over voxels of Λ = I, is scaled by 1/(4·voxels) (the softmax
    cross-entropy's curvature in a logit is at most 1/4 per voxel)."""
    if name == "adamw":
        return optim.AdamW(model.parameters(), lr=lr or 3e-3, weight_decay=1e-4)
    if name != "split":
        raise ValueError(f"optimizer must be 'adamw' or 'split', got {name!r}")
    groups = model.parameter_groups()
    if not groups["spatial"]:
        raise ValueError("the 'split' optimiser needs the spectral model (it has no depthwise kernels to split)")
    conv = [p for p in groups["spatial"] if p.shape[2:] == (3, 3, 3)]
    up = [p for p in groups["spatial"] if p.shape[2:] == (2, 2, 2)]
    lr = lr or (1.0 if line_search else 0.05)
    spatial = optim.BlockDiagonal([{"params": conv, "block_size": 27}, {"params": up, "block_size": 8}],
                                  lr=lr, damping=damping, beta=0.95, update_freq=5, fisher_scale=voxels,
                                  line_search=line_search)
    rest = optim.DiagonalNewton([{"params": groups["mixing"]}, {"params": groups["other"]}],
                                lr=lr, damping=damping, beta=0.95, curvature="fisher", fisher_scale=voxels,
                                modules=model, module_curvature_scale=0.25 / voxels, line_search=line_search)
    return SplitOptimizer(spatial, rest)


def crops(x, y, patch, batch, rng):
    """`batch` random patch³ crops with random flips along each axis."""
    size = x.shape[2:]
    xs, ys = [], []
    for _ in range(batch):
        i = int(rng.integers(len(x)))
        a, b, c = (int(rng.integers(0, s - patch + 1)) for s in size)
        xc = x[i, :, a:a + patch, b:b + patch, c:c + patch]
        yc = y[i, a:a + patch, b:b + patch, c:c + patch]
        for axis in range(3):
            if rng.random() < 0.5:
                xc, yc = np.flip(xc, axis + 1), np.flip(yc, axis)
        xs.append(xc)
        ys.append(yc)
    return np.ascontiguousarray(np.stack(xs)), np.ascontiguousarray(np.stack(ys))


def held_out_dice(model, x, y, patch, num_classes):
    logits = sliding_window_inference(model, x, patch, overlap=0.5, blend="gaussian", batch_size=8)
    scores = dice_scores(logits.argmax(axis=1), y, num_classes)
    return float(np.nanmean(np.nanmean(scores, axis=1))), np.nanmean(scores, axis=0)


def train(variant, optimizer, data, steps=300, patch=16, batch=4, lr=None, seed=0, eval_every=50,
          target=None, line_search=False, damping=1e-3, channels=(8, 16, 32), log=print):
    """Train one model; returns a dict of the measurements (Dice history, params, multiply-adds, time)."""
    x_train, y_train, x_test, y_test = data
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    config = UNet3DConfig(num_classes=num_classes, channels=channels, variant=variant)
    names = KINDS[1:] if num_classes == len(KINDS) else ("object",)
    dreidel.random.manual_seed(seed)
    model = UNet3D(config)
    opt = make_optimizer(model, optimizer, lr, voxels=batch * patch ** 3, line_search=line_search,
                         damping=damping)
    rng = np.random.default_rng(seed + 1)
    history, train_time, reached = [], 0.0, None
    for step in range(1, steps + 1):
        xb, yb = crops(x_train, y_train, patch, batch, rng)
        start = time.perf_counter()
        xt = dreidel.tensor(xb)

        def closure():
            opt.zero_grad()
            value = dice_ce_loss(model(xt), yb)
            value.backward()
            return value

        if line_search:
            loss = opt.step(closure)
        else:
            loss = closure()
            opt.step()
        train_time += time.perf_counter() - start
        if not np.isfinite(float(loss.data)):
            log(f"{variant}/{optimizer}: loss became {float(loss.data)} at step {step}; stopping")
            break
        if step % eval_every == 0 or step == steps:
            dice, per_class = held_out_dice(model, x_test, y_test, patch, config.num_classes)
            history.append({"step": step, "train_seconds": round(train_time, 2), "loss": float(loss.data),
                            "dice": dice, "dice_per_class": [float(d) for d in per_class]})
            log(f"{variant}/{optimizer} step {step}: loss {float(loss.data):.4f}, held-out Dice {dice:.3f} "
                f"({', '.join(f'{k} {d:.3f}' for k, d in zip(names, per_class))}), {train_time:.1f} s")
            if reached is None and target is not None and dice >= target:
                reached = {"step": step, "train_seconds": round(train_time, 2)}
    best = max(history, key=lambda h: h["dice"]) if history else None
    return {"variant": variant, "optimizer": optimizer + ("+line-search" if line_search else ""),
            "lr": lr, "damping": damping, "params": model.parameter_count(),
            "multiply_adds_per_patch": count_multiply_adds(model, (1, 1) + (patch,) * 3),
            "steps": step, "train_seconds": round(train_time, 2), "seconds_per_step": train_time / step,
            "final_dice": history[-1]["dice"] if history else float("nan"),
            "best_dice": best["dice"] if best else float("nan"), "target": target, "reached_target": reached,
            "history": history}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="spectral:adamw,dense:adamw,spectral:split:0.1",
                        help="comma-separated variant:optimizer[:lr] runs")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=32, help="side of the synthetic volumes")
    parser.add_argument("--volumes", type=int, nargs=2, default=(48, 16), metavar=("TRAIN", "HELD_OUT"))
    parser.add_argument("--labels", choices=("binary", "kind"), default="binary",
                        help="segment objects from background, or tell sphere / cube / ellipsoid apart")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--target", type=float, default=0.8, help="held-out Dice to report time-to")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default per optimiser)")
    parser.add_argument("--line-search", action="store_true",
                        help="split: step(closure), each optimiser's step-length safeguard on")
    parser.add_argument("--damping", type=float, default=1e-3, help="split: the optimisers' damping")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        dreidel.set_num_threads(args.threads)
    data = load_volumes(args.volumes[0], args.volumes[1], size=args.size, seed=args.seed, labels=args.labels)
    results = []
    for run in args.runs.split(","):
        variant, optimizer, lr = (run.split(":") + [None, None])[:3]
        results.append(train(variant, optimizer or "adamw", data, args.steps, args.patch, args.batch,
                             lr=float(lr) if lr else args.lr, seed=args.seed, eval_every=args.eval_every, target=args.target,
                             line_search=args.line_search, damping=args.damping))
    print(f"\nlabels {args.labels}; held-out: {args.volumes[1]} volumes of {args.size}³ (seed stream 1), sliding windows of "
          f"{args.patch}³, overlap 0.5, Gaussian blending; training crops {args.patch}³ × batch {args.batch}")
    print(f"{'model':<10} {'optimiser':<22} {'params':>7} {'MACs/patch':>11} {'steps':>5} {'s/step':>7} "
          f"{'train s':>8} {'Dice':>6} {'best':>6} {'to ' + str(args.target):>14}")
    for r in results:
        reached = r["reached_target"]
        to = f"{reached['step']} / {reached['train_seconds']:.0f} s" if reached else "not reached"
        print(f"{r['variant']:<10} {r['optimizer'] + (' lr ' + format(r['lr'], 'g') if r['lr'] else ''):<22} {r['params']:>7} {r['multiply_adds_per_patch'] / 1e6:>10.1f}M "
              f"{r['steps']:>5} {r['seconds_per_step']:>7.3f} {r['train_seconds']:>8.1f} {r['final_dice']:>6.3f} "
              f"{r['best_dice']:>6.3f} {to:>14}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
