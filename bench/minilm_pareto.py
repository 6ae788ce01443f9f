"""The pure spectral Pareto table on MiniLM (issue 12): every Linear DeepSpectralLinear of depth K ∈ {1, 2, 4, 8},
beside low rank at the same multiply-adds per layer (`--uniform lowrank:spectralK`), each one-shot (init
only) and distilled (init, block-wise, global) with DiagonalNewton and with AdamW.

    python bench/minilm_pareto.py run [--steps 40] [--depths 1 2 4 8]   # one bench/recast_minilm.py run at a time
    python bench/minilm_pareto.py table > bench/results/minilm_pareto.md

`run` writes one JSON per configuration to --dir (default /tmp/minilm_pareto); `table` reads them.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def configurations(depths):
    for k in depths:
        for spec in (f"spectral:{k}", f"lowrank:spectral{k}"):
            for optimizer in ("oneshot", "newton", "adamw"):
                yield k, spec, optimizer


def tag(spec, optimizer):
    return f"{spec.replace(':', '_')}_{optimizer}"


def run(args):
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    for k, spec, optimizer in configurations(args.depths):
        command = [sys.executable, str(ROOT / "bench/recast_minilm.py"), "--uniform", spec, "--threads", "1",
                   "--repeats", str(args.repeats), "--out", str(folder / "run"),
                   "--json", str(folder / f"{tag(spec, optimizer)}.json")]
        if optimizer == "oneshot":
            command += ["--stages", "init"]
        else:
            command += ["--stages", "init,blockwise,global", "--optimizer", optimizer, "--steps", str(args.steps)]
        with open(folder / f"{tag(spec, optimizer)}.log", "w") as log:
            subprocess.run(["nice", "-n", "19"] + command, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
        print("done", spec, optimizer, flush=True)


def verdicts(history):
    """Per distillation stage: kept (its loss dropped) or rejected (undone: the update made it worse)."""
    marks = {"blockwise": [], "global": []}
    for entry in history:
        if "before" in entry:
            marks[entry["unit"].split("/")[0]].append("✓" if entry["after"] < entry["before"] else "✗")
    return "".join(marks["blockwise"]) or "–", "".join(marks["global"]) or "–"


def table(args):
    folder = Path(args.dir)
    rows, reference, steps = [], None, set()
    for k, spec, optimizer in configurations(args.depths):
        path = folder / f"{tag(spec, optimizer)}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        reference = reference or data
        r = data["results"]["student"]
        if optimizer != "oneshot":
            steps.add(data["args"]["steps"])
        ranks = sorted({tuple(o.values())[0] for _, o in data["plan"].values()})
        option = f"depth {k}" if spec.startswith("spectral") else "rank " + "/".join(map(str, ranks))
        blockwise, global_ = verdicts(data["history"])
        rows.append(f"| {k} | {spec.split(':')[0]} ({option}) | {optimizer} | {r['linear_macs_ratio']:.3f} | "
                    f"{r['params'] / 1e6:.2f} M | {r['cos_mean']:.4f} | {r['cos_min']:.4f} | {r['top1']:.3f} | "
                    f"{r['top5']:.3f} | {r['spearman']:.3f} | {r['cpu_speedup']:.2f}× | {blockwise} | {global_} |")
    if reference is None:
        sys.exit(f"no results in {folder}")
    t, q = reference["results"]["teacher"], reference["results"]["ORT int8"]
    print(f"""# MiniLM: pure spectral Pareto (issue 12)

paraphrase-MiniLM-L3-v2 (registry wheel), every one of the {reference['targets']} encoder Linears replaced by the
same student (`bench/recast_minilm.py --uniform ...`, no planner). Calibration/distillation on
{reference['calibration']['sentences']} sentences of `bench/data/sentences_calib.txt`, all figures on the
{reference['evaluation']['sentences']} disjoint sentences of `bench/data/sentences_eval.txt` (sentence embedding,
output 461). "oneshot" = stage init only (spectral: ALS fit on the activations; low rank: activation-aware
SVD); "newton"/"adamw" = init, block-wise distillation (each block's output, fed by the student's earlier
blocks), then global distillation (cosine loss on the embedding), {"/".join(map(str, sorted(steps)))} optimizer steps
per block and for the global stage, default learning rates (DiagonalNewton 1 with line search / 0.5 global;
AdamW 1e-3 / 5e-4). Low rank: per layer the rank with depth-K spectral's multiply-adds on that layer
(`lowrank:spectralK`: 384→384 rank 9K, 384↔1536 rank 16K), so the MACs fractions match.

MACs = Linear multiply-adds ÷ the teacher's; params = the whole model (the 11.7 M word embeddings
included; teacher {t['params'] / 1e6:.2f} M). Speed-up = dreidel teacher CPU time ÷ student CPU time (process_time,
1 thread, medians of {reference['args']['repeats']} interleaved runs over all evaluation batches, the whole model incl.
attention/embeddings; shared machine under nice). Kept: ✓ the stage's update lowered its loss and was kept,
✗ it raised it and was undone (the pipeline keeps the better of before/after) — one mark per block for
block-wise. ORT dynamic int8 on the same sentences: cosine {q['cos_mean']:.4f} (min {q['cos_min']:.4f}),
top-1 {q['top1']:.3f}, top-5 {q['top5']:.3f}, Spearman {q['spearman']:.3f}, CPU speed-up {q['cpu_speedup']:.2f}× over the
dreidel teacher (ORT fp32 {reference['results']['ORT fp32']['cpu_speedup']:.2f}×).

| K | family | optimizer | MACs | params | cos mean | cos min | top-1 | top-5 | Spearman | speed-up | kept: block-wise | global |
|---|---|---|---|---|---|---|---|---|---|---|---|---|""")
    print("\n".join(rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("run", "table"))
    parser.add_argument("--dir", default="/tmp/minilm_pareto")
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    return run(args) if args.command == "run" else table(args)


if __name__ == "__main__":
    main()
