"""Every PyTorch idiom a new user tried (the list of the PyTorch-habits issue), as a probe:
`python tests/idiom_probe.py` prints a works / fails table; tests/test_pytorch_idioms.py asserts all work."""
import numpy as np
import dreidel
from dreidel import nn, functional as F

R = []
def probe(name, fn):
    try:
        ok = fn()
        R.append((name, "works" if ok is not False else "WRONG"))
    except Exception as e:
        R.append((name, f"FAILS {type(e).__name__}: {str(e)[:70]}"))

a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
T = lambda: dreidel.tensor(a.copy())
probe("sum(dim=, keepdim=)", lambda: T().sum(dim=1, keepdim=True).shape == (2, 1, 4))
probe("mean(dim=)", lambda: np.allclose(T().mean(dim=(0, 2)).numpy(), a.mean((0, 2))))
probe("max(dim) -> (values, indices)", lambda: (lambda v, i: np.array_equal(v.numpy(), a.max(1)) and np.array_equal(i.numpy(), a.argmax(1)))(*T().max(dim=1)))
probe("min(dim) -> (values, indices)", lambda: (lambda v, i: np.array_equal(v.numpy(), a.min(1)) and np.array_equal(i.numpy(), a.argmin(1)))(*T().min(1)))
probe("max() full reduction", lambda: float(T().max()) == 23.0)
probe("size()", lambda: tuple(T().size()) == (2, 3, 4))
probe("size(d)", lambda: T().size(1) == 3)
probe("numel()", lambda: T().numel() == 24)
probe("transpose(d0, d1)", lambda: T().transpose(0, 2).shape == (4, 3, 2))
probe("view", lambda: T().view(6, 4).shape == (6, 4) and T().view(-1).shape == (24,))
probe("flatten(start, end)", lambda: T().flatten(1).shape == (2, 12) and T().flatten(0, 1).shape == (6, 4))
probe("unsqueeze(d)/squeeze(d)", lambda: T().unsqueeze(1).shape == (2, 1, 3, 4) and T().unsqueeze(0).squeeze(0).shape == (2, 3, 4))
probe("clone", lambda: (lambda t, c: c is not t and np.array_equal(c.numpy(), t.numpy()) and not np.shares_memory(c.numpy(), t.numpy()))(*(lambda t: (t, t.clone()))(T())))
probe("pow", lambda: np.allclose(T().pow(2).numpy(), a ** 2))
probe("argmax(dim)", lambda: np.array_equal(T().argmax(dim=2).numpy(), a.argmax(2)))
probe("argmax()", lambda: int(T().argmax()) == 23)
probe("boolean-mask indexing", lambda: np.array_equal(T()[T() > 10].numpy(), a[a > 10]))
def inplace():
    t = T(); t += 1; return np.array_equal(t.numpy(), a + 1)
probe("x += y on a leaf (no grad)", inplace)
def inplace_param():
    p = nn.Parameter(np.ones(3, np.float32))
    with dreidel.no_grad():
        p -= 0.5
    return np.allclose(p.numpy(), 0.5)
probe("p -= lr under no_grad", inplace_param)
probe("requires_grad_()", lambda: T().requires_grad_().requires_grad)
probe("zero_()", lambda: (lambda t: t.zero_() is t and not t.numpy().any())(T()))
probe("dreidel.cat/stack", lambda: dreidel.cat([T(), T()], dim=1).shape == (2, 6, 4) and dreidel.stack([T(), T()]).shape == (2, 2, 3, 4))
probe("arange/zeros/ones/randn", lambda: dreidel.arange(5).shape == (5,) and dreidel.zeros(2, 3).shape == (2, 3) and dreidel.ones((2,)).shape == (2,) and dreidel.randn(3, 2).shape == (3, 2))
def seeding():
    dreidel.manual_seed(7); l1 = nn.Linear(4, 4); d1 = F.dropout(dreidel.ones(100), 0.5)
    dreidel.manual_seed(7); l2 = nn.Linear(4, 4); d2 = F.dropout(dreidel.ones(100), 0.5)
    return np.array_equal(l1.weight.numpy(), l2.weight.numpy()) and np.array_equal(d1.numpy(), d2.numpy())
probe("manual_seed (inits + dropout)", seeding)
probe("Module.apply", lambda: (lambda m: m.apply(lambda x: None) is m)(nn.Sequential(nn.Linear(2, 2))))
probe("nn.Flatten / nn.Identity", lambda: nn.Flatten()(T()).shape == (2, 12) and nn.Identity()(T()).shape == (2, 3, 4))
def init():
    w = nn.Linear(8, 8).weight
    nn.init.xavier_uniform_(w); nn.init.kaiming_normal_(w); nn.init.normal_(w, 0, 0.1); nn.init.zeros_(w)
    return not w.numpy().any()
probe("nn.init xavier/kaiming/normal/zeros", init)
def adam_sched():
    m = nn.Linear(2, 2); o = dreidel.optim.Adam(m.parameters(), lr=0.1)
    s = dreidel.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5); s.step()
    return abs(o.param_groups[0]["lr"] - 0.05) < 1e-12 and s.state_dict()["last_epoch"] == 1
probe("optim.Adam + lr_scheduler.StepLR", adam_sched)
probe("import dreidel -> dreidel.data", lambda: hasattr(dreidel.data, "load_digits"))
def tstate():
    import tempfile, os
    m = nn.Linear(2, 2); o = dreidel.optim.Adam(m.parameters()); s = dreidel.optim.lr_scheduler.StepLR(o, 1)
    F.mse_loss(m(dreidel.ones(1, 2)), dreidel.zeros(1, 2)).backward(); o.step(); s.step()
    p = os.path.join(tempfile.mkdtemp(), "s.safetensors")
    dreidel.save_training_state(p, model=m, optimizer=o, scheduler=s, step=3)
    return dreidel.load_training_state(p, model=m, optimizer=o, scheduler=s)["step"] == 3
probe("save_training_state / load_training_state", tstate)
def save_opt():
    o = dreidel.optim.Adam(nn.Linear(2, 2).parameters())
    try:
        import tempfile, os
        dreidel.save(o.state_dict(), os.path.join(tempfile.mkdtemp(), "x.safetensors"))
    except Exception as e:
        return "save_training_state" in str(e)
    return True
probe("dreidel.save(optimizer.state_dict()) clear", save_opt)
def loader():
    from dreidel.data import DataLoader, TensorDataset
    dl = DataLoader(TensorDataset(np.arange(10.0), np.arange(10)), batch_size=3, shuffle=True, seed=1, drop_last=True)
    return len(list(dl)) == 3
probe("DataLoader (shuffle seed, drop_last, collate)", loader)
probe("nn.Linear on numpy", lambda: nn.Linear(4, 2)(np.ones((3, 4), np.float32)).shape == (3, 2))
def lin0d():
    try: nn.Linear(4, 2)(dreidel.tensor(1.0))
    except ValueError as e: return "Linear" in str(e) or "shape" in str(e)
    return False
probe("nn.Linear on 0-d: clear error", lin0d)
def linint():
    try: nn.Linear(4, 2)(np.ones((3, 4), np.int64))
    except TypeError as e: return "Linear" in str(e)
    return False
probe("nn.Linear on int: clear error", linint)
def lin64():
    try: nn.Linear(4, 2)(np.ones((3, 4), np.float64))
    except TypeError as e: return "float64" in str(e)
    return False
probe("nn.Linear on float64: clear error (policy)", lin64)
def dt():
    try: nn.Linear(4, 2, dtype=np.float16)
    except TypeError as e: return "float16" in str(e)
    return False
probe("dtype=float16 refused by name", dt)
def fd():
    return nn.LowRankLinear.from_dense(nn.Linear(8, 8), rank=2).out_features == 8
probe("from_dense(nn.Linear)", fd)


def main():
    for name, res in R:
        print(f"| {name} | {res} |")
    print(sum(r == "works" for _, r in R), "of", len(R), "work")


if __name__ == "__main__":
    main()
