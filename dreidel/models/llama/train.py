"""Training a tiny Llama from scratch on the shipped text (`dreidel/data/shakespeare.txt`: the first
250 KB of the "tiny Shakespeare" collection of Shakespeare's plays, public domain) with a byte-level
vocabulary (256 ids, one per byte).

    from dreidel.models.llama.train import byte_splits, tiny_config, train
    train_ids, val_ids = byte_splits()              # the last 10 % of the text is held out
    model, history = train(tiny_config(), train_ids, val_ids, steps=300)

`linear=` picks the projections (dense `nn.Linear` or e.g. `nn.DeepSpectralLinear`), so dense and
spectral variants train side by side (examples/train_tiny_llama.py).
"""
from importlib import resources

import numpy as np

import dreidel
from dreidel import optim

from .config import LlamaConfig
from .model import LlamaForCausalLM

__all__ = ["load_text", "byte_splits", "tiny_config", "batches", "evaluate", "train"]


def load_text(name="shakespeare.txt"):
    """A text file shipped in `dreidel/data` (UTF-8)."""
    return resources.files("dreidel.data").joinpath(name).read_text(encoding="utf-8")


def byte_splits(validation_fraction=0.1, text=None):
    """(train ids, validation ids) as uint8-valued int64 arrays: the text's UTF-8 bytes, the last
    `validation_fraction` held out (a contiguous tail: no overlap with training)."""
    data = np.frombuffer((load_text() if text is None else text).encode("utf-8"), dtype=np.uint8).astype(np.int64)
    cut = int(len(data) * (1 - validation_fraction))
    return data[:cut], data[cut:]


def tiny_config(**overrides):
    """A ~0.2 M-parameter Llama over bytes (vocab 256)."""
    values = dict(vocab_size=256, hidden_size=96, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, bos_token_id=None,
                  eos_token_id=None, tie_word_embeddings=True)
    values.update(overrides)
    return LlamaConfig(**values)


def batches(ids, batch_size, length, rng):
    """An endless stream of (batch_size, length + 1) windows at random offsets."""
    while True:
        starts = rng.integers(0, len(ids) - length - 1, batch_size)
        yield np.stack([ids[s:s + length + 1] for s in starts])


def evaluate(model, ids, length=128, max_windows=64):
    """Mean next-token cross-entropy (nats/byte) over consecutive windows of `ids`."""
    windows = [ids[s:s + length + 1] for s in range(0, len(ids) - length - 1, length)][:max_windows]
    was = model.training
    model.eval()
    with dreidel.no_grad():
        losses = [float(model.loss(np.stack(windows[i:i + 16])).numpy()) for i in range(0, len(windows), 16)]
    model.train(was)
    weights = [len(windows[i:i + 16]) for i in range(0, len(windows), 16)]
    return float(np.average(losses, weights=weights))


def train(config, train_ids, val_ids, steps=300, batch_size=16, length=128, lr=3e-3, linear=None, seed=0,
          eval_every=None, progress=None):
    """Train `LlamaForCausalLM(config, linear=linear)` with AdamW and a cosine schedule; returns
    (model, history) with history = [(step, train loss, validation loss), ...]."""
    rng = np.random.default_rng(seed)
    model = LlamaForCausalLM(config, linear=linear, rng=rng)
    model.train()
    opt = optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    stream = batches(train_ids, batch_size, length, rng)
    history = []
    for step in range(1, steps + 1):
        opt.param_groups[0]["lr"] = lr * 0.5 * (1 + np.cos(np.pi * (step - 1) / steps))
        loss = model.loss(next(stream))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if eval_every and (step % eval_every == 0 or step == steps):
            history.append((step, float(loss.numpy()), evaluate(model, val_ids, length)))
            if progress:
                progress(*history[-1])
    return model, history
