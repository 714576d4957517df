"""benchmarks/paper_scale.py: its sizes, its per-stage accounting, and its first stages end to end on a tiny size."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from clipgen import domainnet as dn
from clipgen.data.synth import DOMAINNET_SPLIT_SIZES

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ps():
    spec = importlib.util.spec_from_file_location("paper_scale", ROOT / "benchmarks" / "paper_scale.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["paper_scale"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_full_size_plan_is_the_papers(ps):
    plan = ps.Plan(1.0)
    assert plan.sizes == {d: list(v) for d, v in DOMAINNET_SPLIT_SIZES.items()}
    assert (plan.train_images, plan.test_images, plan.base_rows) == (409_832, 176_743, 425_400)
    assert plan.units("eval") == (10 * (51_750 + 52_041), "images")
    assert plan.units("sae")[0] == ps.SAE_EPOCHS * 409_832
    # at small fractions every class keeps an image in every split (painting test: all but the quirk's class)
    small = ps.Plan(0.001)
    assert all(tr >= 345 and te >= 345 - (d == "painting") for d, (tr, te) in small.sizes.items())
    assert small.sizes["real"] == [345, 345] and ps.Plan(0.01).sizes["quickdraw"] == [1208, 518]
    # 8 rendered images per (domain, split, class) plus the base images; every other file is a link
    assert plan.rendered_images(8) == 345 * 6 * 2 * 8 - 8 + 345 * 8  # painting test: one class without images
    assert plan.rendered_images(None) == 409_832 + 176_743 + 345 * 8
    # the start-up estimate of the full run on the development machine stays under the hour the docs promise
    assert 15 * 60 < ps.estimate_seconds(plan, ps.STAGE_NAMES) < 60 * 60


@pytest.mark.slow
def test_stage_accounting_and_resume(ps, tmp_path):
    ctx = ps.Ctx(tmp_path, ps.Plan(0.01, 12), workers=1)
    out = tmp_path / "payload"
    code = ("import sys, numpy as np; a = np.ones(40 * 2**20 // 8); open(sys.argv[1], 'wb').write(bytes(300_000)); "
            "print(a.sum())")
    calls = []

    def stage(c):
        calls.append(c)
        return ps.python(code, out), [out]

    m = ps.run_stage(ctx, "cka", stage, echo=lambda s: None)
    assert calls and m.stage == "cka" and m.seconds > 0 and m.unit == "rows"
    assert m.units == ps.Plan(0.01, 12).test_images and m.rate == pytest.approx(m.units / m.seconds)
    assert m.peak_rss_mb > 40  # the 40 MiB array of the child process
    assert 300_000 <= m.bytes_written < 400_000
    assert json.loads((tmp_path / "stages" / "cka.json").read_text())["units"] == m.units
    again = ps.run_stage(ctx, "cka", lambda c: pytest.fail("a finished stage runs again"), echo=lambda s: None)
    assert again == m
    with pytest.raises(SystemExit, match="stage sae failed"):
        ps.run_stage(ctx, "sae", lambda c: (ps.python("raise SystemExit(3)"), []), echo=lambda s: None)
    assert not (tmp_path / "stages" / "sae.json").exists()


def test_memory_growth_flags_peaks_that_grow_with_the_rows(ps):
    def m(stage, units, mb):
        return ps.Measured(stage, 1.0, units, "rows", mb, 0, [])

    full = ps.Plan(1.0)
    n = full.units("cka")[0]
    small = {"cka": m("cka", n // 100, 500), "extract": m("extract", n // 100, 900)}
    large = {"cka": m("cka", n // 25, 800), "extract": m("extract", n // 25, 905)}
    rows = {r["stage"]: r for r in ps.memory_growth(small, large, full)}
    # cka: 300 MB for 3% more rows -> ~10 GB at full size
    assert rows["cka"]["grows_with_n"] and rows["cka"]["over_limit"]
    assert rows["cka"]["full_scale_peak_mb"] == pytest.approx(800 + 300 / (n // 25 - n // 100) * (n - n // 25), 1)
    assert not rows["extract"]["grows_with_n"] and not rows["extract"]["over_limit"]


@pytest.mark.slow
def test_first_stages_end_to_end(ps, tmp_path):
    """data, captions and mixtures through the CLI at a tiny size: the synthetic DomainNet has the plan's split
    sizes exactly, spread evenly over the classes."""
    res = ps.run_rehearsal(tmp_path, 0.0002, ["data", "captions", "mixtures"], workers=1, n_classes=12,
                           echo=lambda s: None)
    plan = ps.Plan(0.0002, 12)
    root = tmp_path / "data"
    for d, (train, test) in plan.sizes.items():
        assert len(dn.read_split(root, d, "train")) == train and len(dn.read_split(root, d, "test")) == test
    per_class = np.bincount([s.label for s in dn.read_split(root, "quickdraw", "train")])
    assert per_class[per_class > 0].max() - per_class[per_class > 0].min() <= 1
    assert res["data"].units == plan.train_images + plan.test_images + 12 * ps.BASE_IMAGES_PER_CLASS
    assert res["mixtures"].units > plan.base_rows and res["mixtures"].bytes_written > 0
    assert (tmp_path / "mixtures" / "mixtures.json").is_file()


def test_disk_bytes_counts_blocks_once_per_inode(ps, tmp_path):
    (tmp_path / "d").mkdir()
    a = tmp_path / "d" / "a.bin"
    a.write_bytes(bytes(100_000))
    one = ps.disk_bytes([tmp_path / "d"])
    assert one == a.stat().st_blocks * 512 >= 100_000
    (tmp_path / "d" / "b.bin").hardlink_to(a)
    (tmp_path / "d" / "c.bin").write_bytes(b"x")
    assert ps.disk_bytes([tmp_path / "d"]) == one + (tmp_path / "d" / "c.bin").stat().st_blocks * 512
    assert ps.disk_bytes([a, tmp_path / "missing"]) == one
