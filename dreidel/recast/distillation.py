"""Distil a student from its teacher in resumable stages: init, refit, block-wise, global.

Units of work, in order: ("init",) then ("refit", block) and ("blockwise", block) for every block,
then ("global",). After each unit the student's state is checkpointed (safetensors via `dreidel.save`,
then a JSON state naming it, both written atomically), so an interrupted run resumes at the next unit
and, every random draw being seeded by (seed, unit), ends with the identical student.
"""
import json
import os

import numpy as np

import dreidel
from dreidel import functional as F, no_grad, optim
from dreidel.nn.fitting import InputStatistics
from dreidel.progress import progress
from dreidel.tensor import Tensor
from dreidel.recast.planning import Plan, PlanError, write_json_atomic
from dreidel.recast.structure import (as_array, block_kind, block_of, call_model, first_output,
                                      run_to_block_output)
from dreidel.recast.students import describe, family

STAGES = ("init", "refit", "blockwise", "global")
STATE_FORMAT = "dreidel.recast.checkpoint/1"


# -- losses ----------------------------------------------------------------------------------------
def relative_mse(output, target):
    """‖output − target‖² / ‖target‖² (a Tensor when `output` is one)."""
    scale = 1.0 / max(float(np.sum(np.square(target, dtype=np.float64))), 1e-30)
    if not isinstance(output, Tensor):
        return float(np.sum(np.square(output.astype(np.float64) - target))) * scale
    diff = output - target
    return F.sum(diff * diff) * scale


def cosine_loss(output, target):
    """Mean over rows (last axis) of 1 − cos(output, target)."""
    t = target.reshape(-1, target.shape[-1]).astype(output.dtype)
    o = output.reshape(-1, target.shape[-1])
    t_unit = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    dots = F.sum(o * t_unit, axis=-1)
    norms = F.sqrt(F.sum(o * o, axis=-1) + 1e-12)
    return 1.0 - F.mean(dots / norms)


def kl_loss(output, target):
    """KL(teacher ‖ student) of the softmax over the last axis (logits), mean over positions."""
    t = target.reshape(-1, target.shape[-1]).astype(np.float64)
    t = t - t.max(axis=1, keepdims=True)
    p = np.exp(t)
    p /= p.sum(axis=1, keepdims=True)
    o = output.reshape(-1, target.shape[-1])
    log_q = F.log_softmax(o, axis=-1)
    return F.mean(-F.sum(log_q * p.astype(output.dtype), axis=-1)) + float(np.sum(p * np.log(p + 1e-30)) / len(p))


GLOBAL_LOSSES = {"mse": relative_mse, "cosine": cosine_loss, "kl": kl_loss}


# -- checkpoints -----------------------------------------------------------------------------------
class Checkpoint:
    """`state.json` + the safetensors file it names, in `folder`. A new state is written as a new
    weights file first and then the JSON (atomic rename), so a crash at any point leaves the previous
    complete checkpoint readable."""

    def __init__(self, folder, fingerprint, settings):
        self.folder, self.fingerprint, self.settings = folder, fingerprint, settings
        self.state_path = os.path.join(folder, "state.json") if folder else None

    def load(self):
        if not self.state_path or not os.path.exists(self.state_path):
            return None
        with open(self.state_path, encoding="utf-8") as f:
            state = json.load(f)
        if state.get("format") != STATE_FORMAT:
            raise PlanError(f"{self.state_path}: not a recast checkpoint")
        if state.get("fingerprint") != self.fingerprint:
            raise PlanError(f"{self.state_path}: checkpoint of another teacher (fingerprint "
                            f"{state.get('fingerprint')}, this teacher {self.fingerprint}); use another folder")
        if state.get("settings") != self.settings:
            raise PlanError(f"{self.state_path}: checkpoint made with other settings {state.get('settings')}; "
                            f"these are {self.settings} (use another folder, or resume=False)")
        state["weights"] = dreidel.load(os.path.join(self.folder, state["weights_file"]))
        return state

    def save(self, student, done, history):
        if not self.folder:
            return
        os.makedirs(self.folder, exist_ok=True)
        name = f"student-{len(done):04d}.safetensors"
        dreidel.save(student.state_dict(), os.path.join(self.folder, name))
        previous = None
        if os.path.exists(self.state_path):
            with open(self.state_path, encoding="utf-8") as f:
                previous = json.load(f).get("weights_file")
        write_json_atomic(self.state_path, {"format": STATE_FORMAT, "fingerprint": self.fingerprint,
                                            "settings": self.settings, "done": done, "history": history,
                                            "weights_file": name})
        if previous and previous != name and os.path.exists(os.path.join(self.folder, previous)):
            os.unlink(os.path.join(self.folder, previous))


# -- shared helpers --------------------------------------------------------------------------------
def block_targets(calibration, block):
    return [t for t in calibration.targets if block_of(t, calibration.blocks) == block]


def block_loss(student, calibration, block, indices=None):
    """Mean relative squared error of the student's block output (fed by the student's own earlier
    blocks) against the teacher's, over the calibration batches `indices` (default: the fit ones)."""
    indices = calibration.fit_indices if indices is None else indices
    with no_grad():
        values = [float(relative_mse(as_array(run_to_block_output(student, calibration.batches[i],
                                                                    calibration.boundaries, block)),
                                     calibration.block_outputs[block][i])) for i in indices]
    return float(np.mean(values))


def output_loss(student, calibration, loss, indices=None):
    indices = calibration.fit_indices if indices is None else indices
    with no_grad():
        return float(np.mean([float(as_array(loss(first_output(call_model(student, calibration.batches[i])),
                                                  np.asarray(calibration.outputs[i]))))
                              for i in indices]))


def _snapshot(params):
    return [p.data.copy() for p in params]


def _restore(params, saved):
    for p, value in zip(params, saved):
        p.data[...] = value


def _make_optimizer(kind, params, modules, lr, seed=0):
    """DiagonalNewton: every layer's own Gauss–Newton diagonal (spectral, low-rank and dense layers
    define one), scaled per layer to the loss's curvature by a Hutchinson trace probe (so one rule
    serves block MSE, cosine and logit KL, and layers deep inside the block); the squared gradient
    for parameters no layer describes (the line search then shortens their steps)."""
    if kind == "newton":
        layers = [m for module in modules for m in module.modules()]
        return optim.DiagonalNewton(params, lr=lr, curvature="fisher", modules=layers, damping=1e-8,
                                    beta=0.9, line_search=True, module_curvature_scale="trace",
                                    rng=np.random.default_rng([int(seed), 1]))
    if kind == "adamw":
        return optim.AdamW(params, lr=lr, weight_decay=0.0)
    raise ValueError(f"optimizer must be 'newton' or 'adamw', got {kind!r}")


def default_lr(optimizer, kind):
    """Learning rate of a block kind: 1 for DiagonalNewton (its line search shortens steps), 1e-3 for
    AdamW; decoder blocks (a kind naming a decoder) get 0.3 of that, their errors feed back."""
    lr = 1.0 if optimizer == "newton" else 1e-3
    return lr * (0.3 if "decoder" in kind else 1.0)


def train_parameters(student, params, modules, loss_of_batch, indices, steps, optimizer, lr, seed, label,
                     evaluate, batches_per_step=1):
    """`steps` optimizer steps on batches drawn from `indices` by a generator seeded with `seed`
    (`batches_per_step` > 1: each step's gradient is the mean over that many distinct batches);
    keeps the best of before/after by `evaluate()` (so a stage never makes its loss worse).
    Every step is checked on its own batches: one that raises their loss (or gives NaN) is
    undone and the learning rate halved; each accepted step grows it back by 1.25, up to `lr`
    (measured on Whisper: unguarded, a single bad step took a block's loss from 4e-4 to 1.4, and the
    global stage's AdamW from 0.019 to 1.4, and 24 steps did not recover). Returns (loss before, loss after)."""
    everything = list(student.parameters())
    flags = [p.requires_grad for p in everything]
    # DiagonalNewton switches curvature capture on; left on, every later forward (inference) pays for it
    capture = [(m, m.capture_curvature) for module in modules for m in module.modules()
               if hasattr(m, "capture_curvature")]
    for p in everything:
        p.requires_grad = False
    for p in params:
        p.requires_grad = True
    try:
        before, saved = evaluate(), _snapshot(params)
        opt = _make_optimizer(optimizer, params, modules, lr, seed)
        rng = np.random.default_rng(seed)
        group = min(int(batches_per_step), len(indices))
        if group == 1:
            order = [[j] for j in rng.integers(0, len(indices), size=steps)]
        else:
            order = [rng.choice(len(indices), size=group, replace=False) for _ in range(steps)]
        scale = 1.0
        bar = progress(order, label)
        for chosen in bar:
            batch_indices = [indices[int(j)] for j in chosen]

            def closure():
                opt.zero_grad()
                total = 0.0
                for i in batch_indices:  # backward per batch: one batch's graph alive at a time
                    loss = loss_of_batch(i) * (1.0 / len(batch_indices))
                    loss.backward()
                    total += float(as_array(loss))
                return Tensor(np.float64(total))

            def loss_only():
                return float(np.mean([float(as_array(loss_of_batch(i))) for i in batch_indices]))
            closure.loss_only = loss_only
            step_start = _snapshot(params)
            loss = float(as_array(opt.step(closure)))
            with no_grad():
                new_loss = loss_only()
            if new_loss <= loss:
                scale = min(1.0, scale * 1.25)
            else:
                _restore(params, step_start)
                scale *= 0.5
            for param_group in opt.param_groups:
                param_group["lr"] = lr * scale
            bar.set(loss=min(loss, new_loss), lr=lr * scale)
        after = evaluate()
        if not after <= before:  # worse (or NaN): keep what we had
            _restore(params, saved)
            after = before
        return before, after
    finally:
        for p, flag in zip(everything, flags):
            p.requires_grad = flag
        for m, flag in capture:
            m.capture_curvature = flag


# -- stages ----------------------------------------------------------------------------------------
def refit_block(teacher, student, calibration, block):
    """Closed-form refit of the block's student layers on the STUDENT's own inputs (its earlier blocks
    already recast), to the TEACHER's layer outputs on the same batches: with student inputs s and
    teacher inputs t, the best dense map is W' = W C_ts C_ss⁻¹ (b' = b + W μ_t − W' μ_s); each layer's
    family is refitted to (W', b') on the student's input statistics. Kept only if the block loss drops."""
    targets = block_targets(calibration, block)
    refittable = [t for t in targets if describe(student.get_submodule(t)) is not None]
    if not refittable:
        return None
    stats = {t: InputStatistics(teacher.get_submodule(t).in_features) for t in refittable}
    cross = {t: [0.0, 0.0] for t in refittable}  # Σ t sᵀ, Σ t
    captured = {}

    def hooks(model, side):
        handles = []
        for t in refittable:
            def grab(module, args, out, t=t):
                captured.setdefault((side, t), as_array(args[0]).reshape(-1, module.in_features).astype(np.float64))
            handles.append(model.get_submodule(t).register_forward_hook(grab))
        return handles
    handles = hooks(teacher, "t") + hooks(student, "s")
    try:
        for i in calibration.fit_indices:
            captured.clear()
            with no_grad():
                run_to_block_output(teacher, calibration.batches[i], calibration.boundaries, block)
                run_to_block_output(student, calibration.batches[i], calibration.boundaries, block)
            for t in refittable:
                xt, xs = captured[("t", t)], captured[("s", t)]
                stats[t].update(xs)
                cross[t][0] = cross[t][0] + xt.T @ xs
                cross[t][1] = cross[t][1] + xt.sum(axis=0)
    finally:
        for h in handles:
            h.remove()
    before = block_loss(student, calibration, block)
    originals = {t: student.get_submodule(t) for t in refittable}
    for t in refittable:
        layer = teacher.get_submodule(t)
        W = as_array(layer.weight).astype(np.float64)
        b = np.zeros(W.shape[0]) if layer.bias is None else as_array(layer.bias).astype(np.float64)
        s = stats[t]
        mu_s, mu_t = s.mean, cross[t][1] / s.count
        C_ss = s.covariance
        C_ts = cross[t][0] - s.count * np.outer(mu_t, mu_s)
        ridge = 1e-6 * max(float(np.mean(np.diag(C_ss))), 1e-30)
        W_new = W @ np.linalg.solve(C_ss + ridge * np.eye(len(C_ss)), C_ts.T).T
        b_new = b + W @ mu_t - W_new @ mu_s
        name, options = describe(originals[t])
        student.set_submodule(t, family(name).fit(W_new, b_new, s, **options))
    after = block_loss(student, calibration, block)
    if not after <= before:
        for t, module in originals.items():
            student.set_submodule(t, module)
        after = before
    return before, after


def run_block_task(student, calibration, block, optimizer="newton", lr=None, steps=10, seed=0):
    """Gradient distillation of one block: its student layers' parameters minimise the relative squared
    error of the block output (the model run up to it, so the earlier blocks feed it: student ones for
    the sequential pipeline, the teacher's when `student` still has teacher layers there) against the
    teacher's recorded block output. Touches only this block's parameters; seeded by `seed`, so the same
    call gives the same result in any process. Returns (loss before, loss after)."""
    targets = block_targets(calibration, block)
    modules = [student.get_submodule(t) for t in targets]
    params = [p for m in modules for p in m.parameters()]
    if not params:
        return None
    lr = default_lr(optimizer, block_kind(block)) if lr is None else lr

    def loss_of_batch(i):
        out = run_to_block_output(student, calibration.batches[i], calibration.boundaries, block)
        return relative_mse(out, np.asarray(calibration.block_outputs[block][i]))
    return train_parameters(student, params, modules, loss_of_batch, calibration.fit_indices, steps, optimizer,
                            lr, seed, f"distil {block}", lambda: block_loss(student, calibration, block))


def global_task(student, calibration, loss="mse", optimizer="adamw", lr=None, steps=10, seed=0, batches_per_step=4):
    """Gradient distillation of every student layer on the model's output (`loss`: "mse" relative
    squared error, "cosine", or "kl" on logits), each step's gradient the mean over `batches_per_step`
    calibration batches (every layer moves at once: one batch's gradient overfits it). Returns
    (loss before, loss after)."""
    loss_fn = GLOBAL_LOSSES[loss]
    modules = [student.get_submodule(t) for t in calibration.targets]
    params = [p for m in modules for p in m.parameters()]
    lr = (0.5 if optimizer == "newton" else 1e-4) if lr is None else lr  # AdamW: 1e-3 diverged on MiniLM

    def loss_of_batch(i):
        return loss_fn(first_output(call_model(student, calibration.batches[i])), np.asarray(calibration.outputs[i]))
    return train_parameters(student, params, modules, loss_of_batch, calibration.fit_indices, steps, optimizer,
                            lr, seed, "distil global", lambda: output_loss(student, calibration, loss_fn),
                            batches_per_step=batches_per_step)


def _unit_seed(seed, index):
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def distill(teacher, student_or_plan, calibration, stages=STAGES, optimizer="newton", lr_by_block_kind=None,
            steps=None, checkpoint_dir=None, resume=True, seed=0, global_loss="mse", forcing="student",
            executor=None, on_block_done=None, global_optimizer="adamw", global_batches_per_step=4):
    """Distil a student from `teacher` on `calibration`, in `stages` (a subset of STAGES, in order):

    1. "init": a `Plan` is built (each layer's closed-form / ALS fit on the teacher's activations); a
       ready student module is used as it is.
    2. "refit": per block, in order, `refit_block` (the student's own earlier blocks feed it).
    3. "blockwise": per block, in order, `run_block_task` (`optimizer` "newton" = DiagonalNewton with
       module curvature where layers give it, Fisher otherwise, and a line search; or "adamw"), with
       learning rates `lr_by_block_kind` ({"encoder.layers": 0.5, ...}, see `default_lr`).
    4. "global": `global_task` on the model output with `global_loss`, by `global_optimizer`: AdamW
       by default, since a diagonal preconditioner ignores the coupling of all layers through the
       model's output (measured on MiniLM's cosine loss: DiagonalNewton's line search cut its steps
       to α ≈ 2e-4 and the loss did not move in 12 steps; AdamW at 1e-4 cut it 24 %); each step's
       gradient the mean over `global_batches_per_step` batches.
    `steps`: an int or {"blockwise": n, "global": n}: optimizer steps per block / for the global stage
    (default 2 and 1 passes over the fit batches). With `checkpoint_dir`, every unit ends with a
    checkpoint and `resume=True` continues an interrupted run identically.
    `forcing`: "student" (the blockwise stage is a pipeline: each block is fed the student's own earlier
    blocks) or "teacher" (each block is trained inside the teacher, fed the teacher's block inputs: the
    blocks are independent tasks, run by `executor`, a `dreidel.recast.executor.BlockExecutor`, serial by
    default; each block's result is checkpointed as it finishes, `on_block_done(block)` is called then,
    and the results are applied together, in block order). Every backend gives the same student.
    Returns the student, with
    `student_history` (a list of per-unit losses) as the second value of `distill(...)`'s result tuple:
    (student, history).
    """
    if forcing not in ("student", "teacher"):
        raise ValueError(f"forcing must be 'student' or 'teacher', got {forcing!r}")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; stages are {STAGES}")
    n_fit = len(calibration.fit_indices)
    if isinstance(steps, dict):
        steps = {"blockwise": 2 * n_fit, "global": n_fit, **steps}
    else:
        steps = {"blockwise": steps if steps is not None else 2 * n_fit, "global": steps if steps is not None else n_fit}
    lrs = dict(lr_by_block_kind or {})
    settings = {"stages": list(stages), "optimizer": optimizer, "steps": steps, "seed": seed,
                "global_loss": global_loss, "global_optimizer": global_optimizer,
                "global_batches_per_step": int(global_batches_per_step),
                "lr": {k: float(v) for k, v in sorted(lrs.items())}}
    if forcing == "teacher":
        settings["forcing"] = "teacher"  # (absent for "student": older checkpoints stay valid)
    if isinstance(student_or_plan, Plan):
        student_or_plan.check(teacher)
        settings["plan"] = {n: [c["family"], c.get("options", {})] for n, c in student_or_plan.layers.items()}
        student = student_or_plan.build(teacher, calibration)
        the_plan = student_or_plan
    else:
        student, the_plan = student_or_plan, None
    units = [("init",)] if "init" in stages else []
    for stage in ("refit", "blockwise"):
        if stage in stages:
            units += [(stage, b) for b in calibration.blocks]
    if "global" in stages:
        units.append(("global",))
    checkpoint = Checkpoint(checkpoint_dir, calibration.fingerprint, settings)
    done, history = [], []
    state = checkpoint.load() if resume else None
    if state is not None:
        student.load_state_dict(state["weights"])
        done, history = list(state["done"]), list(state["history"])
    for index, unit in enumerate(units):
        key = "/".join(unit)
        if key in done:
            continue
        stage = unit[0]
        result = None
        if stage == "blockwise" and forcing == "teacher":
            parallel = [(i, u) for i, u in enumerate(units) if u[0] == "blockwise" and "/".join(u) not in done]
            for block, entry in _teacher_forced_stage(teacher, student, the_plan, calibration, parallel, lrs, optimizer,
                                                      steps["blockwise"], seed, checkpoint_dir, resume, executor,
                                                      on_block_done):
                history.append(entry)
                done.append(f"blockwise/{block}")
            checkpoint.save(student, done, history)
            continue
        if stage == "refit":
            result = refit_block(teacher, student, calibration, unit[1])
        elif stage == "blockwise":
            lr = lrs.get(block_kind(unit[1]))
            result = run_block_task(student, calibration, unit[1], optimizer, lr, steps["blockwise"],
                                    _unit_seed(seed, index))
        elif stage == "global":
            result = global_task(student, calibration, global_loss, global_optimizer, lrs.get("global"),
                                 steps["global"], _unit_seed(seed, index), global_batches_per_step)
        entry = {"unit": key}
        if result is not None:
            entry.update(before=result[0], after=result[1])
        history.append(entry)
        done.append(key)
        checkpoint.save(student, done, history)
    return student, history


def _teacher_forced_stage(teacher, student, the_plan, calibration, units, lrs, optimizer, steps, seed, folder,
                          resume, executor, on_block_done):
    """Run the teacher-forced blockwise units as independent tasks on `executor`, then load every
    block's result into `student` in block order; yields (block, history entry)."""
    import shutil
    import tempfile
    from dreidel.recast.executor import BlockExecutor, BlockJob
    executor = executor or BlockExecutor("serial")
    settings = {u[1]: {"optimizer": optimizer, "lr": lrs.get(block_kind(u[1])), "steps": int(steps),
                       "seed": _unit_seed(seed, index)} for index, u in units}
    temporary = tempfile.mkdtemp(prefix="dreidel-blocks-") if folder is None else None
    try:
        job = BlockJob(teacher, student, calibration, the_plan, settings, folder or temporary)
        if not resume and os.path.isdir(job.folder):
            shutil.rmtree(job.folder)  # start over: no result of an earlier run is reused
        results = executor.run(job, on_block_done)
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)
    for _, unit in units:
        state = dict(results[unit[1]])
        before, after = (float(v) for v in state.pop("__loss__"))
        student.load_state_dict(state, strict=False)
        entry = {"unit": f"blockwise/{unit[1]}"}
        if not np.isnan(before):
            entry.update(before=before, after=after)
        yield unit[1], entry
