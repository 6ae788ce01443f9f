"""The 3-D UNet example trains: held-out Dice well above the trivial predictions, and the optimiser split."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

import dreidel
from dreidel.data.volumes import load_volumes
from dreidel.models.unet3d import UNet3D, UNet3DConfig, dice_ce_loss

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_unet3d.py"


def _example():
    spec = importlib.util.spec_from_file_location("train_unet3d", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_spectral_unet_learns_to_segment_held_out_volumes():
    data = load_volumes(8, 3, size=16, seed=0, labels="binary")
    foreground = data[3].mean()
    trivial = 2 * foreground / (1 + foreground)  # Dice of calling every voxel an object
    result = _example().train("spectral", "adamw", data, steps=40, patch=16, batch=2, channels=(4, 8),
                              eval_every=40, lr=1e-2, log=lambda *a: None)
    assert trivial < 0.3
    assert result["final_dice"] > 0.6


def test_split_optimizer_covers_every_parameter_once_and_descends():
    example = _example()
    dreidel.random.manual_seed(0)
    model = UNet3D(UNet3DConfig(num_classes=2, channels=(4, 8)))
    opt = example.make_optimizer(model, "split", lr=0.1, voxels=2 * 8 ** 3)
    held = [id(p) for o in opt.optimizers for g in o.param_groups for p in g["params"]]
    assert sorted(held) == sorted(id(p) for p in model.parameters())
    spatial = opt.optimizers[0]
    assert [g["block_size"] for g in spatial.param_groups] == [27, 8]
    assert all(p.shape[1:] in ((1, 3, 3, 3), (1, 2, 2, 2)) for g in spatial.param_groups for p in g["params"])
    x, y = load_volumes(2, 1, size=8, seed=3, labels="binary")[:2]
    xt = dreidel.tensor(x)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = dice_ce_loss(model(xt), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.data))
    assert np.isfinite(losses).all() and min(losses[-3:]) < 0.85 * losses[0]
    try:
        example.make_optimizer(UNet3D(UNet3DConfig(channels=(4,), variant="dense")), "split")
    except ValueError as error:
        assert "spectral" in str(error)
    else:
        raise AssertionError("the split on the dense twin must be refused")
