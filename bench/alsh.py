"""ALSHSparseDense benchmark: 1024 → 65536, batch 128, at most 5% of the neurons active.

For several (hash, bits, tables) settings: active fraction, recall of each sample's true top-k
neurons (k = 1 and 10) in the active set, and the dense layer's forward+backward time in
numpy/BLAS (y = x Wᵀ + b; dx = g W, dW = gᵀ x, db = Σ g; preallocated outputs) ÷ the sparse
layer's (through the autograd engine: hashing, selection, gathers, products, scatters, grads),
measured in the same run, medians of interleaved repeats. Table rebuilds are timed apart and amortised over
`--rebuild-every` steps ("amortised" column); the step column excludes them.

Data: "clustered" = weight rows and inputs drawn around 4096 random unit centres (16 neurons per
centre, relative noise 0.5): the structure a trained output layer has and LSH exploits.
"random" = i.i.d. Gaussian weights and inputs: LSH's worst case, shown for honesty.

    python bench/alsh.py [--threads 1 2] [--repeats 7] [--batch 128]

Each thread count runs in its own process so BLAS and OpenMP read their settings at start.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

SETTINGS = [("simhash", 8, 32), ("simhash", 10, 50), ("simhash", 12, 64), ("simhash", 12, 100),
            ("dwta", 4, 50)]


def parse():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rebuild-every", type=int, default=50)
    parser.add_argument("--data", nargs="+", default=["clustered", "random"])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def make_data(kind, rng, n_in, n_out, batch):
    import numpy as np
    if kind == "random":
        w = rng.standard_normal((n_out, n_in), dtype=np.float32) / np.sqrt(n_in)
        x = rng.standard_normal((batch, n_in), dtype=np.float32)
        return w, x
    n_centres = n_out // 16
    centres = rng.standard_normal((n_centres, n_in), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    w = centres[rng.integers(0, n_centres, n_out)]
    w += 0.5 / np.sqrt(n_in) * rng.standard_normal((n_out, n_in), dtype=np.float32)
    x = centres[rng.integers(0, n_centres, batch)]
    x += 0.5 / np.sqrt(n_in) * rng.standard_normal((batch, n_in), dtype=np.float32)
    return w / np.sqrt(n_in), x


def run_worker(args):
    import numpy as np
    import dreidel
    from dreidel.nn.alsh import ALSHSparseDense

    threads = args.threads[0]
    dreidel.set_num_threads(threads)
    n_in, n_out, batch = 1024, 65536, args.batch
    max_active = n_out // 20
    rng = np.random.default_rng(0)
    for kind in args.data:
        w, x = make_data(kind, rng, n_in, n_out, batch)
        b = np.zeros(n_out, np.float32)
        g = rng.standard_normal((batch, n_out), dtype=np.float32)

        # the dense baseline at its best: preallocated outputs, so it pays no page faults
        y_buf, gx_buf = np.empty((batch, n_out), np.float32), np.empty((batch, n_in), np.float32)
        gw_buf, gb_buf = np.empty((n_out, n_in), np.float32), np.empty(n_out, np.float32)

        def dense_step():
            np.matmul(x, w.T, out=y_buf)
            np.add(y_buf, b, out=y_buf)
            np.matmul(g, w, out=gx_buf)
            np.matmul(g.T, x, out=gw_buf)
            np.sum(g, axis=0, out=gb_buf)

        layers, rebuild = [], []
        for hash_name, bits, tables in SETTINGS:
            layer = ALSHSparseDense(n_in, n_out, hash=hash_name, bits=bits, tables=tables,
                                    max_active=max_active, rebuild_every=10**9)
            layer.weight.data[...] = w
            layer.bias.data[...] = b
            t0 = time.perf_counter()
            layer.rebuild_tables()
            rebuild.append(time.perf_counter() - t0)
            layers.append(layer)
        x_t = dreidel.Tensor(x, requires_grad=True)

        def sparse_step(layer):
            layer.weight.grad = layer.bias.grad = x_t.grad = None
            layer(x_t).backward(g)

        dense_times, sparse_times = [], [[] for _ in layers]
        for _ in range(args.repeats):  # interleaved
            t0 = time.perf_counter()
            dense_step()
            dense_times.append(time.perf_counter() - t0)
            for layer, times in zip(layers, sparse_times):
                t0 = time.perf_counter()
                sparse_step(layer)
                times.append(time.perf_counter() - t0)
        dense = statistics.median(dense_times)
        print(f"\n## data={kind}  threads={threads}  batch={batch}  1024→65536  max_active={max_active} "
              f"({max_active / n_out:.1%})  dense fwd+bwd median {dense * 1e3:.0f} ms")
        print("| hash | bits | tables | active | recall@1 | recall@10 | step ms | speed-up | "
              f"amortised speed-up (rebuild/{args.rebuild_every}) | rebuild s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for (hash_name, bits, tables), layer, times, rb in zip(SETTINGS, layers, sparse_times, rebuild):
            step = statistics.median(times)
            r1, r10 = layer.measure_recall(x, 1), layer.measure_recall(x, 10)
            amortised = step + rb / args.rebuild_every
            print(f"| {hash_name} | {bits} | {tables} | {layer.active_fraction:.3f} | {r1:.3f} | {r10:.3f} | "
                  f"{step * 1e3:.1f} | {dense / step:.1f}x | {dense / amortised:.1f}x | {rb:.2f} |", flush=True)
        del layers


def main():
    args = parse()
    if args.worker:
        run_worker(args)
        return
    for n in args.threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(n), OPENBLAS_NUM_THREADS=str(n), MKL_NUM_THREADS=str(n))
        cmd = [sys.executable, __file__, "--worker", "--threads", str(n), "--repeats", str(args.repeats),
               "--batch", str(args.batch), "--rebuild-every", str(args.rebuild_every), "--data", *args.data]
        subprocess.run(cmd, env=env, check=True)


if __name__ == "__main__":
    main()
