"""HashRoutedFFN (dreidel.models.llama.moe): exact on its active set, routers' budgets, recall,
gradients, and swapping it into a Llama."""
import numpy as np
import pytest

import dreidel
from dreidel import nn
from dreidel.models.llama import LlamaConfig
from dreidel.models.llama.model import LlamaForCausalLM, LlamaMLP
from dreidel.models.llama.moe import HashRoutedFFN, ffn_inputs, moefy, restore


def dense_mlp(hidden=16, inter=64, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return LlamaMLP(hidden, inter, lambda i, o, b: nn.Linear(i, o, b, rng=rng, dtype=dtype))


def reference(mlp, x, active):
    """Dense SwiGLU with every neuron outside `active` zeroed (numpy, float64)."""
    g = x @ np.asarray(mlp.gate_proj.weight.numpy(), np.float64).T
    u = x @ np.asarray(mlp.up_proj.weight.numpy(), np.float64).T
    h = g / (1 + np.exp(-g)) * u
    mask = np.zeros(h.shape[-1], bool)
    mask[active] = True
    return (h * mask) @ np.asarray(mlp.down_proj.weight.numpy(), np.float64).T


@pytest.mark.parametrize("router", ["hash", "experts", "oracle"])
@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_output_is_the_dense_ffn_restricted_to_the_selected_neurons(router, fraction):
    mlp = dense_mlp()
    x = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    ffn = HashRoutedFFN.from_dense(mlp, fraction, router, inputs=np.random.default_rng(2).standard_normal((200, 16)),
                                   experts=8, bits=3, tables=16)
    with dreidel.no_grad():
        out = ffn(dreidel.tensor(x[None])).numpy()[0]
    budget = round(fraction * 64)
    for row, y in zip(x, out):
        active = ffn.select(row)
        assert active.size and np.all(np.diff(active) > 0) and 0 <= active.min() and active.max() < 64
        assert active.size <= budget if router != "experts" else active.size >= budget
        np.testing.assert_allclose(y, reference(mlp, row.astype(np.float64), active), rtol=1e-4, atol=1e-5)
    assert 0 < ffn.active_fraction <= 1


def test_everything_active_is_the_dense_ffn_and_oracle_recall_is_one():
    mlp = dense_mlp()
    x = np.random.default_rng(3).standard_normal((4, 16)).astype(np.float32)
    ffn = HashRoutedFFN.from_dense(mlp, 1.0, "oracle")
    with dreidel.no_grad():
        np.testing.assert_allclose(ffn(dreidel.tensor(x)).numpy(), mlp(dreidel.tensor(x)).numpy(), rtol=1e-5, atol=1e-6)
    recall, active = HashRoutedFFN.from_dense(mlp, 0.25, "oracle").recall(x)
    assert recall == 1.0 and active == 0.25


def test_expert_router_beats_chance_on_clustered_activations():
    """Neurons in 4 groups, each group fed by its own input direction: tokens along one direction
    activate one group, which the co-activation clusters and the router must find."""
    rng = np.random.default_rng(0)
    hidden, inter = 16, 64
    basis = np.linalg.qr(rng.standard_normal((hidden, hidden)))[0][:4]
    group = np.repeat(np.arange(4), inter // 4)
    mlp = dense_mlp(hidden, inter)
    mlp.gate_proj.weight.data = (basis[group] * 3 + 0.1 * rng.standard_normal((inter, hidden))).astype(np.float32)
    mlp.up_proj.weight.data = (basis[group] * 3 + 0.1 * rng.standard_normal((inter, hidden))).astype(np.float32)
    def tokens(n):
        return (basis[rng.integers(0, 4, n)] * 2 + 0.05 * rng.standard_normal((n, hidden))).astype(np.float32)
    ffn = HashRoutedFFN.from_dense(mlp, 0.25, "experts", inputs=tokens(400), experts=4)
    recall, active = ffn.recall(tokens(50))
    assert recall > 0.9 and active == 0.25


def test_gradients_through_the_selected_neurons():
    mlp = dense_mlp(6, 12, dtype=np.float64)
    ffn = HashRoutedFFN.from_dense(mlp, 0.5, "oracle")
    x = dreidel.tensor(np.random.default_rng(4).standard_normal((3, 6)), requires_grad=True)
    assert dreidel.gradcheck(lambda x: ffn(x), x)
    with dreidel.no_grad():
        fast = ffn(x).numpy()
    np.testing.assert_allclose(ffn(x).numpy(), fast, rtol=1e-12)


def test_moefy_swaps_every_ffn_and_restore_puts_them_back():
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    model = LlamaForCausalLM(config, rng=np.random.default_rng(0)).eval()
    ids = np.arange(1, 20)
    with dreidel.no_grad():
        dense_logits = model(ids[None]).numpy()
    inputs = ffn_inputs(model, ids)
    assert len(inputs) == 2 and inputs[0].shape == (19, 16)
    dense = moefy(model, 1.0, "experts", calibration_ids=ids, experts=4)
    assert all(isinstance(layer.mlp, HashRoutedFFN) for layer in model.model.layers)
    with dreidel.no_grad():
        np.testing.assert_allclose(model(ids[None]).numpy(), dense_logits, rtol=1e-4, atol=1e-5)
    assert "model.layers.0.mlp.gate_proj.weight" in dict(model.named_parameters())
    restore(model, dense)
    assert all(isinstance(layer.mlp, LlamaMLP) for layer in model.model.layers)


@pytest.mark.parametrize("kwargs, match", [(dict(active_fraction=0), "active_fraction"),
                                           (dict(router="topk"), "router")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HashRoutedFFN.from_dense(dense_mlp(), **{"active_fraction": 0.5, **kwargs})
    with pytest.raises(ValueError, match="calibration"):
        HashRoutedFFN.from_dense(dense_mlp(), 0.5, "experts")
