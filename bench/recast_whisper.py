"""Recast the imported Whisper tiny.en encoder with dreidel.recast and measure it on held-out clips.

    python bench/recast_whisper.py [--calib 16] [--eval 16] [--budget 0.5] [--pareto]
    python bench/recast_whisper.py --transcribe --out DIR   # greedy ids of the student saved in DIR

Calibration: the first `--calib` clips of calib/ (clip_000...); evaluation: the last `--eval` clips
(clip_099 backwards), never calibrated on. Log-mel features are computed here in numpy exactly as
MANIFEST.md describes (checked against clips/clip_0_logmel.npy at start). Reported: encoder output
relative error and mean per-frame cosine on the eval clips, Linear multiply-adds, the Linear layers'
measured time (sum over targets at their real shapes), end-to-end encoder latency (interleaved medians,
same threads; the machine is shared).
"""
import argparse
import json
import os
import sys
import time
import wave
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dreidel  # noqa: E402
from dreidel import no_grad, recast  # noqa: E402
from dreidel.recast.planning import median_latencies  # noqa: E402
from importers.onnx_to_dreidel import load  # noqa: E402

ROOT = Path(os.environ.get("DREIDEL_SHARED", Path(__file__).resolve().parents[3] / "shared")) / "onnx/whisper-tiny-en"


def log_mel(path, filters):
    with wave.open(str(path), "rb") as f:
        samples = np.frombuffer(f.readframes(f.getnframes()), dtype=np.int16).astype(np.float32) / 32768
    audio = np.zeros(480000, dtype=np.float32)
    audio[:min(len(samples), 480000)] = samples[:480000]
    padded = np.pad(audio, 200, mode="reflect")
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)).astype(np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(padded, 400)[::160] * window
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    mel = np.log10(np.maximum(filters @ power.T, 1e-10))[:, :-1]
    mel = np.maximum(mel, mel.max() - 8.0)
    return ((mel + 4.0) / 4.0).astype(np.float32)[None]


def encoder_error(student, teacher_outputs, batches):
    errors, cosines = [], []
    with no_grad():
        for batch, ref in zip(batches, teacher_outputs):
            out = student(**batch).numpy()
            errors.append(np.linalg.norm(out - ref) / np.linalg.norm(ref))
            a, b = out.reshape(-1, out.shape[-1]), ref.reshape(-1, ref.shape[-1])
            cosines.append(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))
    return float(np.mean(errors)), float(np.mean(cosines))


def linear_time(model, calib, targets):
    """Σ over targets of the measured forward time at the real shape (interleaved medians)."""
    runs = []
    for t in targets:
        layer = model.get_submodule(t)
        x = dreidel.Tensor(np.random.default_rng(0).standard_normal((calib.rows[t], layer.in_features)).astype(np.float32))
        def run(layer=layer, x=x):
            with no_grad():
                layer(x)
        runs.append(run)
    return sum(median_latencies(runs, repeats=5))


def measure(name, teacher, student, calib, eval_batches, teacher_eval, results, e2e=True):
    err, cos = encoder_error(student, teacher_eval, eval_batches)
    macs = sum(recast.STUDENTS["dense"].multiply_adds(student.get_submodule(t)) for t in calib.targets)
    dense_macs = sum(recast.STUDENTS["dense"].multiply_adds(teacher.get_submodule(t)) for t in calib.targets)
    row = {"name": name, "eval_rel_error": err, "eval_cosine": cos, "linear_macs_ratio": macs / dense_macs,
           "params": student.parameter_count()}
    tt, ts = linear_time(teacher, calib, calib.targets), linear_time(student, calib, calib.targets)
    row["linear_time_cut"] = tt / ts
    if e2e:
        batch = eval_batches[0]
        def run(m):
            def go():
                with no_grad():
                    m(**batch)
            return go
        t_teacher, t_student = median_latencies([run(teacher), run(student)], repeats=3, min_seconds=0.0)
        row["e2e_speedup"] = t_teacher / t_student
    results.append(row)
    print(json.dumps(row), flush=True)


def transcription_check(args, filters):
    """Greedy ids of the distilled student (plan.json + the last distillation checkpoint in --out) with
    the teacher's decoder, against the teacher's ids from calib/index.json, on the eval clips; and
    end-to-end transcription time of teacher vs student on one clip (interleaved medians)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from transcribe_whisper import transcribe
    index = {c["file"]: c for c in json.loads((ROOT / "calib/index.json").read_text())["clips"]}
    generation = json.loads((ROOT / "generation_config.json").read_text())
    teacher, decoder = load(ROOT / "encoder_model.onnx"), load(ROOT / "decoder_model.onnx")
    the_plan = recast.Plan.load(f"{args.out}/plan.json", teacher)
    student = the_plan.build(teacher)
    state = json.loads(Path(f"{args.out}/ckpt-plan/state.json").read_text())
    student.load_state_dict(dreidel.load(f"{args.out}/ckpt-plan/{state['weights_file']}"))
    wavs = sorted((ROOT / "calib").glob("clip_*.wav"))[-args.eval:]
    same, teacher_same = 0, 0
    for w in wavs:
        features = log_mel(w, filters)
        ids = transcribe(student, decoder, features, generation)
        teacher_ids = transcribe(teacher, decoder, features, generation)
        same += ids == index[w.name]["teacher_token_ids"]
        teacher_same += teacher_ids == index[w.name]["teacher_token_ids"]
        print(w.name, "student==teacher ids" if ids == index[w.name]["teacher_token_ids"] else
              f"differs: {ids} vs {index[w.name]['teacher_token_ids']}", flush=True)
    features = log_mel(wavs[0], filters)
    runs = [lambda m=m: transcribe(m, decoder, features, generation) for m in (teacher, student)]
    t_teacher, t_student = median_latencies(runs, repeats=3, min_seconds=0.0)
    print(json.dumps({"eval_clips": len(wavs), "student_identical_ids": same,
                      "dreidel_teacher_identical_ids": teacher_same,
                      "transcription_seconds_teacher": t_teacher, "transcription_seconds_student": t_student,
                      "transcription_speedup": t_teacher / t_student}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calib", type=int, default=16)
    parser.add_argument("--eval", type=int, default=16)
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--budget-kind", default="latency")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per block and global")
    parser.add_argument("--pareto", action="store_true", help="also the pure-spectral Pareto (closed-form + refit)")
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", default="/tmp/recast_whisper")
    parser.add_argument("--optimizers", type=int, default=None, metavar="K",
                        help="instead of the plan: DSL K everywhere, init+refit, then block-wise + global with "
                             "DiagonalNewton and with AdamW (and low rank at the same multiply-adds)")
    parser.add_argument("--transcribe", action="store_true",
                        help="only decode the eval clips with the student saved in --out by an earlier run")
    args = parser.parse_args()
    filters = np.load(ROOT / "mel_filters.npy", allow_pickle=False)
    if args.transcribe:
        return transcription_check(args, filters)
    check = log_mel(ROOT / "clips/clip_0.wav", filters)
    print("log-mel vs clip_0_logmel.npy max abs diff",
          float(np.abs(check - np.load(ROOT / "clips/clip_0_logmel.npy", allow_pickle=False)).max()))
    wavs = sorted((ROOT / "calib").glob("clip_*.wav"))
    calib_batches = [{"input_features": log_mel(w, filters)} for w in wavs[:args.calib]]
    eval_files = wavs[-args.eval:]
    eval_batches = [{"input_features": log_mel(w, filters)} for w in eval_files]
    print(f"calibration clips {wavs[0].name}..{wavs[args.calib - 1].name}, evaluation {eval_files[0].name}.."
          f"{eval_files[-1].name}; threads {dreidel.get_num_threads()}; load {os.getloadavg()[0]:.1f}")
    teacher = load(ROOT / "encoder_model.onnx")
    with no_grad():
        teacher_eval = [teacher(**b).numpy() for b in eval_batches]
    t0 = time.time()
    calib = recast.calibrate(teacher, calib_batches, memory_budget=1 << 30, spill_dir=f"{args.out}/spill")
    print(f"calibrate {time.time() - t0:.0f}s; blocks {calib.blocks}; {len(calib.targets)} targets")
    results = []
    if args.optimizers:
        shapes = {t: [teacher.get_submodule(t).in_features, teacher.get_submodule(t).out_features]
                  for t in calib.targets}
        info = {"fingerprint": calib.fingerprint, "shapes": shapes}
        spectral = recast.Plan({t: {"family": "spectral", "options": {"depth": args.optimizers}}
                                for t in calib.targets}, info)
        probe = spectral.build(teacher)
        ranks = recast.Plan({t: {"family": "lowrank", "options": {"rank": max(1, round(
            probe.get_submodule(t).multiply_adds() / sum(shapes[t])))}} for t in calib.targets}, info)
        low, _ = recast.distill(teacher, ranks, calib, stages=("init", "refit"))
        measure(f"lowrank at K={args.optimizers} macs: init+refit", teacher, low, calib, eval_batches, teacher_eval,
                results, e2e=False)
        for optimizer in ("newton", "adamw"):
            t0 = time.time()
            student, history = recast.distill(teacher, spectral, calib, optimizer=optimizer, steps=args.steps,
                                              lr_by_block_kind={"layers": 1.0 if optimizer == "newton" else 1e-3},
                                              checkpoint_dir=f"{args.out}/ckpt-K{args.optimizers}-{optimizer}")
            print(f"{optimizer} {time.time() - t0:.0f}s", json.dumps(history), flush=True)
            measure(f"spectral K={args.optimizers} {optimizer}: refit+blockwise+global", teacher, student, calib,
                    eval_batches, teacher_eval, results, e2e=optimizer == "newton")
        json.dump(results, open(f"{args.out}/results.json", "w"), indent=1)
        return
    recast.students.Spectral.depths = tuple(args.depths)
    t0 = time.time()
    the_plan = recast.plan(teacher, calib, families=("lowrank", "spectral"), budget=args.budget,
                           budget_kind=args.budget_kind, sensitivity_batches=1)
    the_plan.save(f"{args.out}/plan.json")
    print(f"plan {time.time() - t0:.0f}s: " + ", ".join(f"{k.replace('layers.', 'L')}={v['family']}{v['options']}"
                                                       for k, v in the_plan.layers.items()))
    print("plan totals", json.dumps(the_plan.totals))
    student, history = recast.distill(teacher, the_plan, calib, stages=("init",))
    measure(f"plan {args.budget_kind} {args.budget}: init", teacher, student, calib, eval_batches, teacher_eval, results)
    t0 = time.time()
    student, history = recast.distill(teacher, the_plan, calib, steps=args.steps,
                                      checkpoint_dir=f"{args.out}/ckpt-plan", resume=True)
    print(f"distil {time.time() - t0:.0f}s", json.dumps(history))
    measure(f"plan {args.budget_kind} {args.budget}: distilled", teacher, student, calib, eval_batches, teacher_eval,
            results)
    if args.pareto:
        for depth in args.depths:
            layers = {t: {"family": "spectral", "options": {"depth": depth}} for t in calib.targets}
            spectral_plan = recast.Plan(layers, the_plan.teacher)
            student, history = recast.distill(teacher, spectral_plan, calib, stages=("init", "refit"))
            measure(f"spectral K={depth}: init+refit", teacher, student, calib, eval_batches, teacher_eval, results,
                    e2e=False)
            macs = sum(recast.STUDENTS["dense"].multiply_adds(student.get_submodule(t)) for t in calib.targets)
            ranks = {}
            for t in calib.targets:
                layer = teacher.get_submodule(t)
                ranks[t] = {"family": "lowrank", "options": {"rank": max(1, round(
                    student.get_submodule(t).multiply_adds() / (layer.in_features + layer.out_features)))}}
            low, _ = recast.distill(teacher, recast.Plan(ranks, the_plan.teacher), calib, stages=("init", "refit"))
            measure(f"lowrank at K={depth} macs: init+refit", teacher, low, calib, eval_batches, teacher_eval, results,
                    e2e=False)
    json.dump(results, open(f"{args.out}/results.json", "w"), indent=1)


if __name__ == "__main__":
    main()
