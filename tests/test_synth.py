import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipgen import domainnet as dn
from clipgen.data.synth import SynthConfig, default_classes, run_synth
from clipgen.errors import ClipgenError, ConfigFieldError
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


@pytest.mark.slow
def test_deterministic_by_seed(tmp_path):
    kw = dict(TINY_SYNTH, train_per_class=2, test_per_class=1, base_per_class=2)
    a = run_synth(SynthConfig(out=tmp_path / "a", **kw), progress=False).root
    b = run_synth(SynthConfig(out=tmp_path / "b", **kw), progress=False).root
    c = run_synth(SynthConfig(out=tmp_path / "c", **dict(kw, seed=1)), progress=False).root
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_refusals(tmp_path, synth_root):
    assert json.loads((synth_root / "config.json").read_text())["config"]["force"] is False  # a config field
    with pytest.raises(ClipgenError, match="not empty"):
        run_synth(SynthConfig(out=synth_root))
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "mine.txt").write_text("keep me")
    with pytest.raises(ClipgenError, match="does not look like"):
        run_synth(SynthConfig(out=tmp_path / "x", force=True))
    assert (tmp_path / "x" / "mine.txt").read_text() == "keep me"
    with pytest.raises(ConfigFieldError, match="^image_size"):
        run_synth(SynthConfig(out=tmp_path / "y", image_size=8))
    with pytest.raises(ConfigFieldError, match="^classes"):
        run_synth(SynthConfig(out=tmp_path / "y", classes=["axe"]))


@pytest.mark.slow
def test_cli_synth_force_replaces(cli, tmp_path):
    args = ["data", "synth", "--out", tmp_path / "s", "--n-classes", "3", "--train-per-class", "1",
            "--test-per-class", "1", "--base-per-class", "2", "--base-extra-classes", "0", "--workers", "1"]
    r = cli(*args)
    assert r.exit_code == 0, r
    assert "3 classes" in r.stdout and "contact sheet" in r.stdout
    assert cli(*args).exit_code == 2
    assert cli(*args, "--force", "--seed", "3").exit_code == 0
    assert '"seed": 3' in (tmp_path / "s" / "config.json").read_text()


@pytest.mark.slow
def test_split_sizes_spread_exactly_over_the_classes(tmp_path):
    """Per-domain totals are met exactly; the painting test split skips the quirk's class; the rest spread evenly."""
    sizes = {"quickdraw": [12, 6], "painting": [7, 11], "real": [5, 0]}
    res = run_synth(SynthConfig(out=tmp_path / "s", **dict(TINY_SYNTH, base_per_class=2), split_sizes=sizes,
                                domains=["painting", "quickdraw", "real"], fast=True), progress=False)
    got = {d: {s: dn.read_split(res.root, d, s, check_files=True) for s in dn.SPLITS} for d in sizes}
    for d, (train, test) in sizes.items():
        assert [len(got[d]["train"]), len(got[d]["test"])] == [train, test]
    per_class = np.bincount([s.label for s in got["quickdraw"]["train"]])
    assert sorted(per_class[per_class > 0]) == [2] * 6  # 12 over 6 classes
    painting_test = np.bincount([s.label for s in got["painting"]["test"]], minlength=345)
    quirk = dn.class_by_name(res.empty_painting_test_class).label
    assert painting_test[quirk] == 0
    assert sorted(painting_test[[c.label for c in res.classes if c.label != quirk]]) == [2, 2, 2, 2, 3]  # 11 over 5
    assert Image.open(res.root / got["real"]["train"][0].path).size == (64, 64)


def test_paper_split_sizes_and_spread():
    from clipgen.data.synth import DOMAINNET_SPLIT_SIZES, parse_split_sizes, spread

    paper = parse_split_sizes("paper")
    assert sum(v[0] for v in paper.values()) == 409_832 and sum(v[1] for v in paper.values()) == 176_743
    assert spread(paper["quickdraw"][0], 345) == [350] * 345 and spread(paper["quickdraw"][1], 345) == [150] * 345
    assert spread(10, 4) == [3, 3, 2, 2]
    assert parse_split_sizes("q=3/2, real=4/1") == {"quickdraw": [3, 2], "real": [4, 1]}
    assert DOMAINNET_SPLIT_SIZES["painting"] == (50_416, 21_850)
    for bad in ("q=3", "q=a/2", "x=1/1", "q=-1/2", ""):
        with pytest.raises(ClipgenError, match="^split_sizes: "):  # (an unknown domain: its domain check says it)
            parse_split_sizes(bad)


@pytest.mark.slow
def test_base_rows_cycle_over_images_without_sharing_across_splits(tmp_path):
    kw = dict(TINY_SYNTH, train_per_class=1, test_per_class=1, base_per_class=4, base_val_fraction=0.25)
    res = run_synth(SynthConfig(out=tmp_path / "s", **kw, base_rows=101), progress=False)
    train, val = read_tsv(res.root / "base_train.tsv", check_files=True), read_tsv(res.root / "base_val.tsv")
    assert len(train) + len(val) == 101 and res.base_counts == {"train": len(train), "val": len(val)}
    assert len({p for p, _ in train} | {p for p, _ in val}) == 8 * 4  # 8 base classes x 4 images, all used
    assert not {p for p, _ in train} & {p for p, _ in val}
    assert len(list((res.root / "base").rglob("*.jpg"))) == 32


@pytest.mark.slow
def test_cli_synth_split_sizes(cli, tmp_path):
    args = ["data", "synth", "--out", tmp_path / "s", "--n-classes", "3", "--base-per-class", "2",
            "--base-extra-classes", "0", "--workers", "1", "--fast", "--image-size", "16"]
    r = cli(*args, "--split-sizes", "quickdraw=4/2,r=5/3", "--base-rows", "9")
    assert r.exit_code == 0, r
    assert len(dn.read_split(tmp_path / "s", "quickdraw", "train")) == 4
    assert len(dn.read_split(tmp_path / "s", "real", "test")) == 3
    assert len(dn.read_split(tmp_path / "s", "sketch", "train")) == 3 * 30  # untouched: --train-per-class
    r = cli(*args, "--split-sizes", "quickdraw=4", "--force")
    assert r.exit_code == 2 and "--split-sizes" in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_distinct_images_links_the_rest(tmp_path):
    """Every listed file exists; only N per (domain, split, class) are rendered, the others link to those."""
    kw = dict(TINY_SYNTH, n_classes=3, n_held_out=1, train_per_class=5, test_per_class=3, base_per_class=2,
              base_extra_classes=0, domains=["quickdraw", "real"])
    res = run_synth(SynthConfig(out=tmp_path / "s", **kw, distinct_images=2, fast=True), progress=False)
    for d in ("quickdraw", "real"):
        for split, per in (("train", 5), ("test", 3)):
            samples = dn.read_split(res.root, d, split, check_files=True)
            assert len(samples) == 3 * per
            for lab in {s.label for s in samples}:
                files = [res.root / s.path for s in samples if s.label == lab]
                assert len({f.stat().st_ino for f in files}) == 2
                assert files[2].read_bytes() == files[0].read_bytes()  # image i links to image i mod 2
    plain = run_synth(SynthConfig(out=tmp_path / "p", **kw, fast=True), progress=False)
    files = [plain.root / s.path for s in dn.read_split(plain.root, "real", "train")]
    assert len({f.stat().st_ino for f in files}) == len(files)
    with pytest.raises(ConfigFieldError, match="^distinct_images"):
        run_synth(SynthConfig(out=tmp_path / "z", **kw, distinct_images=0))
