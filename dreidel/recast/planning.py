"""Choose a student per layer under a budget: measured candidates, sensitivity, knapsack; `plan.json`."""
import copy
import json
import os
import time

import numpy as np

import dreidel
from dreidel import nn, no_grad
from dreidel.progress import progress
from dreidel.recast.calibration import teacher_fingerprint
from dreidel.recast.structure import as_array, call_model, first_output
from dreidel.recast.students import STUDENTS, family, heldout_error

PLAN_FORMAT = "dreidel.recast.plan/1"
BUDGET_KINDS = ("latency", "macs", "params")


class PlanError(ValueError):
    """A plan that does not fit: unknown layer, unknown family, bad options, another teacher, bad JSON."""


# -- latency ---------------------------------------------------------------------------------------
_LATENCY_CACHE = {}


def _timed(run, min_seconds):
    run()  # warm up
    t0 = time.perf_counter()
    run()
    inner = max(1, int(min_seconds / max(time.perf_counter() - t0, 1e-9)))
    return inner


def median_latencies(runs, repeats=5, min_seconds=0.005):
    """Seconds per call of each run: medians over `repeats` interleaved rounds (each round times every
    run once, in an inner loop of ≥ min_seconds) so a shared machine's load hits all alike."""
    inner = [_timed(run, min_seconds) for run in runs]
    samples = [[] for _ in runs]
    for _ in range(repeats):
        for i, run in enumerate(runs):
            t0 = time.perf_counter()
            for _ in range(inner[i]):
                run()
            samples[i].append((time.perf_counter() - t0) / inner[i])
    return [float(np.median(s)) for s in samples]


def layer_latencies(modules_by_key, rows, n_in, repeats=5):
    """{key: seconds} for forward passes of each module on a (rows, n_in) float32 batch (no grad),
    cached by key (family, options, shape, rows, threads): timing does not depend on the weights."""
    threads = dreidel.get_num_threads()
    missing = {k: m for k, m in modules_by_key.items() if (k, rows, threads) not in _LATENCY_CACHE}
    if missing:
        x = dreidel.Tensor(np.random.default_rng(0).standard_normal((rows, n_in)).astype(np.float32))

        def runner(module):
            def run():
                with no_grad():
                    module(x)
            return run
        keys = list(missing)
        for key, seconds in zip(keys, median_latencies([runner(missing[k]) for k in keys], repeats)):
            _LATENCY_CACHE[(key, rows, threads)] = seconds
    return {k: _LATENCY_CACHE[(k, rows, threads)] for k in modules_by_key}


# -- choosing --------------------------------------------------------------------------------------
def choose_dp(costs, losses, budget, resolution=2000):
    """Multiple-choice knapsack: one candidate per layer, Σ cost ≤ budget, minimal Σ loss.

    Costs are rounded UP to units of budget/resolution, so any choice the DP accepts also meets the
    budget in real costs. Returns a list of chosen indices, or None when nothing fits."""
    unit = budget / resolution if budget > 0 else 1.0
    best = np.full(resolution + 1, np.inf)
    best[0] = 0.0
    choices = []
    for layer_costs, layer_losses in zip(costs, losses):
        units = [int(np.ceil(c / unit - 1e-9)) for c in layer_costs]
        new = np.full(resolution + 1, np.inf)
        pick = np.full(resolution + 1, -1, dtype=np.int64)
        for i, (u, loss) in enumerate(zip(units, layer_losses)):
            if u > resolution:
                continue
            shifted = np.full(resolution + 1, np.inf)
            shifted[u:] = best[:resolution + 1 - u] + loss
            better = shifted < new
            new[better], pick[better] = shifted[better], i
        best = new
        choices.append(pick)
    if not np.isfinite(best).any():
        return None
    j = int(np.argmin(best))
    chosen = []
    for layer in range(len(costs) - 1, -1, -1):
        i = int(choices[layer][j])
        chosen.append(i)
        j -= int(np.ceil(costs[layer][i] / unit - 1e-9))
    return chosen[::-1]


def choose_greedy(costs, losses, budget):
    """Start from each layer's best candidate; while over budget, take the downgrade with the smallest
    loss increase per cost saved. Returns chosen indices, or None when nothing fits."""
    chosen = [int(np.argmin(l)) for l in losses]
    total = sum(c[i] for c, i in zip(costs, chosen))
    while total > budget:
        best = None
        for layer, (c, l) in enumerate(zip(costs, losses)):
            i = chosen[layer]
            for j in range(len(c)):
                saved = c[i] - c[j]
                if saved <= 0:
                    continue
                rate = (l[j] - l[i]) / saved
                if best is None or rate < best[0]:
                    best = (rate, layer, j)
        if best is None:
            return None
        _, layer, j = best
        total += costs[layer][j] - costs[layer][chosen[layer]]
        chosen[layer] = j
    return chosen


def choose(costs, losses, budget):
    """The better (lower total loss) of the DP and the greedy choice, both within the budget."""
    options = [c for c in (choose_dp(costs, losses, budget), choose_greedy(costs, losses, budget)) if c is not None]
    if not options:
        return None
    return min(options, key=lambda c: sum(l[i] for l, i in zip(losses, c)))


# -- the plan --------------------------------------------------------------------------------------
class Plan:
    """One student per target layer: `layers[name] = {"family", "options", ...measurements}`.

    `teacher` holds the fingerprint and the target shapes the plan was made for; `candidates[name]`
    the measured table the choice was made from (kept for reports and hand edits).
    """

    def __init__(self, layers, teacher, budget=None, budget_kind=None, candidates=None, totals=None):
        self.layers, self.teacher = layers, teacher
        self.budget, self.budget_kind = budget, budget_kind
        self.candidates, self.totals = candidates or {}, totals or {}

    def to_dict(self):
        return {"format": PLAN_FORMAT, "budget": self.budget, "budget_kind": self.budget_kind,
                "teacher": self.teacher, "totals": self.totals, "layers": self.layers,
                "candidates": self.candidates}

    def save(self, path):
        """Write `plan.json` (indented; edit `family`/`options` of a layer by hand, then `Plan.load`)."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path, teacher=None):
        """Read and validate a plan; with `teacher`, also check it is the teacher the plan was made for."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as error:
            raise PlanError(f"cannot read plan {path}: {error}") from error
        except json.JSONDecodeError as error:
            raise PlanError(f"plan {path} is not valid JSON: {error}") from error
        plan = cls.from_dict(data, where=str(path))
        if teacher is not None:
            plan.check(teacher, where=str(path))
        return plan

    @classmethod
    def from_dict(cls, data, where="plan"):
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise PlanError(f"{where}: not a recast plan (expected \"format\": \"{PLAN_FORMAT}\")")
        layers, teacher = data.get("layers"), data.get("teacher")
        if not isinstance(layers, dict) or not layers:
            raise PlanError(f"{where}: \"layers\" must be a non-empty object of layer name -> choice")
        if not isinstance(teacher, dict) or not isinstance(teacher.get("shapes"), dict):
            raise PlanError(f"{where}: \"teacher\" must hold the fingerprint and \"shapes\" of the target layers")
        for name, choice in layers.items():
            if not isinstance(choice, dict) or "family" not in choice:
                raise PlanError(f"{where}: layer {name!r} needs a \"family\"")
            if choice["family"] not in STUDENTS:
                raise PlanError(f"{where}: layer {name!r}: unknown family {choice['family']!r}; "
                                f"known: {sorted(STUDENTS)}")
            options = choice.get("options", {})
            if not isinstance(options, dict):
                raise PlanError(f"{where}: layer {name!r}: \"options\" must be an object")
            try:
                STUDENTS[choice["family"]].check_options(options, f"{where}: layer {name!r}")
            except ValueError as error:
                raise PlanError(str(error)) from None
            if name not in teacher["shapes"]:
                raise PlanError(f"{where}: layer {name!r} is not among the plan's teacher layers")
        return cls(layers, teacher, data.get("budget"), data.get("budget_kind"), data.get("candidates"),
                   data.get("totals"))

    def check(self, teacher, where="plan"):
        """PlanError unless every layer exists in `teacher` as an nn.Linear of the recorded shape and the
        teacher's weights are the ones the plan was made from."""
        for name in self.layers:
            try:
                layer = teacher.get_submodule(name)
            except AttributeError:
                raise PlanError(f"{where}: layer {name!r} does not exist in the teacher") from None
            if not isinstance(layer, nn.Linear):
                raise PlanError(f"{where}: teacher layer {name!r} is a {type(layer).__name__}, not an nn.Linear")
            shape = [layer.in_features, layer.out_features]
            if list(self.teacher["shapes"][name]) != shape:
                raise PlanError(f"{where}: layer {name!r} is {shape[0]}→{shape[1]} in this teacher, "
                                f"the plan was made for {self.teacher['shapes'][name]}")
        fingerprint = teacher_fingerprint(teacher)
        if self.teacher.get("fingerprint") not in (None, fingerprint):
            raise PlanError(f"{where}: made for another teacher (weights fingerprint "
                            f"{self.teacher['fingerprint']}, this teacher has {fingerprint})")

    def build(self, teacher, calibration=None, stats=None, fit=None, state=None):
        """A copy of the teacher with every planned layer replaced by its family's closed-form fit on the
        calibration's fit statistics (`stats`: {layer: InputStatistics} instead). Without either, the
        layers are unfitted modules of the planned structure, to `load_state_dict` a saved student into
        (`state`: that state dict, which says which layers have a bias: a fit on activations adds one
        to a layer whose teacher had none); `fit=True` then asks for weight-only fits (data-free)."""
        fit = (calibration is not None or stats is not None) if fit is None else fit
        self.check(teacher)
        student = copy.deepcopy(teacher)
        for name, choice in progress(list(self.layers.items()), "fit students" if fit else "build students"):
            layer = teacher.get_submodule(name)
            if not fit:
                bias = f"{name}.bias" in state if state is not None else layer.bias is not None
                student.set_submodule(name, family(choice["family"]).empty(
                    layer.in_features, layer.out_features, bias, **choice.get("options", {})))
                continue
            layer_stats = stats.get(name) if stats is not None else (
                calibration.stats[name]["fit"] if calibration is not None else None)
            student.set_submodule(name, family(choice["family"]).from_dense(layer, layer_stats,
                                                                            **choice.get("options", {})))
        return student


def write_json_atomic(path, data):
    """JSON to `path` via a temporary file, fsync and rename: readers see the old file or the new one."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _output_change(teacher, batches, reference):
    errors = []
    with no_grad():
        for batch, ref in zip(batches, reference):
            out = as_array(first_output(call_model(teacher, batch)))
            errors.append(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))
    return float(np.mean(errors))


def plan(teacher, calibration, families=("lowrank", "spectral"), budget=0.5, budget_kind="latency",
         sensitivity=True, sensitivity_batches=2, repeats=5, keep_dense=True):
    """Measure every candidate of every family on every target layer and choose one per layer.

    Per layer × candidate: the held-out relative output error (fitted on the calibration's fit
    statistics, evaluated exactly on the held-out ones), multiply-adds, parameters and the measured
    forward latency at the layer's real shape (rows per batch) and the current thread count. The
    sensitivity of each layer: swap in its candidate nearest the budget alone and measure the relative
    change of the model output on `sensitivity_batches` held-out batches; a layer's loss is then
    (sensitivity · error)², the predicted output error it causes. The choice minimises the total loss
    with Σ cost ≤ budget · Σ dense cost (knapsack DP, checked against a greedy), cost = `budget_kind`.
    """
    if budget_kind not in BUDGET_KINDS:
        raise ValueError(f"budget_kind must be one of {BUDGET_KINDS}, got {budget_kind!r}")
    if not 0 < budget:
        raise ValueError(f"budget must be a positive fraction of the dense cost, got {budget}")
    names = list(families) + (["dense"] if keep_dense and "dense" not in families else [])
    for name in names:
        family(name)
    table, shapes = {}, {}
    for target in progress(calibration.targets, "measure candidates"):
        layer = teacher.get_submodule(target)
        n_in, n_out = layer.in_features, layer.out_features
        shapes[target] = [n_in, n_out]
        W, b = as_array(layer.weight), None if layer.bias is None else as_array(layer.bias)
        fit, held = calibration.stats[target]["fit"], calibration.stats[target]["holdout"]
        if held.count < 2:
            held = fit  # no held-out batch: the error is on the fitting data (said in the table)
        rows, modules = [], {}
        for name in names:
            cls = family(name)
            for options in cls.candidates(n_in, n_out):
                module = cls.from_dense(layer, fit, **options)
                W_hat, b_hat = cls.operator(module)
                key = (name, json.dumps(options, sort_keys=True), n_in, n_out)
                modules[key] = module
                rows.append({"family": name, "options": options, "key": key,
                             "error": heldout_error(W, b, W_hat, b_hat, held),
                             "macs": cls.multiply_adds(module), "params": cls.parameter_count(module)})
        latencies = layer_latencies(modules, calibration.rows.get(target, 1), n_in, repeats)
        dense_row = {"macs": n_in * n_out + (n_out if layer.bias is not None else 0),
                     "params": layer.parameter_count()}
        dense_latency = layer_latencies({("dense", "{}", n_in, n_out): nn.Linear(n_in, n_out)},
                                        calibration.rows.get(target, 1), n_in, repeats)
        dense_row["latency"] = next(iter(dense_latency.values()))
        for row in rows:
            row["latency"] = latencies[row.pop("key")]
        table[target] = {"dense": dense_row, "candidates": rows, "heldout": held is not fit}
    # sensitivity: how much one layer's error moves the model output
    sens = {t: 1.0 for t in table}
    if sensitivity and calibration.holdout_indices:
        idx = calibration.holdout_indices[:sensitivity_batches]
        batches = [calibration.batches[i] for i in idx]
        reference = [calibration.outputs[i] for i in idx]
        for target in progress(list(table), "layer sensitivity"):
            entry = table[target]
            probe = min((r for r in entry["candidates"] if r["family"] != "dense"),
                        key=lambda r: abs(r[budget_kind] / entry["dense"][budget_kind] - budget), default=None)
            if probe is None or probe["error"] < 1e-6:
                continue
            layer = teacher.get_submodule(target)
            student = family(probe["family"]).from_dense(layer, calibration.stats[target]["fit"], **probe["options"])
            teacher.set_submodule(target, student)
            try:
                change = _output_change(teacher, batches, reference)
            finally:
                teacher.set_submodule(target, layer)
            sens[target] = change / probe["error"]
    targets = list(table)
    costs = [[r[budget_kind] for r in table[t]["candidates"]] for t in targets]
    losses = [[(sens[t] * r["error"]) ** 2 for r in table[t]["candidates"]] for t in targets]
    dense_total = sum(table[t]["dense"][budget_kind] for t in targets)
    chosen = choose(costs, losses, budget * dense_total)
    if chosen is None:
        cheapest = sum(min(c) for c in costs) / dense_total
        raise PlanError(f"no choice of {names} fits budget {budget} of the dense {budget_kind}; "
                        f"the cheapest choice needs {cheapest:.3f}")
    layers, candidates = {}, {}
    for t, i in zip(targets, chosen):
        row = table[t]["candidates"][i]
        layers[t] = dict(row, sensitivity=sens[t], dense=table[t]["dense"])
        candidates[t] = table[t]["candidates"]
    totals = {kind: {"dense": sum(table[t]["dense"][kind] for t in targets),
                     "student": sum(layers[t][kind] for t in targets)} for kind in BUDGET_KINDS}
    totals["predicted_output_error"] = float(np.sqrt(sum(l[i] for l, i in zip(losses, chosen))))
    teacher_info = {"fingerprint": calibration.fingerprint, "shapes": shapes,
                    "threads": dreidel.get_num_threads()}
    return Plan(layers, teacher_info, budget, budget_kind, candidates, totals)
