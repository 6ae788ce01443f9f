"""Whisper weights from the ONNX initializers of an `optimum` export, named like Hugging Face's.

The exporter keeps parameter names for biases and norms (`layers.0.fc1.bias`, or
`model.decoder.…` in the decoder), may store them as float16 behind a `Cast` (the shared decoder),
and stores dense weights transposed ([in, out]) under anonymous names (`onnx::MatMul_448`).  Those
are named after the MatMul node that multiplies by them (`/layers.0/self_attn/q_proj/MatMul`).
"""
import numpy as np

from importers.onnx_to_dreidel.loader import read_model, tensor_to_array

__all__ = ["read_onnx_weights"]


def read_onnx_weights(path, prefix, config):
    """{HF name: float32 array} of one export file; `prefix` ("model.encoder." / "model.decoder.")
    is added to names that lack the `model.` root.  Unrecognised float initializers are returned
    under their own names (so the caller reports them as unexpected)."""
    model, base_dir, label = read_model(path)
    graph = model.graph
    arrays = {t.name: t for t in graph.initializer}
    alias = {}  # a Cast of an initializer stands for it, under the Cast's output name
    for node in graph.node:
        if node.op_type == "Cast" and node.input and node.input[0] in arrays:
            alias[node.output[0]] = node.input[0]
    source = lambda value: alias.get(value, value) if alias.get(value, value) in arrays else None

    def full(name):
        return name if name.startswith("model.") or name.startswith("proj_out") else prefix + name

    state, used = {}, set()
    for node in graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and node.name.endswith("/MatMul"):
            init = source(node.input[1])
            if init is None:
                continue
            scope = node.name.strip("/").rsplit("/", 1)[0].replace("/", ".")
            state[full(scope) + ".weight"] = _array(arrays[init], base_dir).T  # x @ W: W is [in, out]
            used.add(init)
    names = {init: out for out, init in alias.items()}
    for init, tensor in arrays.items():
        if init in used:
            continue
        array = _array(tensor, base_dir)
        if array.dtype.kind != "f":
            continue  # shape constants and the like, not weights
        name = names.get(init, init)
        if name.startswith("onnx::") and array.shape == (config.max_source_positions, config.d_model) \
                and prefix == "model.encoder." and _feeds(graph, name, "Add"):
            name = "embed_positions.weight"  # the sinusoidal table added after the conv stem
        state[full(name)] = array
    return state


def _array(tensor, base_dir):
    return np.asarray(tensor_to_array(tensor, base_dir), dtype=np.float32)


def _feeds(graph, value, op_type):
    return any(node.op_type == op_type and value in node.input for node in graph.node)
