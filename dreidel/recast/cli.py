"""`dreidel recast` and `dreidel evaluate`: the recasting pipeline from the command line.

    dreidel recast TEACHER --data CALIB --budget 0.5 --families lowrank,spectral --out DIR
                   [--eval-data EVAL] [--resume] [--threads N] [--tokenizer tokenizer.json]
                   [--workers N | --ray auto|ADDRESS] [--forcing student|teacher]
    dreidel evaluate TEACHER STUDENT_DIR --data EVAL [--threads N]

TEACHER is an ONNX file, a GGUF file (with the GGUF importer) or a saved dreidel model (a JSON file
{"class": "dreidel.….Class", "config": {...}} beside a `.safetensors` of the same name). DIR receives
`data.json` (which samples calibrate and which evaluate), `plan.json` (editable; `--resume` keeps
it), `checkpoints/` (one atomic checkpoint per stage and block), `student.safetensors` and
`report.json`/`report.md`. Ctrl-C stops at once and leaves every finished step on disk:
the same command with `--resume` continues from there.

Scale-out: `--workers N` runs the block-wise stage as independent teacher-forced block tasks in N
local processes, `--ray auto|ADDRESS` as Ray tasks (`pip install "dreidel[ray]"`; "auto" joins a
running cluster or starts a local one); each block is checkpointed as it finishes
(`checkpoints/blocks-*/`), and `--threads` then means threads per task (default 1, so the student
is the same bits whatever N is).

A student is saved as its plan plus its state dict; loading rebuilds the teacher's module tree with
the planned layers replaced (`Plan.build(teacher)`) and loads the weights into it.
"""
import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np

import dreidel
from dreidel import nn
from dreidel.progress import progress
from dreidel.recast.data import DataError, load_data
from dreidel.recast.executor import ExecutorError
from dreidel.serialization import atomic_write_bytes

STUDENT_WEIGHTS = "student.safetensors"
PLAN_FILE = "plan.json"
INTERRUPTED = 130  # the shell's code for SIGINT


class TeacherError(ValueError):
    """A teacher file that cannot be loaded: names the file and the reason."""


# -- teachers --------------------------------------------------------------------------------------
def load_teacher(path):
    """(module in eval mode, kind) for an ONNX file, a GGUF file or a saved dreidel model."""
    path = Path(path)
    if not path.exists():
        raise TeacherError(f"{path}: teacher not found")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from importers.onnx_to_dreidel import load
        return load(path), "onnx"
    if suffix == ".gguf":
        return _load_gguf(path), "gguf"
    if suffix in (".json", ".safetensors") or path.is_dir():
        return load_dreidel_model(path), "dreidel"
    raise TeacherError(f"{path}: unknown teacher type (an .onnx or .gguf file, or a saved dreidel "
                       f"model's .json/.safetensors)")


def _load_gguf(path):
    try:
        from importers.gguf_to_dreidel import load_llama
    except ImportError as error:
        raise TeacherError(f"{path}: GGUF teachers need the GGUF importer and dreidel.models.llama, "
                           f"which this build does not have ({error})") from None
    return load_llama(path).eval()


def save_dreidel_model(model, path, class_path, config):
    """Save a native model as `path.json` (its class and constructor arguments) + `path.safetensors`."""
    path = Path(path).with_suffix("")
    dreidel.save(model.state_dict(), path.with_suffix(".safetensors"))
    payload = {"class": class_path, "config": config}
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(payload, indent=2).encode())


def load_dreidel_model(path):
    """A native model saved as `NAME.json` ({"class", "config"}) + `NAME.safetensors` (weights).

    Only classes inside the `dreidel` package are constructed: the file names a class, it never
    runs code of its own.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.json"))
        if len(found) != 1:
            raise TeacherError(f"{path}: expected exactly one model .json in the folder, found {len(found)}")
        path = found[0]
    description, weights = path.with_suffix(".json"), path.with_suffix(".safetensors")
    try:
        payload = json.loads(description.read_text())
        class_path, config = payload["class"], payload.get("config", {})
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise TeacherError(f"{description}: not a saved dreidel model description ({error})") from None
    module_name, _, class_name = class_path.rpartition(".")
    if not (module_name == "dreidel" or module_name.startswith("dreidel.")):
        raise TeacherError(f"{description}: class {class_path!r} is outside the dreidel package")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise TeacherError(f"{description}: cannot find class {class_path!r} ({error})") from None
    model = cls(**config)
    state = dreidel.load(weights)
    model.load_state_dict({k: np.asarray(v, dtype=np.float32) if np.asarray(v).dtype == np.float16 else v
                           for k, v in state.items()})
    return model.eval()


class SelectOutput(nn.Module):
    """The teacher with one of its outputs selected (the one distillation and quality are about):
    e.g. MiniLM's graph returns token ids, mask, token embeddings and the sentence embedding."""

    def __init__(self, model, index):
        super().__init__()
        self.model, self.index = model, index
        self.input_names = getattr(model, "input_names", None)

    def forward(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        return out[self.index] if isinstance(out, (tuple, list)) else out


def select_output(model, output=None):
    """Wrap a multi-output imported graph so it returns only output `output` (a graph output name or
    an index); None keeps the model as it is (recasting then uses its first output)."""
    names = getattr(model, "output_names", None)
    if not names or len(names) == 1:
        return model
    if output is None:
        return model
    if isinstance(output, str) and not output.lstrip("-").isdigit():
        if output not in names:
            raise TeacherError(f"the teacher has no output {output!r}; its outputs are {names}")
        index = names.index(output)
    else:
        index = int(output)
        if not -len(names) <= index < len(names):
            raise TeacherError(f"output index {index} out of range for outputs {names}")
    return SelectOutput(model, index)


# -- students --------------------------------------------------------------------------------------
def save_student(student, the_plan, folder, output=None):
    """Write the student's weights, its plan and the teacher output it follows into `folder` (atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    the_plan.save(folder / PLAN_FILE)
    atomic_write_bytes(folder / "student.json", json.dumps({"output": output}).encode())
    dreidel.save(student.state_dict(), folder / STUDENT_WEIGHTS, metadata={"format": "dreidel-student"})


def load_student(teacher, folder):
    """(student, plan, teacher): the saved student rebuilt on `teacher` (the plan's layers replaced,
    its weights loaded), and the teacher with the output the student follows selected."""
    from dreidel import recast
    folder = Path(folder)
    for name in (PLAN_FILE, STUDENT_WEIGHTS):
        if not (folder / name).exists():
            raise TeacherError(f"{folder}: not a student folder (no {name}; `dreidel recast --out` writes it)")
    described = folder / "student.json"
    if described.exists():
        teacher = select_output(teacher, json.loads(described.read_text()).get("output"))
    the_plan = recast.Plan.load(folder / PLAN_FILE, teacher=teacher)
    state = dreidel.load(folder / STUDENT_WEIGHTS)
    student = the_plan.build(teacher, state=state)
    student.load_state_dict(state)
    return student.eval(), the_plan, teacher


# -- data ------------------------------------------------------------------------------------------
def load_samples(path, teacher, tokenizer=None, teacher_path=None):
    """The data at `path`, restricted to the inputs the teacher takes (for imported graphs)."""
    if tokenizer is None and getattr(teacher, "tokenizer", None) is not None:
        tokenizer = teacher.tokenizer  # a language model's own (GGUF): text becomes packed token rows
    if tokenizer is None and str(path).lower().endswith(".txt") and teacher_path is not None:
        beside = Path(teacher_path).parent / "tokenizer.json"
        tokenizer = beside if beside.exists() else None
    data = load_data(path, tokenizer=tokenizer)
    names = getattr(teacher, "input_names", None)
    return data.for_inputs(names) if names else data


def split_samples(data, eval_data, eval_fraction, seed):
    """(calibration, evaluation): the given evaluation set, or a seeded disjoint split of `data`."""
    if eval_data is not None:
        def named(samples):  # sentences and files; arrays have no name to compare
            return {str(i) for i in samples.items if isinstance(i, (str, Path))}
        overlap = named(data) & named(eval_data)
        if overlap:
            raise DataError(f"{len(overlap)} samples are in both the calibration and the evaluation data, "
                            f"e.g. {sorted(overlap)[0]!r}")
        calibration = data.subset(range(len(data)), "calibration")
        return calibration, eval_data.subset(range(len(eval_data)), "evaluation")
    return data.split(eval_fraction, seed)


def describe_split(calibration, evaluation, seed):
    """What `data.json` records: which samples calibrate and which evaluate."""
    def items(samples):
        return [str(item) if isinstance(item, (str, Path)) else f"#{i}" for i, item in enumerate(samples.items)]
    return {"seed": seed,
            "calibration": {"source": calibration.source, "count": len(calibration), "items": items(calibration)},
            "evaluation": {"source": evaluation.source, "count": len(evaluation), "items": items(evaluation)}}


# -- the int8 baseline -----------------------------------------------------------------------------
def int8_row(teacher_path, evaluation, batch_size, threads, out_dir, repeats=5, output_index=0):
    """The teacher under onnxruntime dynamic int8 beside onnxruntime float32, on the evaluation
    batches; None when onnxruntime is missing or the teacher is not ONNX."""
    from dreidel.recast.int8 import OrtModel, file_megabytes, int8_available, quantize_int8
    if not int8_available() or Path(teacher_path).suffix.lower() != ".onnx":
        return None
    quantized = quantize_int8(teacher_path, Path(out_dir) / "teacher.int8.onnx")
    fp32, int8 = OrtModel(teacher_path, threads), OrtModel(quantized, threads)
    batches = list(evaluation.batches(batch_size))
    reference = [fp32(**b) for b in batches]
    candidate = [int8(**b) for b in batches]
    quality = output_agreement([r[output_index] for r in reference], [c[output_index] for c in candidate])
    timings = interleaved_medians({"ort_fp32": lambda: [fp32(**b) for b in batches],
                                   "ort_int8": lambda: [int8(**b) for b in batches]}, repeats, "time int8 baseline")
    return {"model": str(quantized), "megabytes": file_megabytes(quantized),
            "fp32_megabytes": file_megabytes(teacher_path), "seconds": timings,
            "speedup_vs_ort_fp32": timings["ort_fp32"] / timings["ort_int8"], "quality": quality}


def output_agreement(reference, candidate):
    """Cosine, relative error and argmax agreement of candidate outputs against reference outputs
    (lists of arrays whose last axis is the feature/class axis)."""
    ref = np.concatenate([np.asarray(r, np.float64).reshape(-1, np.shape(r)[-1]) for r in reference])
    got = np.concatenate([np.asarray(c, np.float64).reshape(-1, np.shape(c)[-1]) for c in candidate])
    cosine = np.sum(ref * got, 1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1), 1e-30)
    return {"cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()),
            "relative_error": float(np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30)),
            "argmax_agreement": float(np.mean(ref.argmax(1) == got.argmax(1)))}


def interleaved_medians(functions, repeats, description="time"):
    """Median seconds of each function, the functions run in turn `repeats` times after a warm-up
    (interleaving spreads a shared machine's load over all of them alike)."""
    for run in functions.values():
        run()
    samples = {name: [] for name in functions}
    for _ in progress(range(repeats), description):
        for name, run in functions.items():
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return {name: float(np.median(times)) for name, times in samples.items()}


# -- commands --------------------------------------------------------------------------------------
def _recast_parser():
    parser = argparse.ArgumentParser(prog="dreidel recast", description=__doc__.split("\n\n")[0])
    parser.add_argument("teacher", help="an .onnx or .gguf file, or a saved dreidel model (.json)")
    parser.add_argument("--data", required=True, help="calibration data: sentences .txt, a folder of WAVs, images")
    parser.add_argument("--eval-data", help="evaluation data (default: a held-out part of --data)")
    parser.add_argument("--eval-fraction", type=float, default=0.2, help="held out of --data when no --eval-data")
    parser.add_argument("--budget", type=float, default=0.5, help="cost of the targets as a fraction of dense")
    parser.add_argument("--budget-kind", choices=("latency", "macs", "params"), default="latency")
    parser.add_argument("--families", default="lowrank,spectral", help="comma-separated student families")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tokenizer", help="tokenizer.json for text data (default: beside the teacher)")
    parser.add_argument("--output", help="the teacher output to distil and score (name or index; default: the first)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-samples", type=int, default=None, help="use at most this many calibration samples")
    parser.add_argument("--optimizer", choices=("newton", "adamw"), default="newton", help="block-wise stage")
    parser.add_argument("--global-optimizer", choices=("newton", "adamw"), default="adamw", help="global stage")
    parser.add_argument("--stages", default="init,refit,blockwise,global")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per block and global stage")
    parser.add_argument("--global-loss", choices=("mse", "cosine", "kl"), default="mse")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing repeats in the report")
    parser.add_argument("--memory-budget", type=float, default=1.0, help="GiB of calibration samples kept in memory")
    parser.add_argument("--workers", type=int, default=None,
                        help="run the block-wise stage in N local processes (teacher-forced block tasks)")
    parser.add_argument("--ray", metavar="auto|ADDRESS", default=None,
                        help="run the block-wise stage as Ray tasks: 'auto' (a running cluster, else a local "
                             "one) or a cluster address")
    parser.add_argument("--forcing", choices=("student", "teacher"), default=None,
                        help="what feeds each block in the block-wise stage: the student's earlier blocks (a "
                             "pipeline; the default without --workers/--ray) or the teacher's (independent tasks)")
    return parser


def block_executor(args):
    """(forcing, BlockExecutor or None) from --workers / --ray / --forcing / --threads."""
    from dreidel.recast.executor import BlockExecutor
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    if args.workers is not None and args.ray is not None:
        raise ValueError("give --workers (local processes) or --ray (a Ray cluster), not both")
    distributed = args.ray is not None or (args.workers or 1) > 1
    forcing = args.forcing or ("teacher" if distributed else "student")
    if distributed and forcing != "teacher":
        raise ValueError("--workers/--ray run independent block tasks, which needs --forcing teacher")
    if forcing == "student":
        return forcing, None
    if args.ray is not None:
        return forcing, BlockExecutor("ray", workers=args.workers, threads=args.threads,
                                      teacher_path=args.teacher, output=args.output, address=args.ray)
    if distributed:
        return forcing, BlockExecutor("process", workers=args.workers, threads=args.threads,
                                      teacher_path=args.teacher, output=args.output)
    return forcing, BlockExecutor("serial", threads=args.threads)


def recast_main(argv=None):
    """`dreidel recast`: calibrate, plan, distil, save and report; returns the exit code."""
    args = _recast_parser().parse_args(argv)
    if args.threads:
        dreidel.set_num_threads(args.threads)
    out = Path(args.out)
    try:
        args.forcing, args.executor = block_executor(args)
        return _recast(args, out)
    except KeyboardInterrupt:
        command = " ".join(["dreidel", "recast"] + [a for a in (argv if argv is not None else sys.argv[2:])
                                                    if a != "--resume"] + ["--resume"])
        print(f"\ninterrupted: finished steps are saved in {out}; continue with\n  {command}", file=sys.stderr)
        return INTERRUPTED
    except (DataError, TeacherError, ValueError, OSError, ExecutorError) as error:
        print(f"dreidel recast: {error}", file=sys.stderr)
        return 2


def _recast(args, out):
    from dreidel import recast
    out.mkdir(parents=True, exist_ok=True)
    teacher, kind = load_teacher(args.teacher)
    teacher = select_output(teacher, args.output)
    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    unknown = [f for f in families if f not in recast.STUDENTS]
    if unknown:
        raise ValueError(f"unknown student families {unknown}; known: {sorted(recast.STUDENTS)}")
    data = load_samples(args.data, teacher, args.tokenizer, args.teacher)
    eval_data = load_samples(args.eval_data, teacher, args.tokenizer, args.teacher) if args.eval_data else None
    calibration_set, evaluation_set = split_samples(data, eval_data, args.eval_fraction, args.seed)
    if args.max_samples:
        calibration_set = calibration_set.subset(range(min(args.max_samples, len(calibration_set))))
    atomic_write_bytes(out / "data.json", json.dumps(describe_split(calibration_set, evaluation_set, args.seed),
                                                     indent=1).encode())
    print(f"teacher {args.teacher} ({kind}); calibration: {len(calibration_set)} samples of "
          f"{calibration_set.source}; evaluation: {len(evaluation_set)} samples of {evaluation_set.source}")

    blocks = recast.find_blocks(teacher)
    targets = recast.find_targets(teacher, blocks)
    batches = progress(list(calibration_set.batches(args.batch_size)), "load calibration data")
    calibration = recast.calibrate(teacher, list(batches), targets, blocks,
                                   memory_budget=int(args.memory_budget * (1 << 30)), spill_dir=out / "spill")
    plan_path = out / PLAN_FILE
    if args.resume and plan_path.exists():
        the_plan = recast.Plan.load(plan_path, teacher=teacher)
        print(f"resuming with the plan in {plan_path}")
    else:
        the_plan = recast.plan(teacher, calibration, families=families, budget=args.budget,
                               budget_kind=args.budget_kind)
        the_plan.save(plan_path)
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    student, _ = recast.distill(teacher, the_plan, calibration, stages=stages, optimizer=args.optimizer,
                                steps=args.steps, checkpoint_dir=out / "checkpoints", resume=args.resume,
                                seed=args.seed, global_loss=args.global_loss, forcing=args.forcing,
                                global_optimizer=args.global_optimizer,
                                executor=args.executor)
    save_student(student, the_plan, out, args.output)
    write_report(teacher, student, the_plan, evaluation_set, args, out)
    return 0


def write_report(teacher, student, the_plan, evaluation_set, args, out):
    """report.json / report.md from the core's `report`, with the int8 baseline beside it."""
    from dreidel import recast
    evaluation_batches = list(evaluation_set.batches(args.batch_size))
    rep = recast.report(teacher, student, evaluation_batches, targets=list(the_plan.layers), repeats=args.repeats)
    rep.to_json(out / "report.json")
    rep.to_markdown(out / "report.md")
    baseline = int8_row(args.teacher, evaluation_set, args.batch_size, args.threads, out, args.repeats,
                        getattr(teacher, "index", 0))
    if baseline is not None:
        merged = json.loads((out / "report.json").read_text())
        merged["int8_baseline"] = baseline
        atomic_write_bytes(out / "report.json", json.dumps(merged, indent=1).encode())
        text = (out / "report.md").read_text() + int8_markdown(baseline)
        atomic_write_bytes(out / "report.md", text.encode())
    print((out / "report.md").read_text())


def int8_markdown(baseline):
    q, s = baseline["quality"], baseline["seconds"]
    return ("\n## Baseline: onnxruntime dynamic int8\n\n"
            "| model | MB | seconds (median) | speed-up vs ORT fp32 | cosine to teacher | argmax agreement |\n"
            "| --- | ---: | ---: | ---: | ---: | ---: |\n"
            f"| ORT float32 | {baseline['fp32_megabytes']:.1f} | {s['ort_fp32']:.4f} | 1.00 | 1.0000 | 1.000 |\n"
            f"| ORT int8 | {baseline['megabytes']:.1f} | {s['ort_int8']:.4f} | "
            f"{baseline['speedup_vs_ort_fp32']:.2f} | {q['cosine_mean']:.4f} | {q['argmax_agreement']:.3f} |\n")


def _evaluate_parser():
    parser = argparse.ArgumentParser(prog="dreidel evaluate", description="compare a student with its teacher")
    parser.add_argument("teacher")
    parser.add_argument("student", help="the folder `dreidel recast --out` wrote")
    parser.add_argument("--data", required=True, help="evaluation data (not the calibration data)")
    parser.add_argument("--tokenizer")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="write report.json/report.md here (default: print only)")
    return parser


def evaluate_main(argv=None):
    """`dreidel evaluate`: the student against its teacher on evaluation data; returns the exit code."""
    args = _evaluate_parser().parse_args(argv)
    if args.threads:
        dreidel.set_num_threads(args.threads)
    try:
        teacher, _ = load_teacher(args.teacher)
        student, the_plan, teacher = load_student(teacher, args.student)
        used = json.loads((Path(args.student) / "data.json").read_text()) \
            if (Path(args.student) / "data.json").exists() else None
        evaluation_set = load_samples(args.data, teacher, args.tokenizer, args.teacher)
        if used is not None:
            calibrated = set(used["calibration"]["items"])
            shared = [str(i) for i in evaluation_set.items if isinstance(i, (str, Path)) and str(i) in calibrated]
            if shared:
                print(f"warning: {len(shared)} evaluation samples were used for calibration", file=sys.stderr)
        out = Path(args.out) if args.out else Path(args.student) / "evaluate"
        out.mkdir(parents=True, exist_ok=True)
        write_report(teacher, student, the_plan, evaluation_set, args, out)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return INTERRUPTED
    except (DataError, TeacherError, ValueError, OSError) as error:
        print(f"dreidel evaluate: {error}", file=sys.stderr)
        return 2
