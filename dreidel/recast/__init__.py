"""Recasting: turn a dense teacher (any `nn.Module`, native or an imported `GraphModule`) into a faster
student, distil it stage by stage, and report what it costs and what it buys.

    from dreidel import recast
    blocks = recast.find_blocks(teacher)                     # ["layers.0", "layers.1", ...]
    targets = recast.find_targets(teacher, blocks)           # ["layers.0.self_attn.q_proj", ...]
    calib = recast.calibrate(teacher, batches, targets, blocks, memory_budget=2 << 30, spill_dir="out/spill")
    the_plan = recast.plan(teacher, calib, families=("lowrank", "spectral"), budget=0.5, budget_kind="latency")
    the_plan.save("out/plan.json")                           # human-readable, editable; Plan.load validates
    student = recast.distill(teacher, the_plan, calib, checkpoint_dir="out/ckpt", resume=True)
    rep = recast.report(teacher, student, eval_batches)
    rep.to_json("out/report.json"); rep.to_markdown("out/report.md")

Batches. A batch is what the model is called with: a dict (`model(**batch)`, e.g. the loaders of
`dreidel.recast.data`), a tuple/list (`model(*batch)`) or a single array/Tensor (`model(batch)`).
`call_model(model, batch)` does exactly that; every function here accepts any iterable of batches.

Blocks and targets. A block is a named submodule holding a repeated unit (`encoder.layers.3`): the
children of the largest `ModuleList`/`Sequential`-like container of structurally similar modules, or,
for an imported `GraphModule`, its numbered scopes (`layers.0`...). A target is an `nn.Linear` inside a
block (the layers a student family replaces). A block's input is the input of the first module it runs;
its output is the input of the first module run after it (the next block's first norm, the final
norm), or its last module's output when nothing runs after it.

Public API (all documented where defined):
- `find_blocks(model) -> list[str]`, `find_targets(model, blocks=None) -> list[str]`, `call_model`.
- `calibrate(teacher, batches, targets, blocks, memory_budget=..., spill_dir=None, holdout=0.25)
  -> Calibration`: per target layer streamed input statistics (`InputStatistics`, fit part and held-out
  part) and input/output samples; per block input/output samples; per batch the model outputs.
  Samples beyond `memory_budget` bytes go to memory-mapped `.npy` files in `spill_dir`.
- `STUDENTS` (name -> class) and `register_student(name)` (class decorator). A family class has
  `from_dense(linear, stats, **options) -> nn.Module`, `candidates(linear) -> list[dict]` (the option
  sets the planner tries), `multiply_adds(module)`, `parameter_count(module)`. Families: `dense`,
  `lowrank`, `spectral`, `wht`, `hybrid`.
- `plan(teacher, calibration, families, budget, budget_kind="latency", ...) -> Plan`; `Plan.save(path)`,
  `Plan.load(path, teacher=None)` (validates: unknown layer / family / options, mismatched teacher ->
  `PlanError`); `Plan.build(teacher, calibration)` -> a student with every layer fitted in closed form.
- `distill(teacher, student_or_plan, calibration, stages=("init", "refit", "blockwise", "global"),
  optimizer="newton", lr_by_block_kind=None, steps=..., checkpoint_dir=None, resume=True, seed=0)
  -> student`; `run_block_task(...)` is the pure per-block gradient-distillation step.
- `report(teacher, student, eval_batches, ...) -> Report` with `to_json(path)`, `to_markdown(path)`.
"""

_NOT_YET = "dreidel.recast is being built: this function is a documented stub for now"


class PlanError(ValueError):
    """A plan that does not fit its teacher: unknown layer, unknown family, bad options, other teacher."""


def call_model(model, batch):
    """Call `model` on one batch: dict -> model(**batch), tuple/list -> model(*batch), else model(batch)."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def find_blocks(model):
    """Dotted names of the model's blocks (repeated units), in execution order."""
    raise NotImplementedError(_NOT_YET)


def find_targets(model, blocks=None):
    """Dotted names of the `nn.Linear` modules inside `blocks` (all blocks when None)."""
    raise NotImplementedError(_NOT_YET)


def calibrate(teacher, batches, targets=None, blocks=None, memory_budget=1 << 30, spill_dir=None,
              holdout=0.25, max_rows=None):
    """Run the teacher on `batches` with hooks; returns a `Calibration` (see the module docstring)."""
    raise NotImplementedError(_NOT_YET)


def plan(teacher, calibration, families=("lowrank", "spectral"), budget=0.5, budget_kind="latency",
         sensitivity=True, threads=None):
    """Choose one student per target layer maximising quality within `budget` (a fraction of the dense
    cost of the targets, measured as `budget_kind` = "latency", "macs" or "params"); returns a `Plan`."""
    raise NotImplementedError(_NOT_YET)


def distill(teacher, student_or_plan, calibration, stages=("init", "refit", "blockwise", "global"),
            optimizer="newton", lr_by_block_kind=None, steps=None, checkpoint_dir=None, resume=True, seed=0,
            global_loss=None):
    """Distil a student (a module or a `Plan`) from the teacher, stage by stage; returns the student."""
    raise NotImplementedError(_NOT_YET)


def report(teacher, student, eval_batches, plan=None, metric=None, threads=None, repeats=5):
    """Measure teacher and student on held-out batches; returns a `Report`."""
    raise NotImplementedError(_NOT_YET)


STUDENTS = {}


def register_student(name):
    """Class decorator: register a student family under `name` in `STUDENTS`."""
    def decorate(cls):
        cls.name = name
        STUDENTS[name] = cls
        return cls
    return decorate
