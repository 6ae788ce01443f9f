"""Kernel benchmark: FWHT, permutation gather, GELU forward/backward on 64 MiB of float32 per call.

Every ratio is measured in this run: contenders are timed in interleaved rounds (one call each per
round) and the medians compared, at 1 and 2 threads.

    python bench/kernels.py [--quick] [--threads 1 2] [--repeats 9] [--mib 64]

* FWHT (dreidel.kernels.fwht_, in place, normalized) vs: one in-place memory pass over the same
  buffer (np.multiply(x, 1, out=x), the memory floor; goal <= 2.5x), FFHT (ffht-unofficial,
  fht_(x, nthreads=t): same thread count; unnormalized, so it does less work; goal >= 1.0x),
  a numpy reshape-based FWHT (timed on a 1/16 slice and scaled; goal >= 30x); m*2^k sizes:
  throughput vs the next power of two (goal >= 70%).
* permute vs np.take; spectral_block (fused) vs dreidel's own permute, multiply, fwht_;
  spectral_stack + spectral_stack_backward (K = 4, 4 MiB) vs chaining the single-block kernels;
  GELU fwd/bwd vs numpy(+scipy erf) and PyTorch when installed (goal: within 2x of PyTorch, i.e.
  ratio >= 0.5).
"""
import argparse
import os
import statistics
import time

import numpy as np

import dreidel
from dreidel import kernels as K


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="16 MiB, 5 repeats")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--mib", type=int, default=64)
    a = p.parse_args()
    if a.quick:
        a.mib, a.repeats = 16, 5
    return a


def interleaved(fns, repeats):
    """Median seconds per call of each fn, timed round-robin (one call each per round)."""
    times = {k: [] for k in fns}
    for f in fns.values():
        f()                                     # warm up (page faults, thread pools)
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def numpy_fwht(x):
    """Reference: reshape-based radix-2 FWHT in numpy (natural order, unnormalized), n = 2^k."""
    rows, n = x.shape
    h = 1
    while h < n:
        v = x.reshape(rows, n // (2 * h), 2, h)
        a = v[:, :, 0, :].copy()
        v[:, :, 0, :] += v[:, :, 1, :]
        a -= v[:, :, 1, :]
        v[:, :, 1, :] = a
        h *= 2
    return x


def main():
    args = parse()
    try:
        import ffht
    except ImportError:
        ffht = None
    try:
        import torch
    except ImportError:
        torch = None
    try:
        from scipy.special import erf as sp_erf
    except ImportError:
        sp_erf = None

    elems = args.mib * 2 ** 20 // 4
    rng = np.random.default_rng(0)
    rows_out = []

    def row(op, n, nt, t, base, tb, goal, kind):
        if tb is None:
            rows_out.append((op, n, nt, t, base, None, None, goal, "n/a"))
            return
        r = tb / t if kind == "speedup" else t / tb
        ok = {"speedup": r >= goal, "slowdown": r <= goal}[kind] if goal else None
        rows_out.append((op, n, nt, t, base, tb, r, goal, "yes" if ok else ("no" if ok is not None else "")))

    print(f"dreidel kernel bench: {args.mib} MiB float32 per call, medians of {args.repeats} "
          f"interleaved repeats; openmp={K._kernels.has_openmp()} avx2={K._kernels.has_avx2()}; "
          f"ffht={'yes' if ffht else 'NOT INSTALLED'}; torch={torch.__version__ if torch else 'no'}; "
          f"cpus={os.cpu_count()} loadavg(1m)={os.getloadavg()[0]:.1f} at start")

    for nt in args.threads:
        dreidel.set_num_threads(nt)
        if torch is not None:
            torch.set_num_threads(nt)
        # ---------------- FWHT ----------------
        thr = {}
        for n in [1024, 4096, 65536, 512, 2048, 384, 1536]:
            x = rng.standard_normal((elems // n, n)).astype(np.float32)
            fns = {"mem": lambda: np.multiply(x, 1, out=x),
                   "dreidel": lambda: K.fwht_(x)}
            pow2 = n & (n - 1) == 0
            if ffht is not None and pow2:
                fns["ffht"] = lambda: ffht.fht_(x, nthreads=nt)
            if pow2:
                xs = x[: max(1, x.shape[0] // 16)].copy()
                fns["numpy/16"] = lambda: numpy_fwht(xs)
            t = interleaved(fns, args.repeats)
            if n in (512, 2048):
                thr[n] = elems / t["dreidel"]
                continue
            td = t["dreidel"]
            thr[n] = elems / td
            row("fwht_", n, nt, td, "memory pass", t["mem"], 2.5, "slowdown")
            if pow2:
                row("fwht_", n, nt, td, f"ffht fht_(nthreads={nt})", t.get("ffht"), 1.0, "speedup")
                row("fwht_", n, nt, td, "numpy reshape FWHT", t["numpy/16"] * x.shape[0] / xs.shape[0],
                    30.0, "speedup")
        for n, p in [(384, 512), (1536, 2048)]:
            r = thr[n] / thr[p]
            rows_out.append(("fwht_ thrpt", n, nt, elems / thr[n], f"vs n={p}", elems / thr[p], r, 0.7,
                             "yes" if r >= 0.7 else "no"))
        # ---------------- permute ----------------
        for n in [1024, 384]:
            x = rng.standard_normal((elems // n, n)).astype(np.float32)
            perm = rng.permutation(n)
            t = interleaved({"dreidel": lambda: K.permute(x, perm, validate=False),
                             "take": lambda: np.take(x, perm, axis=-1)}, args.repeats)
            row("permute", n, nt, t["dreidel"], "np.take", t["take"], None, "speedup")
        # ---------------- fused spectral block ----------------
        n = 1024
        x = rng.standard_normal((elems // n, n)).astype(np.float32)
        perm, d = rng.permutation(n), rng.standard_normal(n).astype(np.float32)
        t = interleaved({"fused": lambda: K.spectral_block(x, perm, d, validate=False),
                         "unfused": lambda: K.fwht_(np.multiply(K.permute(x, perm, validate=False),
                                                                d))}, args.repeats)
        row("spectral_block", n, nt, t["fused"], "permute, *d, fwht_", t["unfused"], None, "speedup")
        # ---------------- whole stack, K = 4 blocks, forward + backward ----------------
        for n in [1024, 4096]:
            x = rng.standard_normal((elems // 16 // n, n)).astype(np.float32)   # 4 MiB: a layer's batch
            perms = np.stack([rng.permutation(n) for _ in range(4)])
            D = rng.standard_normal((4, n)).astype(np.float32)

            def stack():
                y, saved = K.spectral_stack(x, perms, D, validate=False)
                K.spectral_stack_backward(y, saved, perms, D, validate=False)

            def chained():   # the per-block kernels: 4 spectral_block forward, 4 fused backward
                inputs, z = [], x
                for perm, d in zip(perms, D):
                    inputs.append(z)
                    z = K.spectral_block(z, perm, d, validate=False)
                for perm, d, z_in in zip(perms[::-1], D[::-1], inputs[::-1]):
                    z, _ = K.spectral_block_backward(z, z_in, perm, d, validate=False)

            t = interleaved({"stack": stack, "chained": chained}, args.repeats)
            row("stack K=4 fwd+bwd", n, nt, t["stack"], "4 x block fwd + bwd", t["chained"], None, "speedup")
        # ---------------- GELU ----------------
        x = (2 * rng.standard_normal(elems)).astype(np.float32)
        g = rng.standard_normal(elems).astype(np.float32)
        y = np.empty_like(x)
        k0 = np.float32(np.sqrt(2 / np.pi))
        for form in ["none", "tanh"]:
            fns = {"fwd": lambda: K.gelu(x, form, out=y),
                   "bwd": lambda: K.gelu_backward(g, x, form, out=y)}
            if form == "tanh":
                fns["np_fwd"] = lambda: 0.5 * x * (1 + np.tanh(k0 * (x + np.float32(0.044715) * x * x * x)))
            elif sp_erf is not None:
                fns["np_fwd"] = lambda: 0.5 * x * (1 + sp_erf(x * np.float32(0.7071067811865476)))
            if torch is not None:
                xt, gt = torch.from_numpy(x), torch.from_numpy(g)
                fns["t_fwd"] = lambda: torch.nn.functional.gelu(xt, approximate=form)
                fns["t_bwd"] = lambda: torch.ops.aten.gelu_backward(gt, xt, approximate=form)
            t = interleaved(fns, args.repeats)
            row(f"gelu fwd ({form})", "-", nt, t["fwd"], "numpy", t.get("np_fwd"), None, "speedup")
            if torch is not None:
                row(f"gelu fwd ({form})", "-", nt, t["fwd"], "torch", t["t_fwd"], 0.5, "speedup")
                row(f"gelu bwd ({form})", "-", nt, t["bwd"], "torch", t["t_bwd"], 0.5, "speedup")

    print(f"{'op':<18}{'n':>7}{'thr':>4}{'ms':>9}  {'baseline':<26}{'base ms':>9}{'ratio':>8}"
          f"{'goal':>7}{'met':>5}")
    for op, n, nt, t, base, tb, r, goal, ok in rows_out:
        tb_s = f"{tb * 1e3:9.2f}" if tb is not None else f"{'n/a':>9}"
        r_s = f"{r:8.2f}" if r is not None else f"{'':>8}"
        g_s = f"{goal:7.2f}" if goal else f"{'':>7}"
        print(f"{op:<18}{str(n):>7}{nt:>4}{t * 1e3:9.2f}  {base:<26}{tb_s}{r_s}{g_s}{ok:>5}")
    print(f"loadavg(1m)={os.getloadavg()[0]:.1f} at end (a shared machine: > cpus means contended "
          "timings, 2-thread rows most of all)")
    print("ratio = baseline/dreidel time (speedup) except 'memory pass' rows = dreidel/memory "
          "(slowdown, goal <=) and 'thrpt' rows = throughput fraction of the next power of two.")


if __name__ == "__main__":
    main()
