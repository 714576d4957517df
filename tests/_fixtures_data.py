"""Fixtures for the `clipgen data` tests: a text-only DomainNet with uneven groups, fake ImageNet folders.

The text-only DomainNet has split files but no images (mixtures never open images unless --check-files), so it
can have many uneven (domain, class) groups cheaply: that exercises the overshoot removal of the size matching,
which the evenly sized synthetic dataset hardly does. It keeps DomainNet's quirks: folders with capitals and
hyphens, labels not in sorted-name order, and one C1 class without painting test images.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from clipgen import domainnet as dn

from .conftest import shared_artifact

#: Classes of the text-only DomainNet: 5 of the paper's held-out classes, the quirky ones, and a few others.
TEXT_CLASSES = ("aircraft carrier", "axe", "banana", "candle", "lion", "cello", "cell phone", "teddy-bear",
                "the eiffel tower", "zebra", "bicycle", "apple", "moon", "snail")
TEXT_HELD_OUT = ("aircraft carrier", "axe", "banana", "candle", "lion")
NO_PAINTING_TEST = "zebra"


def make_text_domainnet(root: Path, seed: int = 0, classes=TEXT_CLASSES, lo: int = 3, hi: int = 40) -> Path:
    """Split files for six domains with random group sizes in [lo, hi] (train) and [1, hi // 3] (test)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    cls = [dn.class_by_name(c) for c in classes]
    for d in dn.DOMAINS:
        k = 0
        for split in dn.SPLITS:
            lines = []
            for c in cls:
                n = rng.randint(lo, hi) if split == "train" else rng.randint(1, max(1, hi // 3))
                if d == "quickdraw":
                    n += hi  # the biggest domain, as in DomainNet
                if split == "test" and d == "painting" and c.name == NO_PAINTING_TEST:
                    n = 0
                for _ in range(n):
                    k += 1
                    lines.append(f"{d}/{c.folder}/{d}_{c.label + 1:03d}_{k:06d}.jpg {c.label}")
            lines.sort()  # DomainNet split files are sorted by path
            (root / f"{d}_{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def write_base(path: Path, n: int, prefix: str = "base") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"/data/{prefix}/img_{i:04d}.jpg\t{prefix} caption number {i}\n" for i in range(n))
    path.write_text("filepath\ttitle\n" + rows, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def text_root(tmp_path_factory) -> Path:
    """A captioned text-only DomainNet (read-only: copy before modifying) with base_train/base_val TSVs."""
    from clipgen.data.captions import CaptionConfig, run_captions

    def build(path: Path) -> None:
        root = make_text_domainnet(path / "dn")
        run_captions(CaptionConfig(root=root), progress=False)
        write_base(root / "base_train.tsv", 50)
        write_base(root / "base_val.tsv", 7, prefix="baseval")

    return shared_artifact(tmp_path_factory, "text-domainnet", build) / "dn"


@pytest.fixture(scope="session")
def synth_captioned(tmp_path_factory, synth_root) -> Path:
    """Caption folder of the shared synthetic DomainNet (written outside the read-only root)."""
    from clipgen.data.captions import CaptionConfig, run_captions

    def build(path: Path) -> None:
        run_captions(CaptionConfig(root=synth_root, out=path / "captions"), progress=False)

    return shared_artifact(tmp_path_factory, "synth-tiny-captions", build) / "captions"


def make_sketch_root(root: Path, counts: dict[int, int]) -> Path:
    """An ImageNet-Sketch-style folder: ``counts`` = ImageNet index -> number of (tiny JPEG) images."""
    from PIL import Image

    idx = dn.imagenet_class_index()
    for i, n in counts.items():
        d = root / idx[i][0]
        d.mkdir(parents=True, exist_ok=True)
        for j in range(n):
            Image.new("RGB", (8, 8), (j * 7 % 256, i % 256, 0)).save(d / f"sketch_{j:04d}.JPEG")
    return root


def make_imagenet_captions(root: Path, per_class: dict[str, int], missing: int = 0) -> tuple[Path, Path]:
    """A fake imagenet_captions.json plus ImageNet train folder; the last ``missing`` entries have no image."""
    train = root / "train"
    entries = []
    for wnid, n in per_class.items():
        (train / wnid).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            fn = f"{wnid}_{i}.JPEG"
            (train / wnid / fn).write_bytes(b"")
            entries.append({"filename": fn, "wnid": wnid, "title": f"title {i}", "tags": [f"t{i}", "x"] if i % 2
                            else [], "description": "" if i % 3 else f"a\n description  {i}"})
    for j in range(missing):
        wnid = next(iter(per_class))
        entries.append({"filename": f"{wnid}_missing{j}.JPEG", "wnid": wnid, "title": "gone", "tags": [],
                        "description": ""})
    path = root / "imagenet_captions.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path, train
