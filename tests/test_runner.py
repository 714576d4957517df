import shutil
from pathlib import Path

import numpy as np
import pytest

from clipgen import domainnet as dn
from clipgen.errors import ClipgenError, ConfigFieldError
from clipgen.evaluation.protocol import build_eval_set
from clipgen.evaluation.results import read_predictions, read_results
from clipgen.evaluation.runner import (
    default_out_dir,
    default_test_domain,
    epoch_metrics,
    resolve_checkpoints,
    run_info,
)
from clipgen.evaluation.zeroshot_eval import ZeroShotConfig, run_zero_shot
from clipgen.runs import read_manifest
from tests._fixtures_eval import derived_root, uneven_root

FIXTURES = (uneven_root,)


def test_resolve_checkpoints(random_run_dir, tmp_path):
    manifest, refs = resolve_checkpoints(random_run_dir, "1-2")
    assert manifest.model == "RN-tiny" and [r.epoch for r in refs] == [1, 2]
    assert refs[0].path == random_run_dir / "checkpoints" / "epoch_1.pt"
    assert [r.epoch for r in resolve_checkpoints(random_run_dir, "last")[1]] == [2]
    files = [random_run_dir / "checkpoints" / f"epoch_{e}.pt" for e in (2, 0)]
    manifest, refs = resolve_checkpoints(None, "all", files, model="RN-tiny")
    assert manifest is None and [r.epoch for r in refs] == [0, 2]  # sorted by epoch
    info = run_info(None, None, "RN-tiny", refs)
    assert info["name"] == random_run_dir.name and info["setup"] is None and info["model"] == "RN-tiny"
    with pytest.raises(ConfigFieldError, match="^model_dir: pass either --model-dir RUN_DIR or checkpoint files"):
        resolve_checkpoints(random_run_dir, "all", files)
    with pytest.raises(ConfigFieldError, match="^model_dir: pass --model-dir RUN_DIR, or checkpoint files together"):
        resolve_checkpoints(None, "all")
    with pytest.raises(ClipgenError, match="epochs: no checkpoint for epoch"):
        resolve_checkpoints(random_run_dir, "7")
    odd = tmp_path / "weights.pt"
    shutil.copy(files[0], odd)
    with pytest.raises(ClipgenError, match="weights.pt: cannot tell the epoch"):
        resolve_checkpoints(None, "all", [odd], model="RN-tiny")
    with pytest.raises(ClipgenError, match="epoch 2 given twice"):
        resolve_checkpoints(None, "all", [files[0], files[0]], model="RN-tiny")
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    shutil.copy(random_run_dir / "clipgen-run.json", empty)
    with pytest.raises(ClipgenError, match="has no checkpoints/epoch_N.pt files"):
        resolve_checkpoints(empty, "all")


def test_defaults(random_run_dir, tmp_path):
    m = read_manifest(random_run_dir)
    assert default_test_domain(m, "s") == "sketch"
    m.mixture = {"test_domain": "painting"}
    assert default_test_domain(m, None) == "painting"
    assert default_out_dir(None, random_run_dir, "zero-shot", "sketch") == random_run_dir / "eval/zero-shot/sketch"
    assert default_out_dir(tmp_path, None, "zero-shot", "sketch") == tmp_path
    with pytest.raises(ConfigFieldError, match="^out: required with explicit checkpoint files"):
        default_out_dir(None, None, "zero-shot", "sketch")


def test_epoch_metrics_exclude_skipped_rows(synth_root):
    s = build_eval_set(synth_root, "sketch")
    top = np.stack([s.labels, s.labels], axis=1)  # all correct
    top[0] = -1  # first image unreadable
    m = epoch_metrics(s, [11, 13], top)
    n_sketch = int(np.sum(s.domain_ids == dn.DOMAINS.index("sketch")))
    assert m["sketch"]["counts"]["ood"] + m["sketch"]["counts"]["id"] == n_sketch - 1
    assert m["sketch"]["ood_acc"] == 1.0 and m["real"]["id_acc"] == 1.0


@pytest.mark.slow
def test_unreadable_image_fails_or_is_skipped(random_run_dir, uneven_root, tmp_path):
    root = derived_root(uneven_root, tmp_path / "dn")
    (root / "sketch").unlink()
    shutil.copytree(uneven_root / "sketch", root / "sketch")
    s = build_eval_set(root, "sketch")
    victim = s.records[2]
    Path(victim.path).write_bytes(b"not an image")
    cfg = dict(data_root=root, model_dir=random_run_dir, test_domain="sketch", epochs="0", templates="simple",
               progress=False)
    with pytest.raises(ClipgenError, match=f"{victim.rel}: corrupt or unreadable image"):
        run_zero_shot(ZeroShotConfig(out=tmp_path / "a", **cfg))
    run_zero_shot(ZeroShotConfig(out=tmp_path / "b", on_error="skip", **cfg))
    doc, pr = read_results(tmp_path / "b"), read_predictions(tmp_path / "b")
    assert doc["checkpoints"][0]["skipped_images"] == 1
    assert pr["predictions"][0][2] == -1 and (np.delete(pr["predictions"][0], 2) >= 0).all()
    c = doc["counts"]["sketch"]
    assert c["ood"] + c["id"] == int(np.sum(s.domain_ids == dn.DOMAINS.index("sketch"))) - 1


def test_imagenet_metrics_by_hand():
    from clipgen.evaluation.runner import imagenet_metrics

    y = np.array([0, 0, 1, 2])
    top = np.array([[0, 1], [1, 0], [1, 2], [0, 1]])
    m = imagenet_metrics(y, top)
    assert m["acc"] == pytest.approx(2 / 4) and m["top5"] == pytest.approx(3 / 4)
    # F1: class 0 tp=1 fp=1 fn=1 -> 1/2; class 1 tp=1 fp=1 fn=0 -> 2/3; class 2 tp=0 -> 0
    assert m["macro_f1"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)


@pytest.mark.slow
def test_a_changed_checkpoint_is_evaluated_again(random_run_dir, uneven_root, tmp_path):
    import os

    run = tmp_path / "run"
    shutil.copytree(random_run_dir, run)
    cfg = dict(data_root=uneven_root, model_dir=run, test_domain="sketch", epochs="0", out=tmp_path / "o",
               templates="simple", progress=False)
    first = run_zero_shot(ZeroShotConfig(**cfg)).results
    ck = run / "checkpoints" / "epoch_0.pt"
    assert first["checkpoints"][0]["size"] == ck.stat().st_size
    os.utime(ck, ns=(1, 1))  # touched, same content: the sha256 decides it is unchanged
    again = run_zero_shot(ZeroShotConfig(**cfg))
    assert again.skipped == [0] and again.evaluated == []
    shutil.copy(run / "checkpoints" / "epoch_1.pt", ck)  # retrained: other weights under the same name
    redo = run_zero_shot(ZeroShotConfig(**cfg))
    assert redo.evaluated == [0] and redo.skipped == []
    from clipgen.artifacts import sha256_file

    doc = read_results(tmp_path / "o")
    assert doc["epochs"] == [0] and doc["checkpoints"][0]["sha256"] == sha256_file(ck)
    assert read_predictions(tmp_path / "o")["epochs"].tolist() == [0]
    # the grid plans it again too
    from clipgen.evaluation.grid import _done_epochs

    assert _done_epochs(tmp_path / "o", {0: ck}) == [0]
    shutil.copy(run / "checkpoints" / "epoch_2.pt", ck)
    assert _done_epochs(tmp_path / "o", {0: ck}) == []


@pytest.mark.slow
def test_accuracy_curves_beside_results_json(random_run_dir, uneven_root, tmp_path):
    """Every evaluation (re)draws OUT/accuracy.png from the whole results.json, also when it only adds epochs."""
    from clipgen.evaluation.summary import accuracy_figure

    cfg = dict(data_root=uneven_root, model_dir=random_run_dir, test_domain="sketch", out=tmp_path / "o",
               templates="simple", progress=False)
    run_zero_shot(ZeroShotConfig(**cfg, epochs="0"))
    png = tmp_path / "o" / "accuracy.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    run_zero_shot(ZeroShotConfig(**cfg, epochs="0,1"))
    doc = read_results(tmp_path / "o")
    ax = accuracy_figure(doc).axes[0]
    assert list(ax.get_xticks()) == [0.0, 1.0] and ax.get_ylim() == (0.0, 100.0)
    ood = next(ln for ln in ax.get_lines() if ln.get_label() == "sketch: held-out classes")
    assert list(ood.get_ydata()) == pytest.approx([100 * v for v in doc["metrics"]["sketch"]["ood_acc"]])
