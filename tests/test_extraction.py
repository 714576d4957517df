import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from clipgen import domainnet as dn
from clipgen.errors import ClipgenError, ConfigFieldError
from clipgen.extraction import ExtractConfig, run_extract
from clipgen.store import open_store
from clipgen.store.merge import MergeConfig, run_merge
from clipgen.store.parts import parts_dir
from clipgen.store.testing import SimulatedCrash
from tests.conftest import h5_datasets, make_random_run, shared_artifact


def _cfg(out, run, root, **kw):
    args = dict(out=out, model_dir=run, data=root, domains="cs", device="cpu", text=False, batch_size=8,
                block_rows=8)
    args.update(kw)
    return ExtractConfig(**args)


def _assert_same_store(a, b):
    da, db = h5_datasets(a), h5_datasets(b)
    assert sorted(da) == sorted(db)
    for k in da:
        assert da[k].dtype == db[k].dtype, k
        np.testing.assert_array_equal(da[k], db[k], err_msg=k)
    with open_store(a) as sa, open_store(b) as sb:
        assert sa.fingerprint == sb.fingerprint and sa.layers == sb.layers


def _images(paths, preprocess):
    from PIL import Image

    return torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])


def _manual_resnet(visual, x) -> dict[str, torch.Tensor]:
    """Every catalogued ResNet layer, recomputed step by step (no hooks), each cloned as soon as it exists."""
    out = {}
    with torch.no_grad():
        x = visual.act1(visual.bn1(visual.conv1(x)))
        out["act1"] = x.clone()
        x = visual.act2(visual.bn2(visual.conv2(x)))
        out["act2"] = x.clone()
        x = visual.act3(visual.bn3(visual.conv3(x)))
        out["act3"] = x.clone()
        x = visual.avgpool(x)
        out["avgpool"] = x.clone()
        k = 0
        for li in range(1, 5):
            for block in getattr(visual, f"layer{li}"):
                x = block(x)
                k += 1
                out[f"resblock{k}"] = x.clone()
        out["attnpool"] = visual.attnpool(x).clone()
    return out


# -- values --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_stored_values_equal_a_direct_forward(tiny_store, random_run_dir):
    from clipgen.runs import load_clip

    loaded = load_clip(random_run_dir)  # the last epoch, as the extraction used
    with open_store(tiny_store) as st:
        assert st.provenance["epoch"] == 2 and st.n_samples == 140
        rows = np.r_[0:5, 70:73, 135:140]
        x = _images(st.samples.paths[rows], loaded.preprocess)
        ref = _manual_resnet(loaded.model.visual, x)
        for name in st.layers[:-1]:
            got = st.read_layer(name, rows=rows)
            r = ref[name]
            want = r.double().mean(dim=(2, 3)) if r.ndim == 4 else r.double()
            want = want.numpy().astype(np.float16).astype(np.float32)  # the store holds float16
            np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-4, err_msg=name)
            assert st.layer_info(name)["pooling"] == ("mean" if r.ndim == 4 else "-")
        emb = st.read_layer("embedding", rows=rows)
        with torch.no_grad():
            want = loaded.model.encode_image(x, normalize=True).numpy()
        np.testing.assert_allclose(emb, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(st.read_layer("embedding"), axis=1), 1.0, atol=1e-6)


@pytest.mark.slow
def test_float32_store_matches_hooks_tightly(tmp_path, random_run_dir, synth_root):
    from clipgen.runs import load_clip

    p = tmp_path / "f32.h5"
    run_extract(_cfg(p, random_run_dir, synth_root, domains="q", dtype="float32", layers="act1,resblock2,attnpool",
                     epoch=1), progress=False)
    loaded = load_clip(random_run_dir, 1)
    with open_store(p) as st:
        assert st.layers == ["act1", "resblock2", "attnpool"] and st.layer_info("act1")["dtype"] == "float32"
        x = _images(st.samples.paths, loaded.preprocess)
        ref = _manual_resnet(loaded.model.visual, x)
        for name in st.layers:
            r = ref[name]
            want = (r.double().mean(dim=(2, 3)) if r.ndim == 4 else r.double()).numpy()
            np.testing.assert_allclose(st.read_layer(name, dtype=np.float64), want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_store_metadata(tiny_store, synth_root, random_run_dir):
    from clipgen.datasets import domainnet_records, folders_of
    from clipgen.models.zeroshot_classifier import build_classifier, templates
    from clipgen.runs import load_clip

    recs = domainnet_records(synth_root, dn.DOMAINS, "test")
    with open_store(tiny_store) as st:
        s = st.samples
        assert list(s.paths) == [r.path for r in recs] and s.labels.tolist() == [r.label for r in recs]
        assert [s.domain_names[d] for d in s.domains] == [r.domain for r in recs]
        assert set(s.splits) == {"test"} and s.index.tolist() == list(range(len(recs)))
        folders = folders_of(recs)
        assert st.class_names == {k: v.replace("_", " ") for k, v in folders.items()}
        held = sorted(k for k, f in folders.items() if dn.normalise_class_name(f) in dn.HELD_OUT_CLASSES)
        assert st.held_out_labels == held and len(held) == 2
        labels, emb, tl = st.text_embeddings
        assert tl == templates("paper") and labels.tolist() == sorted(folders)
        loaded = load_clip(random_run_dir)
        want = build_classifier(loaded.model, loaded.tokenizer, [st.class_names[k] for k in labels], tl).numpy()
        np.testing.assert_allclose(emb, want, rtol=1e-5, atol=1e-6)
        prov = st.provenance
        assert prov["checkpoint"]["path"].endswith("epoch_2.pt") and len(prov["checkpoint"]["sha256"]) == 64
        assert prov["image_set"]["kind"] == "domainnet" and prov["image_set"]["n_rows"] == 140
        assert prov["pooling"] == {"conv": "mean", "tokens": None} and prov["dtype"] == "float16"
        assert prov["model"]["name"] == "RN-tiny" and prov["clipgen_version"]


@pytest.mark.slow
def test_unpooled_maps(tmp_path, random_run_dir, synth_root):
    p = tmp_path / "full.h5"
    run_extract(_cfg(p, random_run_dir, synth_root, domains="c", layers="act3,resblock4", pooling="none",
                     dtype="float32"), progress=False)
    q = tmp_path / "pooled.h5"
    run_extract(_cfg(q, random_run_dir, synth_root, domains="c", layers="act3,resblock4", dtype="float32"),
                progress=False)
    with open_store(p) as full, open_store(q) as pooled:
        info = full.layer_info("act3")
        assert info["pooling"] == "none" and info["shape"] == (24, 16, 32, 32)
        for name in ("act3", "resblock4"):
            m = full.read_layer(name, dtype=np.float64).mean(axis=(2, 3))
            np.testing.assert_allclose(m, pooled.read_layer(name), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigFieldError, match="^pooling: 'none' would store about .* raise --max-size-gb"):
        run_extract(_cfg(tmp_path / "big.h5", random_run_dir, synth_root, pooling="none", max_size_gb=0.001),
                    progress=False)


@pytest.mark.slow
def test_vit_token_pooling(tmp_path, synth_root, tmp_path_factory):
    from clipgen.runs import load_clip

    run = shared_artifact(tmp_path_factory, "run-random-vit-tiny",
                          lambda p: make_random_run(p / "run", model="ViT-tiny", epochs=(0,))) / "run"
    loaded = load_clip(run)
    v = loaded.model.visual
    stores = {}
    for tp in ("cls", "mean"):
        stores[tp] = tmp_path / f"{tp}.h5"
        run_extract(_cfg(stores[tp], run, synth_root, domains="s", token_pooling=tp, dtype="float32",
                         batch_size=24, block_rows=24), progress=False)
    with open_store(stores["cls"]) as a, open_store(stores["mean"]) as b:
        assert a.layers == ["patch_embed", "resblock1", "resblock2", "resblock3", "resblock4", "ln_post",
                            "embedding"]
        assert a.layer_info("resblock2")["pooling"] == "cls" and b.layer_info("resblock2")["pooling"] == "token-mean"
        assert a.fingerprint != b.fingerprint
        x = _images(a.samples.paths, loaded.preprocess)
        got = {}
        hooks = [v.transformer.resblocks[1].register_forward_hook(lambda m, i, o: got.__setitem__("r2", o.clone())),
                 v.conv1.register_forward_hook(lambda m, i, o: got.__setitem__("pe", o.clone()))]
        with torch.no_grad():
            emb = loaded.model.encode_image(x, normalize=True)
        for h in hooks:
            h.remove()
        np.testing.assert_allclose(a.read_layer("resblock2"), got["r2"][:, 0].numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(b.read_layer("resblock2"), got["r2"][:, 1:].mean(1).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a.read_layer("patch_embed"), got["pe"].mean((2, 3)).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a.read_layer("embedding"), emb.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_tsv_image_set(tmp_path, random_run_dir, synth_root):
    lines = (synth_root / "sketch_test.txt").read_text().split("\n")[:5]
    tsv = tmp_path / "set.tsv"
    tsv.write_text("filepath\ttitle\n" + "".join(f"{synth_root / ln.split()[0]}\ta picture\n" for ln in lines))
    p = tmp_path / "tsv.h5"
    run_extract(_cfg(p, random_run_dir, None, tsv=tsv, text=True, batch_size=4, block_rows=4), progress=False)
    with open_store(p) as st:
        assert st.n_samples == 5 and st.samples.labels.tolist() == [-1] * 5
        assert st.samples.domains.tolist() == [-1] * 5 and st.text_embeddings is None
        assert [Path(x).name for x in st.samples.paths] == [Path(ln.split()[0]).name for ln in lines]
        assert st.provenance["image_set"]["kind"] == "tsv"


# -- resumability --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_store(tmp_path_factory, random_run_dir, synth_root) -> Path:
    p = tmp_path_factory.mktemp("ref") / "ref.h5"
    run_extract(_cfg(p, random_run_dir, synth_root), progress=False)
    return p


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 3, 5])
def test_crash_and_resume_is_bit_identical(k, tmp_path, reference_store, random_run_dir, synth_root):
    p = tmp_path / "s.h5"
    cfg = _cfg(p, random_run_dir, synth_root)
    with pytest.raises(SimulatedCrash):
        run_extract(cfg, progress=False, crash_after_blocks=k)
    assert len(list(parts_dir(p).glob("block-*.h5"))) == k  # exactly k blocks survived
    with pytest.raises(ClipgenError, match=rf"incomplete store \({8 * k} of 48 rows"):
        open_store(p)
    with open_store(p, allow_incomplete=True) as st:  # the header reads the finished blocks in place
        assert not st.complete
        x = st.read_layer("resblock3")
        with open_store(reference_store) as ref:
            np.testing.assert_array_equal(x[:8 * k], ref.read_layer("resblock3")[:8 * k])
        assert np.isnan(x[8 * k:]).all()
    res = run_extract(cfg, progress=False)  # the same command continues (no --resume needed)
    assert res.blocks_computed == 6 - k and res.rows == 48
    assert not parts_dir(p).exists()
    _assert_same_store(p, reference_store)
    again = run_extract(cfg, progress=False)  # rerunning on a complete store is a no-op
    assert again.already_complete
    cfg.resume = True  # --resume is accepted and changes nothing
    assert run_extract(cfg, progress=False).already_complete


@pytest.mark.slow
def test_kill_9_then_resume(tmp_path, random_run_dir, synth_root):
    """A real SIGKILL in the middle of writing: the same command finishes an identical store."""
    p = tmp_path / "k.h5"
    cmd = [sys.executable, "-m", "clipgen.cli.main", "extract", "--model-dir", str(random_run_dir), "--data",
           str(synth_root), "--domains", "cs", "--device", "cpu", "--no-text", "--batch-size", "8",
           "--block-rows", "8", "--no-progress", "--out", str(p)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if list(parts_dir(p).glob("block-*.h5")):
            break
        time.sleep(0.01)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not killed or proc.returncode == -signal.SIGKILL
    if killed:
        assert parts_dir(p).exists()  # the kill left finished blocks behind
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    # The reference is the same command, uninterrupted, in a process of its own: CPU float results depend on the
    # thread count, so both sides run under the same environment.
    ref = tmp_path / "ref.h5"
    subprocess.run([*cmd[:-1], str(ref)], env=env, check=True, stdout=subprocess.DEVNULL)
    _assert_same_store(p, ref)


@pytest.mark.slow
def test_fingerprint_mismatch_refused(tmp_path, random_run_dir, synth_root):
    p = tmp_path / "s.h5"
    with pytest.raises(SimulatedCrash):
        run_extract(_cfg(p, random_run_dir, synth_root), progress=False, crash_after_blocks=1)
    mismatch = r"fingerprint mismatch: .*different checkpoint\.sha256, epoch; pass --force"
    with pytest.raises(ClipgenError, match=mismatch):
        run_extract(_cfg(p, random_run_dir, synth_root, epoch=0, resume=True), progress=False)
    with pytest.raises(ClipgenError, match="different dtype"):
        run_extract(_cfg(p, random_run_dir, synth_root, dtype="float32", resume=True), progress=False)
    with pytest.raises(ClipgenError, match="batch_size: the interrupted store was started with --batch-size 8"):
        run_extract(_cfg(p, random_run_dir, synth_root, batch_size=16, block_rows=16, resume=True), progress=False)
    res = run_extract(_cfg(p, random_run_dir, synth_root, epoch=0, force=True), progress=False)  # a new store
    with open_store(res.path) as st:
        assert st.provenance["epoch"] == 0 and st.complete


# -- shards --------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_shards_merged_equal_a_single_run(tmp_path, reference_store, random_run_dir, synth_root):
    out = tmp_path / "s.h5"
    shards = []
    for i in (2, 0, 1):
        res = run_extract(_cfg(out, random_run_dir, synth_root, shard=f"{i}/3"), progress=False)
        assert res.path.name == f"s.shard-{i}-of-3.h5"
        shards.append(res.path)
    with pytest.raises(ClipgenError, match="shard 0/3"):
        open_store(shards[1])
    virtual = run_merge(MergeConfig(shards, tmp_path / "merged.h5"))
    copied = run_merge(MergeConfig(shards, tmp_path / "copied.h5", copy=True))
    assert virtual.virtual and not copied.virtual and virtual.rows == 48
    for m in (virtual.path, copied.path):
        with open_store(m) as st, open_store(reference_store) as ref:
            assert st.complete and st.fingerprint == ref.fingerprint and st.n_samples == 48
            np.testing.assert_array_equal(st.samples.index, ref.samples.index)
            assert list(st.samples.paths) == list(ref.samples.paths)
            for name in ref.layers:
                np.testing.assert_array_equal(st.read_layer(name), ref.read_layer(name), err_msg=name)
    # refusals: gap, overlap, unfinished shard
    with pytest.raises(ClipgenError, match=r"gap: .*\(shard\(s\) 1 of 3 not given\)"):
        run_merge(MergeConfig([shards[0], shards[1]], tmp_path / "gap.h5"))
    with pytest.raises(ClipgenError, match="overlap: row 0 of the image set is also in"):
        run_merge(MergeConfig([shards[1], shards[1], shards[2], shards[0]], tmp_path / "dup.h5"))
    with pytest.raises(ClipgenError, match="already exists"):
        run_merge(MergeConfig(shards, tmp_path / "merged.h5"))
    # a virtual store needs its shards
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(str(shards[0]), moved / shards[0].name)
    with pytest.raises(ClipgenError, match="shard file .* is missing"):
        open_store(virtual.path)
    with open_store(copied.path) as st:  # the copy is self-contained
        assert st.n_samples == 48


# -- bad input -----------------------------------------------------------------------------------------------

@pytest.fixture
def broken_root(tmp_path, synth_root) -> Path:
    """A copy of the clipart split with one missing and one corrupt image."""
    root = tmp_path / "dn"
    (root / "clipart").mkdir(parents=True)
    lines = (synth_root / "clipart_test.txt").read_text().split("\n")[:6]
    for ln in lines:
        rel = ln.split()[0]
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(synth_root / rel, root / rel)
    (root / lines[1].split()[0]).unlink()
    (root / lines[4].split()[0]).write_bytes(b"not an image")
    (root / "clipart_test.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.slow
def test_bad_images_fail_or_skip(tmp_path, broken_root, random_run_dir):
    with pytest.raises(ClipgenError, match="image not found"):
        run_extract(_cfg(tmp_path / "a.h5", random_run_dir, broken_root, domains="c", batch_size=2, block_rows=2),
                    progress=False)
    assert not (tmp_path / "a.h5").exists() or not open_store(tmp_path / "a.h5", allow_incomplete=True).complete
    notes = []
    res = run_extract(_cfg(tmp_path / "b.h5", random_run_dir, broken_root, domains="c", batch_size=2, block_rows=4,
                           on_error="skip"), progress=False, note=notes.append)
    assert res.rows == 4 and [i for i, _, _ in res.skipped] == [1, 4]
    assert "image not found" in res.skipped[0][2] and "corrupt or unreadable" in res.skipped[1][2]
    assert any("skipped 2 unreadable" in n for n in notes)
    with open_store(res.path) as st:
        assert st.samples.index.tolist() == [0, 2, 3, 5] and [i for i, _, _ in st.skipped] == [1, 4]
        assert np.isfinite(st.read_layer("resblock1")).all()
        from clipgen.store.inspect import validate_store

        assert validate_store(res.path) == []


@pytest.mark.slow
def test_refusals(tmp_path, random_run_dir, synth_root):
    with pytest.raises(ClipgenError, match="layer: unknown layer.*valid: act1 act2"):
        run_extract(_cfg(tmp_path / "x.h5", random_run_dir, synth_root, layers="act1,conv9"), progress=False)
    with pytest.raises(ConfigFieldError, match="^data: give exactly one image set"):
        run_extract(_cfg(tmp_path / "x.h5", random_run_dir, None), progress=False)
    with pytest.raises(ConfigFieldError, match="^block_rows: 12 is not a multiple"):
        run_extract(_cfg(tmp_path / "x.h5", random_run_dir, synth_root, block_rows=12), progress=False)
    with pytest.raises(ConfigFieldError, match="^pooling: unknown value 'max'"):
        run_extract(_cfg(tmp_path / "x.h5", random_run_dir, synth_root, pooling="max"), progress=False)
    foreign = tmp_path / "foreign.h5"
    foreign.write_text("something else")
    with pytest.raises(ClipgenError, match="foreign.h5: exists and is not a readable clipgen store; pass --force"):
        run_extract(_cfg(foreign, random_run_dir, synth_root, domains="c"), progress=False)
    res = run_extract(_cfg(tmp_path / "ok.h5", random_run_dir, synth_root, domains="c"), progress=False)
    assert run_extract(_cfg(res.path, random_run_dir, synth_root, domains="c"), progress=False).already_complete
    with pytest.raises(ClipgenError, match=r"ok\.h5: fingerprint mismatch: .* different image_set.*; pass --force"):
        run_extract(_cfg(res.path, random_run_dir, synth_root, domains="s"), progress=False)


@pytest.mark.slow
def test_unreadable_image_in_a_loader_worker_is_a_one_line_error(tmp_path, broken_root, random_run_dir):
    with pytest.raises(ClipgenError) as e:
        run_extract(_cfg(tmp_path / "w.h5", random_run_dir, broken_root, domains="c", batch_size=2, block_rows=2,
                         workers=1), progress=False)
    assert str(e.value).endswith("image not found") and "Traceback" not in str(e.value)
    res = run_extract(_cfg(tmp_path / "w2.h5", random_run_dir, broken_root, domains="c", batch_size=2, block_rows=2,
                           workers=1, on_error="skip"), progress=False)
    assert [i for i, _, _ in res.skipped] == [1, 4] and res.rows == 4


@pytest.mark.slow
def test_config_beside_the_store_and_stale_parts_cleaned(tmp_path, random_run_dir, synth_root):
    import json

    p = tmp_path / "s.h5"
    cfg = _cfg(p, random_run_dir, synth_root, domains="c")
    run_extract(cfg, progress=False)
    rec = json.loads((tmp_path / "s.config.json").read_text())
    assert rec["command"] == "extract" and rec["config"]["domains"] == "c" and rec["config"]["out"] == str(p)
    # a kill between the final rename and the removal of the parts folder: the resumed command cleans it up
    parts_dir(p).mkdir()
    (parts_dir(p) / "block-000000.h5").write_bytes(b"")
    cfg.resume = True
    assert run_extract(cfg, progress=False).already_complete and not parts_dir(p).exists()


@pytest.mark.slow
def test_resume_with_every_block_written_only_assembles(tmp_path, reference_store, random_run_dir, synth_root):
    """Killed during the final assembly: every part file exists, so resuming computes nothing."""
    p = tmp_path / "s.h5"
    cfg = _cfg(p, random_run_dir, synth_root)
    with pytest.raises(SimulatedCrash):
        run_extract(cfg, progress=False, crash_after_blocks=6)  # the 6th (last) block written, then dead
    cfg.resume = True
    res = run_extract(cfg, progress=False)
    assert res.blocks_computed == 0 and res.rows == 48
    _assert_same_store(p, reference_store)


@pytest.mark.slow
def test_float16_overflow_is_an_error_not_inf(tmp_path, random_run_dir, synth_root):
    """Raised in the writer thread (block checks), reported in the main thread; no block was written, so nothing is
    left behind."""
    run = tmp_path / "run"
    shutil.copytree(random_run_dir, run)
    ck = run / "checkpoints" / "epoch_2.pt"
    state = torch.load(ck, weights_only=False)
    state["state_dict"]["visual.attnpool.c_proj.weight"] *= 1e6  # attnpool outputs far beyond float16's 65504
    torch.save(state, ck)
    p = tmp_path / "o.h5"
    with pytest.raises(ClipgenError, match="layer attnpool: activations exceed the float16 range .*--dtype float32"):
        run_extract(_cfg(p, run, synth_root, domains="c", layers="act1,attnpool"), progress=False)
    assert not p.exists() and not parts_dir(p).exists()
    res = run_extract(_cfg(p, run, synth_root, domains="c", layers="act1,attnpool", dtype="float32"),
                      progress=False)
    with open_store(res.path) as st:
        assert np.abs(st.read_layer("attnpool")).max() > 65504


@pytest.mark.slow
def test_store_records_the_runs_mixture(tmp_path, trained_run_dir, random_run_dir, synth_root):
    """The run's training mixture travels into the store, so analyses default to its test domain."""
    from clipgen.analysis.feature_sharing import find_test_domain

    res = run_extract(_cfg(tmp_path / "m.h5", trained_run_dir, synth_root, layers="embedding"), progress=False)
    with open_store(res.path) as st:
        run = st.provenance["run"]
        assert run["name"] == trained_run_dir.name and run["seed"] == 0
        assert run["mixture"]["setup"] == "cg-low" and run["mixture"]["test_domain"] == "sketch"
        assert find_test_domain(st.provenance) == "sketch"
    res = run_extract(_cfg(tmp_path / "r.h5", random_run_dir, synth_root, layers="embedding"), progress=False)
    with open_store(res.path) as st:  # a run without a mixture records none
        assert st.provenance["run"]["mixture"] is None and find_test_domain(st.provenance) is None


@pytest.mark.slow
def test_a_store_from_the_image_cache_equals_one_from_the_jpegs(tmp_path, tiny_store, random_run_dir, synth_root):
    """The same store, value for value, with not one JPEG decoded; a cache of other images is refused."""
    from clipgen.data.image_cache import CacheConfig, run_cache
    from clipgen.datasets import DECODES

    cache = run_cache(CacheConfig(out=tmp_path / "c.h5", data=synth_root, split="test", size=64, workers=0),
                      progress=False).path
    DECODES.reset()
    out = run_extract(ExtractConfig(out=tmp_path / "s.h5", model_dir=random_run_dir, data=synth_root, split="test",
                                    domains="all", layers="all", device="cpu", batch_size=32, images=cache),
                      progress=False).path
    assert DECODES.reset() == 0
    _assert_same_store(out, tiny_store)
    with open_store(out) as st:
        assert st.provenance["image_cache"]["path"] == str(cache.resolve())
    with pytest.raises(ConfigFieldError, match="^images: .*c.h5 does not hold 96 of the 96 requested images"):
        run_extract(_cfg(tmp_path / "t.h5", random_run_dir, synth_root, split="train", images=cache), progress=False)
    assert not (tmp_path / "t.h5").exists()


# -- failures: nothing left behind, finished work kept, one writer at a time -----------------------------------

def test_numeric_settings_refused_before_any_work(tmp_path, random_run_dir, synth_root):
    for kw, field in ((dict(batch_size=-4), "batch_size"), (dict(batch_size=0), "batch_size"),
                      (dict(block_rows=0), "block_rows"), (dict(workers=-1), "workers"),
                      (dict(writer_threads=-2), "writer_threads"), (dict(max_size_gb=0.0), "max_size_gb")):
        with pytest.raises(ConfigFieldError, match=f"^{field}: "):
            run_extract(_cfg(tmp_path / "x.h5", random_run_dir, synth_root, **kw), progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_failed_run_without_rows_leaves_nothing_and_the_rerun_is_accepted(tmp_path, broken_root, random_run_dir,
                                                                         monkeypatch):
    import clipgen.extraction as ex

    out = tmp_path / "a.h5"
    cfg = _cfg(out, random_run_dir, broken_root, domains="c", batch_size=2, block_rows=2)
    with pytest.raises(ClipgenError, match="image not found"):  # block 0 holds the missing image
        run_extract(cfg, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dn"]  # no header, no .parts, no lock file
    # a 0-row header left by an earlier failed run (as older versions did) does not block the same command
    monkeypatch.setattr(ex, "discard_if_empty", lambda out: None)
    with pytest.raises(ClipgenError, match="image not found"):
        run_extract(cfg, progress=False)
    assert out.is_file()
    monkeypatch.undo()
    lines = (broken_root / "clipart_test.txt").read_text().split("\n")
    (broken_root / "clipart_test.txt").write_text("\n".join([lines[0], lines[2], lines[3]]) + "\n")  # good images
    res = run_extract(cfg, progress=False)
    assert res.rows == 3 and not parts_dir(out).exists()


@pytest.mark.slow
def test_stale_assembly_temporaries_are_removed_on_resume_and_force(tmp_path, random_run_dir, synth_root):
    out = tmp_path / "s.h5"
    cfg = _cfg(out, random_run_dir, synth_root, domains="c")
    with pytest.raises(SimulatedCrash):
        run_extract(cfg, progress=False, crash_after_blocks=1)
    stale = tmp_path / ".s.h5.k3j9a_x2.tmp"  # what a kill during the final assembly leaves (atomic_path's name)
    stale.write_bytes(b"\0" * 4096)
    other = tmp_path / ".s.h5.config.json.abcd1234.tmp"  # another output's temporary: not ours
    other.write_text("{}")
    cfg.resume = True
    run_extract(cfg, progress=False)
    assert not stale.exists() and other.exists()
    stale.write_bytes(b"\0" * 4096)
    cfg.resume, cfg.force = False, True
    run_extract(cfg, progress=False)
    assert not stale.exists()


@pytest.mark.slow
def test_second_writer_on_the_same_store_is_refused(tmp_path, random_run_dir, synth_root):
    from tests.test_locks import _holder

    out = tmp_path / "s.h5"
    p = _holder(out)
    try:
        with pytest.raises(ClipgenError, match=rf"^{out} is being written by another process \(pid {p.pid}\)"):
            run_extract(_cfg(out, random_run_dir, synth_root, domains="c"), progress=False)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    assert not out.exists() and not parts_dir(out).exists()
    assert run_extract(_cfg(out, random_run_dir, synth_root, domains="c"), progress=False).rows > 0  # lock freed


@pytest.mark.slow
def test_disk_full_keeps_finished_blocks_and_no_temporary_file(tmp_path, random_run_dir, synth_root, monkeypatch):
    import errno

    import clipgen.store.parts as parts

    out = tmp_path / "s.h5"
    cfg = _cfg(out, random_run_dir, synth_root, domains="c")
    real = parts.write_rows
    calls = []

    def write_rows(ds, start, block, pool=None):
        calls.append(ds.file.filename)
        if "block-000001" in ds.file.filename:
            raise OSError(errno.ENOSPC, "No space left on device", ds.file.filename)
        return real(ds, start, block, pool)

    monkeypatch.setattr(parts, "write_rows", write_rows)
    with pytest.raises(OSError) as e:
        run_extract(cfg, progress=False)
    from clipgen.errors import is_disk_full

    assert is_disk_full(e.value)
    assert sorted(p.name for p in parts_dir(out).iterdir()) == ["block-000000.h5"]  # kept; no .tmp left
    monkeypatch.undo()
    cfg.resume = True
    res = run_extract(cfg, progress=False)
    assert res.blocks_computed == res.blocks_total - 1
