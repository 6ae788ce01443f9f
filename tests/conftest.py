"""Shared fixtures (keep this small: helpers used by one file live in that file)."""
import numpy as np
import pytest


@pytest.fixture
def rng():
    """A fresh, seeded generator per test: tests stay independent and repeatable."""
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def single_thread_kernels():
    """Engine tests call kernels on tiny arrays thousands of times; an OpenMP team per call costs
    milliseconds on a busy machine, and results do not depend on the thread count."""
    import dreidel
    previous = dreidel.get_num_threads()
    dreidel.set_num_threads(1)
    yield
    dreidel.set_num_threads(previous)


def pytest_terminal_summary(terminalreporter):
    """Skips and expected failures summarised by reason, one line each (pytest's -ra lists every
    location, which buried the failures under a hundred lines)."""
    import collections
    import re
    for kind in ("skipped", "xfailed"):
        reports = terminalreporter.stats.get(kind, [])
        if not reports:
            continue
        reasons = collections.Counter()
        for report in reports:
            if kind == "skipped" and isinstance(report.longrepr, tuple):
                reason = report.longrepr[2]
            else:
                reason = getattr(report, "wasxfail", "") or str(report.longrepr)
            reason = re.sub(r"^Skipped: ", "", str(reason)).strip().splitlines()[0] if reason else "?"
            reasons[re.sub(r"\[[^\]]*\]", "[…]", reason)[:150]] += 1
        terminalreporter.section(f"{kind} by reason ({len(reports)})", sep="-")
        common = reasons.most_common()
        for reason, count in common[:12]:
            terminalreporter.write_line(f"{count:5d}  {reason}")
        if len(common) > 12:
            rest = common[12:]
            terminalreporter.write_line(f"{sum(c for _, c in rest):5d}  ({len(rest)} more reasons, each "
                                        f"{max(c for _, c in rest)} or fewer: pytest -rs lists them)")
