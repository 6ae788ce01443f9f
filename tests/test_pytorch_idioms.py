"""PyTorch habits that must work: factories, seeding, nn.init, Flatten, Adam, lr_scheduler, DataLoader,
and whole training states that resume bit-exactly."""
import math

import numpy as np
import pytest

import dreidel
from dreidel import nn
from dreidel import functional as F
from dreidel.data import DataLoader, TensorDataset


def test_factories_follow_pytorch():
    assert dreidel.arange(5).data.tolist() == [0, 1, 2, 3, 4] and dreidel.arange(5).dtype == np.int64
    assert dreidel.arange(2, 8, 3).data.tolist() == [2, 5]
    assert dreidel.arange(0, 1, 0.25).dtype == np.float32
    a, b = dreidel.ones(2, 3), dreidel.zeros((2, 3))
    assert dreidel.cat([a, b], dim=1).shape == (2, 6)
    assert dreidel.stack([a, b], dim=0).shape == (2, 2, 3)
    assert np.array_equal(dreidel.stack([a, b], dim=-1).data[..., 0], a.data)
    assert dreidel.full((2,), 7.0).data.tolist() == [7.0, 7.0]
    assert dreidel.zeros_like(a).shape == a.shape and dreidel.ones_like(b).data.sum() == 6
    assert 0 <= dreidel.rand(100).data.min() and dreidel.rand(100).data.max() < 1


def test_manual_seed_makes_inits_and_dropout_repeatable():
    def run():
        dreidel.manual_seed(123)
        layer = nn.Linear(8, 4)
        dropped = nn.Dropout(0.5)(dreidel.ones(16))
        return layer.weight.data.copy(), dropped.data.copy(), dreidel.randn(3).data.copy()
    first, second = run(), run()
    for x, y in zip(first, second):
        assert np.array_equal(x, y)
    dreidel.manual_seed(124)
    assert not np.array_equal(nn.Linear(8, 4).weight.data, first[0])


def test_cross_entropy_gradient_through_data_module_is_available():
    assert dreidel.data.load_digits is not None  # `import dreidel` brings dreidel.data


@pytest.mark.parametrize("name", ["xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_"])
def test_init_statistics_match_their_formulas(name):
    weight = nn.Parameter(np.zeros((256, 128, 3), dtype=np.float32))
    fan_in, fan_out = 128 * 3, 256 * 3
    getattr(nn.init, name)(weight, rng=np.random.default_rng(0))
    expected_std = {"xavier_uniform_": math.sqrt(2 / (fan_in + fan_out)),
                    "xavier_normal_": math.sqrt(2 / (fan_in + fan_out)),
                    # default a=0 leaky_relu: gain sqrt(2), std = gain / sqrt(fan_in)
                    "kaiming_uniform_": math.sqrt(2) / math.sqrt(fan_in),
                    "kaiming_normal_": math.sqrt(2) / math.sqrt(fan_in)}[name]
    assert abs(weight.data.std() / expected_std - 1) < 0.02
    assert abs(weight.data.mean()) < 0.02 * expected_std * 10
    if "uniform" in name:
        assert weight.data.max() <= math.sqrt(3) * expected_std + 1e-7


def test_init_fills_in_place_and_checks_input():
    layer = nn.Linear(3, 4)
    assert nn.init.zeros_(layer.bias) is layer.bias and not layer.bias.data.any()
    nn.init.ones_(layer.weight)
    assert (layer.weight.data == 1).all()
    nn.init.normal_(layer.weight, 2.0, 0.0)
    assert (layer.weight.data == 2).all()
    nn.init.trunc_normal_(layer.weight, std=1.0, a=-0.5, b=0.5, rng=np.random.default_rng(1))
    assert np.abs(layer.weight.data).max() <= 0.5
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        nn.init.xavier_uniform_(layer.bias)
    with pytest.raises(TypeError, match="Tensor or Parameter"):
        nn.init.zeros_(np.zeros(3))
    with pytest.raises(ValueError, match="unknown nonlinearity"):
        nn.init.calculate_gain("swish")
    assert nn.init.calculate_gain("relu") == math.sqrt(2)


def test_flatten_module():
    x = dreidel.randn(2, 3, 4, 5)
    assert nn.Flatten()(x).shape == (2, 60)
    assert nn.Flatten(1, 2)(x).shape == (2, 12, 5)
    assert nn.Flatten(0, -1)(x).shape == (120,)


def _adam_by_hand(theta, grads, lr, betas, eps, wd):
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    for t, g in enumerate(grads, 1):
        g = g + wd * theta
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        theta = theta - lr * (m / (1 - betas[0] ** t)) / (np.sqrt(v / (1 - betas[1] ** t)) + eps)
    return theta


def test_adam_is_l2_decay_in_the_gradient():
    rng = np.random.default_rng(0)
    theta0 = rng.standard_normal(5)
    grads = [rng.standard_normal(5) for _ in range(6)]
    p = nn.Parameter(theta0.copy())
    optimizer = dreidel.optim.Adam([p], lr=0.1, weight_decay=0.3)
    for g in grads:
        p.grad = g.copy()
        optimizer.step()
    expected = _adam_by_hand(theta0, grads, 0.1, (0.9, 0.999), 1e-8, 0.3)
    np.testing.assert_allclose(p.data, expected, rtol=1e-12, atol=1e-12)
    assert dreidel.optim.Adam([nn.Parameter(np.zeros(2))]).param_groups[0]["weight_decay"] == 0.0


def test_lr_scheduler_module_name():
    from dreidel.optim.lr_scheduler import CosineAnnealingLR, StepLR
    optimizer = dreidel.optim.SGD([nn.Parameter(np.zeros(2))], lr=1.0)
    scheduler = StepLR(optimizer, step_size=2, gamma=0.5)
    for _ in range(4):
        scheduler.step()
    assert scheduler.get_last_lr() == [0.25]
    assert CosineAnnealingLR is dreidel.optim.CosineAnnealingLR


def test_dataloader_batches_every_sample_once_per_epoch():
    x = np.arange(10, dtype=np.float32)[:, None]
    y = np.arange(10)
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True, seed=3)
    assert len(loader) == 3
    epochs = [[b[1].data.tolist() for b in loader] for _ in range(2)]
    for batches in epochs:
        assert [len(b) for b in batches] == [4, 4, 2]
        assert sorted(sum(batches, [])) == list(range(10))
    assert epochs[0] != epochs[1]  # reshuffled each epoch
    again = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True, seed=3)
    assert [b[1].data.tolist() for b in again] == epochs[0]
    dropped = DataLoader(TensorDataset(x, y), batch_size=4, drop_last=True)
    assert len(dropped) == 2 and [b[1].data.tolist() for b in dropped] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_dataloader_generic_dataset_and_collate():
    class Squares:
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return {"x": np.full(2, i, dtype=np.float32), "y": i * i}

    batch = next(iter(DataLoader(Squares(), batch_size=3)))
    assert batch["x"].shape == (3, 2) and batch["y"].data.tolist() == [0, 1, 4]
    lengths = next(iter(DataLoader(Squares(), batch_size=5, collate_fn=len)))
    assert lengths == 5

    class Ragged(Squares):
        def __getitem__(self, i):
            return np.zeros(i + 1)

    with pytest.raises(ValueError, match="collate_fn"):
        next(iter(DataLoader(Ragged(), batch_size=2)))
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(Squares(), batch_size=0)
    with pytest.raises(TypeError, match="__len__"):
        DataLoader(object())


def test_saving_optimizer_state_with_save_says_what_to_use(tmp_path):
    layer = nn.Linear(2, 2)
    optimizer = dreidel.optim.AdamW(layer.parameters())
    with pytest.raises(TypeError, match="save_training_state"):
        dreidel.save(optimizer.state_dict(), tmp_path / "o.safetensors")


def _training_run(steps, tmp_path, interrupt_at=None):
    """Train a dropout MLP with AdamW + StepLR over a shuffling DataLoader; optionally save after
    step `interrupt_at` (mid-epoch), rebuild everything from scratch and resume from the file."""
    x, y, _, _ = dreidel.data.load_digits()

    def build():
        dreidel.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))
        optimizer = dreidel.optim.AdamW(model.parameters(), lr=3e-3)
        scheduler = dreidel.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.7)
        loader = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True, seed=1)
        return model, optimizer, scheduler, loader

    model, optimizer, scheduler, loader = build()
    step = 0
    path = tmp_path / "state.safetensors"
    while step < steps:
        for images, labels in loader:
            loss = F.cross_entropy(model(images), labels.data)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if step == interrupt_at:
                dreidel.save_training_state(path, model=model, optimizer=optimizer, scheduler=scheduler,
                                            data=loader, step=step, extra={"note": "mid-epoch"})
                model, optimizer, scheduler, loader = build()  # a fresh process would start like this
                dreidel.randn(7)  # and its generator would be elsewhere
                state = dreidel.load_training_state(path, model=model, optimizer=optimizer,
                                                    scheduler=scheduler, data=loader)
                assert state["step"] == step and state["extra"] == {"note": "mid-epoch"}
                break  # the next `for` resumes the epoch at the saved batch
            if step == steps:
                break
    return model, optimizer, scheduler


@pytest.mark.parametrize("interrupt_at", [11, 15])  # an epoch boundary (11 batches each) and mid-epoch
def test_training_state_resumes_bit_exactly(tmp_path, interrupt_at):
    reference = _training_run(25, tmp_path)
    resumed = _training_run(25, tmp_path, interrupt_at=interrupt_at)
    for (name, a), (_, b) in zip(reference[0].state_dict().items(), resumed[0].state_dict().items()):
        assert np.array_equal(np.asarray(a), np.asarray(b)), name
    assert reference[2].get_last_lr() == resumed[2].get_last_lr()
    assert isinstance(resumed[2].state_dict()["base_lrs"], list)  # JSON values come back as themselves
    state_a, state_b = reference[1].state_dict(), resumed[1].state_dict()
    for i in state_a["state"]:
        assert state_a["state"][i]["step"] == state_b["state"][i]["step"]
        assert np.array_equal(state_a["state"][i]["exp_avg_sq"], state_b["state"][i]["exp_avg_sq"])


def test_a_loop_left_early_starts_a_new_epoch_next_time():
    loader = DataLoader(TensorDataset(np.arange(6)), batch_size=2, shuffle=True, seed=0)
    first = next(iter(loader))[0].data.tolist()
    assert loader.state_dict() == {"seed": 0, "epoch": 0, "batch": 1}
    later = [b[0].data.tolist() for b in loader]
    assert len(later) == 3 and loader.state_dict()["epoch"] == 2
    assert first == np.random.default_rng([0, 0]).permutation(6)[:2].tolist()


def test_training_state_errors(tmp_path):
    dreidel.save({"w": np.zeros(2)}, tmp_path / "weights.safetensors")
    with pytest.raises(dreidel.CheckpointError, match="not a training state"):
        dreidel.load_training_state(tmp_path / "weights.safetensors")
    with pytest.raises(TypeError, match="state_dict"):
        dreidel.save_training_state(tmp_path / "s.safetensors", model=object())
    path = tmp_path / "s.safetensors"
    dreidel.save_training_state(path, step=3)
    with pytest.raises(dreidel.CheckpointError, match="no optimizer state"):
        dreidel.load_training_state(path, optimizer=dreidel.optim.SGD([nn.Parameter(np.zeros(1))], lr=1))
    with pytest.raises(TypeError, match="JSON"):
        dreidel.save_training_state(path, extra={"f": object()})


# -- the layers' input policy (dreidel.nn.module) ----------------------------------------------------
def test_linear_takes_numpy_arrays_and_lists_like_tensors():
    layer = nn.Linear(3, 2, rng=np.random.default_rng(0))
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    want = x @ layer.weight.data.T + layer.bias.data
    np.testing.assert_allclose(layer(x).data, want, rtol=1e-6)
    np.testing.assert_allclose(layer([[0, 1, 2], [3, 4, 5]]).data, want, rtol=1e-6)  # Python numbers: float32
    assert layer([[0.0, 1.0, 2.0]]).dtype == np.float32
    assert nn.Linear(3, 2, dtype=np.float64)([[0, 1, 2]]).dtype == np.float64  # the layer's dtype
    layer(x).sum().backward()
    np.testing.assert_allclose(layer.weight.grad, np.ones((2, 2)).T @ x, rtol=1e-6)


def test_float64_input_to_a_float32_layer_is_a_clear_error():
    layer = nn.Linear(3, 2)
    for x in (np.ones((1, 3)), dreidel.Tensor(np.ones((1, 3)))):
        with pytest.raises(TypeError, match=r"Linear has float32 parameters but got a float64 input.*double\(\)"):
            layer(x)
    assert layer.double()(np.ones((1, 3))).dtype == np.float64
    assert layer(np.ones((1, 3), np.float32)).dtype == np.float64  # narrower inputs promote, as in numpy


@pytest.mark.parametrize("x", [np.ones((1, 3), np.int64), np.ones((1, 3), bool), dreidel.Tensor(np.ones((1, 3), np.int32))])
def test_integer_input_to_a_float_layer_is_a_clear_error(x):
    with pytest.raises(TypeError, match=r"Linear expects a float32 input, got (int|bool).*x\.float\(\)"):
        nn.Linear(3, 2)(x)


def test_0d_and_unsupported_inputs_are_clear_errors():
    layer = nn.Linear(1, 2)
    for x in (2.0, 2, np.float32(2.0), np.array(2.0, np.float32)):
        with pytest.raises(ValueError, match=r"last dimension 1, got input shape \(\)"):
            layer(x)
    with pytest.raises(TypeError, match="Linear expects a Tensor or numpy array as input, got str"):
        layer("1.0")
    with pytest.raises(TypeError, match="got dict"):
        nn.LayerNorm(3)({"x": 1})


def test_embedding_takes_integer_lists_and_refuses_floats():
    emb = nn.Embedding(5, 2, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(emb([[1, 4]]).data, emb.weight.data[[[1, 4]]])
    with pytest.raises(TypeError, match="Embedding expects integer indices, got float32"):
        emb(dreidel.Tensor(np.array([1.0], np.float32)))


def _float_layers():
    from dreidel.nn import (ALSHSparseDense, DeepSpectralLinear, LayerNorm, LinearWHT, LowRankLinear, RMSNorm,
                            SpectralLowRankLinear)
    return [lambda: LinearWHT(4, 3), lambda: DeepSpectralLinear(4, 3, depth=2), lambda: LowRankLinear(4, 3, 2),
            lambda: SpectralLowRankLinear(4, 3, 2, depth=1), lambda: ALSHSparseDense(4, 3, bits=2, tables=2),
            lambda: LayerNorm(4), lambda: RMSNorm(4), lambda: LayerNorm(4, elementwise_affine=False)]


@pytest.mark.parametrize("make", _float_layers())
def test_every_float_layer_follows_the_policy(make):
    layer = make()
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    got = layer(x)
    assert isinstance(got, dreidel.Tensor) and got.dtype == np.float32
    np.testing.assert_allclose(got.data, layer(dreidel.Tensor(x)).data, rtol=1e-6)
    with pytest.raises(TypeError, match=type(layer).__name__):
        layer(x.astype(np.int64))
    if any(p is not None for p in layer._parameters.values()):
        with pytest.raises(TypeError, match="float64"):
            layer(x.astype(np.float64))
    else:  # no parameters to match: any float goes
        assert layer(x.astype(np.float64)).dtype == np.float64


def _constructors():
    from dreidel.nn import (ALSHSparseDense, Conv1d, Conv2d, Conv3d, ConvTranspose2d, DeepSpectralLinear, Embedding,
                            LayerNorm, Linear, LinearWHT, LowRankLinear, MultiHeadAttention, RMSNorm,
                            SpectralLowRankLinear)
    from dreidel.nn.wht_attention import WalshHadamardAttention
    return {"Linear": lambda dt: Linear(4, 3, dtype=dt), "Embedding": lambda dt: Embedding(5, 2, dtype=dt),
            "LayerNorm": lambda dt: LayerNorm(4, dtype=dt), "RMSNorm": lambda dt: RMSNorm(4, dtype=dt),
            "Conv1d": lambda dt: Conv1d(2, 3, 3, dtype=dt), "Conv2d": lambda dt: Conv2d(2, 3, 3, dtype=dt),
            "Conv3d": lambda dt: Conv3d(2, 3, 3, dtype=dt), "ConvTranspose2d": lambda dt: ConvTranspose2d(2, 3, 2, dtype=dt),
            "LinearWHT": lambda dt: LinearWHT(4, 3, dtype=dt),
            "DeepSpectralLinear": lambda dt: DeepSpectralLinear(4, 3, depth=2, dtype=dt),
            "LowRankLinear": lambda dt: LowRankLinear(4, 3, 2, dtype=dt),
            "SpectralLowRankLinear": lambda dt: SpectralLowRankLinear(4, 3, 2, depth=1, dtype=dt),
            "ALSHSparseDense": lambda dt: ALSHSparseDense(4, 3, bits=2, tables=2, dtype=dt),
            "MultiHeadAttention": lambda dt: MultiHeadAttention(8, 2, dtype=dt),
            "WalshHadamardAttention": lambda dt: WalshHadamardAttention(4, dtype=dt)}


@pytest.mark.parametrize("name", sorted(_constructors()))
def test_layer_constructors_refuse_unsupported_dtypes_by_name(name):
    make = _constructors()[name]
    for dt in (np.float16, np.int32, "complex64"):
        with pytest.raises(TypeError, match=f"{name}: dtype={np.dtype(dt).name} is not supported"):
            make(dt)
    with pytest.raises(TypeError, match="not a numpy dtype"):
        make("float-ish")
    layer = make(np.float64)  # the supported ones are kept, not ignored
    assert all(p.dtype == np.float64 for p in layer.parameters())
    assert all(p.dtype == np.float32 for p in make("float32").parameters())


@pytest.mark.parametrize("student", ["LinearWHT", "DeepSpectralLinear", "LowRankLinear", "SpectralLowRankLinear",
                                     "ALSHSparseDense"])
def test_from_dense_accepts_the_dense_layer_itself(student):
    cls = getattr(nn, student)
    dense = nn.Linear(8, 6, rng=np.random.default_rng(3))
    x = np.random.default_rng(4).standard_normal((64, 8)).astype(np.float32)
    extra = {"rank": 3} if "LowRank" in student else {}
    if student == "ALSHSparseDense":
        a, b = cls.from_dense(dense), cls.from_dense(dense.weight.data, dense.bias.data)
    else:
        a = cls.from_dense(dense, inputs=x, **extra)
        b = cls.from_dense(dense.weight.data, dense.bias.data, inputs=x, **extra)
    assert a.state_dict().keys() == b.state_dict().keys()
    for k in a.state_dict():
        np.testing.assert_array_equal(np.asarray(a.state_dict()[k]), np.asarray(b.state_dict()[k]))
    no_bias = nn.Linear(8, 6, bias=False, rng=np.random.default_rng(3))
    assert cls.from_dense(no_bias, **extra).bias is None


def test_progress_with_a_delay_stays_silent_for_quick_loops_and_draws_for_slow_ones():
    import io
    from dreidel.progress import progress
    quiet, loud = io.StringIO(), io.StringIO()
    assert list(progress(range(5), "fit", stream=quiet, delay=1e9)) == list(range(5))
    assert quiet.getvalue() == ""
    assert list(progress(range(5), "fit", stream=loud, delay=0.0)) == list(range(5))
    assert "fit" in loud.getvalue() and "5/5" in loud.getvalue()


def test_tensor_methods_follow_pytorch_for_max_min_transpose_pow_and_conversions():
    a = np.random.default_rng(5).standard_normal((2, 3, 4)).astype(np.float32)
    t = dreidel.tensor(a)
    values, indices = t.max(1)  # positional dim: (values, indices), like torch
    np.testing.assert_array_equal(values.data, a.max(1))
    np.testing.assert_array_equal(indices.data, a.argmax(1))
    values, indices = t.min(2, keepdim=True)
    np.testing.assert_array_equal(values.data, a.min(2, keepdims=True))
    np.testing.assert_array_equal(indices.data, a.argmin(2)[..., None])
    np.testing.assert_array_equal(t.max(axis=1).data, a.max(1))  # numpy spelling: values only
    np.testing.assert_array_equal(t.max(dim=(0, 2)).data, a.max((0, 2)))
    assert float(t.max()) == float(a.max()) and int(t.argmax()) == int(a.argmax())
    np.testing.assert_array_equal(t.transpose(0, 2).data, np.swapaxes(a, 0, 2))
    np.testing.assert_array_equal(t.permute(2, 0, 1).data, np.transpose(a, (2, 0, 1)))
    np.testing.assert_allclose(t.pow(3).data, a ** 3, rtol=1e-6)
    with pytest.raises(ValueError, match="one-element"):
        float(t)
    g = dreidel.tensor(a, requires_grad=True)
    g.max(1)[0].sum().backward()  # the values keep the graph
    expected = np.zeros_like(a)
    np.put_along_axis(expected, a.argmax(1)[:, None, :], 1.0, axis=1)
    np.testing.assert_array_equal(g.grad, expected)


def test_every_idiom_of_the_issue_works():
    import idiom_probe
    broken = [f"{name}: {result}" for name, result in idiom_probe.R if result != "works"]
    assert not broken, "\n".join(broken)
    assert len(idiom_probe.R) == 38
