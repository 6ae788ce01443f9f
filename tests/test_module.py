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
