"""Classification metrics of the paper's protocol, in plain numpy (no scikit-learn).

All functions take DomainNet labels (not class indices): ``labels`` ``(N,)``, ``topk`` ``(N, k)`` predicted
labels best first (``topk[:, 0]`` is the top-1 prediction). :func:`domain_metrics` computes everything the
published evaluation scripts compute for one domain and one checkpoint:

=========================== ========================================================================
key                         meaning (published key in brackets; ``_topk`` = ``evaluate_domainnet_lso_openai_topk``)
=========================== ========================================================================
``ood_acc``                 sample-weighted top-1 accuracy over held-out-class images [``{d}-lso-ood``]
``id_acc``                  sample-weighted top-1 accuracy over the other images [``{d}-lso-id``]
``ood_acc_unweighted``      mean of the per-class top-1 accuracies of held-out classes [``{d}-lso-unweighted-ood``]
``id_acc_unweighted``       mean of the per-class top-1 accuracies of the other classes [``{d}-lso-unweighted-id``]
``ood_top5`` / ``id_top5``  sample-weighted top-k accuracy (k = 5, or the number of classes if fewer) [``_topk``:
                            ``{d}-lso-ood`` / ``{d}-lso-id``]
``ood_top5_unweighted``     mean of the per-class top-k accuracies [``_topk``: ``{d}-lso-unweighted-ood``], and
``id_top5_unweighted``      [``_topk``: ``{d}-lso-unweighted-id``]
``ood_macro_f1``            macro-F1 over the classes present in the subset, computed on the subset's images only
``id_macro_f1``             (as ``f1_score(average="macro", labels=unique(y))`` on the subset) [``_topk`` f1-score]
``per_class_ood``           ``{held-out label: top-1 accuracy}`` [``{d}-{class}-ood``]; ``None`` when absent
``per_class_ood_top5``      ``{held-out label: top-k accuracy}`` [``_topk``: ``{d}-{class}-ood``]
=========================== ========================================================================

A class without images in the domain contributes nothing to the unweighted means and is reported in
``skipped_classes`` (the real painting test split lacks one class).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: The metric arrays of one domain, in the order documented in docs/eval.md.
SCALAR_METRICS: tuple[str, ...] = (
    "ood_acc", "id_acc", "ood_acc_unweighted", "id_acc_unweighted", "ood_top5", "id_top5", "ood_top5_unweighted",
    "id_top5_unweighted", "ood_macro_f1", "id_macro_f1",
)
#: Per-held-out-class metrics of one domain (``{class: value}``).
PER_CLASS_METRICS: tuple[str, ...] = ("per_class_ood", "per_class_ood_top5")


def accuracy(labels: np.ndarray, pred: np.ndarray) -> float | None:
    """Fraction of ``pred == labels``; ``None`` for an empty set."""
    labels, pred = np.asarray(labels), np.asarray(pred)
    if labels.size == 0:
        return None
    return float(np.mean(labels == pred))


def topk_accuracy(labels: np.ndarray, topk: np.ndarray) -> float | None:
    """Fraction of rows whose label is among the ``topk`` predictions."""
    labels, topk = np.asarray(labels), np.asarray(topk)
    if labels.size == 0:
        return None
    return float(np.mean(np.any(topk == labels[:, None], axis=1)))


def per_class_accuracy(labels: np.ndarray, pred: np.ndarray, classes: Sequence[int]) -> dict[int, float | None]:
    """``{class: accuracy over its images}``; ``None`` for a class without images."""
    labels, pred = np.asarray(labels), np.asarray(pred)
    out: dict[int, float | None] = {}
    for c in classes:
        m = labels == c
        out[int(c)] = float(np.mean(pred[m] == c)) if m.any() else None
    return out


def per_class_topk_accuracy(labels: np.ndarray, topk: np.ndarray, classes: Sequence[int]) -> dict[int, float | None]:
    """``{class: fraction of its images whose label is among the top-k}``; ``None`` for a class without images."""
    labels, topk = np.asarray(labels), np.asarray(topk)
    hit = np.any(topk == labels[:, None], axis=1) if labels.size else np.zeros(0, dtype=bool)
    out: dict[int, float | None] = {}
    for c in classes:
        m = labels == c
        out[int(c)] = float(np.mean(hit[m])) if m.any() else None
    return out


def macro_f1(labels: np.ndarray, pred: np.ndarray) -> float | None:
    """Macro-averaged F1 over the classes present in ``labels`` (precision counts only these rows)."""
    labels, pred = np.asarray(labels), np.asarray(pred)
    if labels.size == 0:
        return None
    scores = []
    for c in np.unique(labels):
        tp = np.sum((labels == c) & (pred == c))
        fp = np.sum((labels != c) & (pred == c))
        fn = np.sum((labels == c) & (pred != c))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def domain_metrics(labels: np.ndarray, topk: np.ndarray, held_out: Sequence[int],
                   class_labels: Sequence[int]) -> dict[str, Any]:
    """Every metric of one domain and one checkpoint (see the module docstring).

    ``labels`` and ``topk`` are the rows of this domain; ``held_out`` the held-out (OOD) labels;
    ``class_labels`` the whole label space (ID classes = label space minus held-out).
    """
    labels = np.asarray(labels)
    topk = np.asarray(topk)
    if topk.ndim == 1:
        topk = topk[:, None]
    pred = topk[:, 0]
    held = [int(c) for c in held_out]
    ood = np.isin(labels, held)
    idc = [int(c) for c in class_labels if int(c) not in set(held)]
    per_class = per_class_accuracy(labels, pred, list(class_labels))
    per_class5 = per_class_topk_accuracy(labels, topk, list(class_labels))
    present = {c for c, a in per_class.items() if a is not None}
    return {
        "ood_acc": accuracy(labels[ood], pred[ood]),
        "id_acc": accuracy(labels[~ood], pred[~ood]),
        "ood_acc_unweighted": _mean([per_class[c] for c in held if c in present]),
        "id_acc_unweighted": _mean([per_class[c] for c in idc if c in present]),
        "ood_top5": topk_accuracy(labels[ood], topk[ood]),
        "id_top5": topk_accuracy(labels[~ood], topk[~ood]),
        "ood_top5_unweighted": _mean([per_class5[c] for c in held if c in present]),
        "id_top5_unweighted": _mean([per_class5[c] for c in idc if c in present]),
        "ood_macro_f1": macro_f1(labels[ood], pred[ood]),
        "id_macro_f1": macro_f1(labels[~ood], pred[~ood]),
        "per_class_ood": {c: per_class[c] for c in held},
        "per_class_ood_top5": {c: per_class5[c] for c in held},
        "counts": domain_counts(labels, held, class_labels),
    }


def domain_counts(labels: np.ndarray, held_out: Sequence[int], class_labels: Sequence[int]) -> dict[str, Any]:
    """Sample counts of one domain: OOD/ID images, per held-out class, evaluated and skipped classes."""
    labels = np.asarray(labels)
    held = [int(c) for c in held_out]
    present = set(np.unique(labels).tolist())
    ood = np.isin(labels, held)
    return {
        "ood": int(ood.sum()),
        "id": int((~ood).sum()),
        "per_class_ood": {c: int(np.sum(labels == c)) for c in held},
        "ood_classes": sum(1 for c in held if c in present),
        "id_classes": sum(1 for c in class_labels if int(c) not in set(held) and int(c) in present),
        "skipped_classes": [int(c) for c in class_labels if int(c) not in present],
    }
