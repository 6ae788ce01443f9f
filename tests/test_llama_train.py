"""Training a tiny byte-level Llama on the shipped text: a few AdamW steps lower the held-out loss,
dense and spectral (DeepSpectralLinear) projections alike. The full run is examples/train_tiny_llama.py."""
import numpy as np
import pytest

from dreidel import nn
from dreidel.models.llama.train import byte_splits, evaluate, load_text, tiny_config, train


def test_shipped_text_and_split():
    text = load_text()
    assert 200_000 < len(text.encode()) <= 300_000 and text.startswith("First Citizen:")
    train_ids, val_ids = byte_splits()
    assert len(val_ids) == pytest.approx(0.1 * (len(train_ids) + len(val_ids)), abs=2)
    assert train_ids.max() < 256 and np.array_equal(np.concatenate([train_ids, val_ids]),
                                                    np.frombuffer(text.encode(), np.uint8))


@pytest.mark.parametrize("linear", [None, lambda i, o, b: nn.DeepSpectralLinear(i, o, depth=2, bias=b)],
                         ids=["dense", "spectral"])
def test_a_few_steps_lower_the_validation_loss(linear):
    train_ids, val_ids = byte_splits()
    config = tiny_config(hidden_size=64, intermediate_size=128, num_hidden_layers=1)
    untrained, _ = train(config, train_ids, val_ids, steps=0, linear=linear)
    before = evaluate(untrained, val_ids, length=64, max_windows=16)
    assert before == pytest.approx(np.log(256), abs=0.6)  # an untrained model is near uniform over bytes
    model, history = train(config, train_ids, val_ids, steps=12, batch_size=8, length=64, linear=linear,
                           eval_every=12)
    after = evaluate(model, val_ids, length=64, max_windows=16)
    assert after < before - 1.0, (before, after)
