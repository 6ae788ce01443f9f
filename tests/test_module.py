"""nn.Module: registration, traversal order, submodules, modes, dtypes, state_dict, hooks, containers."""
from collections import OrderedDict

import numpy as np
import pytest

import dreidel
from dreidel import Tensor, nn


class Block(nn.Module):
    def __init__(self, rng):
        super().__init__()
        self.fc = nn.Linear(3, 4, rng=rng)
        self.norm = nn.LayerNorm(4)
        self.register_buffer("perm", np.array([2, 0, 1]))
        self.register_buffer("scale", np.ones(4, np.float32))

    def forward(self, x):
        return self.norm(self.fc(x)) * self.scale


class Net(nn.Module):
    def __init__(self, rng=None):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng(0)
        self.block = Block(rng)
        self.gain = nn.Parameter(np.ones(4, np.float32))
        self.head = nn.Sequential(nn.GELU(), nn.Linear(4, 2, rng=rng))

    def forward(self, x):
        return self.head(self.block(x) * self.gain)


def test_registration_and_orders_follow_assignment():
    net = Net()
    assert [n for n, _ in net.named_parameters()] == [
        "gain", "block.fc.weight", "block.fc.bias", "block.norm.weight", "block.norm.bias",
        "head.1.weight", "head.1.bias"]
    assert [n for n, _ in net.named_buffers()] == ["block.perm", "block.scale"]
    assert [n for n, _ in net.named_modules()] == [
        "", "block", "block.fc", "block.norm", "head", "head.0", "head.1"]
    assert [n for n, _ in net.named_children()] == ["block", "head"]
    assert net.parameter_count() == 4 + 12 + 4 + 4 + 4 + 8 + 2
    assert all(p.requires_grad for p in net.parameters())
    assert not any(b.requires_grad for b in net.buffers())


def test_shared_parameters_are_listed_once():
    net = Net()
    net.head[1].weight = net.head[1].weight  # re-assigning keeps one registration
    net.extra = net.block.fc
    assert len(list(net.parameters())) == 7


def test_reassigning_attributes_keeps_the_tables_consistent():
    net = Net()
    net.gain = None
    assert "gain" not in dict(net.named_parameters())
    net.block.perm = np.array([0, 1, 2])  # a buffer given a plain array stays a buffer
    assert isinstance(net.block.perm, Tensor)
    np.testing.assert_array_equal(net.state_dict()["block.perm"], [0, 1, 2])
    with pytest.raises(TypeError, match="Parameter"):
        net.block.fc.weight = Tensor(np.zeros((4, 3), np.float32))  # would silently stop training it
    net.block.fc = nn.Identity()
    assert "block.fc.weight" not in dict(net.named_parameters())
    del net.head
    assert [n for n, _ in net.named_children()] == ["block"]


def test_module_needs_super_init():
    class Forgot(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.ones(1))
    with pytest.raises(AttributeError, match="super"):
        Forgot()


def test_get_and_set_submodule():
    net = Net()
    assert net.get_submodule("block.fc") is net.block.fc
    assert net.get_submodule("") is net
    assert net.get_submodule("head.1") is net.head[1]
    replacement = nn.Linear(3, 4)
    net.set_submodule("block.fc", replacement)
    assert net.block.fc is replacement
    assert dict(net.named_parameters())["block.fc.weight"] is replacement.weight
    with pytest.raises(AttributeError, match="nope"):
        net.get_submodule("block.nope")
    with pytest.raises(AttributeError, match="block.nope"):
        net.set_submodule("block.nope", nn.Identity())


def test_train_eval_reach_every_module_and_change_dropout():
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5, rng=np.random.default_rng(0)))
    x = Tensor(np.ones((8, 4), np.float32))
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    np.testing.assert_array_equal(net(x).data, net[0](x).data)
    net.train()
    assert all(m.training for m in net.modules())
    assert (net(x).data == 0).any()


def test_to_double_and_float_cast_parameters_and_float_buffers_only():
    net = Net()
    net.block.fc.weight.grad = np.ones((4, 3), np.float32)
    assert net.double() is net
    assert all(p.dtype == np.float64 for p in net.parameters())
    assert net.block.scale.dtype == np.float64 and net.block.perm.dtype.kind == "i"
    assert net.block.fc.weight.grad is None  # a stale float32 gradient would be mixed into float64 steps
    out = net(Tensor(np.ones((2, 3))))
    assert out.dtype == np.float64
    net.float()
    assert all(p.dtype == np.float32 for p in net.parameters())
    with pytest.raises(TypeError, match="floating"):
        net.to(np.int32)


def test_double_model_passes_gradcheck():
    net = Net().double()
    x = Tensor(np.random.default_rng(1).standard_normal((2, 3)), requires_grad=True)
    assert dreidel.gradcheck(lambda t, w: net(t), x, net.block.fc.weight)


def test_state_dict_round_trip_is_a_copy():
    source, target = Net(np.random.default_rng(1)), Net(np.random.default_rng(2))
    state = source.state_dict()
    assert list(state) == [n for n, _ in source.named_parameters()] + ["block.perm", "block.scale"]
    state["gain"][:] = 5  # a copy: editing it leaves the model alone
    assert (source.gain.data == 1).all()
    missing, unexpected = target.load_state_dict(source.state_dict())
    assert missing == [] and unexpected == []
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    x = Tensor(np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(source(x).data, target(x).data)


def test_load_state_dict_keeps_model_dtype_and_accepts_tensors():
    net = Net()
    state = {k: Tensor(v.astype(np.float64)) if v.dtype.kind == "f" else v for k, v in Net().state_dict().items()}
    net.load_state_dict(state)
    assert all(p.dtype == np.float32 for p in net.parameters())


def test_load_state_dict_strict_reports_missing_and_unexpected_keys():
    net = Net()
    state = net.state_dict()
    del state["gain"]
    state["ghost.weight"] = np.zeros(3)
    with pytest.raises(KeyError) as error:
        net.load_state_dict(state)
    assert "gain" in str(error.value) and "ghost.weight" in str(error.value)
    before = net.block.fc.weight.data.copy()
    state["block.fc.weight"] = before + 1
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert missing == ["gain"] and unexpected == ["ghost.weight"]
    np.testing.assert_array_equal(net.block.fc.weight.data, before + 1)


def test_load_state_dict_shape_mismatch_names_the_key_and_changes_nothing():
    net = Net()
    before = {k: v.copy() for k, v in net.state_dict().items()}
    state = net.state_dict()
    state["block.fc.bias"] = np.zeros(5, np.float32)
    state["gain"] = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"block\.fc\.bias.*\(5,\).*\(4,\)"):
        net.load_state_dict(state)
    for name, value in net.state_dict().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)  # all or nothing


def test_forward_hooks_see_inputs_and_can_replace_outputs():
    layer = nn.Linear(3, 2)
    seen = []
    handle = layer.register_forward_hook(lambda m, inputs, out: seen.append((m, inputs[0].shape, out.shape)))
    x = Tensor(np.ones((5, 3), np.float32))
    layer(x)
    assert seen == [(layer, (5, 3), (5, 2))]
    doubling = layer.register_forward_hook(lambda m, inputs, out: out * 2)
    np.testing.assert_allclose(layer(x).data, 2 * layer.forward(x).data)
    handle.remove()
    doubling.remove()
    layer(x)
    assert len(seen) == 2


def test_sequential_modulelist_moduledict():
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert len(seq) == 3 and isinstance(seq[1], nn.ReLU) and seq[-1] is seq[2]
    head = seq[:2]
    assert isinstance(head, nn.Sequential) and len(head) == 2 and head[0] is seq[0]
    x = Tensor(np.ones((1, 3), np.float32))
    np.testing.assert_allclose(seq(x).data, seq[2](seq[1](seq[0](x))).data)
    named = nn.Sequential(OrderedDict(first=nn.Linear(3, 3), second=nn.Tanh()))
    assert [n for n, _ in named.named_children()] == ["first", "second"]

    layers = nn.ModuleList([nn.Linear(2, 2) for _ in range(2)])
    layers.append(nn.Linear(2, 3))
    assert len(layers) == 3 and [n for n, _ in layers.named_parameters()][-1] == "2.bias"
    layers[-1] = nn.Linear(2, 4)
    assert layers[2].out_features == 4 and len(list(layers.parameters())) == 6

    heads = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 1)})
    heads["c"] = nn.Identity()
    assert list(heads) == ["a", "b", "c"] and "b" in heads and len(heads) == 3
    assert [n for n, _ in heads.named_parameters()] == ["a.weight", "a.bias", "b.weight", "b.bias"]


def test_linear_from_weights_and_errors():
    w, b = np.arange(6.0).reshape(2, 3), np.array([1.0, -1.0])
    layer = nn.Linear.from_weights(w, b)
    assert layer.weight.dtype == np.float64 and layer.weight.data is not w
    np.testing.assert_allclose(layer(Tensor(np.ones((1, 3)))).data, [[4.0, 11.0]])
    with pytest.raises(ValueError, match="last dimension 3"):
        layer(Tensor(np.ones((1, 4))))
    with pytest.raises(ValueError, match="positive"):
        nn.Linear(0, 3)


def test_zero_grad_and_requires_grad():
    net = Net()
    net(Tensor(np.ones((2, 3), np.float32))).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net.requires_grad_(False)
    assert not net(Tensor(np.ones((2, 3), np.float32))).requires_grad


def test_from_weights_copies_and_leaves_the_global_generator_alone():
    dreidel.random.manual_seed(5)
    expected = dreidel.random.generator().random()
    dreidel.random.manual_seed(5)
    weight = np.ones((2, 3), np.float32)
    layer = nn.Linear.from_weights(weight)
    assert dreidel.random.generator().random() == expected
    weight[:] = 7
    assert (layer.weight.data == 1).all() and layer.bias is None
    assert [n for n, _ in layer.named_parameters()] == ["weight"]
    with pytest.raises(ValueError, match="bias"):
        nn.Linear.from_weights(weight, np.zeros(3))
    with pytest.raises(ValueError, match="2-D"):
        nn.Linear.from_weights(np.ones(3))


def test_embedding_padding_row_gets_no_gradient():
    emb = nn.Embedding(4, 2, padding_idx=0, rng=np.random.default_rng(0))
    assert (emb.weight.data[0] == 0).all()
    emb(np.array([[0, 2], [2, 0]])).sum().backward()
    np.testing.assert_array_equal(emb.weight.grad, [[0, 0], [0, 0], [2, 2], [0, 0]])


def test_to_the_same_dtype_does_not_copy_weights():
    net = Net()
    weight = net.block.fc.weight.data
    net.float()
    assert net.block.fc.weight.data is weight


def test_deepcopy_gives_an_independent_module():
    import copy
    net = Net()
    twin = copy.deepcopy(net)
    assert [n for n, _ in twin.named_parameters()] == [n for n, _ in net.named_parameters()]
    assert isinstance(twin.gain, nn.Parameter) and twin.gain is not net.gain
    twin.gain.data += 1
    assert (net.gain.data == 1).all()


# -- forward pre-hooks -------------------------------------------------------------------------------
def test_forward_pre_hooks_see_and_replace_the_inputs_in_order():
    layer = nn.Linear(3, 2, dtype=np.float64)
    calls = []
    first = layer.register_forward_pre_hook(lambda m, args: calls.append(("first", m, args[0].shape)))
    double = layer.register_forward_pre_hook(lambda m, args: (args[0] * 2,))
    single = layer.register_forward_pre_hook(lambda m, args: args[0] + 1)  # one value: not a tuple
    x = Tensor(np.arange(6.0).reshape(2, 3))
    np.testing.assert_allclose(layer(x).data, layer.forward(Tensor(x.data * 2 + 1)).data)
    assert calls == [("first", layer, (2, 3))]
    seen = []
    layer.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].data.copy()))
    layer(x)
    np.testing.assert_array_equal(seen[0], x.data * 2 + 1)  # forward hooks get the replaced inputs
    double.remove()
    single.remove()
    first.remove()
    np.testing.assert_allclose(layer(x).data, layer.forward(x).data)
    assert len(calls) == 2


def test_forward_pre_hook_runs_before_the_input_check_and_handles_are_context_managers():
    layer = nn.Linear(3, 2)  # float32
    x = np.ones((1, 3))      # float64: refused by the input policy ...
    with pytest.raises(TypeError, match="float64"):
        layer(x)
    with layer.register_forward_pre_hook(lambda m, args: (Tensor(args[0].astype(np.float32)),)):
        assert layer(x).dtype == np.float32  # ... unless a pre-hook casts it
    with pytest.raises(TypeError, match="float64"):
        layer(x)  # the hook went with the `with` block


# -- buffers -----------------------------------------------------------------------------------------
class Cached(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(np.ones(3, np.float32))
        self.register_buffer("running", np.zeros(3, np.float32))
        self.register_buffer("table", np.arange(3, dtype=np.float32), persistent=False)

    def forward(self, x):
        return x * self.weight + self.table


def test_non_persistent_buffers_stay_out_of_the_state_dict():
    net = nn.Sequential(Cached(), Cached())
    assert list(net.state_dict()) == ["0.weight", "1.weight", "0.running", "1.running"]
    assert [n for n, _ in net.named_buffers()] == ["0.running", "0.table", "1.running", "1.table"]
    net.double()
    assert net[0].table.dtype == np.float64  # still cast with the module
    fresh = nn.Sequential(Cached(), Cached())
    fresh[0].table = np.full(3, 7.0, np.float32)  # assigning keeps it a buffer, and non-persistent
    assert isinstance(fresh[0].table, Tensor) and "0.table" not in fresh.state_dict()
    assert fresh.load_state_dict(net.state_dict()) == ([], [])  # strict: the table is not expected
    np.testing.assert_array_equal(fresh[0].table.data, [7, 7, 7])  # and not touched
    with pytest.raises(KeyError, match="0.table"):
        fresh.load_state_dict({**net.state_dict(), "0.table": np.zeros(3)})
    result = fresh.load_state_dict({**net.state_dict(), "0.table": np.zeros(3)}, strict=False)
    assert result.unexpected_keys == ["0.table"] and result.missing_keys == []
    fresh[1].register_buffer("table", np.zeros(3, np.float32))  # registered again as persistent
    assert "1.table" in fresh.state_dict()


def test_non_persistent_buffers_are_not_saved(tmp_path):
    net = Cached()
    dreidel.save(net.state_dict(), tmp_path / "c.safetensors")
    assert sorted(dreidel.load(tmp_path / "c.safetensors")) == ["running", "weight"]


# -- state-dict versions -----------------------------------------------------------------------------
class ScaleV1(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(np.ones(2, np.float32))

    def forward(self, x):
        return x * self.weight


class ScaleV2(nn.Module):
    """Version 2 renamed `weight` to `gain` and added a `shift` (zero reproduces version 1)."""
    _version = 2
    migrations = []

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(np.ones(2, np.float32))
        self.shift = nn.Parameter(np.zeros(2, np.float32))

    def forward(self, x):
        return x * self.gain + self.shift

    def _migrate_state_dict(self, state, prefix, version):
        ScaleV2.migrations.append((prefix, version))
        if version < 2 and prefix + "weight" in state:
            state[prefix + "gain"] = state.pop(prefix + "weight")
            state.setdefault(prefix + "shift", np.zeros(2, np.float32))


def _model(scale):
    return nn.Sequential(nn.Linear(2, 2), scale(), nn.Sequential(scale()))


def test_state_dict_records_every_module_version():
    state = _model(ScaleV2).state_dict()
    assert state._metadata == {"": {"version": 1}, "0": {"version": 1}, "1": {"version": 2},
                               "2": {"version": 1}, "2.0": {"version": 2}}


def test_a_version_1_checkpoint_loads_into_the_version_2_module(tmp_path):
    old = _model(ScaleV1)
    old[1].weight.data[:] = [2, 3]
    old[2][0].weight.data[:] = [4, 5]
    path = tmp_path / "v1.safetensors"
    dreidel.save(old.state_dict(), path)
    assert "dreidel.versions" not in dreidel.load_metadata(path)  # all at version 1: nothing recorded
    new = _model(ScaleV2)
    ScaleV2.migrations.clear()
    assert new.load_state_dict(dreidel.load(path)) == ([], [])  # strict, after the migration
    assert sorted(ScaleV2.migrations) == [("1.", 1), ("2.0.", 1)]
    np.testing.assert_array_equal(new[1].gain.data, [2, 3])
    np.testing.assert_array_equal(new[2][0].gain.data, [4, 5])
    x = Tensor(np.array([[1.0, -2.0]], np.float32))
    np.testing.assert_allclose(new(x).data, old(x).data)
    with pytest.raises(KeyError, match="weight"):
        ScaleV1().load_state_dict(new.state_dict())  # nothing migrates backwards by itself


def test_version_2_checkpoints_keep_their_version_and_do_not_migrate_again(tmp_path):
    source = _model(ScaleV2)
    source[1].gain.data[:] = [6, 7]
    path = tmp_path / "v2.safetensors"
    dreidel.save(source.state_dict(), path, metadata={"note": "x"})
    assert dreidel.load_metadata(path)["note"] == "x"
    loaded = dreidel.load(path)
    assert loaded._metadata == {"1": {"version": 2}, "2.0": {"version": 2}}
    ScaleV2.migrations.clear()
    target = _model(ScaleV2)
    target.load_state_dict(loaded)
    assert ScaleV2.migrations == []
    np.testing.assert_array_equal(target[1].gain.data, [6, 7])
    # a plain dict has lost its versions: it counts as version 1, and the migration leaves new keys alone
    target.load_state_dict(dict(source.state_dict()))
    assert sorted(ScaleV2.migrations) == [("1.", 1), ("2.0.", 1)]
    np.testing.assert_array_equal(target[1].gain.data, [6, 7])


def test_training_state_keeps_versions(tmp_path):
    source = _model(ScaleV2)
    dreidel.save_training_state(tmp_path / "t.safetensors", model=source, step=1)
    ScaleV2.migrations.clear()
    dreidel.load_training_state(tmp_path / "t.safetensors", model=_model(ScaleV2))
    assert ScaleV2.migrations == []


def test_a_newer_or_corrupt_version_is_a_clear_error():
    state = _model(ScaleV2).state_dict()
    state._metadata["1"] = {"version": 3}
    with pytest.raises(ValueError, match=r"version 3 of ScaleV2.*version 2"):
        _model(ScaleV2).load_state_dict(state)
    state._metadata["1"] = {"version": "2"}
    with pytest.raises(ValueError, match="integer"):
        _model(ScaleV2).load_state_dict(state)


# -- apply, zero_grad --------------------------------------------------------------------------------
def test_apply_visits_children_first_then_self_and_returns_self():
    net = Net()
    order = []
    assert net.apply(lambda m: order.append(m)) is net
    names = {id(m): n for n, m in net.named_modules()}
    assert [names[id(m)] for m in order] == ["block.fc", "block.norm", "block", "head.0", "head.1", "head", ""]

    def init(module):
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.weight)
    net.apply(init)
    assert not net.block.fc.weight.data.any() and not net.head[1].weight.data.any()
    assert (net.gain.data == 1).all()


def test_zero_grad_can_keep_zero_arrays():
    net = Net()
    net(Tensor(np.ones((2, 3), np.float32))).sum().backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    net.block.fc.bias.grad = None
    net.zero_grad(set_to_none=False)
    for name, p in net.named_parameters():
        if name == "block.fc.bias":
            assert p.grad is None  # nothing to zero
            continue
        assert p.grad is not grads[name] and p.grad.shape == p.shape and p.grad.dtype == grads[name].dtype
        assert not p.grad.any()
    assert any(g.any() for g in grads.values())  # the old arrays were not overwritten


def test_rng_arguments_take_a_generator_a_seed_or_none():
    from dreidel.random import generator
    assert generator(5).integers(1 << 30) == np.random.default_rng(5).integers(1 << 30)
    g = np.random.default_rng(1)
    assert generator(g) is g
    np.testing.assert_array_equal(nn.Linear(3, 2, rng=7).weight.data, nn.Linear(3, 2, rng=7).weight.data)
    with pytest.raises(TypeError, match="integer seed"):
        generator("seed")
