"""Recast one dense layer of the real Whisper tiny.en encoder and measure what it costs the teacher.

    python examples/recast_whisper_layer.py [--layer layers.1.fc1] [--depth 4]

Captures the layer's real inputs with a forward hook on the imported teacher (clips 0 and 1), fits a
DeepSpectralLinear (ALS on those inputs) and the activation-aware LowRankLinear at the same
multiply-adds, then swaps each into the teacher and reports, on the held-out clip 2, the layer's own
relative error and the relative error of the whole encoder's output.
"""
import argparse
from pathlib import Path

import numpy as np

import dreidel
from dreidel import nn
from importers.onnx_to_dreidel import load


def relative_error(estimate, reference):
    return float(np.linalg.norm(estimate - reference) / np.linalg.norm(reference))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--whisper", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared/onnx/whisper-tiny-en")
    parser.add_argument("--layer", default="layers.1.fc1")
    parser.add_argument("--depth", type=int, default=4)
    args = parser.parse_args()

    teacher = load(args.whisper / "encoder_model.onnx")
    dense = teacher.get_submodule(args.layer)
    clips = [np.load(args.whisper / f"clips/clip_{i}_logmel.npy", allow_pickle=False) for i in range(3)]
    captured = []
    handle = dense.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].numpy()))
    with dreidel.no_grad():
        reference_outputs = [teacher(c).numpy() for c in clips]
    handle.remove()
    fit_inputs = np.concatenate([c.reshape(-1, dense.in_features) for c in captured[:2]])
    held_out = captured[2].reshape(-1, dense.in_features)
    weight, bias = dense.weight.numpy(), dense.bias.numpy()
    print(f"{args.layer}: Linear({dense.in_features} → {dense.out_features}), fitted on "
          f"{len(fit_inputs)} real input rows, held out {len(held_out)}")

    spectral = nn.DeepSpectralLinear.from_dense(weight, bias, inputs=fit_inputs, depth=args.depth)
    rank = max(1, spectral.multiply_adds() // (dense.in_features + dense.out_features))
    low_rank = nn.LowRankLinear.from_dense(weight, bias, inputs=fit_inputs, rank=rank)
    dense_out = held_out @ weight.T + bias
    print(f"{'student':28} {'mult-adds ÷ dense':>17} {'layer rel. error':>17} {'encoder rel. error':>19}")
    for name, student in ((f"DeepSpectralLinear K={args.depth}", spectral), (f"LowRankLinear r={rank}", low_rank)):
        with dreidel.no_grad():
            layer_error = relative_error(student(dreidel.Tensor(held_out)).numpy(), dense_out)
            teacher.set_submodule(args.layer, student)
            encoder_error = relative_error(teacher(clips[2]).numpy(), reference_outputs[2])
            teacher.set_submodule(args.layer, dense)
        ratio = student.multiply_adds() / (dense.in_features * dense.out_features)
        print(f"{name:28} {ratio:17.3f} {layer_error:17.3f} {encoder_error:19.4f}")


if __name__ == "__main__":
    main()
