"""Wall-clock of the block-wise (teacher-forced) distillation stage of a real teacher on the serial,
process and Ray backends with 1 and 2 workers; the students must be bit-identical.

    python bench/distributed.py [--teacher minilm|whisper] [--steps 8] [--calib 8] [--skip-ray]

Teachers: MiniLM (paraphrase-MiniLM-L3-v2 from its registry wheel; 3 blocks, calibration sentences
bench/data/sentences_calib.txt) or the Whisper tiny.en encoder (DREIDEL_SHARED; 4 blocks, the first
`--calib` clips). Printed: one row per (backend, workers, threads per worker): seconds of the stage,
speed-up over serial, identical or not; the overhead per task of each backend (its 1-worker time
minus serial, per block, and the round trip of an empty task); per block its task seconds (serial),
parameters and the bytes its task reads (batches + teacher block outputs); then the 32-node,
70 B-parameter, 80-block estimate computed from those measurements (printed with its inputs).
"""
import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import dreidel  # noqa: E402
from dreidel import recast  # noqa: E402
from dreidel.recast.cli import select_output  # noqa: E402
from dreidel.recast.executor import BlockExecutor, connect_ray, ray_available  # noqa: E402
from importers.onnx_to_dreidel import load  # noqa: E402


def minilm(args):
    from recast_minilm import DATA, EMBEDDING, minilm_path
    from dreidel.recast.data import load_data
    path = minilm_path()
    graph = load(path)
    output = graph.output_names.index(EMBEDDING)
    teacher = select_output(graph, output)
    data = load_data(DATA / "sentences_calib.txt", tokenizer=DATA / "minilm_tokenizer.json").for_inputs(graph.input_names)
    batches = list(data.batches(args.batch_size))[:args.calib]
    # find_blocks sees the sentence-transformers Sequential's "0" as the one block; name the layers
    blocks = [n for n, _ in teacher.named_modules() if re.fullmatch(r".*encoder\.layer\.\d+", n)]
    return "MiniLM-L3", path, output, teacher, batches, blocks


def whisper(args):
    from recast_whisper import ROOT as WHISPER, log_mel
    path = WHISPER / "encoder_model.onnx"
    teacher = load(path)
    filters = np.load(WHISPER / "mel_filters.npy", allow_pickle=False)
    clips = sorted((WHISPER / "calib").glob("clip_*.wav"))[:args.calib]
    batches = [{"input_features": log_mel(c, filters)} for c in clips]
    return "Whisper tiny.en encoder", path, None, teacher, batches, recast.find_blocks(teacher)


def nbytes(value):
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    return np.asarray(value).nbytes


def block_job(teacher, the_plan, calib, steps, folder):
    """The job `distill(..., stages=("blockwise",), forcing="teacher")` runs (same seeds and settings)."""
    from dreidel.recast.distillation import _unit_seed
    from dreidel.recast.executor import BlockJob
    student = the_plan.build(teacher, calib)
    settings = {b: {"optimizer": "newton", "lr": None, "steps": steps, "seed": _unit_seed(0, i)}
                for i, b in enumerate(calib.blocks)}
    return BlockJob(teacher, student, calib, the_plan, settings, folder)


def run(job, executor):
    """(seconds of the stage, merged student state, {block: seconds when its result arrived})."""
    shutil.rmtree(job.folder, ignore_errors=True)
    finished = {}
    start = time.perf_counter()
    results = executor.run(job, on_done=lambda b: finished.setdefault(b, time.perf_counter() - start))
    seconds = time.perf_counter() - start
    state = dict(job.start_state())
    for block in job.blocks:
        state.update({k: v for k, v in results[block].items() if k != "__loss__"})
    return seconds, state, finished


def empty_task_seconds(backend, repeats=20):
    """Median round trip of a task that does nothing (dispatch + result), pool/cluster already up."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing
    times = []
    if backend == "process":
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            pool.submit(int).result()
            for _ in range(repeats):
                t0 = time.perf_counter()
                pool.submit(int).result()
                times.append(time.perf_counter() - t0)
    else:
        import ray
        nothing = ray.remote(num_cpus=1)(lambda: 0)
        ray.get(nothing.remote())
        for _ in range(repeats):
            t0 = time.perf_counter()
            ray.get(nothing.remote())
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def block_parameters(teacher, calib, block):
    return sum(teacher.get_submodule(t).weight.data.size for t in calib.targets if t.startswith(block + "."))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", choices=("minilm", "whisper"), default="minilm")
    parser.add_argument("--calib", type=int, default=8, help="calibration batches (MiniLM) / clips (Whisper)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per block")
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--out", default=None, help="run folders (default: a temporary folder)")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    name, path, output, teacher, batches, blocks = (minilm if args.teacher == "minilm" else whisper)(args)
    targets = recast.find_targets(teacher, blocks)
    calib = recast.calibrate(teacher, batches, targets, blocks, holdout=0.25)
    the_plan = recast.plan(teacher, calib, families=("lowrank", "spectral"), budget=args.budget, budget_kind="macs")
    out = Path(args.out or tempfile.mkdtemp(prefix="dreidel-bench-distributed-"))
    print(f"{name}: {len(blocks)} blocks, {len(calib.fit_indices)} fit batches, {args.steps} steps per block, "
          f"{cores} cores")

    # one thread per task everywhere (the executor's default), so every row must be the same bits;
    # the serial row with all cores shows what more threads in one task give (other bits, expected)
    configs = [("serial", 1, 1), ("process", 1, 1), ("process", 2, 1)]
    if ray_available() and not args.skip_ray:
        connect_ray("local", num_cpus=cores, include_dashboard=False, log_to_driver=False)
        configs += [("ray", 1, 1), ("ray", 2, 1)]
    if cores > 1:
        configs.append(("serial-threads", 1, cores))
    results = {}
    for backend, workers, threads in configs:
        executor = BlockExecutor(backend.split("-")[0], workers=workers, threads=threads, teacher_path=path,
                                 output=output)
        job = block_job(teacher, the_plan, calib, args.steps, out / f"{backend}-{workers}")
        seconds, state, finished = run(job, executor)
        results[(backend, workers)] = (seconds, state, finished, threads)
        print(f"  ran {backend} × {workers}: {seconds:.2f} s", flush=True)
    serial_seconds, reference, serial_finished, _ = results[("serial", 1)]
    print("\n| backend | workers × threads | stage seconds | speed-up vs serial | identical student |")
    print("| --- | --- | ---: | ---: | --- |")
    for (backend, workers), (seconds, state, _, threads) in results.items():
        same = list(state) == list(reference) and all(np.array_equal(state[k], reference[k]) for k in state)
        print(f"| {backend} | {workers} × {threads} | {seconds:.2f} | {serial_seconds / seconds:.2f} | "
              f"{'yes' if same else 'NO'} |")

    print("\n| backend | overhead per task (1 worker − serial) / blocks | empty-task round trip |")
    print("| --- | ---: | ---: |")
    overheads = {}
    for backend in ("process", "ray"):
        if (backend, 1) in results:
            overheads[backend] = (results[(backend, 1)][0] - serial_seconds) / len(blocks)
            print(f"| {backend} | {overheads[backend]:.3f} s | {empty_task_seconds(backend) * 1e3:.2f} ms |")

    fit = calib.fit_indices
    forward = {}  # seconds of the teacher run up to each block's output, all fit batches (the prefix)
    from dreidel.recast.structure import run_to_block_output
    for b in blocks:
        t0 = time.perf_counter()
        with dreidel.no_grad():
            for i in fit:
                run_to_block_output(teacher, calib.batches[i], calib.boundaries, b)
        forward[b] = time.perf_counter() - t0
    from dreidel.recast.executor import _load_teacher
    t0 = time.perf_counter()
    _load_teacher(str(path), output)
    print(f"\nworker setup (load the teacher file): {time.perf_counter() - t0:.2f} s, once per worker process")
    batch_bytes = sum(nbytes(calib.batches[i]) for i in fit)
    rows, previous = [], 0.0
    for b in blocks:  # serial tasks run in block order: a task's seconds are the gaps
        seconds = serial_finished[b] - previous
        previous = serial_finished[b]
        out_bytes = sum(np.asarray(calib.block_outputs[b][i]).nbytes for i in fit)
        rows.append((b, seconds, block_parameters(teacher, calib, b), out_bytes))
    tokens = sum(int(np.prod(np.shape(calib.block_outputs[blocks[0]][i])[:-1])) for i in fit)
    hidden = np.shape(calib.block_outputs[blocks[0]][fit[0]])[-1]
    print(f"\nper block (serial, 1 thread; {tokens} calibration tokens of width {hidden}; batches "
          f"{batch_bytes / 1e6:.2f} MB read by every task)")
    print("| block | task seconds | teacher forward to its output (fit batches) | teacher parameters | "
          "block-output bytes read |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for b, seconds, params, out_bytes in rows:
        print(f"| {b} | {seconds:.2f} | {forward[b]:.3f} s | {params / 1e6:.2f} M | {out_bytes / 1e6:.2f} MB |")

    # task seconds ≈ a + c·k: the teacher prefix up to block k runs in every step (teacher forcing).
    # a = the cheapest task, c = the median growth per block (≥ 0): a least-squares line is pulled
    # below zero at block 0 by one slow task (a block whose line search backtracks more)
    secs = np.array([r[1] for r in rows])
    a = float(secs.min())
    growth = [max(0.0, (secs[k] - secs[0]) / k) for k in range(1, len(secs))]
    c = float(np.median(growth)) if growth else 0.0
    params = float(np.mean([r[2] for r in rows]))
    estimate(a, c, params, tokens, args.steps, hidden, cores, overheads.get("ray", 0.0))
    (out / "bench.json").write_text(json.dumps({"teacher": name, "serial_seconds": serial_seconds, "rows": [
        {"backend": b, "workers": w, "threads": r[3], "seconds": r[0]} for (b, w), r in results.items()],
        "blocks": [{"block": b, "seconds": s, "params": p, "bytes": n} for b, s, p, n in rows]}, indent=1))


def estimate(a, c, params, tokens, steps, hidden, cores, overhead,
             big_params=855e6, big_blocks=80, big_hidden=8192, big_tokens=128 * 2048, nodes=32, node_cores=64,
             bandwidth=1.25e9):
    """The 32-node estimate. Compute scales with (parameters per block × tokens × steps) at the
    per-core rate measured here, spread over a node's cores; data = what each task reads."""
    scale = (big_params / params) * (big_tokens / tokens) * (cores / node_cores)
    block_seconds, prefix_seconds = a * scale, c * scale  # one task at block 0, and per earlier block
    tasks = [block_seconds + prefix_seconds * k for k in range(big_blocks)]
    serial = sum(tasks)
    # longest tasks first onto the least-loaded node (what the executor's queue order does)
    loads = [0.0] * nodes
    for t in sorted(tasks, reverse=True):
        loads[loads.index(min(loads))] += t + overhead
    makespan = max(loads)
    target_bytes = big_tokens * big_hidden * 4  # one block's teacher outputs, float32
    teacher_bytes = big_params * big_blocks * 2  # every node loads the whole teacher (fp16 file)
    moved = big_blocks * target_bytes + nodes * teacher_bytes
    injected = [block_seconds] * big_blocks  # if tasks were fed recorded block inputs (no prefix)
    print(f"\n32-node estimate for a {big_params * big_blocks / 1e9:.0f} B-parameter, {big_blocks}-block teacher "
          f"(hidden {big_hidden}, {big_tokens} calibration tokens, {steps} steps/block, {node_cores} cores/node, "
          f"{bandwidth * 8 / 1e9:.0f} Gbit/s per node), from the measured fit task = {a:.3f} s + {c:.3f} s × "
          f"block index at {params / 1e6:.2f} M params/block, {tokens} tokens, {cores} cores:")
    print(f"- time per block task: {tasks[0] / 3600:.1f} h (block 0) to {tasks[-1] / 3600:.1f} h (block "
          f"{big_blocks - 1}); all blocks one after another: {serial / 3600:.0f} h")
    print(f"- on {nodes} nodes (one task per node at a time, longest first): {makespan / 3600:.0f} h "
          f"(speed-up {serial / makespan:.1f}×, {serial / makespan / nodes:.0%} of {nodes}); it stops scaling at "
          f"{big_blocks} nodes (one block per task) and, with the teacher prefix, at the longest task: "
          f"{tasks[-1] / 3600:.1f} h however many nodes")
    print(f"- activation bytes moved: {big_blocks} × {target_bytes / 1e9:.1f} GB block targets = "
          f"{big_blocks * target_bytes / 1e12:.2f} TB, plus the teacher on each node "
          f"({teacher_bytes / 1e9:.0f} GB × {nodes}); total {moved / 1e12:.1f} TB, "
          f"{moved / nodes / bandwidth / 60:.0f} min per node at the link rate")
    print(f"- fed recorded block inputs instead of the teacher prefix (not built): every task "
          f"{injected[0] / 3600:.1f} h, {np.ceil(big_blocks / nodes) * injected[0] / 3600:.0f} h on {nodes} nodes, "
          f"reading 2 × {target_bytes / 1e9:.1f} GB and one block's weights ({big_params * 2 / 1e9:.1f} GB) per task")


if __name__ == "__main__":
    main()
