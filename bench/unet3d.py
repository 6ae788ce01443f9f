"""3-D UNet benchmark: training step and sliding-window inference, spectral ÷ dense.

Both twins of `dreidel.models.unet3d` (channels 8/16/32, 4 classes) in the same process, with the
same threads; medians of interleaved repeats (spectral, dense, spectral, dense, …), and their ratio.

    python bench/unet3d.py [--threads 2] [--repeats 7] [--patch 32] [--batch 2] [--volume 64]

- training step: forward, Dice + CE, backward and an AdamW step on a batch of `--batch` patches
  of `--patch`³;
- sliding-window inference: one `--volume`³ volume in `--patch`³ windows, overlap 0.5, Gaussian
  blending, 4 windows per forward.
`--profile` also prints where the spectral and the dense training step spend their time (cProfile,
by function). PyTorch joins as a comparator (its Conv3d UNet twin, same shapes) when installed.
"""
import argparse
import cProfile
import io
import pstats
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dreidel  # noqa: E402
from dreidel import optim  # noqa: E402
from dreidel.models.unet3d import (UNet3D, UNet3DConfig, count_multiply_adds, dice_ce_loss,  # noqa: E402
                                   sliding_window_inference)


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--volume", type=int, default=64)
    parser.add_argument("--profile", action="store_true")
    return parser.parse_args(argv)


def make_step(model, x, y):
    opt = optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad()
        dice_ce_loss(model(x), y).backward()
        opt.step()
    return step


def torch_steps(args, x, y, volume):
    """PyTorch's dense twin (same layers and shapes), or None when torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(args.threads)
    tnn = torch.nn

    def block(i, o):
        return tnn.Sequential(tnn.Conv3d(i, o, 3, padding=1, bias=False), tnn.InstanceNorm3d(o, affine=True), tnn.ReLU(),
                              tnn.Conv3d(o, o, 3, padding=1, bias=False), tnn.InstanceNorm3d(o, affine=True), tnn.ReLU())

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            self.e0, self.e1, self.e2 = block(1, 8), block(8, 16), block(16, 32)
            self.u1, self.m1, self.d1 = tnn.ConvTranspose3d(32, 16, 2, 2), tnn.Conv3d(32, 16, 1, bias=False), block(16, 16)
            self.u0, self.m0, self.d0 = tnn.ConvTranspose3d(16, 8, 2, 2), tnn.Conv3d(16, 8, 1, bias=False), block(8, 8)
            self.head = tnn.Conv3d(8, 4, 1)

        def forward(self, v):
            s0 = self.e0(v)
            s1 = self.e1(torch.nn.functional.max_pool3d(s0, 2))
            h = self.e2(torch.nn.functional.max_pool3d(s1, 2))
            h = self.d1(self.m1(torch.cat([self.u1(h), s1], 1)))
            h = self.d0(self.m0(torch.cat([self.u0(h), s0], 1)))
            return self.head(h)

    net = Net()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()  # CE only: Dice adds a few elementwise ops
        opt.step()

    def infer():
        with torch.no_grad():
            n = volume.shape[-1]
            p = args.patch
            vt = torch.from_numpy(volume)
            for a in range(0, n - p + 1, p // 2):
                for b in range(0, n - p + 1, p // 2):
                    corners = [(a, b, c) for c in range(0, n - p + 1, p // 2)]
                    for i in range(0, len(corners), 4):
                        net(torch.cat([vt[:, :, a:a + p, b:b + p, c:c + p] for a, b, c in corners[i:i + 4]]))
    return step, infer


def interleaved(fns, repeats):
    """Median seconds of each function, timed in turn (one warm-up call each)."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def profile(step, label, top=10):
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(2):
        step()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats("tottime")
    total = stats.total_tt
    print(f"\n{label}: {total / 2:.3f} s per step under cProfile; top functions by own time")
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]
    for (file, line, name), (_, calls, own, cumulative, _) in rows:
        print(f"  {100 * own / total:5.1f}%  {own / 2:7.3f} s  {name} ({Path(file).name}:{line})")


def main(argv=None):
    args = parse(argv)
    dreidel.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 1) + (args.patch,) * 3).astype(np.float32)
    y = rng.integers(0, 4, size=(args.batch,) + (args.patch,) * 3)
    volume = rng.standard_normal((1, 1) + (args.volume,) * 3).astype(np.float32)
    models, steps, infers = {}, {}, {}
    for variant in ("spectral", "dense"):
        dreidel.random.manual_seed(0)
        models[variant] = model = UNet3D(UNet3DConfig(num_classes=4, channels=(8, 16, 32), variant=variant))
        steps[variant] = make_step(model, dreidel.tensor(x), y)
        infers[variant] = (lambda m: lambda: sliding_window_inference(m, volume, args.patch, 0.5, "gaussian", 4))(model)
    extra = torch_steps(args, x, y, volume)
    if extra is not None:
        steps["pytorch dense"], infers["pytorch dense"] = extra
    print(f"threads {args.threads}, {args.repeats} interleaved repeats, medians; training batch "
          f"{args.batch} × {args.patch}³, inference {args.volume}³ in {args.patch}³ windows (overlap 0.5)")
    if extra is None:
        print("PyTorch is not installed: no PyTorch comparator")
    for variant, model in models.items():
        print(f"  {variant:<8} params {model.parameter_count():>6}, multiply-adds per patch "
              f"{count_multiply_adds(model, (1, 1) + (args.patch,) * 3) / 1e6:.1f} M")
    step_times = interleaved(steps, args.repeats)
    infer_times = interleaved(infers, max(3, args.repeats // 2))
    print(f"\n{'':<28} {'spectral s':>11} {'dense s':>9} {'spectral ÷ dense':>17}" +
          (f" {'dense ÷ PyTorch':>16}" if extra else ""))
    for label, times in (("training step", step_times), ("sliding-window inference", infer_times)):
        line = f"{label:<28} {times['spectral']:>11.3f} {times['dense']:>9.3f} {times['spectral'] / times['dense']:>17.2f}"
        if extra:
            line += f" {times['dense'] / times['pytorch dense']:>16.2f}"
        print(line)
    if args.profile:
        profile(steps["spectral"], "spectral training step")
        profile(steps["dense"], "dense training step")


if __name__ == "__main__":
    main()
