import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from clipgen import domainnet as dn
from clipgen.data.synth import SynthConfig, class_shape, default_classes, generate, render
from clipgen.errors import ClipgenError
from clipgen.tsv import read_tsv

from .conftest import TINY_SYNTH


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "config.json":
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes() if p.suffix != ".tsv" else p.read_text().replace(str(root.resolve()), "").encode())
    return h.hexdigest()


def test_layout_matches_real_dataset(synth_root):
    root = synth_root
    for d in dn.DOMAINS:
        for split in dn.SPLITS:
            samples = dn.read_split(root, d, split, check_files=True)
            assert [s.path for s in samples] == sorted(s.path for s in samples)  # sorted by path, like DomainNet
            for s in samples:
                dom, folder, fname = s.path.split("/")
                c = dn.class_by_label(s.label)
                assert dom == d and folder == c.folder
                assert fname.startswith(f"{d}_{s.label + 1:03d}_") and fname.endswith(".jpg")
    img = Image.open(root / dn.read_split(root, "sketch", "test")[0].path)
    assert img.size == (64, 64) and img.mode == "RGB"
    assert (root / "contact_sheet.png").is_file() and (root / "config.json").is_file()


def test_counts_held_out_and_quirk(synth_root):
    classes = default_classes(6, 2)
    held = [c for c in classes if c.name in dn.HELD_OUT_CLASSES]
    assert [c.name for c in held] == ["axe", "banana"]
    # real labels, quirky folders among the defaults
    assert {c.folder for c in classes} >= {"cello", "cell_phone", "teddy-bear"}
    counts = {d: {s: len(dn.read_split(synth_root, d, s)) for s in dn.SPLITS} for d in dn.DOMAINS}
    for d in dn.DOMAINS:
        assert counts[d]["train"] == 6 * TINY_SYNTH["train_per_class"]
    # exactly one (non-held-out) class has no painting test images
    painting = {s.label for s in dn.read_split(synth_root, "painting", "test")}
    missing = {c.label for c in classes} - painting
    assert len(missing) == 1 and missing.isdisjoint({c.label for c in held})
    assert counts["painting"]["test"] == 5 * TINY_SYNTH["test_per_class"]


def test_base_dataset_tsv(synth_root):
    train, val = read_tsv(synth_root / "base_train.tsv", check_files=True), read_tsv(synth_root / "base_val.tsv")
    n_classes = 6 + TINY_SYNTH["base_extra_classes"]
    assert len(train) + len(val) == n_classes * TINY_SYNTH["base_per_class"]
    assert all(Path(p).is_absolute() for p, _ in train)
    assert len({t for _, t in train}) > len(train) // 3  # free-form captions, not one template


def test_deterministic_by_seed(tmp_path):
    kw = dict(TINY_SYNTH, train_per_class=2, test_per_class=1, base_per_class=2)
    a = generate(SynthConfig(out=tmp_path / "a", **kw), progress=False).root
    b = generate(SynthConfig(out=tmp_path / "b", **kw), progress=False).root
    c = generate(SynthConfig(out=tmp_path / "c", **dict(kw, seed=1)), progress=False).root
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_every_style_draws_the_class_shape(monkeypatch):
    """In every domain the image differs from its background where the class polygons were placed."""
    import clipgen.data.synth as sy

    placed = []
    orig = sy._place
    monkeypatch.setattr(sy, "_place", lambda *a, **k: placed.append(orig(*a, **k)) or placed[-1])
    for d in dn.DOMAINS:
        ratios = []
        for label in (11, 13, 66):
            for k in range(4):
                img = np.asarray(render(d, label, 64, (0, k)).convert("L"), float)
                m = sy._mask(placed[-1], 128).filter(ImageFilter.MaxFilter(5)).resize((64, 64))
                m = np.asarray(m) > 127
                dev = np.abs(img - np.median(np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])))
                ratios.append(dev[m].mean() / max(dev[~m].mean(), 1e-3))
        assert np.mean(ratios) > 1.5, d


def test_class_shapes_are_fixed_and_distinct():
    a, b = class_shape(11), class_shape(13)
    assert all(np.array_equal(x, y) for x, y in zip(a.polygons, class_shape(11).polygons, strict=True))
    assert [p.shape for p in a.polygons] != [p.shape for p in b.polygons] or not all(
        np.allclose(x, y) for x, y in zip(a.polygons, b.polygons, strict=False))


def test_refusals(tmp_path, synth_root):
    with pytest.raises(ClipgenError, match="not empty"):
        generate(SynthConfig(out=synth_root))
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "mine.txt").write_text("keep me")
    with pytest.raises(ClipgenError, match="does not look like"):
        generate(SynthConfig(out=tmp_path / "x"), force=True)
    assert (tmp_path / "x" / "mine.txt").read_text() == "keep me"
    with pytest.raises(ClipgenError, match="--image-size"):
        generate(SynthConfig(out=tmp_path / "y", image_size=8))
    with pytest.raises(ClipgenError, match="--classes"):
        generate(SynthConfig(out=tmp_path / "y", classes=["axe"]))


def test_cli_synth_force_replaces(cli, tmp_path):
    args = ["data", "synth", "--out", tmp_path / "s", "--n-classes", "3", "--train-per-class", "1",
            "--test-per-class", "1", "--base-per-class", "2", "--base-extra-classes", "0", "--workers", "1"]
    r = cli(*args)
    assert r.exit_code == 0, r
    assert "3 classes" in r.stdout and "contact sheet" in r.stdout
    assert cli(*args).exit_code == 2
    assert cli(*args, "--force", "--seed", "3").exit_code == 0
    assert '"seed": 3' in (tmp_path / "s" / "config.json").read_text()
