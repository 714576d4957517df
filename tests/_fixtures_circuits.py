"""Session fixtures of the circuits tests (register with ``pytest_plugins = ["tests._fixtures_circuits"]``):
``circuits_run_dir``, a perturbed RN-tiny run, and ``small_circuits``, the SMALL computation of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._circuits_helpers import make_perturbed_run, small_config
from tests.conftest import shared_artifact


@pytest.fixture(scope="session")
def circuits_run_dir(tmp_path_factory) -> Path:
    """An RN-tiny run directory with perturbed (non-degenerate) weights, epochs 1 and 2 (read-only)."""
    return shared_artifact(tmp_path_factory, "run-perturbed-rn-tiny", lambda p: make_perturbed_run(p / "run")) / "run"


@pytest.fixture(scope="session")
def small_circuits(tmp_path_factory, circuits_run_dir, synth_root) -> Path:
    """The SMALL computation, uninterrupted and unsharded (read-only)."""
    from clipgen.circuits.compute import compute_circuits

    def build(p: Path) -> None:
        compute_circuits(small_config(p / "small.h5", circuits_run_dir, synth_root), progress=False)

    return shared_artifact(tmp_path_factory, "circuits-small", build) / "small.h5"
