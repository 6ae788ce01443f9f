"""Small datasets that ship inside the package (no downloads).

`digits.npz`: the UCI "Optical Recognition of Handwritten Digits" test set (E. Alpaydin, C. Kaynak,
1998; CC BY 4.0): 1,797 images of 8×8 pixels with values 0..16, and their labels 0..9.

    from dreidel.data import DataLoader, TensorDataset, load_digits
    x_train, y_train, x_test, y_test = load_digits()          # (1438, 64) float32 in [0, 1], int64 labels
    for images, labels in DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True):
        ...                                                  # images: Tensor (64, 64); reshape(-1, 1, 8, 8) for a CNN
"""
from importlib import resources

import numpy as np

from dreidel.data.loader import DataLoader, TensorDataset, default_collate  # noqa: F401


def load_digits(test_fraction=0.2, seed=0, dtype=np.float32):
    """Return (x_train, y_train, x_test, y_test): images flattened to 64 features scaled to [0, 1],
    labels as int64, split by a seeded shuffle that keeps every class in both parts."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    with resources.files(__name__).joinpath("digits.npz").open("rb") as f:
        archive = np.load(f, allow_pickle=False)
        images, labels = archive["images"], archive["labels"].astype(np.int64)
    x = images.reshape(len(images), -1).astype(dtype) / 16
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        test[members[:int(round(test_fraction * len(members)))]] = True
    return x[~test], labels[~test], x[test], labels[test]
