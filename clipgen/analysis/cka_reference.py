"""A reference CKA sweep: the formulas transcribed directly, with nothing shared between cells.

The tests check :func:`clipgen.analysis.cka_sweep.cka_sweep` against it and ``benchmarks/cka.py`` measures the
sweep's speed against it; no command uses it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from clipgen.analysis.cka import KERNELS, gram
from clipgen.analysis.cka_sweep import CKARecord, MeansFn


def naive_cka_sweep(layers: Sequence[str], means_for: MeansFn, plan: Mapping[tuple[str, str, str], np.ndarray],
                    kernels: Sequence[str] = KERNELS, estimators: Sequence[str] = ("unbiased",),
                    rbf_median: str = "lower") -> list[CKARecord]:
    """The straightforward loop (benchmark baseline and cross-check): per layer, pair, subset, kernel and estimator,
    fetch both domains' class means, build both Gram matrices and evaluate the estimator with explicit matrix
    products (``H K H`` and ``K̃ L̃``), as a direct transcription of the formulas would."""
    records = []
    for layer in layers:
        for (a, b, s), cls in plan.items():
            la, xa = means_for(layer, a)
            lb, xb = means_for(layer, b)
            xa = np.asarray(xa, dtype=np.float64)[np.searchsorted(np.asarray(la), cls)]
            xb = np.asarray(xb, dtype=np.float64)[np.searchsorted(np.asarray(lb), cls)]
            for kernel in kernels:
                k, l = gram(xa, kernel, rbf_median), gram(xb, kernel, rbf_median)  # noqa: E741
                for est in estimators:
                    f = _naive_hsic_unbiased if est == "unbiased" else _naive_hsic_biased
                    val = f(k, l) / np.sqrt(f(k, k) * f(l, l))
                    records.append(CKARecord(layer, a, b, s, kernel, est, int(cls.size), float(val)))
    return records


def _naive_hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    kl = kt @ lt
    return float((np.trace(kl) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
                  - 2.0 / (n - 2) * (one @ kl @ one)) / (n * (n - 3)))


def _naive_hsic_biased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(k @ h @ l @ h) / (n - 1) ** 2)
