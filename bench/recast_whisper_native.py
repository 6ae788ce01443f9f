"""Recast the native Whisper tiny.en (encoder Linears + the decoder's cross-attention k/v, the layers run
on 1500 rows) with dreidel.recast, distil for transcript identity, and compare with int8 onnxruntime.

    python bench/recast_whisper_native.py train NAME --families lowrank spectral hybrid --budget 0.4
    python bench/recast_whisper_native.py int8
    python bench/recast_whisper_native.py speed NAME [NAME ...]      # normal priority; prints the table

Split: calibration/distillation clips calib/clip_000 .. clip_{--calib - 1}; evaluation clips clip_060 ..
clip_099 (never calibrated, planned or tuned on). The teacher is the dense native model; "identical"
means the student's greedy ids equal the dense native model's greedy ids on the clip (index.json's
ORT teacher ids are compared too). Every student is distilled: init (one-shot closed-form fit, shown as
the starting point only), refit, block-wise (DiagonalNewton), then global = the decoder's teacher-forced
logit KL on the calibration clips' teacher tokens (the model's output with decoder_input_ids = teacher
ids, `distill(global_loss="kl")`). Students and results go to --out (default /tmp/wrecast), never the repo.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dreidel  # noqa: E402
from dreidel import no_grad, recast  # noqa: E402
from dreidel.audio import log_mel_spectrogram  # noqa: E402
from dreidel.models.whisper import Whisper  # noqa: E402
from dreidel.recast.planning import median_latencies  # noqa: E402

ROOT = Path(os.environ.get("DREIDEL_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "onnx/whisper-tiny-en"
EVAL = range(60, 100)


def clips():
    return {c["file"]: c for c in json.loads((ROOT / "calib/index.json").read_text())["clips"]}


def wav(i):
    return str(ROOT / f"calib/clip_{i:03d}.wav")


def features(indices):
    return log_mel_spectrogram([wav(i) for i in indices])


def greedy_ids(model, feats, batch=8):
    out = []
    for s in range(0, len(feats), batch):
        out += model.generate(feats[s:s + batch])
    return out


def is_target(name):
    return name.startswith("model.encoder.") or name.endswith(("encoder_attn.k_proj", "encoder_attn.v_proj"))


def identity(name, student_ids, teacher_ids, index):
    """Fraction of eval clips with the dense model's ids; the flips with their teacher margins."""
    flips = []
    for i, s, t in zip(EVAL, student_ids, teacher_ids):
        if s != t:
            flips.append({"clip": i, "margin": index[f"clip_{i:03d}.wav"]["teacher_min_top2_logit_margin"]})
    row = {"name": name, "identical": 1 - len(flips) / len(teacher_ids), "flips": flips}
    print(json.dumps(row), flush=True)
    return row


def macs(model, targets):
    return sum(recast.STUDENTS["dense"].multiply_adds(model.get_submodule(t)) for t in targets)


def train(args):
    dreidel.set_num_threads(args.threads)
    out = Path(args.out) / args.name
    out.mkdir(parents=True, exist_ok=True)
    index = clips()
    teacher = Whisper.load(ROOT)
    calib_idx = list(range(args.calib))
    t0 = time.time()
    calib_feats, eval_feats = features(calib_idx), features(EVAL)
    cache = Path(args.out) / f"teacher_ids_{args.calib}_{len(EVAL)}.json"  # the dense model's ids, reused by reruns
    if cache.exists():
        teacher_calib, teacher_eval = json.loads(cache.read_text())
    else:
        teacher_calib, teacher_eval = greedy_ids(teacher, calib_feats), greedy_ids(teacher, eval_feats)
        cache.write_text(json.dumps([teacher_calib, teacher_eval]))
    ort_same = sum(t == index[f"clip_{i:03d}.wav"]["teacher_token_ids"] for i, t in zip(EVAL, teacher_eval))
    print(f"teacher ids {time.time() - t0:.0f}s; dense native == index.json ids on {ort_same}/{len(EVAL)} eval clips",
          flush=True)
    batches = [{"input_features": calib_feats[j:j + 1], "decoder_input_ids": np.array([ids[:-1]], np.int64)}
               for j, ids in enumerate(teacher_calib)]
    blocks = recast.find_blocks(teacher)
    targets = [t for t in recast.find_targets(teacher, blocks) if is_target(t)]
    t0 = time.time()
    calib = recast.calibrate(teacher, batches, targets, blocks, memory_budget=2 << 30, spill_dir=str(out / "spill"),
                             holdout=args.holdout)
    print(f"calibrate {time.time() - t0:.0f}s: {len(blocks)} blocks, {len(targets)} targets, fit clips "
          f"{[calib_idx[i] for i in calib.fit_indices]}, held-out (planner only) "
          f"{[calib_idx[i] for i in calib.holdout_indices]}", flush=True)
    t0 = time.time()
    if (out / "plan.json").exists():  # a rerun (e.g. after a crash) reuses the measured plan
        the_plan = recast.Plan.load(out / "plan.json", teacher)
    elif args.families == ["uniform-lowrank"]:  # same rank fraction everywhere (no planner)
        shapes = {t: [teacher.get_submodule(t).in_features, teacher.get_submodule(t).out_features] for t in targets}
        the_plan = recast.Plan({t: {"family": "lowrank", "options": {"rank": max(1, round(
            args.budget * a * b / (a + b)))}} for t, (a, b) in shapes.items()},
            {"fingerprint": calib.fingerprint, "shapes": shapes})
    elif args.families[0].startswith("uniform-spectral:"):  # DeepSpectralLinear depth K everywhere (no planner)
        depth = int(args.families[0].split(":")[1])
        shapes = {t: [teacher.get_submodule(t).in_features, teacher.get_submodule(t).out_features] for t in targets}
        the_plan = recast.Plan({t: {"family": "spectral", "options": {"depth": depth}} for t in targets},
                               {"fingerprint": calib.fingerprint, "shapes": shapes})
    else:
        the_plan = recast.plan(teacher, calib, families=tuple(args.families), budget=args.budget,
                               budget_kind=args.budget_kind, sensitivity_batches=args.sensitivity_batches)
    the_plan.save(out / "plan.json")
    mix = {}
    for v in the_plan.layers.values():
        mix[v["family"]] = mix.get(v["family"], 0) + 1
    print(f"plan {time.time() - t0:.0f}s {mix}: " + ", ".join(
        f"{k.replace('model.', '').replace('layers.', 'L')}={v['family']}{v.get('options', {})}"
        f"/s{v.get('sensitivity', 0):.2f}" for k, v in the_plan.layers.items()), flush=True)
    result = {"name": args.name, "families": args.families, "budget": args.budget, "mix": mix,
              "calib_clips": args.calib, "fit_clips": [calib_idx[i] for i in calib.fit_indices],
              "eval_clips": [EVAL[0], EVAL[-1]], "macs_ratio": None}
    student, _ = recast.distill(teacher, the_plan, calib, stages=("init",))
    result["macs_ratio"] = macs(student, targets) / macs(teacher, targets)
    result["init"] = identity(f"{args.name} init (one-shot)", greedy_ids(student, eval_feats), teacher_eval, index)
    t0 = time.time()
    steps = {"blockwise": args.block_steps, "global": args.global_steps}
    student, history = recast.distill(teacher, the_plan, calib, steps=steps, optimizer=args.optimizer,
                                      global_loss="kl", checkpoint_dir=str(out / "ckpt"), resume=True,
                                      lr_by_block_kind={"global": args.global_lr} if args.global_lr else None)
    result["distill_seconds"] = time.time() - t0
    result["history"] = history
    print(f"distil {time.time() - t0:.0f}s", json.dumps(history), flush=True)
    result["distilled"] = identity(f"{args.name} distilled", greedy_ids(student, eval_feats), teacher_eval, index)
    dreidel.save(student.state_dict(), str(out / "student.safetensors"))
    (out / "result.json").write_text(json.dumps(result, indent=1))


def ort_greedy(encoder, decoder, feats, config):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from whisper import greedy_graph
    return greedy_graph(lambda f: encoder.run(None, {"input_features": f})[0],
                        lambda ids, h: decoder.run(None, {"input_ids": ids, "encoder_hidden_states": h})[0],
                        feats, config)


def int8_sessions(args):
    from dreidel.recast.int8 import quantize_int8
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from whisper import ort_session
    paths = [quantize_int8(ROOT / f"{p}_model.onnx", Path(args.out) / f"int8/{p}_model.int8.onnx")
             for p in ("encoder", "decoder")]
    return [ort_session(p, args.threads) for p in paths]


def int8(args):
    dreidel.set_num_threads(args.threads)
    index = clips()
    teacher = Whisper.load(ROOT)
    eval_feats = features(EVAL)
    teacher_eval = greedy_ids(teacher, eval_feats)
    encoder, decoder = int8_sessions(args)
    ids = [ort_greedy(encoder, decoder, eval_feats[j:j + 1], teacher.config) for j in range(len(EVAL))]
    row = identity("int8 onnxruntime (dynamic)", ids, teacher_eval, index)
    (Path(args.out) / "int8/result.json").write_text(json.dumps(row, indent=1))


def linear_seconds(model, targets, rows=1500, repeats=7):
    runs = []
    for t in targets:
        layer = model.get_submodule(t)
        x = dreidel.Tensor(np.random.default_rng(0).standard_normal((1, rows, layer.in_features)).astype(np.float32))

        def run(layer=layer, x=x):
            with no_grad():
                layer(x)
        runs.append(run)
    return median_latencies(runs, repeats=repeats)


def speed(args):
    """Normal priority, `--threads` for everything: per-target Linear time (interleaved medians, summed)
    and end-to-end transcription of a few eval clips (WAV -> ids, interleaved medians)."""
    dreidel.set_num_threads(args.threads)
    teacher = Whisper.load(ROOT)
    targets = [t for t in recast.find_targets(teacher, recast.find_blocks(teacher)) if is_target(t)]
    models, results = {"dense": teacher}, {}
    for name in args.names:
        folder = Path(args.out) / name
        student = recast.Plan.load(folder / "plan.json", teacher).build(teacher)
        student.load_state_dict(dreidel.load(str(folder / "student.safetensors")))
        models[name] = student
        results[name] = json.loads((folder / "result.json").read_text())
    encoder, decoder = int8_sessions(args)
    # Linear time: all models' targets interleaved in one median_latencies call
    order = [(n, t) for n in models for t in targets]
    runs = []
    for n, t in order:
        layer = models[n].get_submodule(t)
        x = dreidel.Tensor(np.random.default_rng(0).standard_normal((1, 1500, layer.in_features)).astype(np.float32))

        def run(layer=layer, x=x):
            with no_grad():
                layer(x)
        runs.append(run)
    seconds = median_latencies(runs, repeats=args.repeats)
    linear = {n: sum(s for (m, _), s in zip(order, seconds) if m == n) for n in models}
    clip_paths = [wav(i) for i in args.clips]
    functions = {n: (lambda m=m: [m.transcribe(p)["token_ids"] for p in clip_paths]) for n, m in models.items()}
    functions["int8"] = lambda: [ort_greedy(encoder, decoder, log_mel_spectrogram([p]), teacher.config)
                                 for p in clip_paths]
    from whisper import ort_session
    fp32 = [ort_session(ROOT / f"{p}_model.onnx", args.threads) for p in ("encoder", "decoder")]
    functions["ort fp32"] = lambda: [ort_greedy(*fp32, log_mel_spectrogram([p]), teacher.config) for p in clip_paths]
    from dreidel.recast.cli import interleaved_medians
    e2e = interleaved_medians(functions, args.repeats, "transcribe")
    print(f"\nthreads {args.threads}; transcription of clips {args.clips} (WAV -> greedy ids); load "
          f"{os.getloadavg()[0]:.1f}; dense Linear (targets) {linear['dense'] * 1e3:.1f} ms, dense transcription "
          f"{e2e['dense'] * 1e3 / len(clip_paths):.0f} ms/clip")
    print("| student | family mix | Linear MACs ÷ dense | Linear time ÷ dense | transcription time ÷ dense | "
          "identical ids, init | identical ids, distilled | flips after (margin) |")
    print("|---|---|---|---|---|---|---|---|")
    for n, r in results.items():
        flips = ", ".join(f"{f['clip']:03d} ({f['margin']:.3f})" for f in r["distilled"]["flips"])
        print(f"| {n} | {r['mix']} | {r['macs_ratio']:.3f} | {linear[n] / linear['dense']:.3f} | "
              f"{e2e[n] / e2e['dense']:.3f} | {100 * r['init']['identical']:.1f} % | "
              f"{100 * r['distilled']['identical']:.1f} % | {flips} |")
    int8_file = Path(args.out) / "int8/result.json"
    if int8_file.exists():
        r = json.loads(int8_file.read_text())
        flips = ", ".join(f"{f['clip']:03d} ({f['margin']:.3f})" for f in r["flips"])
        print(f"| int8 ORT dynamic | int8 weights | — | — | {e2e['int8'] / e2e['dense']:.3f} | — | "
              f"{100 * r['identical']:.1f} % | {flips} |")
    print(f"| ORT fp32 (same greedy loop, reference) | dense | 1 | — | {e2e['ort fp32'] / e2e['dense']:.3f} | — | — | |")
    print(json.dumps({"linear_seconds": linear, "transcribe_seconds": e2e}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["train", "int8", "speed"])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--families", nargs="+", default=["lowrank", "spectral", "hybrid"],
                        help="planner families, or one of uniform-lowrank (rank = budget·ab/(a+b) everywhere), "
                             "uniform-spectral:K (depth K everywhere)")
    parser.add_argument("--budget", type=float, default=0.4)
    parser.add_argument("--budget-kind", default="latency")
    parser.add_argument("--calib", type=int, default=24, help="clips 000..calib-1 calibrate/distil")
    parser.add_argument("--holdout", type=float, default=0.2, help="of the calibration clips, for the planner")
    parser.add_argument("--sensitivity-batches", type=int, default=2)
    parser.add_argument("--block-steps", type=int, default=8)
    parser.add_argument("--global-steps", type=int, default=24)
    parser.add_argument("--global-lr", type=float, default=None)
    parser.add_argument("--optimizer", default="newton")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clips", type=int, nargs="+", default=[60, 61, 62])
    parser.add_argument("--out", default="/tmp/wrecast")
    parser.add_argument("--eval", type=int, default=40, help="eval clips 060..060+eval-1 (smoke tests: fewer)")
    args = parser.parse_args()
    global EVAL
    EVAL = range(60, 60 + args.eval)
    if args.command == "train":
        if len(args.names) != 1:
            parser.error("train takes one NAME")
        args.name = args.names[0]
        return train(args)
    return int8(args) if args.command == "int8" else speed(args)


if __name__ == "__main__":
    main()
