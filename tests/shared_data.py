"""The one way tests reach `../shared/` (data kept beside the repository): skip cleanly when absent.

The folder is `<repo root>/../shared`, or the directory named by the DREIDEL_SHARED environment
variable.
"""
import os
from pathlib import Path

import pytest


def shared_dir():
    """Path of the shared data folder (environment DREIDEL_SHARED overrides), or None."""
    override = os.environ.get("DREIDEL_SHARED")
    path = Path(override) if override else Path(__file__).resolve().parents[1].parent / "shared"
    return path if path.is_dir() else None


def shared_path(*parts):
    """`shared/<parts...>`, or skip the calling test when that file or folder is not there."""
    root = shared_dir()
    if root is None:
        pytest.skip("shared data folder ../shared (or $DREIDEL_SHARED) is not available")
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data {'/'.join(parts)} is not available")
    return path
