"""Measure a student against its teacher on held-out batches: JSON and Markdown."""
import json

import numpy as np

import dreidel
from dreidel import no_grad
from dreidel.recast.planning import median_latencies, write_json_atomic
from dreidel.recast.structure import as_array, call_model, find_blocks, find_targets, first_output
from dreidel.recast.students import STUDENTS, describe


class Report:
    """`data`: {"layers": [{name, family, options, macs, dense_macs, params}], "model": {...}}."""

    def __init__(self, data):
        self.data = data

    def to_json(self, path):
        write_json_atomic(path, self.data)

    def to_markdown(self, path=None):
        m = self.data["model"]
        lines = ["# Recast report", "",
                 f"Evaluated on {m['eval_batches']} held-out batches, {m['threads']} threads (interleaved medians).", "",
                 "| | teacher | student | ratio |", "| --- | ---: | ---: | ---: |",
                 f"| parameters | {m['teacher_params']:,} | {m['student_params']:,} | "
                 f"{m['student_params'] / m['teacher_params']:.3f} |",
                 f"| target multiply-adds / row | {m['teacher_macs']:,} | {m['student_macs']:,} | "
                 f"{m['student_macs'] / m['teacher_macs']:.3f} |",
                 f"| latency ms | {1e3 * m['teacher_seconds']:.2f} | {1e3 * m['student_seconds']:.2f} | "
                 f"speed-up {m['speedup']:.2f}x |", "",
                 f"Output relative error {m['relative_error']:.4f}, mean cosine {m['cosine']:.4f}.", "",
                 "| layer | family | options | multiply-adds ÷ dense |", "| --- | --- | --- | ---: |"]
        for layer in self.data["layers"]:
            lines.append(f"| {layer['name']} | {layer['family']} | {json.dumps(layer['options'])} | "
                         f"{layer['macs'] / layer['dense_macs']:.3f} |")
        text = "\n".join(lines) + "\n"
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        return text


def report(teacher, student, eval_batches, targets=None, repeats=5):
    """Per target layer: family, options, multiply-adds; end to end on `eval_batches` (which must not be
    calibration data): parameters, target multiply-adds per row, the measured latency of teacher and
    student on the first batch (interleaved medians, current threads), output relative error and
    mean cosine (rows of the last axis) of the student's output against the teacher's."""
    eval_batches = list(eval_batches)
    if not eval_batches:
        raise ValueError("report needs at least one evaluation batch")
    targets = find_targets(teacher, find_blocks(teacher)) if targets is None else targets
    layers = []
    for name in targets:
        dense, module = teacher.get_submodule(name), student.get_submodule(name)
        described = describe(module) or (type(module).__name__, {})
        cls = STUDENTS.get(described[0], STUDENTS["dense"])
        layers.append({"name": name, "family": described[0], "options": described[1],
                       "macs": cls.multiply_adds(module) if hasattr(module, "multiply_adds") or
                       described[0] == "dense" else None,
                       "dense_macs": STUDENTS["dense"].multiply_adds(dense), "params": module.parameter_count()})
    errors, cosines = [], []
    with no_grad():
        for batch in eval_batches:
            ref = as_array(first_output(call_model(teacher, batch))).astype(np.float64)
            out = as_array(first_output(call_model(student, batch))).astype(np.float64)
            errors.append(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))
            a, b = out.reshape(-1, out.shape[-1]), ref.reshape(-1, ref.shape[-1])
            cosines.append(np.mean(np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                                                 1e-30)))

    def runner(model):
        def run():
            with no_grad():
                call_model(model, eval_batches[0])
        return run
    t_teacher, t_student = median_latencies([runner(teacher), runner(student)], repeats=repeats)
    model = {"eval_batches": len(eval_batches), "threads": dreidel.get_num_threads(),
             "teacher_params": teacher.parameter_count(), "student_params": student.parameter_count(),
             "teacher_macs": sum(l["dense_macs"] for l in layers),
             "student_macs": sum(l["macs"] or l["dense_macs"] for l in layers),
             "teacher_seconds": t_teacher, "student_seconds": t_student, "speedup": t_teacher / t_student,
             "relative_error": float(np.mean(errors)), "cosine": float(np.mean(cosines))}
    return Report({"layers": layers, "model": model})
