"""`dreidel recast` / `dreidel evaluate` on a tiny saved dreidel model: outputs, resume after Ctrl-C,
the saved student reloads identically, and bad input gives a clear message and exit code 2."""
import json
import sys

import numpy as np
import pytest

import dreidel
from dreidel.data import load_digits
from dreidel.data.teacher import DigitsTransformer
from dreidel.recast import cli

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    model = DigitsTransformer(seed=1, **TINY)
    cli.save_dreidel_model(model, folder / "tiny", "dreidel.data.teacher.DigitsTransformer", model.config)
    x_train, _, x_test, _ = load_digits(seed=0)
    np.save(folder / "calib.npy", x_train[:96])
    np.save(folder / "eval.npy", x_test[:32])
    return folder


def _args(folder, out, *extra):
    return [str(folder / "tiny.json"), "--data", str(folder / "calib.npy"), "--eval-data", str(folder / "eval.npy"),
            "--budget", "0.5", "--budget-kind", "macs", "--families", "lowrank", "--out", str(out),
            "--batch-size", "32", "--steps", "2", "--repeats", "1", *extra]


def _weights(folder):
    return dreidel.load(folder / cli.STUDENT_WEIGHTS)


def test_recast_writes_plan_student_report_and_evaluate_reloads_it(teacher_files, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.recast_main(_args(teacher_files, out)) == 0
    for name in ("plan.json", "student.safetensors", "report.json", "report.md", "data.json"):
        assert (out / name).exists(), name
    split = json.loads((out / "data.json").read_text())
    assert split["calibration"]["count"] == 96 and split["evaluation"]["count"] == 32
    plan = json.loads((out / "plan.json").read_text())
    assert {choice["family"] for choice in plan["layers"].values()} <= {"lowrank", "dense"}
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["student_macs"] <= 0.5 * report["model"]["teacher_macs"] + 1e-9
    assert "Recast report" in capsys.readouterr().out

    assert cli.evaluate_main([str(teacher_files / "tiny.json"), str(out), "--data", str(teacher_files / "eval.npy"),
                              "--batch-size", "32", "--repeats", "1", "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    # the reloaded student computes exactly what the student computed when it was saved
    assert again["model"]["relative_error"] == pytest.approx(report["model"]["relative_error"], rel=1e-6)
    assert again["model"]["cosine"] == pytest.approx(report["model"]["cosine"], rel=1e-9)


def test_ctrl_c_exits_130_and_resume_matches_an_uninterrupted_run(teacher_files, tmp_path, capsys, monkeypatch):
    whole = tmp_path / "whole"
    assert cli.recast_main(_args(teacher_files, whole)) == 0

    distillation = sys.modules["dreidel.recast.distillation"]
    original, calls = distillation.run_block_task, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second block: the first one's checkpoint is on disk
            raise KeyboardInterrupt
        return original(*args, **kwargs)
    monkeypatch.setattr(distillation, "run_block_task", interrupted)
    broken = tmp_path / "broken"
    capsys.readouterr()
    assert cli.recast_main(_args(teacher_files, broken)) == cli.INTERRUPTED
    message = capsys.readouterr().err
    assert "interrupted" in message and "--resume" in message and str(broken) in message
    assert not (broken / cli.STUDENT_WEIGHTS).exists()
    monkeypatch.setattr(distillation, "run_block_task", original)

    assert cli.recast_main(_args(teacher_files, broken, "--resume")) == 0
    resumed, expected = _weights(broken), _weights(whole)
    assert resumed.keys() == expected.keys()
    for name in expected:  # equal up to float32 rounding (threaded BLAS sums may differ in the last bit)
        np.testing.assert_allclose(resumed[name], expected[name], rtol=1e-5, atol=1e-8, err_msg=name)


def test_bad_inputs_are_clear_errors(teacher_files, tmp_path, capsys):
    cases = [
        ([str(tmp_path / "missing.onnx"), "--data", str(teacher_files / "calib.npy"), "--out", str(tmp_path / "o")],
         "teacher not found"),
        ([str(teacher_files / "tiny.json"), "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")],
         "no such file"),
        ([str(teacher_files / "tiny.json"), "--data", str(teacher_files / "calib.npy"), "--families", "magic",
          "--out", str(tmp_path / "o")], "unknown student families"),
        ([str(teacher_files / "tiny.json"), "--data", str(teacher_files / "calib.npy"),
          "--eval-data", str(teacher_files / "calib.npy"), "--out", str(tmp_path / "o")], None),
    ]
    for argv, expected in cases:
        code = cli.recast_main(argv)
        err = capsys.readouterr().err
        if expected is None:  # the same .npy twice: arrays have no names, so this runs (documented)
            continue
        assert code == 2 and expected in err, (argv, err)
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    try:
        import importers.gguf_to_dreidel  # noqa: F401
    except ImportError:
        with pytest.raises(cli.TeacherError, match="GGUF"):
            cli.load_teacher(tmp_path / "model.gguf")
    assert cli.evaluate_main([str(teacher_files / "tiny.json"), str(tmp_path), "--data",
                              str(teacher_files / "eval.npy")]) == 2
    assert "not a student folder" in capsys.readouterr().err


def test_saved_model_description_cannot_name_code_outside_dreidel(tmp_path):
    (tmp_path / "evil.json").write_text(json.dumps({"class": "os.system", "config": {}}))
    with pytest.raises(cli.TeacherError, match="outside the dreidel package"):
        cli.load_teacher(tmp_path / "evil.json")


def test_sentences_in_both_splits_are_refused(tmp_path):
    from dreidel.recast.data import DataError, Samples
    a = Samples(["one", "two"], lambda b: {}, "text", "a.txt")
    b = Samples(["two", "three"], lambda b: {}, "text", "b.txt")
    with pytest.raises(DataError, match="both"):
        cli.split_samples(a, b, 0.2, 0)
