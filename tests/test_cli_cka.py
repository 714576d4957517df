"""``clipgen cka`` end to end: a real extraction (tiny_store) and hand-built stores, outputs and one-line errors."""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest

from clipgen.analysis import cka as C


def _class_means(x, lab, cls):
    return np.stack([x[lab == c].astype(np.float64).mean(axis=0) for c in cls])


@pytest.mark.slow
def test_cka_on_a_real_extraction(cli, tiny_store, tmp_path):
    from clipgen.store import open_store

    out = tmp_path / "cka"
    r = cli("cka", tiny_store, "--out", out, "--subsets", "all", "--estimators", "unbiased,biased")
    assert r.exit_code == 0, r.stderr
    assert "results:" in r.stdout
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["cka.json", "cka.csv", "config.json"]
                           + [f"{kind}_all_{k}_{e}.png" for kind in ("pairs", "highlight")
                              for k in ("linear", "rbf") for e in ("unbiased", "biased")])
    js = json.loads((out / "cka.json").read_text())
    with open_store(tiny_store) as st:
        layers, doms = st.layers, st.samples.domain_names
        assert js["layers"] == layers and js["domains"] == doms and len(js["pairs"]) == 15
        assert js["store_fingerprint"] == st.fingerprint
        assert js["held_out_classes"] == ["axe", "banana"]
        rows = js["results"]
        assert len(rows) == len(layers) * 15 * 2 * 2
        assert all(np.isfinite(r_["cka"]) for r_ in rows)
        # pairs with painting use the 5 classes present in both (painting has no 'teddy-bear' test image)
        n = {(r_["domain_a"], r_["domain_b"]): r_["n_classes"] for r_ in rows}
        assert n[("painting", "quickdraw")] == 5 and n[("clipart", "real")] == 6
        # an independent recomputation of a few cells from raw rows
        lab, dom = st.samples.labels, st.samples.domains
        for layer, a, b in [("resblock3", "clipart", "painting"), ("embedding", "quickdraw", "sketch"),
                            ("act1", "infograph", "real")]:
            x = st.read_layer(layer)
            cls = sorted(set(lab[dom == doms.index(a)]) & set(lab[dom == doms.index(b)]))
            xa = _class_means(x[dom == doms.index(a)], lab[dom == doms.index(a)], cls)
            xb = _class_means(x[dom == doms.index(b)], lab[dom == doms.index(b)], cls)
            for k in ("linear", "rbf"):
                for e in ("unbiased", "biased"):
                    got = next(r_["cka"] for r_ in rows if (r_["layer"], r_["domain_a"], r_["domain_b"],
                                                           r_["kernel"], r_["estimator"]) == (layer, a, b, k, e))
                    assert got == pytest.approx(C.cka(xa, xb, k, e), rel=1e-6, abs=1e-9)
    with open(out / "cka.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(C.RESULT_FIELDS) and len(table) == len(rows)
    assert [float(t["cka"]) for t in table] == [r_["cka"] for r_ in rows]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["command"] == "cka" and cfg["config"]["subsets"] == ["all"] and cfg["config"]["layers"] == layers

    # the output exists: refused without --force, replaced with it
    r = cli("cka", tiny_store, "--out", out, "--subsets", "all", "--no-figures")
    assert r.exit_code == 2 and "--force" in r.stderr and r.stderr.count("\n") == 1
    r = cli("cka", tiny_store, "--out", out, "--subsets", "all", "--no-figures", "--force", "--layers",
            "act2,embedding", "--kernels", "linear")
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cka.csv", "cka.json", "config.json"]
    assert len(json.loads((out / "cka.json").read_text())["results"]) == 2 * 15


@pytest.mark.parametrize("args, message", [
    (["--subsets", "all,id"], "subset 'id' of the pair clipart/painting has 3 classes"),
    (["--subsets", "ood"], "has 2 classes present in both domains; CKA needs at least 4"),
    (["--layers", "act1,resblock99"], "--layers: layer 'resblock99' is not in the store"),
    (["--domains", "real,sculpture"], "--domains: domain 'sculpture' is not in the store"),
    (["--domains", "real"], "--domains: needs at least 2 domains"),
    (["--domains", "real,sketch,clipart"], "--highlight: domain 'quickdraw' is not among the analysed domains"),
    (["--kernels", "cosine"], "--kernels: unknown value 'cosine'"),
    (["--estimators", "debiased"], "--estimators: unknown value 'debiased'"),
    (["--rbf-median", "upper"], "--rbf-median: unknown value 'upper'"),
    (["--held-out", "axe,unicorn"], "--held-out: class 'unicorn' is not among the store's class names"),
])
def test_cka_bad_options_are_one_line_errors(cli, tiny_store, tmp_path, args, message):
    out = tmp_path / "o"
    r = cli("cka", tiny_store, "--out", out, *args)
    assert r.exit_code == 2, r
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert message in r.stderr
    assert not out.exists()


def _hand_store(path, held_out=None, n_classes=8, painting_missing=None, seed=0):
    from clipgen.store import build_store_from_arrays

    rng = np.random.default_rng(seed)
    paths, labels, doms = [], [], []
    for d in ("clipart", "painting", "quickdraw", "real"):
        for c in range(n_classes):
            if d == "painting" and c == painting_missing:
                continue
            for k in range(2):
                paths.append(f"{d}/{c}/{k}.png")
                labels.append(c)
                doms.append(d)
    n = len(paths)
    cls = rng.normal(size=(n_classes, 6))
    x = cls[np.array(labels)] + 0.5 * rng.normal(size=(n, 6))
    return build_store_from_arrays(path, paths=paths, labels=labels, domains=doms,
                                   layers={"l1": x, "embedding": rng.normal(size=(n, 4))}, held_out_labels=held_out,
                                   class_names={i: f"class {i}" for i in range(n_classes)})


def test_held_out_classes_from_store_and_by_name(cli, tmp_path):
    store = _hand_store(tmp_path / "s.h5", held_out=[0, 1, 2, 3], n_classes=9, painting_missing=7)
    r = cli("cka", store, "--out", tmp_path / "a", "--no-figures")
    assert r.exit_code == 0, r.stderr
    js = json.loads((tmp_path / "a" / "cka.json").read_text())
    assert js["held_out_classes"] == ["class 0", "class 1", "class 2", "class 3"]
    assert js["n_classes"]["ood"] == {p: 4 for p in js["n_classes"]["ood"]}
    assert js["n_classes"]["id"] == {p: 4 if "painting" in p else 5 for p in js["n_classes"]["id"]}
    assert js["n_classes"]["all"] == {p: 8 if "painting" in p else 9 for p in js["n_classes"]["all"]}
    # names as in the store, with case, underscores and spacing normalised
    r = cli("cka", store, "--out", tmp_path / "b", "--no-figures", "--held-out", "class 4,class_6,Class 8, class 3")
    assert r.exit_code == 0, r.stderr
    js = json.loads((tmp_path / "b" / "cka.json").read_text())
    assert js["held_out_classes"] == ["class 3", "class 4", "class 6", "class 8"]
    assert js["n_classes"]["id"] == {p: 4 if "painting" in p else 5 for p in js["n_classes"]["id"]}
    ood = [r_ for r_ in js["results"] if r_["subset"] == "ood"]
    assert ood and all(r_["n_classes"] == 4 for r_ in ood)


def test_classes_from_reproduces_the_published_class_list(cli, tmp_path):
    store = _hand_store(tmp_path / "s.h5", held_out=[0, 1, 2, 3], n_classes=9, painting_missing=7)
    r = cli("cka", store, "--out", tmp_path / "a", "--no-figures", "--classes-from", "painting", "--subsets", "all")
    assert r.exit_code == 0, r.stderr
    js = json.loads((tmp_path / "a" / "cka.json").read_text())
    assert js["n_classes"]["all"] == {p: 8 for p in js["n_classes"]["all"]}  # painting's 8 classes everywhere
    r = cli("cka", store, "--out", tmp_path / "b", "--classes-from", "sculpture")
    assert r.exit_code == 2 and "--classes-from: domain 'sculpture' is not in the store" in r.stderr


def test_ood_without_held_out_classes_is_an_error(cli, tmp_path):
    store = _hand_store(tmp_path / "s.h5", held_out=None)
    out = tmp_path / "o"
    r = cli("cka", store, "--out", out)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1
    assert "'ood' needs held-out classes" in r.stderr and not out.exists()
    r = cli("cka", store, "--out", out, "--subsets", "all", "--no-figures")
    assert r.exit_code == 0, r.stderr


def test_refuses_bad_stores(cli, tmp_path):
    store = _hand_store(tmp_path / "s.h5", held_out=[0, 1, 2, 3])
    foreign = tmp_path / "notes.h5"
    foreign.write_text("hello")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "something-else"
    import shutil

    newer = tmp_path / "newer.h5"
    shutil.copy(store, newer)
    with h5py.File(newer, "a") as f:
        f.attrs["schema_version"] = "99.0"
    partial = tmp_path / "partial.h5"
    shutil.copy(store, partial)
    with h5py.File(partial, "a") as f:
        f.attrs["complete"] = False
    for path, msg in [(tmp_path / "missing.h5", "not found"), (foreign, "not an HDF5 file"),
                      (other, "not a clipgen activation store"), (newer, "unsupported store schema version"),
                      (partial, "incomplete store")]:
        out = tmp_path / f"o-{path.stem}"
        r = cli("cka", path, "--out", out)
        assert r.exit_code == 2, (path, r)
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and msg in r.stderr, r.stderr
        assert not out.exists()


def test_rbf_median_lower_by_default_mean_as_an_option(cli, tmp_path):
    from clipgen.store import open_store

    # ood = 4 classes: 6 class pairs, an even count, where the two medians differ
    store = _hand_store(tmp_path / "s.h5", held_out=[0, 1, 2, 3])
    runs = {}
    for name, extra in (("default", []), ("lower", ["--rbf-median", "lower"]), ("mean", ["--rbf-median", "MEAN"])):
        r = cli("cka", store, "--out", tmp_path / name, "--no-figures", "--subsets", "ood", *extra)
        assert r.exit_code == 0, r.stderr
        runs[name] = json.loads((tmp_path / name / "cka.json").read_text())
        want = "mean" if name == "mean" else "lower"
        assert runs[name]["rbf_median"] == want
        assert json.loads((tmp_path / name / "config.json").read_text())["config"]["rbf_median"] == want
    vals = {n: {(r_["layer"], r_["domain_a"], r_["domain_b"], r_["kernel"]): r_["cka"] for r_ in js["results"]}
            for n, js in runs.items()}
    assert vals["default"] == vals["lower"]
    rbf = [k for k in vals["mean"] if k[3] == "rbf"]
    assert all(vals["mean"][k] == vals["lower"][k] for k in vals["mean"] if k[3] == "linear")
    assert max(abs(vals["mean"][k] - vals["lower"][k]) for k in rbf) > 1e-3
    # one cell recomputed from the raw rows with each median
    with open_store(store) as st:
        x, lab, dom, doms = st.read_layer("l1"), st.samples.labels, st.samples.domains, st.samples.domain_names
    cls = [0, 1, 2, 3]
    xa = _class_means(x[dom == doms.index("clipart")], lab[dom == doms.index("clipart")], cls)
    xb = _class_means(x[dom == doms.index("real")], lab[dom == doms.index("real")], cls)
    for name in ("lower", "mean"):
        assert vals[name][("l1", "clipart", "real", "rbf")] == pytest.approx(
            C.cka(xa, xb, "rbf", rbf_median=name), rel=1e-9)


@pytest.mark.slow
def test_cka_summary_and_json(cli, tiny_store, tmp_path):
    """Per layer the mean CKA of the highlighted domain's pairs vs the other pairs, in the human summary and, with
    --json, as one JSON document on stdout (summary on stderr); both equal the means of cka.json's values."""
    out = tmp_path / "cka"
    args = ("cka", tiny_store, "--out", out, "--subsets", "all", "--kernels", "linear", "--no-figures",
            "--layers", "act1,embedding", "--no-progress")
    r = cli(*args)
    assert r.exit_code == 0, r.stderr
    rows = json.loads((out / "cka.json").read_text())["results"]
    for layer in ("act1", "embedding"):
        with_q = [x["cka"] for x in rows if x["layer"] == layer and "quickdraw" in (x["domain_a"], x["domain_b"])]
        other = [x["cka"] for x in rows if x["layer"] == layer and "quickdraw" not in (x["domain_a"], x["domain_b"])]
        assert len(with_q) == 5 and len(other) == 10
        assert f"  {layer:<9}  {np.mean(with_q):.4f}  vs  {np.mean(other):.4f}" in r.stdout
    assert "pairs with quickdraw vs the other pairs" in r.stdout
    r = cli(*args, "--force", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["out"] == str(out) and doc["highlight"] == "quickdraw" and doc["values"] == len(rows)
    by_layer = {m["layer"]: m for m in doc["highlight_means"]}
    emb = [x["cka"] for x in rows if x["layer"] == "embedding" and "quickdraw" in (x["domain_a"], x["domain_b"])]
    assert by_layer["embedding"]["with"] == pytest.approx(np.mean(emb)) and by_layer["embedding"]["n_without"] == 10
    assert "pairs with quickdraw" in r.stderr
