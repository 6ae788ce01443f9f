"""Run the independent block tasks of distillation serially, in local processes, or on a Ray cluster.

Teacher-forced block distillation (`distill(..., forcing="teacher")`) trains each block's student
layers inside the TEACHER (every other block the teacher's own), so each block sees exactly the
teacher's block inputs and the blocks are independent tasks:

    task(block) = (teacher, student start state, calibration data, block, seed, settings)
                  -> the block's fitted state dict, saved atomically as `<run>/<block>.safetensors`

The seed of a task comes from (run seed, unit index), never from scheduling, so every backend gives
the same bits for the same `threads` per task (BLAS/OpenMP sums differ between thread counts at
real sizes: measured on Whisper, 2 threads vs 1), so the default is one thread per task on every
backend: results never depend on how many workers ran. A block whose file exists is not run again (resume after a driver crash); a task whose
worker dies is run again from the same inputs (a killed process: the pool is rebuilt; Ray: `max_retries`),
and nothing is applied until every block is done, in block order.

Backends:
- "serial": in this process.
- "process": `workers` spawned processes (standard library). The calibration batches and teacher block
  outputs are written once as `.npy` shards (spilled calibration samples are used where they lie) and
  opened memory-mapped, read-only, by every worker.
- "ray": Ray tasks (`pip install "dreidel[ray]"`). The arrays are `ray.put` once into the object store
  (read-only, zero-copy on the node); `address` "auto" joins a running cluster or starts a local one.
Workers load the teacher from its file (`teacher_path`, by `dreidel.recast.cli.load_teacher`) and
build only the task's block of the student, from its plan, so both backends need a `Plan` and the
teacher's path; every Ray node
needs dreidel (with the same version) and the teacher file at the same path.
Each task runs with `threads` kernel/BLAS threads (default 1, the same for every backend and worker count).
"""
import hashlib
import json
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import numpy as np

import dreidel
from dreidel.serialization import atomic_write_bytes

BACKENDS = ("serial", "process", "ray")
KILL_HOOK = "DREIDEL_RECAST_TEST_KILL"  # "<block>:<marker file>": that block's worker exits once (tests);
#                                        "<block>:" exits every time


class ExecutorError(RuntimeError):
    """A block task that failed on every retry, or an executor that cannot run."""


def ray_available():
    try:
        import ray  # noqa: F401
        return True
    except ImportError:
        return False


class BlockExecutor:
    """Where block tasks run: `backend` "serial" | "process" | "ray", `workers` at a time (Ray, None:
    as many as the cluster's CPUs hold), `threads` kernel threads each (default 1 on every backend, so results do not depend on `workers`). `teacher_path` (and `output`, see `cli.select_output`) let workers load the
    teacher; `address` is the Ray cluster ("auto": a running one, else a local `ray.init`);
    `max_retries`: how often a task whose worker died is run again."""

    def __init__(self, backend="serial", workers=1, threads=None, teacher_path=None, output=None,
                 address="auto", max_retries=3, ray_init=None):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if workers is None and backend != "ray":
            workers = 1
        if workers is not None and int(workers) < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        workers = None if workers is None else int(workers)
        if backend != "serial" and teacher_path is None:
            raise ValueError(f"the {backend} backend loads the teacher in each worker: give teacher_path")
        if backend == "ray" and not ray_available():
            raise ExecutorError('the ray backend needs Ray: pip install "dreidel[ray]"')
        self.backend, self.workers, self.address = backend, workers, address
        self.threads = int(threads) if threads else 1  # not cores // workers: the bits would depend on workers
        self.teacher_path = None if teacher_path is None else os.path.abspath(os.fspath(teacher_path))
        self.output, self.max_retries, self.ray_init = output, int(max_retries), dict(ray_init or {})

    def __repr__(self):
        return f"BlockExecutor({self.backend!r}, workers={self.workers}, threads={self.threads})"

    def run(self, job, on_done=None):
        """Run every task of `job` (a `BlockJob`) whose result file is missing; returns
        {block: state dict} for all of the job's blocks. `on_done(block)` after each finished task."""
        pending = [b for b in job.blocks if not os.path.exists(job.result_path(b))]
        if self.backend != "serial":
            pending.reverse()  # later blocks run a longer teacher prefix: start the longest tasks first
        if pending:
            run = {"serial": self._serial, "process": self._process, "ray": self._ray}[self.backend]
            run(job, pending, on_done or (lambda block: None))
        return {b: dreidel.load(job.result_path(b)) for b in job.blocks}

    # -- serial ------------------------------------------------------------------------------------
    def _serial(self, job, pending, on_done):
        previous = dreidel.get_num_threads()
        dreidel.set_num_threads(self.threads)
        try:
            for block in pending:
                job.save_result(block, job.task(job.teacher, job.student, job.calibration, block))
                on_done(block)
        finally:
            dreidel.set_num_threads(previous)

    # -- processes ---------------------------------------------------------------------------------
    def _process(self, job, pending, on_done):
        import multiprocessing
        manifest = job.write_shards(self.teacher_path, self.output)
        attempts, reported = {b: 0 for b in pending}, set()
        remaining = list(pending)
        while remaining:
            pool = ProcessPoolExecutor(min(self.workers, len(remaining)),
                                       mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init_worker, initargs=(self.threads, True))
            queue, running, broken = list(remaining), {}, False
            try:
                while (queue or running) and not broken:
                    # at most `workers` tasks in flight: a stopped driver leaves no queued task behind
                    while queue and len(running) < self.workers:
                        block = queue.pop(0)
                        attempts[block] += 1
                        running[pool.submit(_process_task, manifest, block, os.environ.get(KILL_HOOK))] = block
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        block = running.pop(future)
                        try:
                            future.result()
                        except BrokenProcessPool:  # a worker died: rebuild the pool, rerun what is missing
                            broken = True
                            continue
                        on_done(block)
                        reported.add(block)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            for block in remaining:  # saved by a live worker of a broken pool: finished all the same
                if block not in reported and os.path.exists(job.result_path(block)):
                    on_done(block)
                    reported.add(block)
            remaining = [b for b in remaining if not os.path.exists(job.result_path(b))]
            failed = [b for b in remaining if attempts[b] > self.max_retries]
            if failed:
                raise ExecutorError(f"block tasks {failed} failed {self.max_retries + 1} times (worker died)")

    # -- ray ---------------------------------------------------------------------------------------
    def _ray(self, job, pending, on_done):
        import ray
        connect_ray(self.address, **self.ray_init)
        remote = ray.remote(num_cpus=self.threads, max_retries=self.max_retries)(_ray_task)
        data = job.ray_data()
        start = ray.put(job.start_state())
        source = {"teacher_path": self.teacher_path, "output": self.output, "plan": job.plan_dict,
                  "threads": self.threads, "settings": job.settings, "key": job.key,
                  "targets": job.calibration.targets, "blocks": job.calibration.blocks}
        largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
        if self.threads > largest:  # such a task could never be scheduled: say so instead of waiting
            raise ExecutorError(f"tasks of {self.threads} CPUs (threads) fit on no Ray node (the largest has "
                                f"{largest:g}); give fewer threads")
        limit = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // self.threads)
        queue, running = list(pending), {}
        try:
            self._ray_loop(job, queue, running, limit, remote, data, start, source, on_done)
        except BaseException:
            for ref in running:  # a stopped driver leaves no task running on the cluster
                ray.cancel(ref, force=True)
            raise

    @staticmethod
    def _ray_loop(job, queue, running, limit, remote, data, start, source, on_done):
        import ray
        while queue or running:
            while queue and len(running) < limit:
                block = queue.pop(0)
                ref = remote.remote(source, start, data["batches"], data["outputs"][block], block,
                                    os.environ.get(KILL_HOOK))
                running[ref] = block
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                block = running.pop(ref)
                try:
                    state = ray.get(ref)
                except ray.exceptions.RayError as error:
                    raise ExecutorError(f"block task {block!r} failed on Ray: {error}") from None
                job.save_result(block, state)
                on_done(block)


def connect_ray(address="auto", **init):
    """Connect to Ray once: an initialised Ray as it is; `address` "auto" (or None) joins a running
    cluster (RAY_ADDRESS or one started with `ray start`) and else starts a local instance; any other
    address ("ray://host:10001", "host:6379") must be reachable."""
    import ray
    if ray.is_initialized():
        return
    if address in (None, "auto", "local"):
        if address != "local":
            try:
                ray.init(address="auto", **init)
                return
            except (ConnectionError, RuntimeError, ValueError):
                pass
        init.setdefault("include_dashboard", False)
        ray.init(**init)
        return
    ray.init(address=address, **init)


# -- the job: what every task needs ---------------------------------------------------------------
class BlockJob:
    """The teacher-forced block tasks of one stage: the teacher, the student at the stage's start,
    the calibration, the plan (for workers), `settings` {block: {"optimizer", "lr", "steps", "seed"}}
    and `folder`, where the results go (a subfolder named by a hash of the start state and settings,
    so a changed start never reuses old results)."""

    def __init__(self, teacher, student, calibration, plan, settings, folder):
        self.teacher, self.student, self.calibration = teacher, student, calibration
        self.plan_dict = {"layers": _structure(student, calibration.targets) if plan is None else plan.layers}
        self.settings, self.blocks = settings, list(settings)
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
        for name, value in sorted(student.state_dict().items()):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        self.key = digest.hexdigest()[:16]
        self.folder = os.path.join(os.fspath(folder), f"blocks-{self.key}")

    def result_path(self, block):
        return os.path.join(self.folder, f"{block or 'model'}.safetensors")

    def save_result(self, block, state):
        dreidel.save(state, self.result_path(block))  # atomic: temp file + rename

    def start_state(self):
        return self.student.state_dict()

    def task(self, teacher, student, calibration, block):
        from dreidel.recast.distillation import block_targets
        modules = {t: student.get_submodule(t) for t in block_targets(calibration, block)}
        return teacher_forced_block(teacher, modules, calibration, block, **self.settings[block])

    def write_shards(self, teacher_path, output):
        """The data of the tasks as `.npy` files beside a manifest (written once; spilled calibration
        samples are referred to where they are); returns the manifest's path."""
        shards = os.path.join(self.folder, "shards")
        manifest_path = os.path.join(shards, "manifest.json")
        if os.path.exists(manifest_path):
            return manifest_path
        os.makedirs(shards, exist_ok=True)
        calib = self.calibration

        def store(array, name):
            filename = getattr(array, "filename", None)
            if isinstance(array, np.memmap) and filename and os.path.exists(filename):
                return os.path.abspath(filename)  # already on disk (a spilled sample)
            path = os.path.join(shards, name + ".npy")
            np.save(path, np.ascontiguousarray(array), allow_pickle=False)
            return path
        batches = {}
        for i in calib.fit_indices:
            kind, parts = _batch_parts(calib.batches[i])
            batches[i] = {"kind": kind, "parts": {k: store(v, f"batch-{i}-{n}")
                                                  for n, (k, v) in enumerate(parts.items())}}
        outputs = {b: {i: store(calib.block_outputs[b][i], f"output-{b or 'model'}-{i}") for i in calib.fit_indices}
                   for b in self.blocks}
        start = os.path.join(self.folder, "start.safetensors")
        dreidel.save(self.start_state(), start)
        manifest = {"teacher_path": teacher_path, "output": output, "plan": self.plan_dict, "start": start,
                    "targets": calib.targets, "blocks": calib.blocks, "fit_indices": calib.fit_indices,
                    "batches": {str(i): v for i, v in batches.items()},
                    "outputs": {b: {str(i): p for i, p in v.items()} for b, v in outputs.items()},
                    "settings": self.settings, "key": self.key}
        atomic_write_bytes(manifest_path, json.dumps(manifest, indent=1).encode())
        return manifest_path

    def ray_data(self):
        """{"batches": ref, "outputs": {block: ref}}: the arrays put into Ray's object store once."""
        import ray
        calib = self.calibration
        batches = ray.put({i: calib.batches[i] for i in calib.fit_indices})
        outputs = {b: ray.put({i: np.asarray(calib.block_outputs[b][i]) for i in calib.fit_indices})
                   for b in self.blocks}
        return {"batches": batches, "outputs": outputs}


def _structure(student, targets):
    """{target: {"family", "options"}} of the student's layers (what a plan says), from the modules."""
    from dreidel.recast.students import describe
    layers = {}
    for name in targets:
        described = describe(student.get_submodule(name))
        if described is not None:
            layers[name] = {"family": described[0], "options": dict(described[1])}
    return layers


def _batch_parts(batch):
    if isinstance(batch, dict):
        return "dict", dict(batch)
    if isinstance(batch, (tuple, list)):
        return "tuple", {str(i): v for i, v in enumerate(batch)}
    return "array", {"0": batch}


def _join_batch(kind, parts):
    if kind == "dict":
        return dict(parts)
    if kind == "tuple":
        return tuple(parts[str(i)] for i in range(len(parts)))
    return parts["0"]


# -- the task -------------------------------------------------------------------------------------
def teacher_forced_block(teacher, modules, calibration, block, optimizer="newton", lr=None, steps=10, seed=0):
    """Distil one block fed by the teacher: `modules` ({target name: student module}, the block's
    layers) are put into `teacher` in place of its own for the task (so the block's input is the
    teacher's), trained by `run_block_task`, and the teacher's layers put back. Returns the modules'
    state dict (full names) and "__loss__" = [before, after]; the modules keep their trained weights."""
    from dreidel.recast.distillation import run_block_task
    originals = {name: teacher.get_submodule(name) for name in modules}
    for name, module in modules.items():
        teacher.set_submodule(name, module)
    try:
        result = run_block_task(teacher, calibration, block, optimizer, lr, steps, seed)
    finally:
        for name, module in originals.items():
            teacher.set_submodule(name, module)
    state = {f"{name}.{key}": value for name in sorted(modules)
             for key, value in modules[name].state_dict().items()}
    before, after = (np.nan, np.nan) if result is None else result
    state["__loss__"] = np.array([before, after], dtype=np.float64)
    return state


def _maybe_die(hook, block):
    """Test hook: exit this worker (no cleanup, like a kill) the first time `block` runs."""
    if not hook:
        return
    wanted, _, marker = hook.rpartition(":")
    if wanted != block:
        return
    if marker:  # once: the marker file remembers that it happened
        if os.path.exists(marker):
            return
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
    os._exit(17)


# -- workers --------------------------------------------------------------------------------------
_CONTEXT = {}  # per worker process: what is loaded, by run key


def _init_worker(threads, watch_parent=False):
    os.environ["OMP_NUM_THREADS"] = str(threads)  # for libraries that start later
    dreidel.set_num_threads(threads)
    if watch_parent:  # a pool worker whose driver died would wait for work forever: leave with it
        import threading
        parent = os.getppid()

        def watch():
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(1)
        threading.Thread(target=watch, daemon=True).start()


def _load_teacher(teacher_path, output):
    from dreidel.recast.cli import load_teacher, select_output
    return select_output(load_teacher(teacher_path)[0], output)


def _block_modules(teacher, plan_layers, calibration, block, start):
    """The student's modules of `block`: the planned family's structure (a bias where the start state
    has one) or a copy of the teacher's layer, loaded with the stage's start weights."""
    import copy
    from dreidel.recast.distillation import block_targets
    from dreidel.recast.students import family
    modules = {}
    for name in block_targets(calibration, block):
        layer = teacher.get_submodule(name)
        choice = plan_layers.get(name)
        if choice is None:
            module = copy.deepcopy(layer)
        else:
            module = family(choice["family"]).empty(layer.in_features, layer.out_features, f"{name}.bias" in start,
                                                    **choice.get("options", {}))
        module.load_state_dict({k[len(name) + 1:]: v for k, v in start.items() if k.startswith(name + ".")})
        modules[name] = module
    return modules


def _calibration(teacher, targets, blocks, fit_indices, batches, outputs):
    from dreidel.recast.calibration import Calibration
    from dreidel.recast.structure import BlockBoundaries
    rows = [None] * (max(fit_indices) + 1)
    for i, batch in batches.items():
        rows[i] = batch
    calib = Calibration(rows, targets, blocks, BlockBoundaries(teacher, blocks, rows[fit_indices[0]]),
                        list(fit_indices), [], None)
    calib.block_outputs = outputs
    return calib


def _process_task(manifest_path, block, hook):
    """One block in a worker process: load (once per process) the teacher and the memory-mapped
    shards; the block's modules from the stage's start state; write the result atomically; return
    its path."""
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    context = _CONTEXT.get(manifest["key"])
    if context is None:
        _CONTEXT.clear()
        teacher = _load_teacher(manifest["teacher_path"], manifest["output"])
        batches = {int(i): _join_batch(v["kind"], {k: np.load(p, mmap_mode="r") for k, p in v["parts"].items()})
                   for i, v in manifest["batches"].items()}
        outputs = {b: {int(i): np.load(p, mmap_mode="r") for i, p in v.items()}
                   for b, v in manifest["outputs"].items()}
        calib = _calibration(teacher, manifest["targets"], manifest["blocks"], manifest["fit_indices"], batches,
                             outputs)
        context = _CONTEXT[manifest["key"]] = (teacher, calib, dreidel.load(manifest["start"]))
    teacher, calib, start = context
    modules = _block_modules(teacher, manifest["plan"]["layers"], calib, block, start)
    state = teacher_forced_block(teacher, modules, calib, block, **manifest["settings"][block])
    _maybe_die(hook, block)
    path = os.path.join(os.path.dirname(os.path.dirname(manifest_path)), f"{block or 'model'}.safetensors")
    dreidel.save(state, path)
    return path


def _ray_task(source, start, batches, outputs, block, hook):
    """One block as a Ray task: the arrays arrive from the object store (read-only, zero-copy)."""
    key = source["key"]
    teacher = _CONTEXT.get(key)
    if teacher is None:
        _CONTEXT.clear()
        _init_worker(source["threads"])
        teacher = _CONTEXT[key] = _load_teacher(source["teacher_path"], source["output"])
    fit = sorted(int(i) for i in batches)
    calib = _calibration(teacher, source["targets"], source["blocks"], fit, batches, {block: outputs})
    modules = _block_modules(teacher, source["plan"]["layers"], calib, block, start)
    state = teacher_forced_block(teacher, modules, calib, block, **source["settings"][block])
    _maybe_die(hook, block)
    return state
