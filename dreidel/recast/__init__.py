"""Recasting: turn a dense teacher (any `nn.Module`, native or an imported `GraphModule`) into a faster
student, distil it stage by stage, and report what it costs and what it buys.

    from dreidel import recast
    blocks = recast.find_blocks(teacher)                     # ["layers.0", "layers.1", ...]
    targets = recast.find_targets(teacher, blocks)           # ["layers.0.self_attn.q_proj", ...]
    calib = recast.calibrate(teacher, batches, targets, blocks, memory_budget=2 << 30, spill_dir="out/spill")
    the_plan = recast.plan(teacher, calib, families=("lowrank", "spectral"), budget=0.5, budget_kind="latency")
    the_plan.save("out/plan.json")                           # human-readable, editable; Plan.load validates
    student, history = recast.distill(teacher, the_plan, calib, checkpoint_dir="out/ckpt", resume=True)
    rep = recast.report(teacher, student, eval_batches)
    rep.to_json("out/report.json"); rep.to_markdown("out/report.md")

Batches. A batch is what the model is called with: a dict (`model(**batch)`, e.g. the loaders of
`dreidel.recast.data`), a tuple/list (`model(*batch)`) or a single array/Tensor (`model(batch)`).
`call_model(model, batch)` does exactly that; every function here accepts any iterable of batches.

Blocks and targets. A block is a named submodule holding a repeated unit (`encoder.layers.3`): the
numbered children of a container (`ModuleList`, `Sequential`, an imported `GraphModule`'s `layers`
scope) that hold `nn.Linear` layers. A target is an `nn.Linear` inside a
block (the layers a student family replaces). A block's input is the input of the first module it runs;
its output is the input of the first module run after it (the next block's first norm, the final
norm), or its last module's output when nothing runs after it.

Public API (all documented where defined):
- `find_blocks(model) -> list[str]`, `find_targets(model, blocks=None) -> list[str]`, `call_model`.
- `calibrate(teacher, batches, targets, blocks, memory_budget=..., spill_dir=None, holdout=0.25)
  -> Calibration`: per target layer streamed input statistics (`InputStatistics`, fit batches and
  held-out batches apart) and rows per batch; per block the teacher's output on every batch; per batch
  the model output. Samples beyond `memory_budget` bytes go to memory-mapped `.npy` files in `spill_dir`.
- `STUDENTS` (name -> class) and `register_student(name)` (class decorator). A family class has
  `from_dense(linear, stats, **options) -> nn.Module` (and `fit(weight, bias, stats, **options)`),
  `candidates(in_features, out_features) -> list[dict]` (the option sets the planner tries),
  `operator(module) -> (W, b)`, `multiply_adds(module)`, `parameter_count(module)`. Families: `dense`,
  `lowrank`, `spectral`, `wht`, `hybrid` (the mixture-of-experts FFN is not built yet).
- `plan(teacher, calibration, families, budget, budget_kind="latency", ...) -> Plan`; `Plan.save(path)`,
  `Plan.load(path, teacher=None)` (validates: unknown layer / family / options, mismatched teacher ->
  `PlanError`); `Plan.build(teacher, calibration)` -> a student with every layer fitted in closed form;
  `Plan.build(teacher)` (no data) -> the planned structure unfitted, to `load_state_dict` a saved
  student into. `plan.json` layers: {"layers.0.fc1": {"family": "lowrank", "options": {"rank": 96}, ...}}.
- `distill(teacher, student_or_plan, calibration, stages=("init", "refit", "blockwise", "global"),
  optimizer="newton", lr_by_block_kind=None, steps=..., checkpoint_dir=None, resume=True, seed=0)
  -> (student, history)`; `run_block_task(student, calibration, block, ...)` is the per-block
  gradient-distillation step (seeded, touches only that block).
- `report(teacher, student, eval_batches, ...) -> Report` with `to_json(path)`, `to_markdown(path)`.
"""
from dreidel.recast.calibration import Calibration, SampleStore, calibrate, teacher_fingerprint
from dreidel.recast.distillation import STAGES, distill, refit_block, run_block_task, global_task
from dreidel.recast.planning import Plan, PlanError, plan
from dreidel.recast.report import Report, report
from dreidel.recast.structure import call_model, find_blocks, find_targets
from dreidel.recast.students import STUDENTS, register_student
from dreidel.recast import students

__all__ = ["Calibration", "SampleStore", "calibrate", "teacher_fingerprint", "STAGES", "distill", "refit_block",
           "run_block_task", "global_task", "Plan", "PlanError", "plan", "Report", "report", "call_model",
           "find_blocks", "find_targets", "STUDENTS", "register_student", "students"]

