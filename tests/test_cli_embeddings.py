"""``clipgen embeddings`` end to end on a real extraction (tiny_store); the only UMAP fit of the suite lives here."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest


@pytest.mark.slow
def test_embeddings_without_umap_numbers_match_raw_rows(cli, tiny_store, tmp_path):
    from clipgen.store import open_store

    out = tmp_path / "emb"
    r = cli("embeddings", tiny_store, "--out", out, "--no-umap")
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "embeddings.json", "config.json", "l2_domain_means.png", "l2_class_sensitive.png",
        "mean_difference_quickdraw.png", "mean_difference_all.png"])
    js = json.loads((out / "embeddings.json").read_text())
    assert js["format"] == "clipgen-embedding-analysis" and js["layer"] == "embedding" and js["umap"] == {}
    with open_store(tiny_store) as st:
        doms = st.samples.domain_names
        x = st.read_layer("embedding").astype(np.float64)
        dom, lab = st.samples.domains, st.samples.labels
    assert js["domains"] == doms
    mu = np.stack([x[dom == i].mean(axis=0) for i in range(len(doms))])
    np.testing.assert_allclose(js["domain_mean_l2"], np.linalg.norm(mu[:, None] - mu[None], axis=-1), atol=1e-9)
    i, j = doms.index("painting"), doms.index("quickdraw")
    common = sorted(set(lab[dom == i]) & set(lab[dom == j]))
    assert js["shared_classes"][i][j] == len(common) == 5
    ref = np.mean([np.linalg.norm(x[(dom == i) & (lab == c)].mean(0) - x[(dom == j) & (lab == c)].mean(0))
                   for c in common])
    assert js["class_sensitive_l2"][i][j] == pytest.approx(ref, rel=1e-9)
    q = js["mean_difference"]["per_domain"]["quickdraw"]
    diff = np.abs(x[dom == j].mean(0) - x[dom != j].mean(0))
    np.testing.assert_allclose(q["sorted_abs_diff"], np.sort(diff), atol=1e-9)
    assert len(q["dims"]) == x.shape[1]


@pytest.mark.slow
def test_embeddings_with_umap_seeded_and_reproducible(cli, tiny_store, tmp_path):
    from clipgen.analysis.embeddings import fit_umap
    from clipgen.store import open_store

    out = tmp_path / "emb"
    r = cli("embeddings", tiny_store, "--out", out, "--per-domain", "8", "--n-neighbors", "5", "--seed", "3")
    assert r.exit_code == 0, r.stderr
    for name in ("umap_all", "umap_without_quickdraw"):
        assert (out / f"{name}.png").stat().st_size > 0
    with open(out / "umap_all.csv", newline="") as f:
        rows_all = list(csv.DictReader(f))
    with open(out / "umap_without_quickdraw.csv", newline="") as f:
        rows_wo = list(csv.DictReader(f))
    assert len(rows_all) == 6 * 8 and len(rows_wo) == 5 * 8
    assert {r_["domain"] for r_ in rows_wo} == {"clipart", "infograph", "painting", "real", "sketch"}
    # the second fit uses the same sampled images minus quickdraw's
    assert [r_["row"] for r_ in rows_wo] == [r_["row"] for r_ in rows_all if r_["domain"] != "quickdraw"]
    coords = np.array([[float(r_["x"]), float(r_["y"])] for r_ in rows_all])
    assert np.all(np.isfinite(coords)) and coords.std(axis=0).min() > 0
    js = json.loads((out / "embeddings.json").read_text())
    assert js["umap"]["all"]["n_points"] == 48 and js["umap_settings"]["densmap"] is True
    # same seed, same rows -> the same embedding (UMAP with random_state is deterministic)
    with open_store(tiny_store) as st:
        x = st.read_layer("embedding", rows=[int(r_["row"]) for r_ in rows_all])
        paths = st.samples.paths[[int(r_["row"]) for r_ in rows_all]]
    assert [r_["path"] for r_ in rows_all] == list(paths)
    again = fit_umap(x, seed=3, n_neighbors=5)
    np.testing.assert_allclose(again, coords, rtol=1e-5, atol=1e-5)

    # an unpooled layer (N, C, H, W) is analysed on its flattened features (UMAP already compiled: fast here)
    store = _unpooled_store(tmp_path / "u.h5")
    r = cli("embeddings", store, "--out", tmp_path / "u", "--layer", "conv", "--per-domain", "6", "--n-neighbors",
            "4", "--seed", "0", "--no-figures")
    assert r.exit_code == 0, r.stderr
    with open(tmp_path / "u" / "umap_all.csv", newline="") as f:
        rows_u = list(csv.DictReader(f))
    assert len(rows_u) == 4 * 6
    with open_store(store) as st:
        xu = st.read_layer("conv", rows=[int(r_["row"]) for r_ in rows_u])
        dom, names = st.samples.domains, st.samples.domain_names
        flat = st.read_layer("conv").reshape(st.n_samples, -1).astype(np.float64)
    assert xu.ndim == 4
    coords = np.array([[float(r_["x"]), float(r_["y"])] for r_ in rows_u])
    np.testing.assert_allclose(fit_umap(xu.reshape(len(xu), -1), seed=0, n_neighbors=4), coords, rtol=1e-5,
                               atol=1e-5)
    js = json.loads((tmp_path / "u" / "embeddings.json").read_text())
    mu = np.stack([flat[dom == names.index(d)].mean(axis=0) for d in js["domains"]])
    np.testing.assert_allclose(js["domain_mean_l2"], np.linalg.norm(mu[:, None] - mu[None], axis=-1), atol=1e-6)
    assert len(js["mean_difference"]["per_domain"]["quickdraw"]["dims"]) == 3 * 2 * 2


def _unpooled_store(path):
    from clipgen.store import build_store_from_arrays

    rng = np.random.default_rng(0)
    paths, labs, doms = [], [], []
    for d in ("clipart", "quickdraw", "real", "sketch"):
        for c in range(6):
            for k in range(5):
                paths.append(f"{d}/{c}/{k}.png")
                labs.append(c)
                doms.append(d)
    n = len(paths)
    conv = rng.normal(size=(n, 3, 2, 2)) + np.asarray([len(d) for d in doms], dtype=float)[:, None, None, None]
    return build_store_from_arrays(path, paths=paths, labels=labs, domains=doms,
                                   layers={"conv": conv.astype(np.float32),
                                           "embedding": rng.normal(size=(n, 8)).astype(np.float32)},
                                   held_out_labels=[0, 1, 2, 3], class_names={i: f"c{i}" for i in range(6)})


@pytest.mark.parametrize("args, message", [
    (["--layer", "resblock99"], "--layer: layer 'resblock99' is not in the store"),
    (["--domains", "real,sculpture"], "--domains: domain 'sculpture' is not in the store"),
    (["--domains", "real,sketch"], "--highlight: domain 'quickdraw' is not among the analysed domains"),
    (["--per-domain", "0"], "--per-domain: must be at least 1"),
    (["--per-domain", "3", "--n-neighbors", "15"], "sample 'without_quickdraw' has 15 (raise --per-domain"),
    (["--n-neighbors", "1"], "--n-neighbors: must be at least 2, got 1"),
    (["--min-dist", "-0.1"], "--min-dist: must be between 0 and 1 (UMAP's spread), got -0.1"),
    (["--min-dist", "2"], "--min-dist: must be between 0 and 1 (UMAP's spread), got 2"),
])
def test_embeddings_bad_options_are_one_line_errors(cli, tiny_store, tmp_path, args, message):
    out = tmp_path / "o"
    r = cli("embeddings", tiny_store, "--out", out, *args)
    assert r.exit_code == 2, r
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert not out.exists()


@pytest.mark.slow
def test_embeddings_refuses_incomplete_store_and_existing_output(cli, tiny_store, tmp_path):
    import shutil

    import h5py

    partial = tmp_path / "partial.h5"
    shutil.copy(tiny_store, partial)
    with h5py.File(partial, "a") as f:
        f.attrs["complete"] = False
    r = cli("embeddings", partial, "--out", tmp_path / "o", "--no-umap")
    assert r.exit_code == 2 and "incomplete store" in r.stderr and r.stderr.count("\n") == 1
    (tmp_path / "o").mkdir()
    r = cli("embeddings", tiny_store, "--out", tmp_path / "o", "--no-umap")
    assert r.exit_code == 2 and "--force" in r.stderr


@pytest.mark.slow
def test_embeddings_json(cli, tiny_store, tmp_path):
    """--json: one JSON document on stdout (the summary on stderr) whose distance is the one in embeddings.json."""
    out = tmp_path / "e"
    r = cli("embeddings", tiny_store, "--out", out, "--no-umap", "--no-figures", "--no-progress", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    res = json.loads((out / "embeddings.json").read_text())
    doms = res["domains"]
    h = doms.index("quickdraw")
    l2 = [res["domain_mean_l2"][h][j] for j in range(len(doms)) if j != h]
    assert doc["out"] == str(out) and doc["highlight"] == "quickdraw" and doc["domains"] == doms
    assert doc["highlight_mean_l2"] == pytest.approx(sum(l2) / len(l2)) and doc["umap_points"] == {}
    assert "embedding analysis" in r.stderr
