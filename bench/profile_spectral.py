"""Where DeepSpectralLinear's forward + backward time goes: per kernel phase, and the Python side.

    python bench/profile_spectral.py                      # widths 1024 4096, batches 64 256, K = 4
    python bench/profile_spectral.py --widths 256 1024 --batches 64

Times are this thread's CPU time (minimum of repeats), robust to a shared machine's load.
One thread (the phase profiler in the stack kernels has no atomics). For each shape it times the
whole layer step (forward + backward, input and parameter gradients, as bench/layers.py does), the
two kernel calls alone (kernels.spectral_stack / spectral_stack_backward), and, with the kernels'
rdtsc phase profiler on (kernels._stack_profile), how the kernel time splits into: setup
(allocation, inverse permutations, clearing the dD partials), copy_in, gather_scale (only copies
into saved now), fwht (the transforms with the permutation gathers, fused into their first pass or
run just before it, and in the backward the dD sums done inside those gathers), out, recompute
(backward without saved inputs), gather_bwd (the last gather, into grad x, with dD_1), dD_reduce.
dD_dot is no longer a separate phase. Cycles are converted to
milliseconds with the ratio of rdtsc ticks to wall time measured over the same calls.
"outside" = layer step - kernel calls: the autograd, argument checks and numpy allocations.
"""
import argparse
import sys
import time

import numpy as np

import dreidel
from dreidel import _kernels, kernels
from dreidel.nn.spectral import DeepSpectralLinear, SAVE_MAX_BYTES


def best_time(fn, min_seconds=0.3, repeats=7):
    """Per call: the minimum over `repeats` loops (of >= min_seconds / repeats each) of this thread's
    CPU time (time.thread_time: on a shared machine the time the thread was descheduled is not
    counted, which wall-clock medians would include)."""
    fn()
    t0 = time.thread_time()
    fn()
    n = max(1, int(min_seconds / repeats / max(time.thread_time() - t0, 1e-6)))
    samples = []
    for _ in range(repeats):
        t0 = time.thread_time()
        for _ in range(n):
            fn()
        samples.append((time.thread_time() - t0) / n)
    return float(np.min(samples))


def profile(width, batch, depth, rng):
    layer = DeepSpectralLinear(width, width, depth=depth)
    x = dreidel.Tensor(rng.standard_normal((batch, width)).astype(np.float32), requires_grad=True)
    g = rng.standard_normal((batch, width)).astype(np.float32)

    def step():
        x.grad = None
        for p in layer.parameters():
            p.grad = None
        layer(x).backward(g)

    perms, D, b = layer._kernel_perms(), layer.d.data, layer.bias.data
    save = D.size * batch * 4 <= SAVE_MAX_BYTES
    X = x.data

    def fwd():   # as the layer calls it: z_0 is not saved, the backward reads it from X
        return kernels.spectral_stack(X, perms, D, width, b, save=save, validate=False, save_input=False)
    y, saved = fwd()

    def bwd():
        return kernels.spectral_stack_backward(g, saved, perms, D, width, need_x=True, x=X, validate=False)

    t_step, t_fwd, t_bwd = best_time(step), best_time(fwd), best_time(bwd)
    # phases: ticks per call, converted with ticks / second measured on the same calls
    _kernels._stack_profile(on=True, reset=True)
    n = max(3, int(0.2 / (t_fwd + t_bwd)))
    t0 = time.thread_time()
    for _ in range(n):
        fwd()
        bwd()
    wall = (time.thread_time() - t0) / n   # CPU time of the profiled calls, for ticks -> ms
    phases = _kernels._stack_profile(on=False)
    ticks = sum(phases.values()) / n
    return t_step, t_fwd, t_bwd, save, {k: v / n for k, v in phases.items()}, ticks, wall


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--ab-gather", action="store_true",
                        help="profile each shape twice in this process: scalar gathers, then AVX-512 (if any)")
    parser.add_argument("--ab-scalar", action="store_true",
                        help="profile each shape twice: vgatherdps inside the transform's first pass, then "
                             "the scalar gathers into a buffer (the default)")
    args = parser.parse_args(argv)
    dreidel.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"DeepSpectralLinear(K={args.depth}) fwd+bwd, 1 thread, float32; ms per call "
          f"(phases: share of the kernel time measured with the profiler on)")
    variants = [False, True] if args.ab_gather or args.ab_scalar else [None]
    for width in args.widths:
        for batch in args.batches:
          for vector in variants:
            if vector is not None and args.ab_scalar:
                _kernels._stack_tuning(scalar_gather=vector)
                print(f"\n[{'scalar gathers into a buffer' if vector else 'vgatherdps in the first pass'}]", end="")
            elif vector is not None:
                _kernels._stack_tuning(gather512=vector)
                print(f"\n[{'AVX-512' if vector else 'scalar'} gathers]", end="")
            t_step, t_fwd, t_bwd, save, phases, ticks, wall = profile(width, batch, args.depth, rng)
            # the profiler's marks cover the kernels' work; wall - sum(marks) is their own overhead
            ms_per_tick = wall * 1e3 / ticks if ticks else 0.0
            outside = t_step - t_fwd - t_bwd
            print(f"\nwidth {width} batch {batch} ({'saved inputs' if save else 'recompute'}): "
                  f"step {t_step * 1e3:.3f} = kernel fwd {t_fwd * 1e3:.3f} + kernel bwd {t_bwd * 1e3:.3f}"
                  f" + outside {outside * 1e3:.3f} ms")
            print("   " + "  ".join(f"{k} {v * ms_per_tick:.3f}" for k, v in phases.items() if v))
            flops = args.depth * batch * width * (2 * np.log2(width) + 3)
            print(f"   fwht share {phases['fwht'] / ticks:.0%}; "
                  f"~{flops / (t_fwd + t_bwd) / 1e9:.1f} G element-ops/s over the two kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
