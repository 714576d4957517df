"""run_circuits: classes and plan, the seeded image draw, entries equal a direct computation, bad input."""

import numpy as np
import pytest
import torch

from clipgen import domainnet as dn
from clipgen.circuits import attribution as A
from clipgen.circuits.compute import (
    EntryImages,
    draw_images,
    load_batch,
    parse_classes,
    plan_entries,
    read_test_splits,
    run_circuits,
)
from clipgen.circuits.resnet import ResNetChain
from clipgen.circuits.store import open_circuits
from clipgen.errors import ClipgenError
from tests._circuits_helpers import small_config
from tests.conftest import make_random_run

pytest_plugins = ["tests._fixtures_circuits"]  # circuits_run_dir, small_circuits

FOLDERS = {11: "axe", 13: "banana", 66: "cello", 67: "cell_phone", 303: "teddy-bear", 308: "The_Eiffel_Tower"}


def test_parse_classes_by_hand():
    held = [11, 13, 0]  # 0 (aircraft carrier) is not in the data
    assert parse_classes("all", FOLDERS, held) == ([11, 13, 66, 67, 303, 308], False)
    assert parse_classes("ood", FOLDERS, held) == ([11, 13], True)
    assert parse_classes("id", FOLDERS, held) == ([66, 67, 303, 308], False)
    # names (any case, _ or space) and labels, held-out first, duplicates once
    assert parse_classes("cell phone, 308,Banana,the eiffel tower,13", FOLDERS, held)[0] == [13, 67, 308]
    assert parse_classes("The Eiffel Tower,teddy-bear", FOLDERS, held) == ([308, 303], True)
    with pytest.raises(ClipgenError, match=r"classes: unknown DomainNet class 'zebraa' \(did you mean: zebra\?\)"):
        parse_classes("zebraa", FOLDERS, held)
    with pytest.raises(ClipgenError, match=r"classes: class 'zebra' has no test images in the chosen domains"):
        parse_classes("zebra", FOLDERS, held)
    with pytest.raises(ClipgenError, match=r"classes: class label 0 \(aircraft carrier\) has no test images"):
        parse_classes("0", FOLDERS, held)
    with pytest.raises(ClipgenError, match=r"out of range 0\.\.344"):
        parse_classes("345", FOLDERS, held)
    with pytest.raises(ClipgenError, match="'ood': the data has none of the held-out classes"):
        parse_classes("ood", FOLDERS, [0])
    with pytest.raises(ClipgenError, match="no class given"):
        parse_classes(" , ", FOLDERS, held)


def test_plan_is_class_major_and_records_absent_pairs(synth_root):
    splits = read_test_splits(synth_root, dn.parse_domains("cp"))
    plan, absent = plan_entries(splits, [11, 303, 66], False, synth_root)
    # the tiny synthetic painting test split has no teddy-bear, like the real one lacks one class
    assert plan == [("clipart", 11), ("painting", 11), ("clipart", 303), ("clipart", 66), ("painting", 66)]
    assert absent == [("painting", 303)]
    with pytest.raises(ClipgenError, match=r"classes: class 'teddy-bear' \(303\) has no test images in painting "
                                           r"\(.*painting_test\.txt\)"):
        plan_entries(splits, [303], True, synth_root)


def test_the_image_draw_is_seeded_per_entry(synth_root):
    samples = dn.read_split(synth_root, "sketch", "test")
    a = draw_images(samples, synth_root, "sketch", 66, 3, seed=42)
    assert a == draw_images(samples, synth_root, "sketch", 66, 3, seed=42)
    assert len(a.paths) == 3 and a.lines == sorted(a.lines)
    mine = [s for s in samples if s.label == 66]
    assert {s.line for s in mine} >= set(a.lines)
    # the reference draw, by hand: the numpy generator seeded with (seed, domain id, label)
    rng = np.random.default_rng([42, dn.DOMAINS.index("sketch"), 66])
    assert a.lines == [mine[i].line for i in sorted(rng.permutation(len(mine))[:3])]
    others = {tuple(draw_images(samples, synth_root, "sketch", 66, 3, seed=s).lines) for s in range(8)}
    assert len(others) > 1
    assert len(draw_images(samples, synth_root, "sketch", 66, 50, seed=1).paths) == 4  # all there is
    with pytest.raises(ClipgenError, match="no test images of class 200"):
        draw_images(samples, synth_root, "sketch", 200, 3, seed=1)


@pytest.mark.slow
def test_an_entry_equals_a_direct_computation(small_circuits, circuits_run_dir):
    from clipgen.models.zeroshot_classifier import build_classifier, templates
    from clipgen.runs import load_clip

    loaded = load_clip(circuits_run_dir)
    with open_circuits(small_circuits) as cf:
        stored = cf.read("quickdraw", 66)
        paths = cf.image_paths("quickdraw", 66)
    images = load_batch(EntryImages("quickdraw", 66, paths, []), loaded.preprocess)
    text = build_classifier(loaded.model, loaded.tokenizer, ["cello"], templates("paper"))
    target = text.repeat(len(images), 1)
    chain = ResNetChain(loaded.model.visual, "RN-tiny")
    res = A.compute_circuit(chain, images, target, ig=A.IGConfig(2, "left"), node_fraction=0.1)
    for name in chain.names:
        np.testing.assert_allclose(stored.nodes[name], res.nodes[name], rtol=1e-5, atol=1e-7)
        assert stored.selected[name].tolist() == res.selected[name].tolist()
    for name in chain.names[1:]:
        np.testing.assert_allclose(stored.edges[name], res.edges[name], rtol=1e-5, atol=1e-9)
    with torch.no_grad():
        emb = loaded.model.encode_image(images, normalize=True)
    np.testing.assert_allclose(stored.metric, (emb @ text[0]).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_vit_model_gets_its_chain_recorded_in_the_settings(tmp_path, synth_root):
    run = make_random_run(tmp_path / "vit", model="ViT-tiny", epochs=(0,))
    res = run_circuits(small_config(tmp_path / "c.h5", run, synth_root, classes="cello", domains="q"),
                           progress=False)
    assert res.computed == 1
    with open_circuits(tmp_path / "c.h5") as cf:
        assert cf.settings["family"] == "vit" and cf.settings["nodes"] == "channels"
        assert cf.layers == ["input", "resblock1", "resblock2", "resblock3", "resblock4", "proj"]
    with pytest.raises(ClipgenError, match="nodes: unknown node kind 'bogus'"):
        run_circuits(small_config(tmp_path / "d.h5", run, synth_root, nodes="bogus"), progress=False)
    assert not (tmp_path / "d.h5").exists()


@pytest.mark.parametrize("kw,match", [
    ({"steps": 0}, "^steps: must be at least 1"),
    ({"rule": "simpson"}, "^rule: unknown rule 'simpson'"),
    ({"node_fraction": 0.0}, r"^node_fraction: must be in \(0, 1\]"),
    ({"samples_per_class": 0}, "samples_per_class: must be at least 1"),
    ({"memory_gb": -1.0}, "memory_gb: must be positive"),
    ({"shard": "2/2"}, "shard: shard 2/2: need 0 <= i < n"),
    ({"domains": "cz"}, "domains: unknown domain"),
    ({"precision": "fp8"}, "precision: unknown precision"),
])
def test_bad_options_are_one_line_errors(tmp_path, circuits_run_dir, synth_root, kw, match):
    with pytest.raises(ClipgenError, match=match):
        run_circuits(small_config(tmp_path / "c.h5", circuits_run_dir, synth_root, **kw), progress=False)


def test_bad_data_and_model_paths(tmp_path, circuits_run_dir, synth_root):
    with pytest.raises(ClipgenError, match="data: .* is not a directory"):
        run_circuits(small_config(tmp_path / "c.h5", circuits_run_dir, tmp_path / "none"), progress=False)
    with pytest.raises(ClipgenError, match=r"sketch_test\.txt: split file not found"):
        run_circuits(small_config(tmp_path / "c.h5", circuits_run_dir, tmp_path, domains="s"), progress=False)
    with pytest.raises(ClipgenError, match="epoch: no checkpoint for epoch 7"):
        run_circuits(small_config(tmp_path / "c.h5", circuits_run_dir, synth_root, epoch=7), progress=False)
    with pytest.raises(ClipgenError, match="shard: shard 0/5 of 4 entries is empty"):
        run_circuits(small_config(tmp_path / "c.h5", circuits_run_dir, synth_root, shard="0/5"), progress=False)


@pytest.mark.slow
def test_all_classes_skip_the_absent_pair_and_few_images_are_recorded(tmp_path, circuits_run_dir, synth_root):
    notes = []
    run = run_circuits(small_config(tmp_path / "c.h5", circuits_run_dir, synth_root, classes="teddy-bear,axe",
                                        domains="c", samples_per_class=9), progress=False, note=notes.append)
    assert run.planned == 2 and any("clipart/axe: only 4 test image(s)" in n for n in notes)
    with open_circuits(run.path) as cf:
        assert cf.held_out == [11] and cf.entries() == [("clipart", 11), ("clipart", 303)]
        assert cf.n_images("clipart", 303) == 4
    with pytest.raises(ClipgenError, match=r"class 'teddy-bear' \(303\) has no test images in painting"):
        run_circuits(small_config(tmp_path / "d.h5", circuits_run_dir, synth_root, classes="teddy-bear",
                                      domains="cp"), progress=False)


@pytest.mark.slow
def test_circuits_from_the_image_cache_equal_decoding_the_jpegs(tmp_path, small_circuits, circuits_run_dir,
                                                                synth_root):
    from clipgen.data.image_cache import CacheConfig, run_cache
    from clipgen.datasets import DECODES
    from tests._circuits_helpers import assert_same_entries

    cache = run_cache(CacheConfig(out=tmp_path / "c.h5", data=synth_root, split="test", size=64, workers=0),
                      progress=False).path
    DECODES.reset()
    out = run_circuits(small_config(tmp_path / "x.h5", circuits_run_dir, synth_root, images=cache),
                           progress=False).path
    assert DECODES.reset() == 0
    assert_same_entries(out, small_circuits)
    small = run_cache(CacheConfig(out=tmp_path / "s.h5", data=synth_root, split="test", size=32, workers=0),
                      progress=False).path
    with pytest.raises(ClipgenError, match="^images: .*s.h5 was made for another preprocessing"):
        run_circuits(small_config(tmp_path / "y.h5", circuits_run_dir, synth_root, images=small), progress=False)
