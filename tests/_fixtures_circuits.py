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
    """The SMALL computation, uninterrupted and unsharded (read-only).

    Built once per test process (a few seconds), not shared across xdist workers: the tests compare circuits
    computed in their own process with it bit for bit, and CPU float results are only guaranteed to repeat within
    one process (a shuffled run once saw 1e-5 relative differences between two workers' files)."""
    from clipgen.circuits.compute import run_circuits

    p = tmp_path_factory.mktemp("circuits-small")
    return run_circuits(small_config(p / "small.h5", circuits_run_dir, synth_root), progress=False).path
