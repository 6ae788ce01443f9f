"""Spectral layers vs dense and low-rank: approximation quality on real weights, and speed.

    python bench/layers.py            # both tables (a few minutes on 2 cores)
    python bench/layers.py --quick    # smaller: fewer layers, depths and widths
    python bench/layers.py --full     # every projection of the 4 encoder layers, K up to 16 everywhere
    python bench/layers.py --quality-only | --speed-only
    python bench/layers.py --threads 2   # default 1 thread for the kernels, OpenBLAS and torch alike
    python bench/layers.py --all      # also the hash-sparse layer (bench/alsh.py) and optimizer
                                      # (bench/optimizers.py) tables, each in its own process

1. `from_dense` quality. The dense layers are the Whisper tiny.en encoder's projections (q/k/v/out,
   fc1, fc2; weights read from the ONNX initializers, y = x Wᵀ + b). Their real inputs are captured
   with onnxruntime on the fixture clips: fit on clips 0–1, held-out relative output error
   ‖Y − Ŷ‖/‖Y‖ on clip 2. DeepSpectralLinear (K blocks) and LinearWHT are compared with
   LowRankLinear at EQUAL multiply-adds (rank = the spectral layer's cost / (in + out)), each fitted
   on the activations (`inputs=`) and weight-only (no inputs). "mean" is the error of predicting the
   training-mean output (what the bias alone explains). "hybrid K=1+r" is SpectralLowRankLinear
   (one spectral block + rank r, fitted jointly on the activations) at the same budget.
2. Speed: DeepSpectralLinear(K=4) forward+backward (input and parameter gradients) vs a dense
   dreidel.nn.Linear (numpy BLAS) and torch.nn.Linear when torch is installed, same run,
   interleaved repeats, medians. A ratio > 1 means the spectral layer is faster. The dense
   baseline runs in each BLAS environment side by side: as this process's environment is, with
   OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE removed (a child process: what users run, and what the
   goals are judged on), and, if the environment pins nothing, pinned to Haswell (a child: the
   half-speed GEMMs an AVX-512 CPU gets under that pin). Each column names the OpenBLAS kernel
   threadpoolctl saw loaded.
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np

import dreidel
from dreidel.runtime import blas_num_threads
from dreidel.nn import Linear
from dreidel.nn.lowrank import LowRankLinear, SpectralLowRankLinear
from dreidel.nn.fitting import InputStatistics
from dreidel.nn.spectral import DeepSpectralLinear, LinearWHT

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "onnx", "whisper-tiny-en")


# -- thread counts ---------------------------------------------------------------------------------
def set_all_threads(n, torch):
    """One thread count for the kernels, numpy's BLAS (both via dreidel) and torch."""
    dreidel.set_num_threads(n)
    if torch:
        torch.set_num_threads(n)


def try_torch():
    try:
        import torch
        return torch
    except ImportError:
        return None


# -- 1. quality on real weights --------------------------------------------------------------------
def load_whisper_layers(kinds, layer_indices):
    """{name: (W (out, in), b, input tensor name)} for the chosen encoder projections, and their inputs."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(os.path.join(FIXTURE, "encoder_model.onnx"))
    initializers = {i.name: i for i in model.graph.initializer}
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    layers = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in initializers:
            continue
        parts = node.name.split("/")   # /layers.1/self_attn/q_proj/MatMul
        index, kind = int(parts[1].split(".")[1]), parts[-2]
        if kind not in kinds or index not in layer_indices:
            continue
        W = numpy_helper.to_array(initializers[node.input[1]]).T.astype(np.float64)  # ONNX: x @ W
        b = None
        for add in consumers.get(node.output[0], []):
            other = [i for i in add.input if i != node.output[0]]
            if add.op_type == "Add" and other and other[0] in initializers:
                b = numpy_helper.to_array(initializers[other[0]]).astype(np.float64)
        layers[f"L{index}.{kind}"] = (W, b, node.input[0])
    wanted = sorted({v[2] for v in layers.values()})
    model.graph.output.extend([onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in wanted])
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count()
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    clips = []
    for i in range(3):
        mel = np.load(os.path.join(FIXTURE, "clips", f"clip_{i}_logmel.npy"), allow_pickle=False)
        clips.append(dict(zip(wanted, session.run(wanted, {"input_features": mel}))))
    return layers, clips


def relative_error(Y, Y_hat):
    return float(np.linalg.norm(Y - Y_hat) / np.linalg.norm(Y))


def predict(layer, X):
    with dreidel.no_grad():
        return layer(dreidel.Tensor(X)).data


def matched_rank(multiply_adds, n_in, n_out):
    return int(np.clip(round((multiply_adds - n_out) / (n_in + n_out)), 1, min(n_in, n_out)))


def quality_table(args):
    kinds = ["q_proj", "out_proj", "fc1", "fc2"] if not args.full else ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    if args.quick:
        kinds = ["q_proj", "fc2"]
    indices = [0, 1, 2, 3] if args.full else [1]
    start = time.perf_counter()
    layers, clips = load_whisper_layers(kinds, indices)
    print(f"captured activations of {len(layers)} layers in {time.perf_counter() - start:.1f}s "
          f"(fit: clips 0-1, held out: clip 2)")
    depths = [1, 4] if args.quick else [1, 2, 4, 8, 16]
    print(f"\n{'layer':<12} {'model':<11} {'mult-adds':>9} {'÷dense':>7} {'err fit-on-x':>12} "
          f"{'err W-only':>10}   {'low-rank':>8} {'err fit-on-x':>12} {'err W-only':>10}   "
          f"{'hybrid K=1+':>13}  fit s")
    summary = []
    for name, (W, b, input_name) in layers.items():
        n_out, n_in = W.shape
        X_fit = np.concatenate([c[input_name].reshape(-1, n_in) for c in clips[:2]]).astype(np.float64)
        X_test = clips[2][input_name].reshape(-1, n_in).astype(np.float64)
        if args.fit_rows and X_fit.shape[0] > args.fit_rows:
            X_fit = X_fit[np.random.default_rng(0).choice(X_fit.shape[0], args.fit_rows, replace=False)]
        stats = InputStatistics.of(X_fit)   # every fit below needs only these moments
        bias = b if b is not None else np.zeros(n_out)
        Y_fit, Y_test = X_fit @ W.T + bias, X_test @ W.T + bias
        dense = n_in * n_out + n_out
        print(f"{name:<12} {'dense':<11} {dense:>9} {1:>7.3f}   {n_in}→{n_out}, "
              f"mean-only error {relative_error(Y_test, Y_fit.mean(axis=0)):.3f}")
        configs = [("LinearWHT", None)] + [(f"K={k}", k) for k in depths]
        if n_in * n_out > 384 * 384 and not args.full:
            configs = [c for c in configs if c[1] is None or c[1] <= 4]   # K = 8, 16: --full
        for label, depth in configs:
            t0 = time.perf_counter()
            if depth is None:
                fitted = LinearWHT.from_dense(W, b, inputs=stats)
                weight_only = LinearWHT.from_dense(W, b)
            else:
                fitted = DeepSpectralLinear.from_dense(W, b, inputs=stats, depth=depth, sweeps=args.sweeps)
                weight_only = DeepSpectralLinear.from_dense(W, b, depth=depth, sweeps=args.sweeps)
            cost = fitted.multiply_adds()
            rank = matched_rank(cost, n_in, n_out)
            low = LowRankLinear.from_dense(W, b, inputs=stats, rank=rank)
            low_w = LowRankLinear.from_dense(W, b, rank=rank)
            models = [fitted, weight_only, low, low_w]
            # the hybrid at the same budget: one spectral block plus the rank the rest of it buys
            block = DeepSpectralLinear(n_in, n_out, depth=1, bias=False).multiply_adds()
            hybrid_rank = int(round((cost - n_out - block) / (n_in + n_out)))
            hybrid = "-"
            if depth is not None and 1 <= hybrid_rank <= min(n_in, n_out):
                models.append(SpectralLowRankLinear.from_dense(W, b, inputs=stats, rank=hybrid_rank, depth=1,
                                                               rounds=2, sweeps=1))
                hybrid = f"r={hybrid_rank}"
            seconds = time.perf_counter() - t0
            errors = [relative_error(Y_test, predict(m, X_test)) for m in models]
            line = (f"{'':<12} {label:<11} {cost:>9} {cost / dense:>7.3f} {errors[0]:>12.3f} {errors[1]:>10.3f}   "
                    f"{'r=' + str(rank):>8} {errors[2]:>12.3f} {errors[3]:>10.3f}   {hybrid:>6}")
            line += f" {errors[4]:>6.3f}" if len(errors) > 4 else f" {'':>6}"
            print(line + f"  {seconds:5.1f}", flush=True)
            summary.append((name, label, errors))
    return summary


# -- 2. speed --------------------------------------------------------------------------------------
def fwd_bwd_dreidel(layer, x, g):
    def run():
        x.grad = None
        for p in layer.parameters():
            p.grad = None
        layer(x).backward(g)
    return run


def fwd_bwd_torch(torch, layer, x, g):
    def run():
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x).backward(g)
    return run


def median_times(runs, repeats, min_seconds=0.02, settle=0.0):
    """Interleaved repeats: each repeat times every candidate once (inner loops ≥ min_seconds).

    `settle` seconds of idling before each timed loop let the previous candidate's worker threads go
    to sleep: OpenBLAS workers busy-wait ~0.1 s after every call and, with 2 cores, would otherwise
    take the core the next candidate's second thread needs (dreidel's OpenMP workers wait passively,
    so they never slow the dense baseline down)."""
    inner = []
    for run in runs:
        run()  # warm up
        t0 = time.perf_counter()
        run()
        elapsed = time.perf_counter() - t0
        inner.append(max(1, int(min_seconds / max(elapsed, 1e-9))))
    samples = [[] for _ in runs]
    for _ in range(repeats):
        for i, run in enumerate(runs):
            if settle:
                time.sleep(settle)
                run()  # re-warm the caches after the pause (untimed)
            t0 = time.perf_counter()
            for _ in range(inner[i]):
                run()
            samples[i].append((time.perf_counter() - t0) / inner[i])
    return [float(np.median(s)) for s in samples]


BLAS_PIN_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def blas_architecture():
    """The kernel family numpy's OpenBLAS picked (threadpoolctl), e.g. 'SkylakeX' or 'Haswell'."""
    try:
        import threadpoolctl
    except ImportError:
        return "?"
    archs = [i.get("architecture") or "?" for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
    return "+".join(archs) or "?"


def dense_baselines():
    """The BLAS environments the dense baseline runs in: as the environment is (in this process), with
    the OpenBLAS pin variables removed (a child process; the goals are judged on this one), and, when the
    environment has no pin, pinned to Haswell (a child) so the handicapped baseline is shown beside it."""
    pinned = {k: os.environ[k] for k in BLAS_PIN_VARS if k in os.environ}
    unpinned_env = {k: v for k, v in os.environ.items() if k not in BLAS_PIN_VARS}
    label = "env(" + (",".join(f"{k}={v}" for k, v in pinned.items()) or "no pin") + ")"
    out = [(label, None), ("unpinned", unpinned_env)]
    if not pinned:
        out.append(("Haswell-pin", dict(unpinned_env, OPENBLAS_CORETYPE="Haswell")))
    return out


def dense_child(spec):
    """--dense-child: time dreidel.nn.Linear fwd+bwd for the given shapes; print JSON (arch, ms)."""
    import json
    spec = json.loads(spec)
    if spec["threads"]:
        dreidel.set_num_threads(spec["threads"])
    rng = np.random.default_rng(0)
    times = {}
    for width, batch, repeats in spec["shapes"]:
        dense = Linear(width, width)
        x = dreidel.Tensor(rng.standard_normal((batch, width)).astype(np.float32), requires_grad=True)
        g = rng.standard_normal((batch, width)).astype(np.float32)
        times[f"{width},{batch}"] = median_times([fwd_bwd_dreidel(dense, x, g)], repeats)[0]
    print(json.dumps({"arch": blas_architecture(), "blas_threads": blas_num_threads(), "times": times}))


def run_dense_child(env, shapes, threads):
    import json
    spec = json.dumps({"shapes": shapes, "threads": threads})
    env = dict(env, PYTHONPATH=os.pathsep.join(p for p in [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                           env.get("PYTHONPATH", "")] if p))
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--dense-child", spec], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def speed_table(args):
    torch = try_torch() if not args.no_torch else None
    widths = [256, 1024, 4096, 384] if args.quick else [256, 512, 1024, 2048, 4096, 8192, 384, 1536, 3072]
    widths = args.widths or widths
    batches = [64] if args.quick else [64, 256]
    rng = np.random.default_rng(0)
    baselines = dense_baselines()
    shapes = [(w, b, 7 if w <= 2048 else 3) for w in widths for b in batches]
    # the dense baseline in the other BLAS environments, each in its own process (the environment of
    # this one is never changed)
    children = {label: run_dense_child(env, shapes, args.threads) for label, env in baselines[1:]}
    print(f"\ndense baselines (numpy OpenBLAS kernel as threadpoolctl reports it): "
          f"{baselines[0][0]}: {blas_architecture()}; "
          + "; ".join(f"{label}: {c['arch']} ({c['blas_threads']} thr)" for label, c in children.items())
          + "\ngoal ratios are judged on 'unpinned'")
    header = f"{'width':>6} {'batch':>5} {'spectral ms':>11}"
    for label, _ in baselines:
        header += f" | {label[:22]:>22} ms {'÷spec':>6}"
    header += f" | {'torch ms':>8} {'÷spec':>6}" if torch else ""
    print(header + f" {'mult-add ratio':>14}")
    rows = []
    for width, batch, repeats in shapes:
        spectral = DeepSpectralLinear(width, width, depth=4)
        dense = Linear(width, width)
        x_np = rng.standard_normal((batch, width)).astype(np.float32)
        g_np = rng.standard_normal((batch, width)).astype(np.float32)
        x = dreidel.Tensor(x_np, requires_grad=True)
        runs = [fwd_bwd_dreidel(spectral, x, g_np), fwd_bwd_dreidel(dense, x, g_np)]
        if torch:
            t_layer = torch.nn.Linear(width, width)
            t_x = torch.from_numpy(x_np.copy()).requires_grad_(True)
            runs.append(fwd_bwd_torch(torch, t_layer, t_x, torch.from_numpy(g_np.copy())))
        times = median_times(runs, repeats, settle=args.settle)
        dense_times = [times[1]] + [c["times"][f"{width},{batch}"] for c in children.values()]
        ma_ratio = (width * width + width) / spectral.multiply_adds()
        line = f"{width:>6} {batch:>5} {times[0] * 1e3:>11.3f}"
        for t in dense_times:
            line += f" | {t * 1e3:>25.3f} {t / times[0]:>6.2f}"
        line += f" | {times[2] * 1e3:>8.3f} {times[2] / times[0]:>6.2f}" if torch else ""
        print(line + f" {ma_ratio:>14.1f}", flush=True)
        rows.append((width, batch, times, dense_times))
        del dense, spectral
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer layers, depths and widths")
    parser.add_argument("--full", action="store_true", help="all encoder projections, K up to 16")
    parser.add_argument("--quality-only", action="store_true")
    parser.add_argument("--speed-only", action="store_true")
    parser.add_argument("--all", action="store_true", help="then run bench/alsh.py and bench/optimizers.py")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--threads", type=int, default=1,
                        help="one thread count for the kernels, OpenBLAS and torch (default 1: per-core ratios, "
                             "stable on a shared machine; 0 leaves each library its own default)")
    parser.add_argument("--widths", type=int, nargs="+", help="widths of the speed table")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds idle before each timed loop so the previous candidate's busy-waiting "
                             "OpenBLAS workers fall asleep (~0.1 s after each call); with 2+ threads this "
                             "helps large spectral layers, but small ones then run from a cold core")
    parser.add_argument("--dense-child", help=argparse.SUPPRESS)   # internal: see dense_child
    parser.add_argument("--sweeps", type=int, default=2, help="ALS sweeps per DeepSpectralLinear fit")
    parser.add_argument("--fit-rows", type=int, default=None,
                        help="subsample the fitting activations (default: all 3000 rows; 1500 with --quick)")
    args = parser.parse_args(argv)
    if args.dense_child:
        return dense_child(args.dense_child)
    if args.quick and args.fit_rows is None:
        args.fit_rows = 1500
    torch = try_torch() if not args.no_torch else None
    if args.threads:
        set_all_threads(args.threads, torch)
    print(f"dreidel kernel threads {dreidel.get_num_threads()}, numpy BLAS threads {blas_num_threads()}, "
          f"torch threads {torch.get_num_threads() if torch else 'n/a (not installed)'}, "
          f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}, "
          f"malloc tuning {'off' if os.environ.get('DREIDEL_MALLOC_TUNING') == '0' else 'on'}, "
          f"settle {args.settle:g}s before each timed loop")
    start = time.perf_counter()
    if not args.speed_only:
        # the fits are dominated by BLAS (OpenBLAS threads); idle OpenMP workers of the kernels spin and
        # steal their cores, so fit with one kernel thread
        threads = dreidel.get_num_threads()
        dreidel.set_num_threads(1)
        if not os.path.exists(os.path.join(FIXTURE, "encoder_model.onnx")):
            print(f"quality table skipped: no Whisper fixture at {FIXTURE}")
        else:
            quality_table(args)
        dreidel.set_num_threads(threads)
    if not args.quality_only:
        speed_table(args)
    if args.all:
        here = os.path.dirname(os.path.abspath(__file__))
        for script in ("alsh.py", "optimizers.py"):
            print(f"\n== bench/{script}", flush=True)
            subprocess.run([sys.executable, os.path.join(here, script)], check=True)
    print(f"\ntotal {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
