"""The vectorised CKA sweep, against the direct transcription of the formulas and the plain-array API."""

from __future__ import annotations

import numpy as np
import pytest

from clipgen.analysis import cka as C
from clipgen.analysis.cka_reference import naive_cka_sweep
from clipgen.analysis.cka_sweep import cka_sweep


def _toy_means(layers, domains, n_classes=9, missing=None, seed=0):
    rng = np.random.default_rng(seed)
    shared = {layer: rng.normal(size=(n_classes, w)) for layer, w in layers.items()}
    out = {}
    for di, d in enumerate(domains):
        labels = np.array([c for c in range(n_classes) if not (missing and d == missing[0] and c == missing[1])])
        for layer, w in layers.items():
            out[(layer, d)] = (labels, shared[layer][labels] + (0.3 + 0.4 * di) * rng.normal(size=(labels.size, w)))
    return out


def test_vectorised_sweep_equals_naive_loop_and_direct_cka():
    layers = {"l1": 3, "l2": 11, "l3": 5}
    domains = ["real", "quickdraw", "painting", "sketch"]
    means = _toy_means(layers, domains, missing=("painting", 4))
    calls = []

    def means_for(layer, domain):
        calls.append((layer, domain))
        return means[(layer, domain)]

    present = {d: means[("l1", d)][0] for d in domains}
    pairs = C.domain_pairs(domains)
    plan = C.plan_class_sets(present, pairs, ["all", "id", "ood"], held_out=[0, 1, 2, 3, 4])
    recs = cka_sweep(list(layers), means_for, plan, C.KERNELS, C.ESTIMATORS)
    assert len(recs) == 3 * 6 * 3 * 2 * 2
    assert sorted(calls) == sorted(set(calls)) and len(calls) == 3 * 4  # class means once per (layer, domain)
    naive = naive_cka_sweep(list(layers), means_for, plan, C.KERNELS, C.ESTIMATORS)
    assert [r[:7] for r in map(_tuple, recs)] == [r[:7] for r in map(_tuple, naive)]
    np.testing.assert_allclose([r.cka for r in recs], [r.cka for r in naive], rtol=1e-9, atol=1e-12)
    # one cell against the plain-array API on hand-picked rows
    r = next(r for r in recs if (r.layer, r.domain_a, r.domain_b, r.subset, r.kernel, r.estimator)
             == ("l2", "quickdraw", "painting", "ood", "rbf", "unbiased"))
    assert r.n_classes == 4  # held-out 0..4 minus painting's missing class 4
    la, xa = means[("l2", "quickdraw")]
    lb, xb = means[("l2", "painting")]
    cls = [0, 1, 2, 3]
    assert r.cka == pytest.approx(C.cka(xa[np.isin(la, cls)], xb[np.isin(lb, cls)], "rbf", "unbiased"), rel=1e-10)
    assert all(np.isfinite(r.cka) for r in recs)


def _tuple(r):
    return (r.layer, r.domain_a, r.domain_b, r.subset, r.kernel, r.estimator, r.n_classes, r.cka)
