"""Engine benchmark: one MLP training step (batch 256, 1024 → 4096 → GELU → 1024, MSE, SGD).

dreidel vs the same step written by hand in numpy, and vs PyTorch when it is installed, all in the
same run and with the same thread count; medians of interleaved repeats, ratios in a table.

    python bench/engine.py [--threads 1 2] [--repeats 15] [--approximate tanh|none]

Each thread count runs in its own process, so BLAS and OpenMP read their thread settings at start.
"""
import argparse
import math
import os
import statistics
import subprocess
import sys
import time


def parse():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--approximate", default="tanh", choices=["tanh", "none"],
                        help="GELU form for all three contenders")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def run_worker(args):
    import numpy as np
    import dreidel
    from dreidel import nn, functional as F

    threads = args.threads[0]
    dreidel.set_num_threads(threads)
    rng = np.random.default_rng(0)
    n_in, n_hidden, lr = 1024, 4096, 1e-3
    x = rng.standard_normal((args.batch, n_in)).astype(np.float32)
    target = rng.standard_normal((args.batch, n_in)).astype(np.float32)
    w1 = (rng.standard_normal((n_hidden, n_in)) / math.sqrt(n_in)).astype(np.float32)
    b1 = np.zeros(n_hidden, np.float32)
    w2 = (rng.standard_normal((n_in, n_hidden)) / math.sqrt(n_hidden)).astype(np.float32)
    b2 = np.zeros(n_in, np.float32)

    model = nn.Sequential(nn.Linear(n_in, n_hidden), nn.GELU(args.approximate), nn.Linear(n_hidden, n_in))
    model.load_state_dict({"0.weight": w1, "0.bias": b1, "2.weight": w2, "2.bias": b2})
    optimizer = dreidel.optim.SGD(model.parameters(), lr=lr)
    x_t = dreidel.Tensor(x)

    def dreidel_step():
        loss = F.mse_loss(model(x_t), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    hand = {"w1": w1.copy(), "b1": b1.copy(), "w2": w2.copy(), "b2": b2.copy()}
    c = math.sqrt(2 / math.pi)

    def numpy_step():
        h = x @ hand["w1"].T + hand["b1"]
        if args.approximate == "tanh":
            t = np.tanh(c * (h + 0.044715 * h ** 3))
            a = 0.5 * h * (1 + t)
        else:
            from dreidel.ops.math import _erf_array
            cdf = 0.5 * (1 + _erf_array(h / math.sqrt(2)))
            a = h * cdf
        y = a @ hand["w2"].T + hand["b2"]
        gy = (2 / y.size) * (y - target)
        g_w2, g_b2 = gy.T @ a, gy.sum(0)
        ga = gy @ hand["w2"]
        if args.approximate == "tanh":
            gh = ga * (0.5 * (1 + t) + 0.5 * h * (1 - t * t) * c * (1 + 3 * 0.044715 * h * h))
        else:
            gh = ga * (cdf + h * np.exp(-0.5 * h * h) / math.sqrt(2 * math.pi))
        g_w1, g_b1 = gh.T @ x, gh.sum(0)
        for name, grad in (("w1", g_w1), ("b1", g_b1), ("w2", g_w2), ("b2", g_b2)):
            hand[name] -= lr * grad

    contenders = {"dreidel": dreidel_step, "numpy by hand": numpy_step}
    try:
        import torch
        torch.set_num_threads(threads)
        torch_model = torch.nn.Sequential(torch.nn.Linear(n_in, n_hidden), torch.nn.GELU(args.approximate),
                                          torch.nn.Linear(n_hidden, n_in))
        with torch.no_grad():
            for p, value in zip(torch_model.parameters(), (w1, b1, w2, b2)):
                p.copy_(torch.from_numpy(value))
        torch_optimizer = torch.optim.SGD(torch_model.parameters(), lr=lr)
        tx, tt = torch.from_numpy(x), torch.from_numpy(target)

        def torch_step():
            loss = torch.nn.functional.mse_loss(torch_model(tx), tt)
            torch_optimizer.zero_grad()
            loss.backward()
            torch_optimizer.step()
        contenders["PyTorch " + torch.__version__] = torch_step
    except ImportError:
        pass

    times = {name: [] for name in contenders}
    for step in contenders.values():  # warm-up
        step()
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit every contender alike
        for name, step in contenders.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        print(f"{name}\t{statistics.median(values)}")


def main():
    args = parse()
    if args.worker:
        run_worker(args)
        return
    print(f"MLP training step: batch {args.batch}, 1024 → 4096 → GELU({args.approximate}) → 1024, MSE, SGD; "
          f"median of {args.repeats} interleaved repeats")
    print(f"{'threads':>7}  {'contender':<22} {'ms/step':>9} {'÷ dreidel':>10}")
    for threads in args.threads:
        # Idle BLAS workers sleep at once for every contender: a worker spinning after one
        # contender's step would otherwise take the core the next contender needs.
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads), OPENBLAS_THREAD_TIMEOUT="4")
        out = subprocess.run([sys.executable, __file__, "--worker", "--threads", str(threads),
                              "--repeats", str(args.repeats), "--batch", str(args.batch),
                              "--approximate", args.approximate],
                             env=env, capture_output=True, text=True, check=True).stdout
        results = dict((line.split("\t")[0], float(line.split("\t")[1])) for line in out.strip().splitlines())
        base = results["dreidel"]
        for name, seconds in results.items():
            print(f"{threads:>7}  {name:<22} {seconds * 1e3:9.2f} {seconds / base:10.2f}")
    print("(÷ dreidel > 1: that contender is slower than dreidel)")


if __name__ == "__main__":
    main()
