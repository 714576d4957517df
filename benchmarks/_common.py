"""Helpers shared by the benchmark scripts (``python benchmarks/<name>.py`` puts this folder on ``sys.path``)."""

from __future__ import annotations

import os
from pathlib import Path


def make_run(path: Path, model: str) -> Path:
    """A run directory with one random-weight checkpoint (epoch_1.pt) and a manifest."""
    import torch

    from clipgen.models.registry import create_model, model_config
    from clipgen.runs import RunManifest, write_manifest

    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    m, _, _ = create_model(model)
    torch.save({"epoch": 1, "state_dict": m.state_dict()}, path / "checkpoints" / "epoch_1.pt")
    write_manifest(path, RunManifest(kind="clip", name=path.name, model=model, model_config=model_config(model)))
    return path


def set_threads(threads: int | None) -> int:
    """Use ``threads`` CPU threads here and in child processes (None: torch's default); returns the count."""
    import torch

    if threads:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
    return torch.get_num_threads()
