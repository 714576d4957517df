"""Embedding analysis on plain arrays and on hand-built stores (no UMAP here: see tests/test_cli_embeddings.py)."""

from __future__ import annotations

import numpy as np
import pytest

from clipgen.analysis import embeddings as E
from clipgen.errors import ClipgenError, ConfigFieldError

DOMS = ["clipart", "painting", "quickdraw", "real"]


def toy(seed=0):
    """Rows of 4 domains x 5 classes with unequal counts; painting lacks class 2 (as real DomainNet lacks one)."""
    rng = np.random.default_rng(seed)
    xs, ds, ls = [], [], []
    for di, d in enumerate(DOMS):
        for c in range(5):
            if d == "painting" and c == 2:
                continue
            k = 2 + (c + di) % 3
            xs.append(rng.normal(size=(k, 6)) + di)
            ds += [d] * k
            ls += [c] * k
    return np.concatenate(xs), np.array(ds), np.array(ls)


def test_domain_means_and_distances_match_explicit_loops():
    x, d, lab = toy()
    st = E.stats_from_arrays(x, d, lab, order=DOMS)
    np.testing.assert_array_equal(st.counts(), [np.sum(d == k) for k in DOMS])
    mu = np.stack([x[d == k].mean(axis=0) for k in DOMS])  # over all rows, as the published script
    np.testing.assert_allclose(st.domain_means(), mu, rtol=1e-12)
    dist = E.domain_mean_distances(st)
    for i in range(4):
        for j in range(4):
            assert dist[i, j] == pytest.approx(float(np.sqrt(np.sum((mu[i] - mu[j]) ** 2))), abs=1e-12)


def test_class_sensitive_distance_uses_classes_present_in_both():
    x, d, lab = toy(1)
    st = E.stats_from_arrays(x, d, lab, order=DOMS)
    cs, shared = E.class_sensitive_distances(st)
    for i, a in enumerate(DOMS):
        for j, b in enumerate(DOMS):
            if i == j:
                assert cs[i, j] == 0.0
                continue
            common = sorted(set(lab[d == a]) & set(lab[d == b]))
            assert shared[i, j] == len(common) == (4 if "painting" in (a, b) else 5)
            ref = np.mean([np.linalg.norm(x[(d == a) & (lab == c)].mean(0) - x[(d == b) & (lab == c)].mean(0))
                           for c in common])
            assert cs[i, j] == pytest.approx(ref, rel=1e-12)
    # no shared class: an error, not a NaN
    st2 = E.stats_from_arrays(np.eye(4), ["real", "real", "sketch", "sketch"], [0, 1, 2, 3])
    with pytest.raises(ClipgenError, match="share no class"):
        E.class_sensitive_distances(st2)


def test_mean_differences_against_explicit_rest_means():
    x, d, lab = toy(2)
    st = E.stats_from_arrays(x, d, lab, order=DOMS)
    md = E.mean_differences(st)
    for k in DOMS:
        ref = np.abs(x[d == k].mean(axis=0) - x[d != k].mean(axis=0))
        np.testing.assert_allclose(md[k], ref, rtol=1e-10, atol=1e-12)
    js = E.EmbeddingsResult("embedding", DOMS, "quickdraw", st.counts(), E.domain_mean_distances(st),
                            *E.class_sensitive_distances(st), md).to_json()
    q = js["mean_difference"]["per_domain"]["quickdraw"]
    assert q["sorted_abs_diff"].tolist() == sorted(md["quickdraw"].tolist())
    assert q["top_dims"][0] == int(np.argmax(md["quickdraw"]))
    np.testing.assert_array_equal(np.asarray(q["sorted_abs_diff"]), md["quickdraw"][q["dims"]])


def test_sample_rows_seeded_per_domain():
    dom = np.array(["a"] * 50 + ["b"] * 7 + ["c"] * 30)
    s1 = E.sample_rows(dom, ["a", "b", "c"], 10, seed=3)
    s2 = E.sample_rows(dom, ["a", "b", "c"], 10, seed=3)
    s3 = E.sample_rows(dom, ["a", "b", "c"], 10, seed=4)
    assert {k: v.tolist() for k, v in s1.items()} == {k: v.tolist() for k, v in s2.items()}
    assert s1["a"].tolist() != s3["a"].tolist()
    assert [len(s1[k]) for k in "abc"] == [10, 7, 10]  # min(per_domain, available)
    for k in "abc":
        assert len(set(s1[k].tolist())) == len(s1[k]) and np.all(dom[s1[k]] == k)
        assert s1[k].tolist() == sorted(s1[k].tolist())
    with pytest.raises(ConfigFieldError, match="^per_domain: "):
        E.sample_rows(dom, ["a"], 0, seed=0)


def test_umap_settings_are_checked_before_umap_is_imported():
    with pytest.raises(ConfigFieldError, match="^n_neighbors: "):
        E.fit_umap(np.zeros((5, 3)), n_neighbors=5)


def test_stats_from_store_equal_the_array_version(tmp_path):
    from clipgen.store import build_store_from_arrays, open_store

    x, d, lab = toy(3)
    perm = np.random.default_rng(0).permutation(len(x))  # rows interleaved across domains and classes
    x, d, lab = x[perm], d[perm], lab[perm]
    path = build_store_from_arrays(tmp_path / "s.h5", paths=[f"{i}.png" for i in range(len(x))], labels=lab,
                                   domains=list(d), layers={"embedding": x.astype(np.float32)})
    with open_store(path) as st:
        got = E.stats_from_store(st, "embedding", DOMS)
    ref = E.stats_from_arrays(x.astype(np.float32), d, lab, order=DOMS)
    for k in DOMS:
        np.testing.assert_array_equal(got.class_labels[k], ref.class_labels[k])
        np.testing.assert_array_equal(got.class_counts[k], ref.class_counts[k])
        np.testing.assert_allclose(got.class_means[k], ref.class_means[k], rtol=1e-6, atol=1e-7)
