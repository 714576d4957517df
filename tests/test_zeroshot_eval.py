import json
import os
import shutil

import h5py
import numpy as np
import pytest
import torch

from clipgen import domainnet as dn
from clipgen.artifacts import sha256_file
from clipgen.errors import ClipgenError
from clipgen.evaluation.protocol import build_eval_set
from clipgen.evaluation.results import read_predictions, read_results
from clipgen.evaluation.zeroshot import encode_images
from clipgen.evaluation.zeroshot_eval import ZeroShotConfig, run_zero_shot
from clipgen.models.zeroshot_classifier import build_classifier, templates
from clipgen.runs import list_checkpoints, load_clip, read_manifest, write_manifest
from tests._fixtures_eval import derived_root, uneven_root, zs_sketch

FIXTURES = (uneven_root, zs_sketch)  # imported fixtures, used by name below


def _recompute(labels, pred, held):
    """Independent re-computation of the four accuracies from raw arrays (plain loops)."""
    ood = [i for i in range(len(labels)) if labels[i] in held]
    idr = [i for i in range(len(labels)) if labels[i] not in held]
    w_ood = sum(pred[i] == labels[i] for i in ood) / len(ood)
    w_id = sum(pred[i] == labels[i] for i in idr) / len(idr)
    per_class = {}
    for c in sorted(set(labels.tolist())):
        rows = [i for i in range(len(labels)) if labels[i] == c]
        per_class[c] = sum(pred[i] == c for i in rows) / len(rows)
    u_ood = np.mean([per_class[c] for c in per_class if c in held])
    u_id = np.mean([per_class[c] for c in per_class if c not in held])
    return w_ood, w_id, u_ood, u_id, per_class


@pytest.mark.slow
def test_accuracies_recomputed_from_saved_predictions(zs_sketch, uneven_root):
    doc = read_results(zs_sketch)
    pr = read_predictions(zs_sketch)
    assert doc["epochs"] == [0, 1, 2] and pr["epochs"].tolist() == [0, 1, 2]
    assert doc["format"] == "clipgen-eval-results" and doc["kind"] == "zero-shot"
    assert doc["run"]["model"] == "RN-tiny" and doc["run"]["seed"] == 0
    assert doc["precision"] == "fp32" and doc["method"]["templates"] == "paper"
    assert doc["method"]["n_templates"] == 86
    assert doc["classes"]["count"] == 6 and doc["held_out"]["names"] == ["axe", "banana"]
    held = set(doc["held_out"]["labels"])
    s = build_eval_set(uneven_root, "sketch")
    assert pr["labels"].tolist() == s.labels.tolist() and pr["paths"].tolist() == s.rel_paths
    differ = 0
    for i, _ in enumerate(doc["epochs"]):
        for d in ("sketch", "real"):
            m = pr["domain_ids"] == dn.DOMAINS.index(d)
            y, p = pr["labels"][m], pr["predictions"][i][m]
            w_ood, w_id, u_ood, u_id, per_class = _recompute(y, p, held)
            got = doc["metrics"][d]
            assert got["ood_acc"][i] == pytest.approx(w_ood) and got["id_acc"][i] == pytest.approx(w_id)
            assert got["ood_acc_unweighted"][i] == pytest.approx(u_ood)
            assert got["id_acc_unweighted"][i] == pytest.approx(u_id)
            assert got["per_class_ood"]["axe"][i] == pytest.approx(per_class[11])
            assert got["per_class_ood"]["banana"][i] == pytest.approx(per_class[13])
            top = pr["topk"][i][m]
            ood = np.isin(y, list(held))
            assert got["ood_top5"][i] == pytest.approx(np.mean([y[j] in top[j] for j in np.flatnonzero(ood)]))
            assert got["id_top5"][i] == pytest.approx(np.mean([y[j] in top[j] for j in np.flatnonzero(~ood)]))
            hit5 = {c: np.mean([y[j] in top[j] for j in np.flatnonzero(y == c)]) for c in np.unique(y)}
            assert got["per_class_ood_top5"]["axe"][i] == pytest.approx(hit5[11])
            assert got["ood_top5_unweighted"][i] == pytest.approx(np.mean([hit5[c] for c in hit5 if c in held]))
            assert got["id_top5_unweighted"][i] == pytest.approx(np.mean([hit5[c] for c in hit5 if c not in held]))
            differ += (abs(w_ood - u_ood) > 1e-9) + (abs(w_id - u_id) > 1e-9)
    # class sizes are 1, 2, 3, 4, 4, 4: weighted and unweighted accuracies must differ somewhere
    assert differ > 0
    assert doc["counts"]["sketch"]["per_class_ood"] == {"axe": 1, "banana": 2}
    assert doc["counts"]["sketch"]["ood"] == 3 and doc["counts"]["sketch"]["id"] == 15
    assert (tuple(doc["checkpoints"][0][k] for k in ("features", "precision", "device"))
            == ("forward", "fp32", "cpu"))
    assert doc["checkpoints"][2]["sha256"] == sha256_file(doc["checkpoints"][2]["path"])
    cfg = json.loads((zs_sketch / "results.config.json").read_text())
    assert cfg["command"] == "eval zero-shot" and cfg["config"]["test_domain"] == "sketch"


@pytest.mark.slow
def test_predictions_equal_a_hand_built_zero_shot_classifier(zs_sketch, random_run_dir, uneven_root):
    s = build_eval_set(uneven_root, "sketch")
    m = load_clip(random_run_dir, 1)
    w = build_classifier(m.model, m.tokenizer, s.class_names, templates("paper"))
    f = encode_images(m.model, s.records, m.preprocess)
    pred = np.array(s.class_labels)[(f @ w.T).argmax(1).numpy()]
    assert read_predictions(zs_sketch, [1])["predictions"][0].tolist() == pred.tolist()


@pytest.mark.slow
def test_skip_existing_and_resume(random_run_dir, uneven_root, tmp_path, monkeypatch):
    from clipgen.evaluation import zeroshot_eval

    out = tmp_path / "o"
    first = run_zero_shot(ZeroShotConfig(data_root=uneven_root, model_dir=random_run_dir, test_domain="sketch",
                                         epochs="0,2", out=out, progress=False, templates="simple"))
    assert first.evaluated == [0, 2]
    before = read_results(out)
    calls = []
    real = zeroshot_eval.topk_many
    monkeypatch.setattr(zeroshot_eval, "topk_many", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = run_zero_shot(ZeroShotConfig(data_root=uneven_root, model_dir=random_run_dir, test_domain="sketch",
                                         epochs="all", out=out, progress=False, templates="simple"))
    assert again.skipped == [0, 2] and again.evaluated == [1] and len(calls) == 1
    doc = read_results(out)
    assert doc["epochs"] == [0, 1, 2]
    for k in ("ood_acc", "id_acc_unweighted"):
        assert [doc["metrics"]["sketch"][k][i] for i in (0, 2)] == before["metrics"]["sketch"][k]
    none = run_zero_shot(ZeroShotConfig(data_root=uneven_root, model_dir=random_run_dir, test_domain="sketch",
                                        out=out, progress=False, templates="simple"))
    assert none.evaluated == [] and len(calls) == 1 and none.results["epochs"] == [0, 1, 2]
    # another template set is another evaluation: refused rather than mixed
    with pytest.raises(ClipgenError, match="method differ"):
        run_zero_shot(ZeroShotConfig(data_root=uneven_root, model_dir=random_run_dir, test_domain="sketch",
                                     out=out, progress=False, templates="openai"))


@pytest.mark.slow
def test_class_count_mismatch_with_existing_results(random_run_dir, uneven_root, tmp_path):
    out = tmp_path / "o"
    run_zero_shot(ZeroShotConfig(data_root=uneven_root, model_dir=random_run_dir, test_domain="sketch",
                                 epochs="0", out=out, progress=False, templates="simple"))
    fewer = derived_root(uneven_root, tmp_path / "dn",
                         keep=lambda d, s, lines: [x for x in lines if int(x.split()[1]) != 303])
    with pytest.raises(ClipgenError, match="results.json: class count mismatch: this results file has 6 classes, "
                                           "the evaluated data has 5"):
        run_zero_shot(ZeroShotConfig(data_root=fewer, model_dir=random_run_dir, test_domain="sketch",
                                     epochs="1", out=out, progress=False, templates="simple"))


@pytest.mark.slow
def test_explicit_checkpoints_and_bad_inputs(random_run_dir, uneven_root, tmp_path):
    cks = list_checkpoints(random_run_dir)
    out = tmp_path / "explicit"
    res = run_zero_shot(ZeroShotConfig(data_root=uneven_root, checkpoints=[cks[2]], model="RN-tiny",
                                       test_domain="painting", out=out, progress=False, templates="simple"))
    assert res.evaluated == [2]
    doc = read_results(out)
    assert doc["run"]["name"] == random_run_dir.name and doc["run"]["setup"] is None
    assert doc["counts"]["painting"]["skipped_classes"] == ["teddy-bear"]  # the synthetic painting quirk
    assert doc["metrics"]["painting"]["id_acc_unweighted"][0] is not None

    def zs(**kw):
        base = dict(data_root=uneven_root, test_domain="sketch", out=tmp_path / "x", progress=False,
                    templates="simple")
        return run_zero_shot(ZeroShotConfig(**{**base, **kw}))

    with pytest.raises(ClipgenError, match="^model: explicit checkpoint files need --model NAME"):
        zs(checkpoints=[cks[0]])
    with pytest.raises(ClipgenError, match="epoch_9.pt: checkpoint not found"):
        zs(checkpoints=[tmp_path / "epoch_9.pt"], model="RN-tiny")
    bad = tmp_path / "run" / "checkpoints"
    bad.mkdir(parents=True)
    (bad / "epoch_0.pt").write_bytes(b"garbage")
    with pytest.raises(ClipgenError, match="epoch_0.pt: corrupt or unreadable checkpoint"):
        zs(checkpoints=[bad / "epoch_0.pt"], model="RN-tiny")
    with pytest.raises(ClipgenError, match="no clipgen run manifest here; .*--model NAME"):
        zs(model_dir=tmp_path / "run")
    with pytest.raises(ClipgenError, match="test_domain: domain 'quickdraw' is absent"):
        zs(model_dir=random_run_dir, test_domain="quickdraw",
           data_root=derived_root(uneven_root, tmp_path / "noq", drop_splits=("quickdraw_test",)))
    with pytest.raises(ClipgenError, match="^test_domain: required"):
        zs(model_dir=random_run_dir, test_domain=None)
    with pytest.raises(ClipgenError, match="templates: unknown template set"):
        zs(model_dir=random_run_dir, templates="fancy")
    noheld = derived_root(uneven_root, tmp_path / "noheld",
                          keep=lambda d, s, lines: [x for x in lines if int(x.split()[1]) not in (11, 13)])
    with pytest.raises(ClipgenError, match="held_out: no held-out class"):
        zs(model_dir=random_run_dir, data_root=noheld)


@pytest.mark.slow
def test_manifest_mixture_sets_test_domain_and_held_out(random_run_dir, uneven_root, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(random_run_dir, run)
    m = read_manifest(run)
    m.mixture = {"setup": "cg-low", "test_domain": "clipart", "domains": ["clipart", "real"],
                 "held_out": ["banana"], "held_out_labels": [13], "pseudo": False}
    write_manifest(run, m)
    res = run_zero_shot(ZeroShotConfig(data_root=uneven_root, model_dir=run, epochs="last", progress=False,
                                       templates="simple"))
    assert res.out_dir == run / "eval" / "zero-shot" / "clipart"
    doc = res.results
    assert doc["test_domain"] == "clipart" and doc["held_out"]["labels"] == [13]
    assert doc["held_out"]["source"] == "manifest" and doc["run"]["setup"] == "cg-low"
    assert doc["run"]["mixture"]["test_domain"] == "clipart"


@pytest.mark.slow
def test_imagenet_accuracy(random_run_dir, synth_root, uneven_root, tmp_path, monkeypatch):
    import clipgen.devices as devices
    import clipgen.evaluation.zeroshot_eval as zse

    built = []  # the class names of every classifier built: the published ImageNet names for the 1000-way one
    monkeypatch.setattr(zse, "build_classifier", lambda m, t, names, *a, **k: built.append(list(names))
                        or build_classifier(m, t, names, *a, **k))
    kinds = []  # precision "auto" is resolved for CLIP (fp16 autocast on a GPU, as the published fp16 evaluation)
    real = devices.resolve_precision
    monkeypatch.setattr(devices, "resolve_precision", lambda spec, dev, *a, kind=None, **k: kinds.append(kind)
                        or real(spec, dev, *a, kind=kind, **k))
    val = tmp_path / "val"
    for wnid, cls in (("n02795169", "axe"), ("n09472597", "banana")):
        (val / wnid).mkdir(parents=True)
        for f in sorted((synth_root / "real" / cls).iterdir())[:2]:
            shutil.copy(f, val / wnid / (f.stem + ".JPEG"))
    out = tmp_path / "o"
    run_zero_shot(ZeroShotConfig(data_root=uneven_root, model_dir=random_run_dir, test_domain="sketch", epochs="2",
                                 out=out, imagenet=val, templates="simple", progress=False))
    doc = read_results(out)
    pr = read_predictions(out)
    assert doc["imagenet"]["n_images"] == 4 and doc["imagenet"]["classes"] == 1000
    idx = {w: i for i, (w, _) in dn.imagenet_class_index().items()}
    assert pr["imagenet_labels"].tolist() == [idx["n02795169"]] * 2 + [idx["n09472597"]] * 2
    acc = float(np.mean(pr["imagenet_predictions"][0] == pr["imagenet_labels"]))
    assert doc["metrics"]["imagenet"]["acc"] == [pytest.approx(acc)]
    y, p = pr["imagenet_labels"], pr["imagenet_predictions"][0]
    f1 = [2 * np.sum((y == c) & (p == c)) / (np.sum(y == c) + np.sum(p == c)) for c in np.unique(y)]
    assert doc["metrics"]["imagenet"]["macro_f1"] == [pytest.approx(np.mean(f1))]
    assert pr["imagenet_topk"].shape == (1, 4, 5)
    names = next(n for n in built if len(n) == 1000)
    assert (names[27], names[638], names[744], names[836]) == ("eft", "maillot", "projectile", "sunglass")
    assert kinds == ["clip"]


def _store_for(run_dir, epoch, root, path, *, text=True, drop=0, templ="simple"):
    from clipgen.store import build_store_from_arrays

    s = build_eval_set(root, "sketch")
    m = load_clip(run_dir, epoch)
    feats = encode_images(m.model, s.records, m.preprocess).numpy()
    ck = list_checkpoints(run_dir)[epoch]
    recs = s.records[drop:]
    t = None
    if text:
        w = build_classifier(m.model, m.tokenizer, s.class_names, templates(templ)).numpy()
        t = (s.class_labels, w, templates(templ), s.class_names)
    build_store_from_arrays(path, paths=[r.path for r in recs], labels=[r.label for r in recs],
                            domains=[r.domain for r in recs], layers={"embedding": feats[drop:]}, text=t,
                            provenance={"checkpoint": {"path": str(ck), "sha256": sha256_file(ck)}, "epoch": epoch,
                                        "precision": "fp32"})
    return path


@pytest.mark.slow
def test_store_embeddings_replace_the_forward_pass(random_run_dir, uneven_root, tmp_path, monkeypatch):
    from clipgen.evaluation import zeroshot_eval

    full = _store_for(random_run_dir, 1, uneven_root, tmp_path / "e1.h5")
    partial = _store_for(random_run_dir, 2, uneven_root, tmp_path / "e2.h5", drop=1)
    ref = tmp_path / "ref"
    run_zero_shot(ZeroShotConfig(data_root=uneven_root, model_dir=random_run_dir, test_domain="sketch",
                                 epochs="1,2", out=ref, templates="simple", progress=False))
    import clipgen.runs

    calls, loads = [], []
    real, real_load = zeroshot_eval.topk_many, clipgen.runs.load_clip
    monkeypatch.setattr(zeroshot_eval, "topk_many", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(clipgen.runs, "load_clip", lambda *a, **k: loads.append(a[1]) or real_load(*a, **k))
    out = tmp_path / "o"
    run_zero_shot(ZeroShotConfig(data_root=uneven_root, model_dir=random_run_dir, test_domain="sketch",
                                 epochs="1,2", out=out, templates="simple", stores=[partial, full],
                                 progress=False))
    doc = read_results(out)
    c1, c2 = doc["checkpoints"]
    assert c1["features"] == "store" and c1["store"] == str(full.resolve()) and c1["text_from_store"]
    assert c2["features"] == "forward"  # the epoch-2 store lacks an image: the model runs
    assert len(calls) == 1 and loads == [2]  # with image and text embeddings stored, no model is loaded
    np.testing.assert_array_equal(read_predictions(out)["topk"], read_predictions(ref)["topk"])
    # the stored class embeddings must be those of the same templates; otherwise the model builds them
    from clipgen.evaluation.zeroshot_eval import store_features

    hit, _ = store_features([full], sha256_file(list_checkpoints(random_run_dir)[1]),
                            build_eval_set(uneven_root, "sketch"), templates("paper"))
    assert hit is not None and hit.text is None
    assert torch.allclose(hit.features.norm(dim=1), torch.ones(len(hit.features)), atol=1e-5)


@pytest.mark.slow
def test_a_real_extraction_store_replaces_model_and_forward(tiny_store, random_run_dir, synth_root, tmp_path,
                                                            monkeypatch):
    """The store of 'clipgen extract' (epoch 2, every test image, the paper's templates): the same predictions as
    the forward pass, without loading the model; found by searching a --store folder."""
    import clipgen.runs

    ref = tmp_path / "ref"
    run_zero_shot(ZeroShotConfig(data_root=synth_root, model_dir=random_run_dir, test_domain="sketch", epochs="2",
                                 out=ref, progress=False))
    folder = tmp_path / "stores"
    (folder / "sub").mkdir(parents=True)
    os.symlink(tiny_store, folder / "sub" / "tiny.h5")
    with h5py.File(folder / "foreign.h5", "w") as f:
        f["x"] = np.arange(3)
    (folder / "x.h5.parts").mkdir()
    shutil.copy(folder / "foreign.h5", folder / "x.h5.parts" / "block-000000.h5")
    loads = []
    real_load = clipgen.runs.load_clip
    monkeypatch.setattr(clipgen.runs, "load_clip", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    out = tmp_path / "o"
    run_zero_shot(ZeroShotConfig(data_root=synth_root, model_dir=random_run_dir, test_domain="sketch", epochs="2",
                                 out=out, stores=[folder], progress=False))
    c = read_results(out)["checkpoints"][0]
    assert c["features"] == "store" and c["text_from_store"] and c["store"] == str((folder / "sub" / "tiny.h5")
                                                                                    .resolve())
    assert loads == []  # image and text embeddings both came from the store
    np.testing.assert_array_equal(read_predictions(out)["topk"], read_predictions(ref)["topk"])
    a, b = read_results(out)["metrics"]["sketch"], read_results(ref)["metrics"]["sketch"]
    assert a["ood_acc"] == b["ood_acc"] and a["id_macro_f1"] == b["id_macro_f1"]
    # named explicitly, a file that is not a store is an error; a missing --store too
    with pytest.raises(ClipgenError, match="foreign.h5: not a clipgen activation store"):
        run_zero_shot(ZeroShotConfig(data_root=synth_root, model_dir=random_run_dir, test_domain="sketch",
                                     epochs="2", out=tmp_path / "x", stores=[folder / "foreign.h5"], progress=False))
    with pytest.raises(ClipgenError, match="stores: .*nope.h5 does not exist"):
        run_zero_shot(ZeroShotConfig(data_root=synth_root, model_dir=random_run_dir, test_domain="sketch",
                                     epochs="2", out=tmp_path / "x", stores=[tmp_path / "nope.h5"], progress=False))


def test_find_stores(tmp_path):
    from clipgen.evaluation.zeroshot_eval import find_stores

    (tmp_path / "a" / "s.h5.parts").mkdir(parents=True)
    for p in ("a/one.h5", "a/s.h5.parts/block-000000.h5", "a/notes.txt", "two.h5"):
        (tmp_path / p).write_bytes(b"")
    assert find_stores([tmp_path / "a", tmp_path / "two.h5"]) == [(tmp_path / "a" / "one.h5", False),
                                                                  (tmp_path / "two.h5", True)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipgenError, match="stores: no \\*.h5 activation store under"):
        find_stores([tmp_path / "empty"])


def _same_results(a, b):
    """results.json metrics and predictions.npz arrays of two evaluations are identical."""
    da, db = read_results(a), read_results(b)
    assert da["epochs"] == db["epochs"] and da["metrics"] == db["metrics"]
    pa, pb = read_predictions(a), read_predictions(b)
    assert sorted(pa) == sorted(pb)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])


@pytest.mark.slow
def test_one_decode_pass_evaluates_every_epoch(random_run_dir, synth_root, uneven_root, tmp_path):
    """Each image is decoded once for the three epochs (and the ImageNet images once), with the same results as
    the per-checkpoint loop, which decodes everything once per epoch."""
    from clipgen.datasets import DECODES

    val = tmp_path / "val"
    (val / "n02795169").mkdir(parents=True)
    for f in sorted((synth_root / "real" / "axe").iterdir())[:2]:
        shutil.copy(f, val / "n02795169" / (f.stem + ".JPEG"))
    n = len(build_eval_set(uneven_root, "sketch"))
    counts = {}
    for mode in (False, True):
        DECODES.reset()
        run_zero_shot(ZeroShotConfig(data_root=uneven_root, model_dir=random_run_dir, test_domain="sketch",
                                     out=tmp_path / str(mode), templates="simple", imagenet=val, workers=0,
                                     per_checkpoint=mode, progress=False))
        counts[mode] = DECODES.reset()
    assert counts == {False: n + 2, True: 3 * (n + 2)}
    _same_results(tmp_path / "False", tmp_path / "True")
    assert [c["chunk"] for c in read_results(tmp_path / "False")["checkpoints"]] == [3, 3, 3]
    assert [c["chunk"] for c in read_results(tmp_path / "True")["checkpoints"]] == [1, 1, 1]


@pytest.mark.slow
def test_chunks_follow_memory_and_a_crash_loses_only_the_chunk_in_progress(random_run_dir, uneven_root, tmp_path,
                                                                             monkeypatch):
    from clipgen.datasets import DECODES
    from clipgen.evaluation import zeroshot_eval
    from clipgen.evaluation.runner import checkpoint_bytes

    per_model = checkpoint_bytes(list_checkpoints(random_run_dir)[0])
    two = 2.5 * per_model / 2**30  # room for two models: chunks [0, 1], [2]
    n = len(build_eval_set(uneven_root, "sketch"))
    real = zeroshot_eval.topk_many
    calls = []

    def crash_second(*a, **k):
        calls.append(len(a[0]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(zeroshot_eval, "topk_many", crash_second)
    out = tmp_path / "o"
    cfg = dict(data_root=uneven_root, model_dir=random_run_dir, test_domain="sketch", out=out, templates="simple",
               workers=0, memory_gb=two, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_zero_shot(ZeroShotConfig(**cfg))
    assert calls == [2, 1] and read_results(out)["epochs"] == [0, 1]
    monkeypatch.setattr(zeroshot_eval, "topk_many", real)
    DECODES.reset()
    again = run_zero_shot(ZeroShotConfig(**cfg))
    assert again.skipped == [0, 1] and again.evaluated == [2] and DECODES.reset() == n
    ref = tmp_path / "ref"
    run_zero_shot(ZeroShotConfig(**{**cfg, "out": ref, "per_checkpoint": True}))
    _same_results(out, ref)
    with pytest.raises(ClipgenError, match="memory_gb: must be a positive number"):
        run_zero_shot(ZeroShotConfig(**{**cfg, "memory_gb": 0}))
    with pytest.raises(ClipgenError, match="workers: must be 0 or more"):
        run_zero_shot(ZeroShotConfig(**{**cfg, "workers": -1}))
