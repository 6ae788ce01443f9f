"""Teacher-forced block distillation on the serial, process and Ray backends: the same student bit for
bit, a worker killed mid-task is retried, a driver stopped after k of n blocks resumes; the kernels
the block tasks run accept read-only (memory-mapped / object-store) arrays."""
import os

import numpy as np
import pytest

import dreidel
from dreidel import recast
from dreidel.data.teacher import DigitsTransformer
from dreidel.recast.cli import save_dreidel_model
from dreidel.recast.executor import KILL_HOOK, BlockExecutor, ExecutorError, ray_available

STEPS = 3


def make_tiny(folder):
    """A 3-block digits ViT saved as a dreidel model file in `folder` (workers load it), its calibration
    and plan: (teacher, calibration, plan, teacher file)."""
    from pathlib import Path
    folder = Path(folder)
    teacher = DigitsTransformer(hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64, seed=3).eval()
    save_dreidel_model(teacher, folder / "tiny", "dreidel.data.teacher.DigitsTransformer", teacher.config)
    rng = np.random.default_rng(0)
    batches = [rng.uniform(0, 1, (16, 64)).astype(np.float32) for _ in range(4)]
    calib = recast.calibrate(teacher, batches, holdout=0.25)
    shapes = {t: [teacher.get_submodule(t).in_features, teacher.get_submodule(t).out_features] for t in calib.targets}
    plan = recast.Plan({t: {"family": "spectral", "options": {}} for t in calib.targets},
                       {"fingerprint": calib.fingerprint, "shapes": shapes})
    return teacher, calib, plan, str(folder / "tiny.json")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("teacher"))


def run(tiny, executor=None, folder=None, resume=True, on_block_done=None, stages=("init", "blockwise")):
    teacher, calib, plan, _ = tiny
    student, history = recast.distill(teacher, plan, calib, stages=stages, steps=STEPS, seed=5,
                                      forcing="teacher", executor=executor, checkpoint_dir=folder,
                                      resume=resume, on_block_done=on_block_done)
    return student.state_dict(), history


def assert_identical(a, b):
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def serial(tiny):
    return run(tiny, BlockExecutor("serial", threads=1))


def test_teacher_forcing_trains_every_block_and_feeds_it_the_teacher(tiny, serial):
    teacher, calib, plan, _ = tiny
    state, history = serial
    start = plan.build(teacher, calib).state_dict()
    improved = 0
    for block in calib.blocks:
        entry = next(e for e in history if e["unit"] == f"blockwise/{block}")
        assert entry["after"] <= entry["before"]  # a stage never makes its block worse
        names = [k for k in state if k.startswith(block + ".") and ".fc1." in k]
        changed = any(not np.array_equal(state[k], start[k]) for k in names)
        assert names and changed == (entry["after"] < entry["before"])
        improved += changed
    assert improved == len(calib.blocks)
    # a block's task depends on no other block: block 2 alone gives the same weights
    alone = serial[0]
    student = plan.build(teacher, calib)
    from dreidel.recast.executor import teacher_forced_block
    modules = {t: student.get_submodule(t) for t in calib.targets if t.startswith("encoder.layers.2.")}
    got = teacher_forced_block(teacher, modules, calib, "encoder.layers.2", steps=STEPS,
                               seed=_seed_of(calib, "encoder.layers.2"))
    assert all(teacher.get_submodule(t) is not m for t, m in modules.items())  # the teacher got its layers back
    for k, v in got.items():
        if k != "__loss__":
            assert np.array_equal(v, alone[k]), k


def _seed_of(calib, block):
    from dreidel.recast.distillation import _unit_seed
    units = [("init",)] + [("blockwise", b) for b in calib.blocks]
    return _unit_seed(5, units.index(("blockwise", block)))


def test_teacher_forcing_differs_from_the_student_forced_pipeline(tiny, serial):
    teacher, calib, plan, _ = tiny
    piped, _ = recast.distill(teacher, plan, calib, stages=("init", "blockwise"), steps=STEPS, seed=5)
    last = [k for k in serial[0] if k.startswith("encoder.layers.2.fc1")]
    assert any(not np.array_equal(piped.state_dict()[k], serial[0][k]) for k in last)


def test_process_backend_gives_the_serial_student(tiny, serial, tmp_path):
    state, history = run(tiny, BlockExecutor("process", workers=2, threads=1, teacher_path=tiny[3]), tmp_path)
    assert_identical(state, serial[0])
    assert history == serial[1]
    shards = list(tmp_path.glob("blocks-*/shards/*.npy"))
    assert shards  # the data went to the workers as memory-mapped files


def test_a_student_module_instead_of_a_plan_works_on_processes(tiny, tmp_path):
    teacher, calib, plan, path = tiny

    def distil(executor, folder):
        student = plan.build(teacher, calib)  # a module: workers read each layer's family and options off it
        return recast.distill(teacher, student, calib, stages=("blockwise",), steps=STEPS, seed=1,
                              forcing="teacher", executor=executor, checkpoint_dir=folder)[0].state_dict()
    assert_identical(distil(BlockExecutor("serial", threads=1), tmp_path / "s"),
                     distil(BlockExecutor("process", workers=2, threads=1, teacher_path=path), tmp_path / "p"))


def test_a_killed_process_worker_is_retried(tiny, serial, tmp_path, monkeypatch):
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_HOOK, f"encoder.layers.1:{marker}")
    state, _ = run(tiny, BlockExecutor("process", workers=2, threads=1, teacher_path=tiny[3]), tmp_path / "run")
    assert marker.exists()  # the worker really died once
    assert_identical(state, serial[0])


def test_a_worker_that_always_dies_is_an_error_not_a_hang(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv(KILL_HOOK, "encoder.layers.0:")  # no marker: the worker dies every time
    executor = BlockExecutor("process", workers=1, threads=1, teacher_path=tiny[3], max_retries=1)
    with pytest.raises(ExecutorError, match="encoder.layers.0"):
        run(tiny, executor, tmp_path / "run")


class Stop(Exception):
    pass


@pytest.mark.parametrize("backend", ["serial", "process"])
def test_an_interrupted_driver_resumes_with_the_same_student(tiny, serial, tmp_path, backend):
    teacher_path = tiny[3] if backend == "process" else None
    finished = []

    def stop_after_one(block):
        finished.append(block)
        if len(finished) == 1:
            raise Stop()
    executor = BlockExecutor(backend, workers=1, threads=1, teacher_path=teacher_path)
    with pytest.raises(Stop):
        run(tiny, executor, tmp_path, on_block_done=stop_after_one)
    saved = {p.name[:-len(".safetensors")] for p in tmp_path.glob("blocks-*/*.safetensors")} - {"start"}
    assert saved == {finished[0]}  # one block of three finished and is on disk, no other was started
    again = []
    state, _ = run(tiny, executor, tmp_path, on_block_done=again.append)
    assert sorted(again) == sorted(set(tiny[1].blocks) - saved)  # no finished block ran again
    assert_identical(state, serial[0])


def test_a_crashed_driver_process_resumes_with_the_same_student(tiny, serial, tmp_path):
    """The driver process itself dies (os._exit, no cleanup) after its first finished block; a new
    driver on the same folder runs only the missing blocks."""
    import subprocess
    import sys
    script = f"""
import os, sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_recast_distributed import make_tiny, run
from dreidel.recast.executor import BlockExecutor
tiny = make_tiny({str(tmp_path / "teacher")!r})
run(tiny, BlockExecutor("process", workers=1, threads=1, teacher_path=tiny[3]), {str(tmp_path / "run")!r},
    on_block_done=lambda block: os._exit(3))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.returncode == 3, done.stderr[-2000:]
    saved = {p.name[:-len(".safetensors")] for p in (tmp_path / "run").glob("blocks-*/*.safetensors")} - {"start"}
    assert len(saved) == 1  # one block finished and on disk (one task in flight at a time)
    again = []
    state, _ = run(tiny, BlockExecutor("process", workers=2, threads=1, teacher_path=tiny[3]), tmp_path / "run",
                   on_block_done=again.append)
    assert sorted(again) == sorted(set(tiny[1].blocks) - saved)
    assert_identical(state, serial[0])


def test_resume_false_discards_earlier_block_results(tiny, serial, tmp_path):
    run(tiny, BlockExecutor("serial", threads=1), tmp_path)
    ran = []
    state, _ = run(tiny, BlockExecutor("serial", threads=1), tmp_path, resume=False, on_block_done=ran.append)
    assert len(ran) == 3
    assert_identical(state, serial[0])


def test_bad_executor_settings_are_clear_errors(tiny):
    teacher, calib, plan, _ = tiny
    with pytest.raises(ValueError, match="backend"):
        BlockExecutor("threads")
    with pytest.raises(ValueError, match="workers"):
        BlockExecutor("process", workers=0, teacher_path="x")
    with pytest.raises(ValueError, match="teacher_path"):
        BlockExecutor("process", workers=2)
    with pytest.raises(ValueError, match="forcing"):
        recast.distill(teacher, plan, calib, forcing="sideways")


needs_ray = pytest.mark.skipif(not ray_available(), reason='Ray is not installed (pip install "dreidel[ray]")')


@pytest.fixture(scope="module")
def local_ray():
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@needs_ray
def test_ray_backend_gives_the_serial_student(tiny, serial, local_ray, tmp_path):
    state, history = run(tiny, BlockExecutor("ray", workers=2, threads=1, teacher_path=tiny[3]), tmp_path)
    assert_identical(state, serial[0])
    assert history == serial[1]


@needs_ray
def test_a_killed_ray_worker_is_retried(tiny, serial, local_ray, tmp_path, monkeypatch):
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_HOOK, f"encoder.layers.2:{marker}")
    state, _ = run(tiny, BlockExecutor("ray", workers=2, threads=1, teacher_path=tiny[3]), tmp_path / "run")
    assert marker.exists()
    assert_identical(state, serial[0])


def test_ray_missing_is_a_clear_error(monkeypatch):
    import dreidel.recast.executor as executor
    monkeypatch.setattr(executor, "ray_available", lambda: False)
    with pytest.raises(ExecutorError, match="dreidel\\[ray\\]"):
        executor.BlockExecutor("ray", teacher_path="x")


# -- read-only inputs: memory maps (process backend) and object-store arrays (Ray) are read-only ------
def _read_only(array, tmp_path=None, name="a"):
    if tmp_path is None:
        array = np.array(array)
        array.setflags(write=False)
        return array
    np.save(tmp_path / f"{name}.npy", array)
    return np.load(tmp_path / f"{name}.npy", mmap_mode="r")


@pytest.mark.parametrize("how", ["flag", "memmap"])
def test_the_kernels_of_the_block_tasks_accept_read_only_arrays(tmp_path, how):
    from dreidel import kernels
    rng = np.random.default_rng(0)
    n = 16
    x = rng.standard_normal((5, n)).astype(np.float32)
    g = rng.standard_normal((5, n)).astype(np.float32)
    perm = rng.permutation(n).astype(np.int64)
    d = rng.choice([-1.0, 1.0], n).astype(np.float32)
    perms = np.stack([rng.permutation(n) for _ in range(2)]).astype(np.int64)
    D = rng.standard_normal((2, n)).astype(np.float32)
    bias = rng.standard_normal(12).astype(np.float32)
    _, saved = kernels.spectral_stack(x, perms, D, 12)
    counter = iter(range(1000))

    def ro(a):
        assert a.flags.writeable
        out = _read_only(a, tmp_path if how == "memmap" else None, f"a{next(counter)}")
        assert not out.flags.writeable
        return out
    calls = {
        "fwht": lambda r: kernels.fwht(r(x)),
        "permute": lambda r: kernels.permute(r(x), r(perm)),
        "spectral_block": lambda r: kernels.spectral_block(r(x), r(perm), r(d)),
        "spectral_block_backward": lambda r: kernels.spectral_block_backward(r(g), r(x), r(perm), r(d)),
        "spectral_stack": lambda r: kernels.spectral_stack(r(x), r(perms), r(D), 12, bias=r(bias)),
        "spectral_stack_backward": lambda r: kernels.spectral_stack_backward(r(g[:, :12].copy()), r(saved), r(perms),
                                                                             r(D), n),
        "gelu": lambda r: kernels.gelu(r(x)),
        "gelu_backward": lambda r: kernels.gelu_backward(r(g), r(x)),
        "bias_gelu": lambda r: kernels.bias_gelu(r(x), r(d)),
        "bias_gelu_backward": lambda r: kernels.bias_gelu_backward(r(g), r(x), r(d)),
        "softmax": lambda r: kernels.softmax(r(x)),
        "softmax_backward": lambda r: kernels.softmax_backward(r(g), r(kernels.softmax(x))),
    }
    for name, call in calls.items():
        got, want = call(ro), call(lambda a: a.copy())
        for a, b in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            if a is not None:
                assert np.array_equal(a, b), name


@pytest.mark.parametrize("name", ["dense", "lowrank", "spectral", "wht", "hybrid"])
def test_student_layers_run_forward_and_backward_on_read_only_inputs(name, tmp_path):
    from dreidel.recast.students import family
    rng = np.random.default_rng(1)
    options = family(name).candidates(24, 20)[0]
    layer = family(name).empty(24, 20, True, **options)
    x = rng.standard_normal((2, 7, 24)).astype(np.float32)
    outputs = []
    for data in (x, _read_only(x, tmp_path)):
        for p in layer.parameters():
            p.grad = None
        t = dreidel.Tensor(data, requires_grad=True)
        assert t.data.flags.writeable == (data is x)  # the Tensor wraps the read-only array, no copy
        y = layer(t)
        (y * y).sum().backward()
        outputs.append((y.numpy().copy(), t.grad.copy(), [p.grad.copy() for p in layer.parameters()]))
    (y0, gx0, gp0), (y1, gx1, gp1) = outputs
    assert np.array_equal(y0, y1) and np.array_equal(gx0, gx1)
    assert all(np.array_equal(a, b) for a, b in zip(gp0, gp1))


def test_thread_count_does_not_change_the_student(tiny, serial):
    """At this tiny size 1 and 2 threads agree; at Whisper size they do not (bench/distributed.py):
    bit-identity across backends holds for the same threads per task."""
    state, _ = run(tiny, BlockExecutor("serial", threads=2))
    assert_identical(state, serial[0])


# -- the command line ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, tiny):
    folder = tmp_path_factory.mktemp("cli")
    from dreidel.data import load_digits
    x_train, _, x_test, _ = load_digits(seed=0)
    np.save(folder / "calib.npy", x_train[:64])
    np.save(folder / "eval.npy", x_test[:16])
    return folder


def _cli_args(tiny, folder, out, *extra):
    return [tiny[3], "--data", str(folder / "calib.npy"), "--eval-data", str(folder / "eval.npy"),
            "--budget", "0.5", "--budget-kind", "macs", "--families", "spectral", "--out", str(out),
            "--batch-size", "16", "--steps", "2", "--repeats", "1", "--stages", "init,blockwise,global",
            "--threads", "1", *extra]


def test_cli_workers_give_the_serial_teacher_forced_student(tiny, cli_files, tmp_path, capsys):
    from dreidel.recast import cli
    assert cli.recast_main(_cli_args(tiny, cli_files, tmp_path / "serial", "--forcing", "teacher")) == 0
    assert cli.recast_main(_cli_args(tiny, cli_files, tmp_path / "two", "--workers", "2")) == 0
    serial_state = dreidel.load(tmp_path / "serial" / cli.STUDENT_WEIGHTS)
    two_state = dreidel.load(tmp_path / "two" / cli.STUDENT_WEIGHTS)
    assert_identical(dict(sorted(serial_state.items())), dict(sorted(two_state.items())))  # files: any order
    assert len(list((tmp_path / "two" / "checkpoints").glob("blocks-*/encoder.layers.*.safetensors"))) == 3


@pytest.mark.parametrize("extra, message", [
    (["--workers", "0"], "--workers must be at least 1"),
    (["--workers", "2", "--ray", "auto"], "not both"),
    (["--workers", "2", "--forcing", "student"], "--forcing teacher"),
])
def test_cli_bad_scale_out_flags_are_clear_errors(tiny, cli_files, tmp_path, capsys, extra, message):
    from dreidel.recast import cli
    assert cli.recast_main(_cli_args(tiny, cli_files, tmp_path / "o", *extra)) == 2
    assert message in capsys.readouterr().err


def test_default_threads_per_task_do_not_depend_on_backend_or_workers(tiny, serial, tmp_path):
    """Thread counts change BLAS/OpenMP sums at real sizes, so the default must be one count for
    every backend and worker count (it was cores // workers: 2 for serial, 1 for two workers)."""
    defaults = {BlockExecutor("serial").threads, BlockExecutor("serial", workers=1).threads,
                BlockExecutor("process", workers=1, teacher_path=tiny[3]).threads,
                BlockExecutor("process", workers=2, teacher_path=tiny[3]).threads}
    assert defaults == {1}
    assert BlockExecutor("serial", threads=3).threads == 3
    state, _ = run(tiny, BlockExecutor("process", workers=2, teacher_path=tiny[3]), tmp_path)
    assert_identical(state, run(tiny, BlockExecutor("serial"))[0])
