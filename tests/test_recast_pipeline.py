"""dreidel.recast on tiny models: blocks/targets, calibration spill, knapsack, plans, staged distillation,
resume and crash safety."""
import itertools
import json

import numpy as np
import pytest

import dreidel
from dreidel import nn, recast
from dreidel.recast import distillation as distill_module
from dreidel.recast.distillation import block_loss, output_loss, relative_mse
from dreidel.recast.planning import choose_dp, choose_greedy


class Block(nn.Module):
    def __init__(self, d, h, rng):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, h, rng=rng)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(h, d, rng=rng)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class Tiny(nn.Module):
    """embed → 3 pre-norm residual MLP blocks → norm."""

    def __init__(self, d=32, h=64, n=3, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.embed = nn.Linear(12, d, rng=rng)
        self.layers = nn.ModuleList([Block(d, h, rng) for _ in range(n)])
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        x = self.embed(x)
        for block in self.layers:
            x = block(x)
        return self.norm(x)


def batches(n=8, rows=24, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((rows, 12)).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def setup():
    teacher = Tiny()
    calib = recast.calibrate(teacher, batches())
    plan = recast.Plan({t: {"family": "lowrank", "options": {"rank": 6}} for t in calib.targets},
                       {"fingerprint": calib.fingerprint,
                        "shapes": {t: [teacher.get_submodule(t).in_features, teacher.get_submodule(t).out_features]
                                   for t in calib.targets}})
    return teacher, calib, plan


def test_blocks_and_targets_of_a_native_model():
    teacher = Tiny()
    assert recast.find_blocks(teacher) == ["layers.0", "layers.1", "layers.2"]
    assert recast.find_targets(teacher) == [f"layers.{i}.fc{j}" for i in range(3) for j in (1, 2)]
    calib = recast.calibrate(teacher, batches(2))
    # block input = its first module's input, output = the next block's norm input (the final norm's)
    assert calib.boundaries.taps["layers.2"] == ("layers.2.norm", "norm", True)
    x = dreidel.Tensor(batches(2)[0])
    with dreidel.no_grad():
        h = teacher.embed(x)
        for block in teacher.layers:
            h = block(h)
    i = 0 if 0 in calib.fit_indices or True else 0
    np.testing.assert_allclose(calib.block_outputs["layers.2"][i], h.numpy(), rtol=1e-6, atol=1e-6)


def test_spill_to_memmap_gives_the_same_calibration(tmp_path):
    teacher = Tiny()
    memory = recast.calibrate(teacher, batches(), memory_budget=1 << 30)
    spilled = recast.calibrate(teacher, batches(), memory_budget=0, spill_dir=tmp_path / "spill")
    assert memory.block_outputs["layers.1"].spilled == 0
    assert spilled.block_outputs["layers.1"].spilled == len(batches())
    assert isinstance(spilled.outputs[3], np.memmap) and len(list(tmp_path.glob("spill/*.npy"))) > 0
    for block in memory.blocks:
        for i in range(len(batches())):
            np.testing.assert_array_equal(memory.block_outputs[block][i], spilled.block_outputs[block][i])
    for target in memory.targets:
        for part in ("fit", "holdout"):
            a, b = memory.stats[target][part], spilled.stats[target][part]
            assert a.count == b.count > 0
            np.testing.assert_array_equal(a.covariance, b.covariance)
    assert memory.holdout_indices == spilled.holdout_indices and set(memory.holdout_indices).isdisjoint(
        memory.fit_indices)


def brute_force(costs, losses, budget):
    best = None
    for choice in itertools.product(*[range(len(c)) for c in costs]):
        if sum(c[i] for c, i in zip(costs, choice)) <= budget:
            loss = sum(l[i] for l, i in zip(losses, choice))
            best = loss if best is None or loss < best else best
    return best


def test_knapsack_respects_the_budget_and_is_optimal():
    # greedy first takes B's cheap small downgrade (rate 0.05), then must also downgrade A: loss 1.05;
    # the optimum keeps B dense and downgrades A alone: loss 1.0 at cost exactly 11
    costs = [[10, 1], [10, 9, 1]]
    losses = [[0.0, 1.0], [0.0, 0.05, 1.5]]
    budget = 11
    dp, greedy = choose_dp(costs, losses, budget, resolution=budget), choose_greedy(costs, losses, budget)
    total = lambda c, v: sum(x[i] for x, i in zip(v, c))  # noqa: E731
    assert total(dp, costs) <= budget and total(greedy, costs) <= budget
    assert total(dp, losses) < total(greedy, losses)
    assert total(dp, losses) == pytest.approx(brute_force(costs, losses, budget))
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = rng.integers(2, 5)
        costs = [list(rng.integers(1, 20, size=rng.integers(1, 4))) for _ in range(n)]
        losses = [list(rng.random(len(c))) for c in costs]
        budget = int(rng.integers(5, 40))
        chosen = choose_dp(costs, losses, budget, resolution=budget)  # integer costs: exact units
        best = brute_force(costs, losses, budget)
        if best is None:
            assert chosen is None
        else:
            assert total(chosen, costs) <= budget
            assert total(chosen, losses) == pytest.approx(best)
    assert recast.planning.choose([[5], [5]], [[0], [0]], 9) is None


def test_plan_meets_its_budget_and_round_trips(tmp_path, setup):
    teacher, calib, _ = setup
    plan = recast.plan(teacher, calib, families=("lowrank", "spectral"), budget=0.5, budget_kind="macs",
                       repeats=1)
    assert plan.totals["macs"]["student"] <= 0.5 * plan.totals["macs"]["dense"]
    assert set(plan.layers) == set(calib.targets)
    path = tmp_path / "plan.json"
    plan.save(path)
    loaded = recast.Plan.load(path, teacher)
    assert loaded.layers == json.loads(path.read_text())["layers"]
    student = loaded.build(teacher, calib)
    for name, choice in plan.layers.items():
        assert recast.students.describe(student.get_submodule(name))[0] == choice["family"]


def edited(tmp_path, plan, change):
    data = json.loads(json.dumps(plan.to_dict()))  # a deep copy: the fixture's plan stays as it is
    change(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


def test_bad_plans_and_mismatched_teachers_are_clear_errors(tmp_path, setup):
    teacher, calib, plan = setup
    cases = [
        (lambda d: d["layers"]["layers.0.fc1"].update(family="magic"), "unknown family 'magic'"),
        (lambda d: d["layers"]["layers.0.fc1"].update(options={"rank": -3}), "must be a positive integer"),
        (lambda d: d["layers"]["layers.0.fc1"].update(options={"depth": 2}), "has no option 'depth'"),
        (lambda d: d["layers"].update({"layers.9.fc1": {"family": "dense"}}), "layers.9.fc1"),
        (lambda d: d.update(format="something else"), "not a recast plan"),
    ]
    for change, message in cases:
        with pytest.raises(recast.PlanError, match=message):
            recast.Plan.load(edited(tmp_path, plan, change), teacher)
    (tmp_path / "broken.json").write_text("{ not json")
    with pytest.raises(recast.PlanError, match="not valid JSON"):
        recast.Plan.load(tmp_path / "broken.json")
    good = edited(tmp_path, plan, lambda d: None)
    with pytest.raises(recast.PlanError, match="another teacher"):
        recast.Plan.load(good, Tiny(seed=5))  # same shapes, other weights
    with pytest.raises(recast.PlanError, match="does not exist|plan was made for"):
        recast.Plan.load(good, Tiny(h=48))


def total_block_loss(student, calib):
    return sum(block_loss(student, calib, b) for b in calib.blocks)


def test_block_loss_never_increases_over_the_stages(setup):
    teacher, calib, plan = setup
    losses = []
    student = None
    for stages in (("init",), ("init", "refit"), ("init", "refit", "blockwise")):
        student, history = recast.distill(teacher, plan, calib, stages=stages, steps=12, optimizer="adamw",
                                          lr_by_block_kind={"layers": 3e-3})
        losses.append(total_block_loss(student, calib))
    assert losses[0] >= losses[1] >= losses[2]
    assert losses[2] < 0.95 * losses[0]  # the stages do real work
    for entry in history:
        if "before" in entry:
            assert entry["after"] <= entry["before"]
    full, history = recast.distill(teacher, plan, calib, steps=12, optimizer="newton")
    assert history[-1]["unit"] == "global" and history[-1]["after"] <= history[-1]["before"]
    mse = lambda s: output_loss(s, calib, relative_mse)  # noqa: E731
    assert mse(full) < mse(recast.distill(teacher, plan, calib, stages=("init",))[0])


def test_newton_leaves_no_curvature_capture_on(setup):
    # a spectral student trained by DiagonalNewton must not keep capturing curvature at inference
    teacher, calib, plan = setup
    spectral = recast.Plan({t: {"family": "spectral", "options": {"depth": 2}} for t in plan.layers}, plan.teacher)
    student, _ = recast.distill(teacher, spectral, calib, stages=("init", "blockwise", "global"), steps=2,
                                optimizer="newton")
    layers = [student.get_submodule(t) for t in calib.targets]
    assert layers and all(hasattr(m, "capture_curvature") and not m.capture_curvature for m in layers)


def states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        np.testing.assert_array_equal(np.asarray(sa[key]), np.asarray(sb[key]), err_msg=key)


def test_resume_after_interruption_gives_the_identical_student(tmp_path, setup, monkeypatch):
    teacher, calib, plan = setup
    settings = dict(steps=4, optimizer="newton")
    reference, ref_history = recast.distill(teacher, plan, calib, checkpoint_dir=tmp_path / "a", **settings)
    real, calls = distill_module.run_block_task, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(distill_module, "run_block_task", interrupted)
    with pytest.raises(KeyboardInterrupt):
        recast.distill(teacher, plan, calib, checkpoint_dir=tmp_path / "b", **settings)
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert state["done"][-1] == "blockwise/layers.0"
    monkeypatch.setattr(distill_module, "run_block_task", real)
    resumed, history = recast.distill(teacher, plan, calib, checkpoint_dir=tmp_path / "b", **settings)
    states_equal(reference, resumed)
    assert history == ref_history
    # another teacher or other settings cannot resume this checkpoint by accident
    with pytest.raises(recast.PlanError, match="other settings"):
        recast.distill(teacher, plan, calib, checkpoint_dir=tmp_path / "b", steps=5, optimizer="newton")


def test_a_crash_while_writing_a_checkpoint_loses_nothing(tmp_path, setup, monkeypatch):
    teacher, calib, plan = setup
    settings = dict(stages=("init", "refit", "blockwise"), steps=3, optimizer="adamw")
    reference, _ = recast.distill(teacher, plan, calib, checkpoint_dir=tmp_path / "a", **settings)
    real_save, calls = dreidel.save, []

    def crashing_save(state, path, metadata=None):
        calls.append(path)
        if len(calls) == 4:
            with open(str(path) + ".partial", "wb") as f:  # half a file, then the crash
                f.write(b"\x00" * 100)
            raise OSError("disk full (simulated)")
        return real_save(state, path, metadata)
    monkeypatch.setattr(dreidel, "save", crashing_save)
    with pytest.raises(OSError, match="simulated"):
        recast.distill(teacher, plan, calib, checkpoint_dir=tmp_path / "b", **settings)
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert len(state["done"]) == 3 and (tmp_path / "b" / state["weights_file"]).exists()
    monkeypatch.setattr(dreidel, "save", real_save)
    resumed, _ = recast.distill(teacher, plan, calib, checkpoint_dir=tmp_path / "b", **settings)
    states_equal(reference, resumed)


def test_refit_and_block_task_touch_only_their_block(setup):
    teacher, calib, plan = setup
    student, _ = recast.distill(teacher, plan, calib, stages=("init",))
    before = {k: np.array(v) for k, v in student.state_dict().items()}
    before_loss, after_loss = recast.run_block_task(student, calib, "layers.1", optimizer="adamw", lr=1e-2, steps=20)
    assert after_loss < before_loss
    after = student.state_dict()
    changed = {k for k in before if not np.array_equal(before[k], np.asarray(after[k]))}
    assert changed and all(k.startswith("layers.1.") for k in changed)


def test_report_measures_student_against_teacher(tmp_path, setup):
    teacher, calib, plan = setup
    student, _ = recast.distill(teacher, plan, calib, stages=("init",))
    rep = recast.report(teacher, student, batches(2, seed=9), repeats=1)
    model = rep.data["model"]
    assert model["student_macs"] < model["teacher_macs"] and 0 < model["relative_error"] < 1
    assert model["cosine"] > 0.5 and model["speedup"] > 0
    rep.to_json(tmp_path / "r.json")
    assert "lowrank" in rep.to_markdown(tmp_path / "r.md")
    assert json.loads((tmp_path / "r.json").read_text())["model"]["eval_batches"] == 2


def test_a_saved_student_reloads_into_an_unfitted_build(tmp_path, setup):
    teacher, calib, _ = setup
    layers = {"layers.0.fc1": {"family": "spectral", "options": {"depth": 2}},
              "layers.0.fc2": {"family": "hybrid", "options": {"rank": 3, "depth": 1}},
              "layers.1.fc1": {"family": "wht", "options": {}}, "layers.1.fc2": {"family": "dense", "options": {}},
              "layers.2.fc1": {"family": "lowrank", "options": {"rank": 5}}}
    plan = recast.Plan(layers, {"fingerprint": calib.fingerprint,
                                "shapes": {t: [teacher.get_submodule(t).in_features,
                                               teacher.get_submodule(t).out_features] for t in layers}})
    student, _ = recast.distill(teacher, plan, calib, stages=("init", "refit"))
    dreidel.save(student.state_dict(), tmp_path / "student.safetensors")
    shell = plan.build(teacher)  # no calibration: the structure only
    shell.load_state_dict(dreidel.load(tmp_path / "student.safetensors"))
    x = batches(1, seed=3)[0]
    with dreidel.no_grad():
        np.testing.assert_array_equal(shell(dreidel.Tensor(x)).numpy(), student(dreidel.Tensor(x)).numpy())


def test_a_student_of_a_bias_free_teacher_reloads_with_the_biases_its_fit_added(tmp_path):
    # fits on activations give every replaced layer an intercept, also where the teacher's layer had
    # no bias (Llama); the saved state says which layers have one, and the shell must follow it
    teacher = Tiny()
    for block in teacher.layers:
        block.fc1.bias = None
    calib = recast.calibrate(teacher, batches())
    layers = {"layers.0.fc1": {"family": "lowrank", "options": {"rank": 5}},
              "layers.1.fc1": {"family": "spectral", "options": {"depth": 2}},
              "layers.2.fc1": {"family": "dense", "options": {}}}
    plan = recast.Plan(layers, {"fingerprint": calib.fingerprint,
                                "shapes": {t: [teacher.get_submodule(t).in_features,
                                               teacher.get_submodule(t).out_features] for t in layers}})
    student, _ = recast.distill(teacher, plan, calib, stages=("init",))
    state = student.state_dict()
    assert "layers.0.fc1.bias" in state and "layers.2.fc1.bias" not in state
    dreidel.save(state, tmp_path / "student.safetensors")
    saved = dreidel.load(tmp_path / "student.safetensors")
    with pytest.raises(KeyError, match="unexpected keys"):
        plan.build(teacher).load_state_dict(saved)  # the teacher's bias layout is not the student's
    shell = plan.build(teacher, state=saved)
    shell.load_state_dict(saved)
    x = batches(1, seed=3)[0]
    with dreidel.no_grad():
        np.testing.assert_array_equal(shell(dreidel.Tensor(x)).numpy(), student(dreidel.Tensor(x)).numpy())


def test_planning_leaves_the_teacher_as_it_was(setup):
    """The sensitivity probe swaps layers in and out of the teacher: its module order (hence its
    fingerprint, which plans and checkpoints are tied to) must come back unchanged."""
    teacher, calib, _ = setup
    names = [n for n, _ in teacher.named_modules()]
    plan = recast.plan(teacher, calib, families=("lowrank",), budget=0.5, budget_kind="macs", repeats=1)
    assert [n for n, _ in teacher.named_modules()] == names
    assert recast.teacher_fingerprint(teacher) == calib.fingerprint
    recast.distill(teacher, plan, calib, stages=("init",))  # checks the fingerprint


def test_replacing_a_child_keeps_its_place():
    block = Block(4, 8, np.random.default_rng(0))
    before = [n for n, _ in block.named_modules()]
    block.set_submodule("fc1", nn.Linear(4, 8))
    assert [n for n, _ in block.named_modules()] == before


def test_a_step_that_raises_its_batch_loss_is_undone(setup):
    # DiagonalNewton at lr 50 overflows this block unguarded (the stage then keeps nothing); with each
    # step checked on its batch, the rate halves until steps help and the block loss drops
    teacher, calib, plan = setup
    student, _ = recast.distill(teacher, plan, calib, stages=("init",))
    before, after = distill_module.run_block_task(student, calib, calib.blocks[1], "newton", lr=50.0, steps=12)
    assert after < 0.9 * before
