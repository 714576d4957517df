"""``results.json`` (schema ``clipgen-eval-results`` v1) and ``predictions.npz``: reading, merging, writing.

One output folder per run and test domain holds

* ``results.json``: what was evaluated (run, data, label space, held-out classes, method, precision) and metric
  arrays over the evaluated epochs (schema in docs/eval.md);
* ``predictions.npz``: labels, domain ids and paths of the images, and top-1 / top-k predictions (DomainNet
  labels, ``-1`` for an image skipped as unreadable) per epoch, so every number can be recomputed;
* ``results.config.json``: the command's configuration.

Epochs are added one at a time under a file lock (``.results.lock``), so an interrupted evaluation keeps its
finished epochs, a rerun skips them, and several array tasks may add epochs of the same run concurrently.
``predictions.npz`` is written before ``results.json``; ``results.json`` is the commit point.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipgen import __version__
from clipgen import domainnet as dn
from clipgen.artifacts import atomic_path, to_jsonable, utc_now, write_json_atomic
from clipgen.errors import ClipgenError, file_error
from clipgen.evaluation.metrics import PER_CLASS_METRICS, SCALAR_METRICS

RESULTS_FORMAT = "clipgen-eval-results"
RESULTS_VERSION = 1
RESULTS_NAME = "results.json"
PREDICTIONS_NAME = "predictions.npz"
LOCK_NAME = ".results.lock"
#: ImageNet-val metrics (1000-way zero-shot): top-1, top-k (k = 5) and macro-F1 over the classes present.
IMAGENET_METRICS = ("acc", "top5", "macro_f1")
#: Header fields that must agree between an existing results file and a new evaluation.
_IDENTITY = ("kind", "test_domain")


@dataclass
class EpochResult:
    """Everything one checkpoint contributes."""

    epoch: int
    checkpoint: dict[str, Any]  # path, sha256, features ("forward" or "store"), store, precision, device, seconds
    topk: np.ndarray  # (N, k) DomainNet labels, best first; -1 rows for skipped images
    metrics: dict[str, dict[str, Any]]  # domain -> metrics.domain_metrics(...)
    imagenet_topk: np.ndarray | None = None  # (M, k) ImageNet indices
    imagenet_metrics: dict[str, float | None] | None = None  # IMAGENET_METRICS


def read_results(path: str | Path) -> dict[str, Any]:
    """A results.json, checked for format and version."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise file_error(path, "results file not found") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise file_error(path, f"unreadable results file ({e.__class__.__name__})") from None
    if not isinstance(raw, dict) or raw.get("format") != RESULTS_FORMAT:
        fmt = raw.get("format") if isinstance(raw, dict) else None
        raise file_error(path, f"not a clipgen results file (format {fmt!r})")
    if int(raw.get("schema_version", 0)) > RESULTS_VERSION:
        raise file_error(path, f"schema version {raw.get('schema_version')} is newer than this clipgen reads "
                               f"({RESULTS_VERSION}); upgrade clipgen")
    return raw


def read_predictions(out_dir: str | Path, epochs: list[int] | None = None) -> dict[str, np.ndarray]:
    """The arrays of ``predictions.npz`` (only the rows of ``epochs`` when given, in that order)."""
    path = Path(out_dir) / PREDICTIONS_NAME
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise file_error(path, "predictions file not found") from None
    except (OSError, ValueError) as e:
        raise file_error(path, f"unreadable predictions file ({e.__class__.__name__})") from None
    if epochs is not None:
        where = {int(e): i for i, e in enumerate(data["epochs"])}
        missing = [e for e in epochs if e not in where]
        if missing:
            raise file_error(path, f"no predictions for epoch(s) {missing} that results.json lists")
        rows = [where[e] for e in epochs]
        for k in ("predictions", "topk", "imagenet_predictions", "imagenet_topk"):
            if k in data:
                data[k] = data[k][rows]
        data["epochs"] = np.array(epochs, dtype=np.int64)
    return data


@contextlib.contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / LOCK_NAME, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _check_compatible(path: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Refuse to merge epochs into a results file of a different evaluation."""
    ko, kn = old["classes"]["count"], new["classes"]["count"]
    if ko != kn:
        raise file_error(path, f"class count mismatch: this results file has {ko} classes, the evaluated data has "
                               f"{kn}; write to another --out or pass --force to replace it")
    checks = [(k, old.get(k), new.get(k)) for k in _IDENTITY]
    checks += [(f"run {k}", (old.get("run") or {}).get(k), (new.get("run") or {}).get(k)) for k in ("name", "model")]
    checks += [("class labels", old["classes"]["labels"], new["classes"]["labels"]),
               ("held-out classes", old["held_out"]["labels"], new["held_out"]["labels"]),
               ("image set", old["data"]["fingerprint"], new["data"]["fingerprint"]),
               ("method", old.get("method"), new.get("method")),
               ("ImageNet set", (old.get("imagenet") or {}).get("fingerprint"),
                (new.get("imagenet") or {}).get("fingerprint"))]
    for what, a, b in checks:
        if a != b:
            raise file_error(path, f"{what} differ from the existing results ({_short(a)} vs {_short(b)}); "
                                   "write to another --out or pass --force to replace it")


def _short(x: Any) -> str:
    s = json.dumps(to_jsonable(x))
    return s if len(s) <= 60 else s[:57] + "..."


class ResultsWriter:
    """Adds epochs to the results of one run and test domain (see the module docstring)."""

    def __init__(self, out_dir: str | Path, header: dict[str, Any], *, records_paths: list[str], labels: np.ndarray,
                 domain_ids: np.ndarray, imagenet_labels: np.ndarray | None = None, force: bool = False):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / RESULTS_NAME
        self.header = to_jsonable(header)
        self.paths, self.labels, self.domain_ids = records_paths, np.asarray(labels), np.asarray(domain_ids)
        self.imagenet_labels = imagenet_labels
        if force and self.path.exists():
            with locked(self.out_dir):
                for name in (RESULTS_NAME, PREDICTIONS_NAME):
                    (self.out_dir / name).unlink(missing_ok=True)
        self.done_epochs()  # validates an existing file early

    def load(self) -> dict[str, Any] | None:
        """The existing results (checked against this evaluation), or None."""
        return self._load()

    def _load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        old = read_results(self.path)
        _check_compatible(self.path, old, self.header)
        return old

    def done_epochs(self) -> list[int]:
        old = self._load()
        return [] if old is None else [int(e) for e in old["epochs"]]

    def add(self, res: EpochResult) -> dict[str, Any]:
        """Merge one epoch into results.json and predictions.npz (replacing that epoch if present)."""
        with locked(self.out_dir):
            old = self._load()
            old_epochs: list[int] = [] if old is None else [int(e) for e in old["epochs"]]
            preds = read_predictions(self.out_dir, old_epochs) if old_epochs else None
            epochs = sorted(set(old_epochs) | {res.epoch})
            topk, in_topk = [], []
            for e in epochs:
                if e == res.epoch:
                    topk.append(np.asarray(res.topk))
                    in_topk.append(None if res.imagenet_topk is None else np.asarray(res.imagenet_topk))
                else:
                    i = old_epochs.index(e)
                    topk.append(preds["topk"][i])
                    in_topk.append(preds["imagenet_topk"][i] if "imagenet_topk" in preds else None)
            self._write_predictions(epochs, topk, in_topk)
            new = self._document(res)
            doc = new if old is None else _merge(old, new, res.epoch)
            try:
                write_json_atomic(self.path, doc)
            except BaseException:
                if old is None:  # results.json is the commit point: no predictions without it
                    (self.out_dir / PREDICTIONS_NAME).unlink(missing_ok=True)
                raise
            return doc

    def _write_predictions(self, epochs: list[int], topk: list[np.ndarray], in_topk: list[Any]) -> None:
        k = max(_as2d(t).shape[1] for t in topk)
        tk = np.stack([_pad(t, k) for t in topk]).astype(np.int16)
        arrays: dict[str, np.ndarray] = {
            "epochs": np.array(epochs, dtype=np.int64),
            "labels": self.labels.astype(np.int16),
            "domain_ids": self.domain_ids.astype(np.int8),
            "domain_names": np.array(dn.DOMAINS),
            "paths": np.array(self.paths),
            "class_labels": np.array(self.header["classes"]["labels"], dtype=np.int16),
            "predictions": tk[:, :, 0],
            "topk": tk,
        }
        if self.imagenet_labels is not None:
            if any(t is None for t in in_topk):
                raise ClipgenError(f"{self.path}: ImageNet predictions missing for some epochs")
            ik = max(_as2d(t).shape[1] for t in in_topk)
            itk = np.stack([_pad(t, ik) for t in in_topk]).astype(np.int16)
            arrays.update(imagenet_labels=np.asarray(self.imagenet_labels).astype(np.int16),
                          imagenet_predictions=itk[:, :, 0], imagenet_topk=itk)
        with atomic_path(self.out_dir / PREDICTIONS_NAME) as tmp:
            try:
                with open(tmp, "wb") as f:
                    np.savez_compressed(f, **arrays)
            except OSError as e:  # a full disk: name the file (zipfile's write error does not)
                if e.filename is not None:
                    raise
                raise OSError(e.errno, e.strerror, str(tmp)) from None

    def _document(self, res: EpochResult) -> dict[str, Any]:
        """The results document of a single epoch (merged with earlier epochs by :func:`_merge`)."""
        h = self.header
        names = dict(zip(h["held_out"]["labels"], h["held_out"]["names"], strict=True))
        class_names = dict(zip(h["classes"]["labels"], h["classes"]["names"], strict=True))
        metrics: dict[str, Any] = {}
        counts: dict[str, Any] = {}
        for d in h["domains"]:
            dm = res.metrics[d]
            m: dict[str, Any] = {k: [dm[k]] for k in SCALAR_METRICS}
            for pc in PER_CLASS_METRICS:
                m[pc] = {names[c]: [dm[pc][c]] for c in h["held_out"]["labels"]}
            metrics[d] = m
            c = dm["counts"]
            counts[d] = {"ood": c["ood"], "id": c["id"],
                         "per_class_ood": {names[k]: v for k, v in c["per_class_ood"].items()},
                         "ood_classes": c["ood_classes"], "id_classes": c["id_classes"],
                         "skipped_classes": [class_names[k] for k in c["skipped_classes"]]}
        if h.get("imagenet"):
            metrics["imagenet"] = {k: [(res.imagenet_metrics or {}).get(k)] for k in IMAGENET_METRICS}
        doc = to_jsonable({
            "format": RESULTS_FORMAT, "schema_version": RESULTS_VERSION, "clipgen_version": __version__,
            "updated": utc_now(), **h,
            "precision": res.checkpoint["precision"],
            "epochs": [res.epoch],
            "checkpoints": [{"epoch": res.epoch, **res.checkpoint}],
            "metrics": metrics,
            "counts": counts,
            "files": {"predictions": PREDICTIONS_NAME, "config": "results.config.json"},
        })
        doc["headline"] = _headline(doc["metrics"], h["test_domain"], [res.epoch])
        return doc


def _headline(metrics: dict[str, Any], test_domain: str, epochs: list[int]) -> dict[str, Any]:
    return {"metric": "ood_acc", "domain": test_domain, "epoch": epochs[-1],
            "value": metrics[test_domain]["ood_acc"][-1]}


def _merge(old: dict[str, Any], new: dict[str, Any], epoch: int) -> dict[str, Any]:
    """``old`` with ``new``'s single epoch inserted (or replaced), every metric array kept in epoch order."""
    old_epochs = [int(e) for e in old["epochs"]]
    epochs = sorted(set(old_epochs) | {epoch})

    def pick(old_list: list[Any], new_list: list[Any]) -> list[Any]:
        by_epoch = dict(zip(old_epochs, old_list, strict=True))
        by_epoch[epoch] = new_list[0]
        return [by_epoch[e] for e in epochs]

    def merge_tree(o: Any, n: Any) -> Any:
        if isinstance(n, dict):
            return {k: merge_tree(o.get(k) if isinstance(o, dict) else None, v) for k, v in n.items()}
        if o is None:  # a key the old file lacks (cannot happen for compatible files): fill with None
            o = [None] * len(old_epochs)
        return pick(o, n)

    doc = dict(new)
    doc["epochs"] = epochs
    doc["checkpoints"] = pick(old["checkpoints"], new["checkpoints"])
    doc["metrics"] = merge_tree(old["metrics"], new["metrics"])
    precisions = sorted({c["precision"] for c in doc["checkpoints"]})
    doc["precision"] = precisions[0] if len(precisions) == 1 else "mixed"
    doc["headline"] = _headline(doc["metrics"], doc["test_domain"], epochs)
    return doc


def _as2d(t: np.ndarray) -> np.ndarray:
    t = np.asarray(t)
    return t[:, None] if t.ndim == 1 else t


def _pad(t: np.ndarray, k: int) -> np.ndarray:
    t = _as2d(t)
    if t.shape[1] == k:
        return t
    return np.concatenate([t, np.full((t.shape[0], k - t.shape[1]), -1, dtype=t.dtype)], axis=1)
