"""Per-op pass rate of the ONNX backend node test cases through `importers.onnx_to_dreidel`.

    python bench/onnx_node_coverage.py [--verbose] [--op NAME ...]

Runs every backend node case (regenerated in memory from `onnx.backend.test.case.node`) whose op is
in the importer's registry, with the same classification and comparison as
`tests/test_onnx_backend_nodes.py` (this script imports it), and prints one row per op: cases,
passed, failed, skipped (sequences, optionals, strings, training mode, numpy-less types, an op version
the registry lacks or, in an `_expanded` case, a primitive op it lacks), pass % = passed / (passed +
failed); then the overall rate over the run cases and over all cases of supported ops (goal >= 90 %).
`--verbose` prints each failure's first error line first. It measures correctness, not speed.
"""
import argparse
import importlib.util
import os
import sys
import time
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def load_harness():
    """tests/test_onnx_backend_nodes.py as a module (it holds the case filter and the comparison)."""
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "tests"))  # the harness imports its neighbours (timeouts)
    spec = importlib.util.spec_from_file_location(
        "onnx_backend_harness", os.path.join(ROOT, "tests", "test_onnx_backend_nodes.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="print each failure's first error line")
    parser.add_argument("--op", nargs="*", default=None, help="only these ops")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    harness = load_harness()
    cases = harness.backend_cases()
    registered_ops = {op for _, op, _ in harness.registry.supported_ops()}
    rows = defaultdict(lambda: {"cases": 0, "passed": 0, "failed": 0, "skipped": 0})
    failures = []
    skip_reasons = defaultdict(int)
    for name, case in sorted(cases.items()):
        op = harness.case_op(case)
        if op not in registered_ops:
            continue  # a case of an op the importer does not register: not part of the coverage
        if args.op and op not in args.op:
            continue
        row = rows[op]
        row["cases"] += 1
        reason = harness.classify(case)
        if reason is not None:
            row["skipped"] += 1
            skip_reasons[reason] += 1
            continue
        error = harness.run_case_isolated(case)
        if error is None:
            row["passed"] += 1
        else:
            row["failed"] += 1
            failures.append((op, name, error))
    elapsed = time.perf_counter() - start

    if args.verbose:
        for op, name, error in failures:
            print(f"FAIL {op:24s} {name}: {error[:300]}")
        for reason, count in sorted(skip_reasons.items(), key=lambda item: -item[1]):
            print(f"SKIP {count:4d} x {reason}")
        print()
    print(f"ONNX backend node cases of supported ops ({len(registered_ops)} op types registered), "
          f"{elapsed:.1f} s")
    header = f"{'op':28s} {'cases':>5s} {'passed':>6s} {'failed':>6s} {'skipped':>7s} {'pass %':>7s}"
    print(header)
    print("-" * len(header))
    total = {"cases": 0, "passed": 0, "failed": 0, "skipped": 0}
    for op in sorted(rows):
        row = rows[op]
        for key in total:
            total[key] += row[key]
        ran = row["passed"] + row["failed"]
        rate = f"{100 * row['passed'] / ran:6.1f}%" if ran else "    n/a"
        print(f"{op:28s} {row['cases']:5d} {row['passed']:6d} {row['failed']:6d} {row['skipped']:7d} {rate}")
    print("-" * len(header))
    ran = total["passed"] + total["failed"]
    rate = 100 * total["passed"] / ran if ran else 0.0
    print(f"{'overall (run cases)':28s} {total['cases']:5d} {total['passed']:6d} {total['failed']:6d} "
          f"{total['skipped']:7d} {rate:6.1f}%")
    all_rate = 100 * total["passed"] / total["cases"] if total["cases"] else 0.0
    print(f"passed / all cases of supported ops (skips count as not passed): {all_rate:.1f}%  (goal >= 90%)")
    for what, count in sorted(harness.DTYPE_ALLOWANCES.items()):
        print(f"allowed by design (dreidel computes floats in float32): {count} x {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
