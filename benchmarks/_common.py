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


def make_multi_epoch_run(path: Path, model: str, epochs: int) -> Path:
    """A run directory with ``epochs`` random-weight checkpoints (epoch_1.pt ... epoch_E.pt) and a manifest."""
    import torch

    from clipgen.models.registry import create_model, model_config
    from clipgen.runs import RunManifest, write_manifest

    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    for e in range(1, epochs + 1):
        torch.manual_seed(e)
        m, _, _ = create_model(model)
        torch.save({"epoch": e, "state_dict": m.state_dict()}, path / "checkpoints" / f"epoch_{e}.pt")
    write_manifest(path, RunManifest(kind="clip", name=path.name, model=model, model_config=model_config(model)))
    return path


def photo_sized_root(out: Path, n_classes: int, per_class: int, width: int = 400, height: int = 300,
                     domains: tuple[str, ...] = ("real", "sketch")) -> Path:
    """A synthetic DomainNet root whose test images are re-encoded as ``width x height`` JPEGs (quality 90), the size
    of a typical DomainNet image, so that decoding costs what it costs on the real data."""
    from PIL import Image

    from clipgen.data.synth import SynthConfig, run_synth

    run_synth(SynthConfig(out=out, n_classes=n_classes, train_per_class=1, test_per_class=per_class,
                          base_per_class=1, base_extra_classes=0, image_size=64, workers=0, domains=list(domains)),
              progress=False)
    for d in domains:
        for line in (out / f"{d}_test.txt").read_text().split("\n"):
            if line.strip():
                f = out / line.split()[0]
                with Image.open(f) as im:
                    big = im.convert("RGB").resize((width, height), Image.BICUBIC)
                big.save(f, format="JPEG", quality=90)
    return out
