"""The main job (`python -m dreidel`): the embedded teacher recast under a budget, with its table."""
import numpy as np
import pytest

from dreidel.data import load_digits
from dreidel.data.teacher import DigitsTransformer, load_teacher


def test_embedded_teacher_loads_and_classifies_held_out_digits():
    teacher = load_teacher()
    assert isinstance(teacher, DigitsTransformer) and not teacher.training
    assert teacher.get_submodule("encoder.layers.0.self_attn.q_proj").weight.dtype == np.float32
    _, _, x_test, y_test = load_digits(seed=0)
    logits = teacher(x_test).data
    assert logits.shape == (len(x_test), 10)
    # measured when it was trained (examples/train_embedded_teacher.py): test accuracy 0.947
    assert np.mean(logits.argmax(1) == y_test) > 0.93


@pytest.mark.slow  # minutes on 2 cores; CI runs the main job itself through the README's command
def test_main_job_recasts_the_teacher_and_prints_the_table(capsys):
    from dreidel.__main__ import main
    rows = main(["--budgets", "0.5", "--families", "lowrank", "--calibration-images", "256", "--steps", "2",
                 "--repeats", "1"])
    teacher, student = rows
    assert teacher["model"] == "teacher" and teacher["agreement"] == 1.0
    assert student["madds_fraction"] <= 0.5 + 1e-9 and student["params"] < teacher["params"]
    # a low-rank student at half the multiply-adds keeps the teacher's answers on held-out digits
    # (0.997 measured with 1,024 calibration images); far below that means distillation broke
    assert student["agreement"] > 0.95
    out = capsys.readouterr().out
    assert "speed-up" in out and "budget 0.5" in out and "held-out" in out
