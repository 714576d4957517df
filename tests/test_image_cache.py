"""The image cache (``clipgen data cache``): exact model inputs, resumable writing, refusals, and evaluation from it
with the same predictions as decoding the JPEGs."""

import json
import os
import shutil
import signal

import h5py
import numpy as np
import pytest
import torch

from clipgen.data.image_cache import CacheConfig, describe_transform, open_cache, run_cache
from clipgen.datasets import DECODES, load_image
from clipgen.errors import ClipgenError, ConfigFieldError
from clipgen.evaluation.protocol import build_eval_set
from clipgen.evaluation.results import read_predictions, read_results
from clipgen.evaluation.zeroshot_eval import ZeroShotConfig, run_zero_shot
from clipgen.runs import load_clip
from clipgen.store.kind import parts_dir
from clipgen.store.testing import SimulatedCrash
from tests._fixtures_eval import uneven_root

FIXTURES = (uneven_root,)


def one_line_error(r, *fragments):
    assert r.exit_code == 2, r
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    for f in fragments:
        assert f in r.stderr, (f, r.stderr)


def _cache(root, out, **kw):
    cfg = dict(out=out, data=root, domains="sketch,real", batch_size=4, block_rows=8, workers=0)
    return run_cache(CacheConfig(**{**cfg, **kw}), progress=False)


@pytest.fixture(scope="module")
def sketch_cache(random_run_dir, uneven_root, tmp_path_factory):
    """The cache of the test images of sketch + real for the run's RN-tiny preprocessing."""
    return _cache(uneven_root, tmp_path_factory.mktemp("cache") / "c.h5", model_dir=random_run_dir).path


@pytest.mark.slow
def test_cached_images_are_exactly_the_model_inputs(sketch_cache, random_run_dir, uneven_root):
    m = load_clip(random_run_dir, 0)
    s = build_eval_set(uneven_root, "sketch")
    want = torch.stack([m.preprocess(load_image(r.path)) for r in s.records])
    with open_cache(sketch_cache) as c:
        assert len(c) == len(s) and c.shape == (3, 64, 64)
        assert c.provenance["preprocess"]["dtype"] == "uint8"
        got = list(c.batches(s.records, m.preprocess, batch_size=5))
        order = [3, 0, 7, 7, 1]  # any rows, in any order
        np.testing.assert_array_equal(c.read(np.array(order)), c.read(np.arange(len(c)))[order])
    assert [len(k) for _, k, _ in got] == [5, 5, 5, 5, 5, 5, 5, 1] and all(len(sk) == 0 for _, _, sk in got)
    x = torch.cat([b for b, _, _ in got])
    assert x.dtype == torch.float32 and torch.equal(x, want)  # bit-identical: uint8 before ToTensor + Normalize


@pytest.mark.slow
def test_zero_shot_from_the_cache_equals_decoding_the_jpegs(sketch_cache, random_run_dir, uneven_root, tmp_path):
    base = dict(data_root=uneven_root, model_dir=random_run_dir, test_domain="sketch", templates="simple",
                workers=0, progress=False)
    run_zero_shot(ZeroShotConfig(**base, out=tmp_path / "jpeg"))
    DECODES.reset()
    run_zero_shot(ZeroShotConfig(**base, out=tmp_path / "cache", images=sketch_cache))
    assert DECODES.reset() == 0  # not one JPEG decoded
    a, b = read_results(tmp_path / "jpeg"), read_results(tmp_path / "cache")
    assert a["metrics"] == b["metrics"]
    for k, v in read_predictions(tmp_path / "jpeg").items():
        np.testing.assert_array_equal(v, read_predictions(tmp_path / "cache")[k])
    assert {c["image_cache"] for c in b["checkpoints"]} == {str(sketch_cache.resolve())}
    assert {c["image_cache"] for c in a["checkpoints"]} == {None}


@pytest.mark.slow
def test_supervised_from_the_cache_equals_decoding_the_jpegs(sketch_cache, uneven_root, tmp_path):
    from clipgen.evaluation.supervised_eval import SupervisedConfig, run_supervised
    from clipgen.models.registry import model_config
    from clipgen.models.supervised import create_supervised
    from clipgen.runs import RunManifest, write_manifest

    run = tmp_path / "sup"
    (run / "checkpoints").mkdir(parents=True)
    torch.manual_seed(3)
    m, _, _ = create_supervised("RN-tiny")
    with torch.no_grad():
        m.head.bias[1000:] = torch.randn(345) * 0.01
    torch.save({"state_dict": m.state_dict()}, run / "checkpoints" / "epoch_1.pt")
    write_manifest(run, RunManifest(kind="supervised", name="sup", model="RN-tiny",
                                    model_config=model_config("RN-tiny"), seed=0))
    base = dict(data_root=uneven_root, model_dir=run, test_domain="sketch", workers=0, progress=False,
                held_out=["axe"])
    run_supervised(SupervisedConfig(**base, out=tmp_path / "jpeg"))
    run_supervised(SupervisedConfig(**base, out=tmp_path / "cache", images=sketch_cache))
    np.testing.assert_array_equal(read_predictions(tmp_path / "jpeg")["topk"],
                                  read_predictions(tmp_path / "cache")["topk"])


@pytest.mark.slow
def test_an_interrupted_cache_continues_and_equals_an_uninterrupted_one(random_run_dir, uneven_root, tmp_path,
                                                                          sketch_cache):
    out = tmp_path / "c.h5"
    with pytest.raises(SimulatedCrash):
        run_cache(CacheConfig(out=out, data=uneven_root, domains="sketch,real", batch_size=4, block_rows=8,
                              workers=0, model_dir=random_run_dir), progress=False, crash_after_blocks=2)
    with pytest.raises(ClipgenError, match=r"c\.h5: incomplete store \(16 of 36 rows written\).*clipgen data cache"):
        open_cache(out)
    DECODES.reset()
    res = _cache(uneven_root, out, model_dir=random_run_dir)
    assert DECODES.reset() == 36 - 16 and res.blocks_computed == 3 and res.blocks_total == 5
    with h5py.File(out) as f, h5py.File(sketch_cache) as g:
        np.testing.assert_array_equal(f["layers/pixels"][...], g["layers/pixels"][...])
        assert f.attrs["fingerprint"] == g.attrs["fingerprint"] and bool(f.attrs["complete"])
    assert not (tmp_path / "c.h5.parts").exists()
    again = _cache(uneven_root, out, model_dir=random_run_dir)
    assert again.already_complete and again.blocks_computed == 0


@pytest.mark.slow
def test_the_fingerprint_covers_the_image_set_and_the_transform(random_run_dir, uneven_root, tmp_path, sketch_cache):
    with open_cache(sketch_cache) as c:
        fp = c.fingerprint
    # the same images and transform from --size 64 (the open_clip transform RN-tiny uses): the same fingerprint
    same = _cache(uneven_root, tmp_path / "s.h5", size=64).path
    with open_cache(same) as c:
        assert c.fingerprint == fp
    with pytest.raises(ClipgenError, match="s.h5: fingerprint mismatch.*image_set.sha256.*--force"):
        _cache(uneven_root, tmp_path / "s.h5", size=64, domains="sketch")
    with pytest.raises(ClipgenError, match="s.h5: fingerprint mismatch.*preprocess.*--force"):
        _cache(uneven_root, tmp_path / "s.h5", size=32)
    forced = _cache(uneven_root, tmp_path / "s.h5", size=32, force=True)
    with open_cache(forced.path) as c:
        assert c.fingerprint != fp and c.shape == (3, 32, 32)


@pytest.mark.slow
def test_refusals_are_one_line(random_run_dir, uneven_root, tmp_path, sketch_cache, tiny_store):
    base = dict(data_root=uneven_root, model_dir=random_run_dir, test_domain="sketch", templates="simple",
                workers=0, progress=False, out=tmp_path / "o")
    small = _cache(uneven_root, tmp_path / "32.h5", size=32).path
    with pytest.raises(ConfigFieldError, match="^images: .*32.h5 was made for another preprocessing"):
        run_zero_shot(ZeroShotConfig(**base, images=small))
    only_sketch = _cache(uneven_root, tmp_path / "sk.h5", size=64, domains="sketch").path
    with pytest.raises(ConfigFieldError, match=r"^images: .*sk.h5 does not hold 18 of the 36 requested images "
                                               r"\(first: real/"):
        run_zero_shot(ZeroShotConfig(**base, images=only_sketch))
    with pytest.raises(ClipgenError, match="nope.h5: image cache not found"):
        open_cache(tmp_path / "nope.h5")
    with pytest.raises(ClipgenError, match="not a clipgen image cache"):
        open_cache(tiny_store)
    bad = tmp_path / "trunc.h5"
    bad.write_bytes(sketch_cache.read_bytes()[:5000])
    with pytest.raises(ClipgenError, match="trunc.h5: "):
        open_cache(bad)
    assert not (tmp_path / "o" / "results.json").exists()  # nothing written by a refused evaluation
    with pytest.raises(ConfigFieldError, match="^size: give exactly one of"):
        _cache(uneven_root, tmp_path / "x.h5")
    assert describe_transform(load_clip(random_run_dir, 0).preprocess)["steps"][-1] == "MaybeConvertMode(mode='RGB')"


def _root_with_a_corrupt_image(uneven_root, tmp_path):
    """A derived root whose first sketch test image is a file that is not an image."""
    from tests._fixtures_eval import derived_root

    def corrupt_first(d, split, lines):  # the first sketch test image points to a file that is not an image
        if (d, split) != ("sketch", "test"):
            return lines
        path, label = lines[0].split()
        return [f"broken/{'/'.join(path.split('/')[1:])} {label}", *lines[1:]]

    root = derived_root(uneven_root, tmp_path / "dn", keep=corrupt_first)  # image folders are links: leave them
    bad = root / "broken" / "/".join((root / "sketch_test.txt").read_text().split()[0].split("/")[1:])
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not an image")
    return root


@pytest.mark.slow
def test_unreadable_images_are_skipped_or_refused(random_run_dir, uneven_root, tmp_path):
    root = _root_with_a_corrupt_image(uneven_root, tmp_path)
    with pytest.raises(ClipgenError, match="corrupt or unreadable image"):
        _cache(root, tmp_path / "f.h5", size=64)
    res = _cache(root, tmp_path / "k.h5", size=64, on_error="skip")
    assert res.rows == 35 and len(res.skipped) == 1
    base = dict(data_root=root, model_dir=random_run_dir, test_domain="sketch", templates="simple", workers=0,
                progress=False)
    with pytest.raises(ClipgenError, match="could not be read when .*k.h5 was built"):
        run_zero_shot(ZeroShotConfig(**base, out=tmp_path / "o", images=res.path))
    run_zero_shot(ZeroShotConfig(**base, out=tmp_path / "o", images=res.path, on_error="skip"))
    run_zero_shot(ZeroShotConfig(**base, out=tmp_path / "j", on_error="skip"))
    np.testing.assert_array_equal(read_predictions(tmp_path / "o")["topk"], read_predictions(tmp_path / "j")["topk"])


def test_a_failed_cache_leaves_nothing_and_a_second_writer_is_refused(uneven_root, tmp_path):
    """Like an extraction: a run that fails before a block is written leaves no header or parts folder; a second
    writer of the same cache is refused with one line naming the process that holds it."""
    from tests.test_locks import _holder

    root = _root_with_a_corrupt_image(uneven_root, tmp_path)
    out = tmp_path / "f.h5"
    with pytest.raises(ClipgenError, match="corrupt or unreadable image"):  # in the first block
        _cache(root, out, size=64, domains="sketch")
    assert not out.exists() and not parts_dir(out).exists()
    out = tmp_path / "c.h5"
    p = _holder(out)
    try:
        with pytest.raises(ClipgenError, match=rf"^{out} is being written by another process \(pid {p.pid}\)"):
            _cache(uneven_root, out, size=64)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    assert not out.exists() and not parts_dir(out).exists()
    assert _cache(uneven_root, out, size=64).rows == 36  # the lock is freed


@pytest.mark.slow
def test_cli_data_cache_and_eval_images(cli, random_run_dir, uneven_root, tmp_path):
    out = tmp_path / "c.h5"
    r = cli("data", "cache", "--data", uneven_root, "--domains", "sketch,real", "--model-dir", random_run_dir,
            "--out", out, "--workers", "0", "--no-progress")
    assert r.exit_code == 0, r
    assert "wrote 36 images" in r.stdout and (tmp_path / "c.config.json").is_file()
    r = cli("data", "cache", "--data", uneven_root, "--domains", "sketch,real", "--model-dir", random_run_dir,
            "--out", out, "--workers", "0", "--no-progress")
    assert r.exit_code == 0 and "already complete" in r.stdout
    r = cli("data", "cache", "--data", uneven_root, "--domains", "sketch,real", "--model-dir", random_run_dir,
            "--out", out, "--workers", "0", "--no-progress", "--json")
    assert r.exit_code == 0, r
    doc = json.loads(r.stdout)  # one JSON document on stdout; the note goes to stderr
    assert doc == {"out": str(out), "rows": 36, "skipped": 0, "blocks_computed": 0, "blocks_total": 1,
                   "already_complete": True}
    assert "already complete" in r.stderr
    r = cli("eval", "zero-shot", "--data-root", uneven_root, "--model-dir", random_run_dir, "--test-domain",
            "sketch", "--epochs", "0", "--templates", "simple", "--images", out, "--out", tmp_path / "e",
            "--no-progress")
    assert r.exit_code == 0, r
    one_line_error(cli("eval", "zero-shot", "--data-root", uneven_root, "--model-dir", random_run_dir,
                       "--test-domain", "sketch", "--images", tmp_path / "missing.h5", "--out", tmp_path / "x"),
                   "missing.h5: image cache not found")
    one_line_error(cli("data", "cache", "--data", uneven_root, "--out", tmp_path / "y.h5", "--size", "0"),
                   "--size: must be a positive number")
    assert not (tmp_path / "y.h5").exists()
    shutil.rmtree(tmp_path / "e")


@pytest.mark.slow
def test_a_folder_of_caches_one_per_domain_is_read_as_one(random_run_dir, uneven_root, tmp_path):
    folder = tmp_path / "caches"
    for d in ("real", "sketch"):
        _cache(uneven_root, folder / f"{d}-test.h5", size=64, domains=d)
    s = build_eval_set(uneven_root, "sketch")
    m = load_clip(random_run_dir, 0)
    with open_cache(folder) as c:
        assert len(c) == len(s) and len(c.stores) == 2
        order = [30, 1, 2, 20]  # rows across both files, in any order
        rows = c.rows_of([s.records[i] for i in order])
        x, kept, _ = next(c.batches([s.records[i] for i in order], m.preprocess, batch_size=4))
        assert kept.tolist() == [0, 1, 2, 3] and len(set(rows.tolist())) == 4
    assert torch.equal(x, torch.stack([m.preprocess(load_image(s.records[i].path)) for i in order]))
    base = dict(data_root=uneven_root, model_dir=random_run_dir, test_domain="sketch", templates="simple", epochs="1",
                workers=0, progress=False)
    run_zero_shot(ZeroShotConfig(**base, out=tmp_path / "jpeg"))
    run_zero_shot(ZeroShotConfig(**base, out=tmp_path / "cache", images=folder))
    np.testing.assert_array_equal(read_predictions(tmp_path / "jpeg")["topk"],
                                  read_predictions(tmp_path / "cache")["topk"])
    _cache(uneven_root, folder / "x-32.h5", size=32, domains="real")
    with pytest.raises(ClipgenError, match="x-32.h5: made for another preprocessing than"):
        open_cache(folder)
    with pytest.raises(ConfigFieldError, match="^images: no image cache"):
        open_cache(tmp_path)


def test_scattered_rows_are_read_as_slices(sketch_cache):
    """Rows in any order are read one slice per run of consecutive rows, never by h5py's (slow) point selection."""
    with open_cache(sketch_cache) as c:
        ds, asked = c._ds[0], []

        class Spy:
            def __getitem__(self, key):
                asked.append(key)
                return ds[key]

        want = ds[...][[9, 3, 4, 5, 20, 4]]
        c._ds[0] = Spy()
        np.testing.assert_array_equal(c.read(np.array([9, 3, 4, 5, 20, 4])), want)
    assert asked == [slice(3, 6), slice(9, 10), slice(20, 21)]
