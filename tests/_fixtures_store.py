"""Store fixtures: ``tiny_store``, a complete activation store of the random-weight RN-tiny run over the tiny synthetic
DomainNet (test split, all six domains, all layers, float16, class text embeddings with the paper's templates).

Registered for every test module by ``pytest_plugins`` in conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import shared_artifact


def build_tiny_store(out: Path, run_dir: Path, synth_root: Path) -> Path:
    from clipgen.extraction import ExtractConfig, run_extract

    run_extract(ExtractConfig(out=out, model_dir=run_dir, data=synth_root, split="test", domains="all", layers="all",
                              device="cpu", batch_size=32), progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, synth_root, random_run_dir) -> Path:
    """Path of the shared store (read-only for tests: copy it before modifying)."""
    return shared_artifact(tmp_path_factory, "store-tiny",
                           lambda p: build_tiny_store(p / "tiny.h5", random_run_dir, synth_root)) / "tiny.h5"
