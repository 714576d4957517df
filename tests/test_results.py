import json

import numpy as np
import pytest

from clipgen.errors import ClipgenError
from clipgen.evaluation.metrics import domain_metrics
from clipgen.evaluation.results import (
    PREDICTIONS_NAME,
    RESULTS_NAME,
    EpochResult,
    ResultsWriter,
    read_predictions,
    read_results,
)

LABELS = np.array([11, 11, 66, 67, 11, 66])
DOMAIN_IDS = np.array([5, 5, 5, 5, 4, 4])  # sketch, real
CLASSES = [11, 66, 67]


def header(classes=CLASSES, held=(11,), fingerprint="f" * 64):
    return {"kind": "zero-shot", "run": {"name": "r"}, "test_domain": "sketch", "domains": ["sketch", "real"],
            "data": {"fingerprint": fingerprint},
            "classes": {"count": len(classes), "labels": list(classes), "names": [f"c{c}" for c in classes]},
            "held_out": {"labels": list(held), "names": [f"c{c}" for c in held]},
            "method": {"templates": "paper"}, "imagenet": None}


def epoch_result(epoch, pred):
    top = np.stack([pred, np.full_like(pred, 67)], axis=1)
    metrics = {d: domain_metrics(LABELS[DOMAIN_IDS == i], top[DOMAIN_IDS == i], [11], CLASSES)  # noqa: SIM300
               for d, i in (("sketch", 5), ("real", 4))}
    return EpochResult(epoch, {"sha256": f"s{epoch}", "features": "forward", "precision": "fp32"}, top, metrics)


def writer(out, **kw):
    return ResultsWriter(out, kw.pop("header", header()), records_paths=[f"p{i}" for i in range(6)], labels=LABELS,
                         domain_ids=DOMAIN_IDS, **kw)


PREDS = {0: np.array([11, 66, 66, 67, 66, 66]), 1: np.array([11, 11, 66, 66, 11, 66]),
         2: np.array([66, 66, 66, 66, 66, 66])}


def test_epochs_added_out_of_order_stay_sorted(tmp_path):
    w = writer(tmp_path)
    for e in (2, 0, 1):
        w.add(epoch_result(e, PREDS[e]))
    doc = read_results(tmp_path)
    assert doc["epochs"] == [0, 1, 2] and [c["sha256"] for c in doc["checkpoints"]] == ["s0", "s1", "s2"]
    assert doc["metrics"]["sketch"]["ood_acc"] == [0.5, 1.0, 0.0]
    assert doc["metrics"]["real"]["ood_acc"] == [0.0, 1.0, 0.0]
    assert doc["metrics"]["sketch"]["per_class_ood"] == {"c11": [0.5, 1.0, 0.0]}
    assert doc["counts"]["sketch"] == {"ood": 2, "id": 2, "per_class_ood": {"c11": 2}, "ood_classes": 1,
                                       "id_classes": 2, "skipped_classes": []}
    assert doc["counts"]["real"]["skipped_classes"] == ["c67"]
    assert doc["headline"] == {"metric": "ood_acc", "domain": "sketch", "epoch": 2, "value": 0.0}
    assert doc["precision"] == "fp32" and doc["schema_version"] == 1
    p = read_predictions(tmp_path)
    assert p["epochs"].tolist() == [0, 1, 2]
    for i, e in enumerate((0, 1, 2)):
        assert p["predictions"][i].tolist() == PREDS[e].tolist()
        assert (p["topk"][i, :, 1] == 67).all()
    assert p["labels"].tolist() == LABELS.tolist() and p["paths"].tolist()[0] == "p0"
    assert read_predictions(tmp_path, [2, 0])["predictions"][0].tolist() == PREDS[2].tolist()
    # replacing an epoch keeps one entry per epoch
    w.add(epoch_result(1, PREDS[0]))
    doc = read_results(tmp_path)
    assert doc["epochs"] == [0, 1, 2] and doc["metrics"]["sketch"]["ood_acc"] == [0.5, 0.5, 0.0]
    assert writer(tmp_path).done_epochs() == [0, 1, 2]


def test_mismatches_are_errors(tmp_path):
    writer(tmp_path).add(epoch_result(0, PREDS[0]))
    with pytest.raises(ClipgenError, match=r"results.json: class count mismatch: this results file has 3 classes, "
                                           r"the evaluated data has 2"):
        writer(tmp_path, header=header(classes=[11, 66]))
    with pytest.raises(ClipgenError, match="held-out classes differ"):
        writer(tmp_path, header=header(held=(66,)))
    with pytest.raises(ClipgenError, match="image set differ"):
        writer(tmp_path, header=header(fingerprint="0" * 64))
    other = header()
    other["run"] = {"name": "another-run"}
    with pytest.raises(ClipgenError, match=r'run name differ from the existing results \("r" vs "another-run"\)'):
        writer(tmp_path, header=other)
    # --force starts over
    w = writer(tmp_path, header=header(classes=[11, 66]), force=True)
    assert w.done_epochs() == [] and not (tmp_path / PREDICTIONS_NAME).exists()


def test_read_results_refusals(tmp_path):
    with pytest.raises(ClipgenError, match="results file not found"):
        read_results(tmp_path / RESULTS_NAME)
    (tmp_path / RESULTS_NAME).write_text("{not json")
    with pytest.raises(ClipgenError, match="unreadable results file"):
        read_results(tmp_path)
    (tmp_path / RESULTS_NAME).write_text(json.dumps({"format": "other"}))
    with pytest.raises(ClipgenError, match="not a clipgen results file"):
        read_results(tmp_path)
    (tmp_path / RESULTS_NAME).write_text(json.dumps({"format": "clipgen-eval-results", "schema_version": 9}))
    with pytest.raises(ClipgenError, match="schema version 9 is newer"):
        read_results(tmp_path)
