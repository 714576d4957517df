"""clipgen.circuits.similarity: node and circuit similarity by hand on hand-built circuits, outputs and refusals."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from clipgen.circuits.attribution import CircuitResult
from clipgen.circuits.similarity import (
    CircuitSimilarityConfig,
    NodeSimilarityConfig,
    PlotConfig,
    circuit_similarity,
    highlight_summary,
    node_similarity,
    run_circuit_similarity,
    run_node_similarity,
    run_plot,
)
from clipgen.errors import ClipgenError

LAYERS = ["input", "l1", "l2"]


class FakeCircuits:
    """The attributes of clipgen.circuits.store.CircuitsFile, over hand-built results."""

    def __init__(self, results: dict[tuple[str, int], CircuitResult], classes: dict[int, str], held_out: list[int],
                 domains: list[str] | None = None, layers: list[str] | None = None):
        self.path = Path("/data/fake-circuits.h5")
        self.layers = list(layers or LAYERS)
        self.domains = domains or sorted({d for d, _ in results})
        self.classes = classes
        self.held_out = held_out
        self.settings = {"steps": 10, "rule": "left", "node_fraction": 0.2, "samples_per_class": 5}
        self.provenance = {"model": "RN-tiny", "epoch": 3}
        self._results = results
        self.reads: list[tuple[str, int]] = []

    def entries(self):
        return list(self._results)

    def read(self, domain, label):
        if (domain, label) not in self._results:
            raise ClipgenError(f"{self.path}: no circuit for ({domain}, {label})")
        self.reads.append((domain, label))
        return self._results[(domain, label)]

    def n_images(self, domain, label):
        return 5


def result(sel_l1, sel_l2, edges_l2=None, sel_input=(0,)) -> CircuitResult:
    """A circuit on input (3 ch) -> l1 (10 ch) -> l2 (10 ch) with the given selections and l1 -> l2 matrix."""
    nodes = {"input": np.array([0.3, -0.1, 0.2], np.float32),
             "l1": np.linspace(-1, 1, 10).astype(np.float32), "l2": np.linspace(1, -1, 10).astype(np.float32)}
    selected = {"input": np.array(sel_input), "l1": np.array(sel_l1), "l2": np.array(sel_l2)}
    if edges_l2 is None:
        edges_l2 = np.zeros((len(sel_l2), len(sel_l1)))
    edges = {"l1": np.ones((len(sel_l1), len(sel_input)), np.float32), "l2": np.asarray(edges_l2, np.float32)}
    return CircuitResult(list(LAYERS), nodes, selected, edges, np.zeros(5, np.float32))


CLASSES = {0: "aircraft carrier", 1: "airplane", 2: "alarm clock"}


def node_source() -> FakeCircuits:
    """Class 0 is held out; class 2 was not computed in quickdraw. The input selections differ everywhere."""
    r = {
        ("real", 0): result([0, 1], [0, 1, 2], sel_input=(0,)),
        ("painting", 0): result([1, 2], [0, 1, 2], sel_input=(1,)),
        ("quickdraw", 0): result([5, 6], [2, 3, 4], sel_input=(2,)),
        ("real", 1): result([0, 1], [3, 4, 5]),
        ("painting", 1): result([0, 1], [3, 4, 6], sel_input=(2,)),
        ("quickdraw", 1): result([0, 2], [7, 8, 9]),
        ("real", 2): result([3, 4], [1, 2, 3]),
        ("painting", 2): result([3, 5], [1, 2, 3], sel_input=(1,)),
    }
    # listed in an order that is not the pair order on purpose
    return FakeCircuits(r, CLASSES, [0], domains=["quickdraw", "painting", "real"])


# ---------------------------------------------------------------------------------------------------------------
# node similarity


def test_node_similarity_by_hand():
    res = node_similarity(node_source())
    assert res["domains"] == ["real", "painting", "quickdraw"]
    assert res["pairs"] == [["real", "painting"], ["real", "quickdraw"], ["painting", "quickdraw"]]
    assert res["layers"] == ["l1", "l2"]  # no input
    # per class (hand): class 0  r/p: l1 |{1}|/|{0,1,2}| = 1/3, l2 1;  r/q: 0, 1/5;  p/q: 0, 1/5
    #                   class 1  r/p: 1, 2/4;  r/q: 1/3, 0;  p/q: 1/3, 0
    #                   class 2  r/p: 1/3, 1  (not in quickdraw)
    pc = res["per_class"]
    assert pc["0"] == {"real/painting": pytest.approx([1 / 3, 1]), "real/quickdraw": pytest.approx([0, 0.2]),
                       "painting/quickdraw": pytest.approx([0, 0.2])}
    assert pc["1"]["real/painting"] == pytest.approx([1, 0.5])
    assert pc["2"] == {"real/painting": pytest.approx([1 / 3, 1])}
    sim = res["similarity"]
    assert sim["all"]["l1"] == pytest.approx({"real/painting": 5 / 9, "real/quickdraw": 1 / 6,
                                              "painting/quickdraw": 1 / 6})
    assert sim["all"]["l2"] == pytest.approx({"real/painting": 5 / 6, "real/quickdraw": 0.1,
                                              "painting/quickdraw": 0.1})
    assert sim["id"]["l1"] == pytest.approx({"real/painting": 2 / 3, "real/quickdraw": 1 / 3,
                                             "painting/quickdraw": 1 / 3})
    assert sim["id"]["l2"]["real/painting"] == pytest.approx(0.75)
    assert sim["ood"]["l1"] == pytest.approx({"real/painting": 1 / 3, "real/quickdraw": 0, "painting/quickdraw": 0})
    assert res["std"]["all"]["l1"]["real/painting"] == pytest.approx(2 * np.sqrt(2) / 9)
    assert res["n_classes"] == {"all": {"real/painting": 3, "real/quickdraw": 2, "painting/quickdraw": 2},
                                "id": {"real/painting": 2, "real/quickdraw": 1, "painting/quickdraw": 1},
                                "ood": {"real/painting": 1, "real/quickdraw": 1, "painting/quickdraw": 1}}
    assert res["missing"] == [{"label": 2, "class": "alarm clock", "missing_domains": ["quickdraw"]}]
    assert any("alarm clock (quickdraw)" in n for n in res["notes"])
    row = next(r for r in res["results"] if (r["layer"], r["domain_a"], r["domain_b"], r["subset"])
               == ("l1", "real", "painting", "all"))
    assert row == {"layer": "l1", "domain_a": "real", "domain_b": "painting", "subset": "all", "n_classes": 3,
                   "mean": pytest.approx(5 / 9), "std": pytest.approx(2 * np.sqrt(2) / 9),
                   "min": pytest.approx(1 / 3), "max": 1.0}
    assert len(res["results"]) == 2 * 3 * 3
    # highlight quickdraw: pairs with it vs the others, per layer
    hl = res["highlight"]
    assert hl["domain"] == "quickdraw"
    assert hl["all"]["with"]["pairs"] == ["real/quickdraw", "painting/quickdraw"]
    assert hl["all"]["with"]["mean"] == pytest.approx([1 / 6, 0.1])
    assert hl["all"]["with"]["std"] == pytest.approx([0, 0])
    assert hl["all"]["without"]["mean"] == pytest.approx([5 / 9, 5 / 6])


def test_node_similarity_domains_and_subset_selection():
    src = node_source()
    res = node_similarity(src, domains="r,p", subsets="id")
    assert res["pairs"] == [["real", "painting"]] and res["subsets"] == ["id"]
    assert res["similarity"]["id"]["l1"]["real/painting"] == pytest.approx(2 / 3)
    assert res["highlight"] is None and any("quickdraw" in n for n in res["notes"])  # default highlight absent
    assert res["missing"] == []  # class 2 is complete in real and painting
    assert not any(d == "quickdraw" for d, _ in src.reads)  # only what is needed is read
    src.reads.clear()
    res = node_similarity(src, domains="painting,quickdraw", subsets="all")
    assert res["n_classes"]["all"] == {"painting/quickdraw": 2}
    assert res["missing"] == [{"label": 2, "class": "alarm clock", "missing_domains": ["quickdraw"]}]
    assert ("painting", 2) not in src.reads  # a class in one domain only is in no pair: never read


def test_no_held_out_class_default_skips_explicit_errors():
    r = {(d, 1): result([0, 1], [3, 4]) for d in ("real", "sketch")}
    src = FakeCircuits(r, {1: "airplane"}, held_out=[])
    res = node_similarity(src)
    assert res["subsets"] == ["all", "id"] and res["skipped_subsets"] == ["ood"]
    assert any("'ood' skipped" in n for n in res["notes"])
    assert res["similarity"]["all"]["l2"]["real/sketch"] == 1.0
    with pytest.raises(ClipgenError, match="--subsets: subset 'ood' has no classes"):
        node_similarity(src, subsets="all,ood")
    with pytest.raises(ClipgenError, match="--subsets: subset 'ood' has no classes"):
        circuit_similarity(src, subsets=["ood"])


@pytest.mark.parametrize("kwargs, message", [
    ({"domains": "moon"}, "--domains: unknown domain"),
    ({"domains": "real,sketch"}, "--domains: domain 'sketch' is not in /data/fake-circuits.h5"),
    ({"domains": "real"}, "--domains: needs at least 2 domains"),
    ({"subsets": "all,odd"}, "--subsets: unknown class subset 'odd'"),
    ({"highlight": "sketch"}, "--highlight: domain 'sketch' is not among the analysed domains"),
    ({"highlight": "moon"}, "--highlight: unknown domain"),
])
def test_node_similarity_bad_input(kwargs, message):
    with pytest.raises(ClipgenError, match=message):
        node_similarity(node_source(), **kwargs)


def test_results_with_other_layers_are_refused():
    src = node_source()
    src._results[("real", 1)] = CircuitResult(["input", "l1"], {}, {}, {}, None)
    with pytest.raises(ClipgenError, match=r"circuit of \(real, 1\) has the layers input l1"):
        node_similarity(src)


def test_pair_without_common_classes_is_null_and_noted():
    r = {("real", 1): result([0], [1]), ("painting", 1): result([0], [2]), ("sketch", 2): result([0], [1]),
         ("real", 2): result([0], [1])}
    src = FakeCircuits(r, {1: "airplane", 2: "alarm clock"}, held_out=[])
    res = node_similarity(src, subsets="all")
    assert res["n_classes"]["all"]["painting/sketch"] == 0
    assert res["similarity"]["all"]["l1"]["painting/sketch"] is None
    assert any("no class present in both domains of painting/sketch" in n for n in res["notes"])
    assert res["similarity"]["all"]["l2"]["real/sketch"] == 1.0


# ---------------------------------------------------------------------------------------------------------------
# circuit similarity

# l2 rows (channels 0, 1) x l1 columns (channels 0, 1); with edge_k = 1 each l2 node keeps its argmax
EYE = [[1, 0], [0, 1]]  # l1/0 -> l2/0, l1/1 -> l2/1
BOTH_FROM_0 = [[1, 0], [1, 0]]  # l1/0 -> l2/0, l1/0 -> l2/1
CROSSED = [[0, 1], [1, 0]]  # l1/1 -> l2/0, l1/0 -> l2/1


def circuit_source() -> FakeCircuits:
    r = {("real", 0): result([0, 1], [0, 1], EYE), ("painting", 0): result([0, 1], [0, 1], BOTH_FROM_0),
         ("quickdraw", 0): result([0, 1], [0, 1], CROSSED),
         ("real", 1): result([0, 1], [0, 1], BOTH_FROM_0), ("painting", 1): result([0, 1], [0, 1], BOTH_FROM_0)}
    return FakeCircuits(r, {0: "aircraft carrier", 1: "airplane"}, held_out=[0])


def test_circuit_similarity_by_hand():
    res = circuit_similarity(circuit_source(), edge_k=1, metrics="jaccard,wl_h1,wl_h2")
    assert res["metrics"] == ["jaccard", "wl_h1", "wl_h2"] and res["domains"] == ["real", "painting", "quickdraw"]
    # class 0 edge sets: real {0>0, 1>1}, painting {0>0, 0>1}, quickdraw {1>0, 0>1}
    pc = res["per_class"]
    assert pc["jaccard"]["0"] == pytest.approx({"real/painting": 1 / 3, "real/quickdraw": 0.0,
                                                "painting/quickdraw": 1 / 3})
    assert pc["jaccard"]["1"] == {"real/painting": 1.0}
    # WL, class 0: the same 4 nodes everywhere (iteration 0: 4 shared); the l2 nodes have no successors, so only
    # they keep equal labels later (2 shared per iteration); k_h(G, G) = 4 (h + 1)
    for pair in ("real/painting", "real/quickdraw", "painting/quickdraw"):
        assert pc["wl_h1"]["0"][pair] == pytest.approx((4 + 2) / 8)
        assert pc["wl_h2"]["0"][pair] == pytest.approx((4 + 2 + 2) / 12)
    assert pc["wl_h2"]["1"]["real/painting"] == pytest.approx(1.0)
    sim = res["similarity"]["jaccard"]
    assert sim["all"] == pytest.approx({"real/painting": 2 / 3, "real/quickdraw": 0.0, "painting/quickdraw": 1 / 3})
    assert sim["ood"] == pytest.approx({"real/painting": 1 / 3, "real/quickdraw": 0.0, "painting/quickdraw": 1 / 3})
    assert sim["id"]["real/painting"] == 1.0 and sim["id"]["real/quickdraw"] is None
    assert np.allclose(res["matrix"]["jaccard"]["all"], [[1, 2 / 3, 0], [2 / 3, 1, 1 / 3], [0, 1 / 3, 1]])
    assert res["matrix"]["jaccard"]["id"][0][2] is None
    assert res["per_domain"]["jaccard"]["all"] == pytest.approx({"real": 1 / 3, "painting": 1 / 2,
                                                                 "quickdraw": 1 / 6})
    assert res["highlight"]["jaccard"]["all"] == pytest.approx(
        {"with": 1 / 6, "without": 2 / 3, "published_excluding": (2 / 3 + 2 / 3 + 0 + 1 / 3) / 4})
    assert res["n_classes"]["all"] == {"real/painting": 2, "real/quickdraw": 1, "painting/quickdraw": 1}
    assert res["similarity"]["wl_h1"]["all"]["real/painting"] == pytest.approx((0.75 + 1.0) / 2)
    row = next(r for r in res["results"] if (r["metric"], r["subset"], r["domain_a"], r["domain_b"])
               == ("jaccard", "all", "real", "painting"))
    assert row["n_classes"] == 2 and row["std"] == pytest.approx(1 / 3) and row["min"] == pytest.approx(1 / 3)


def test_edge_k_is_applied():
    res = circuit_similarity(circuit_source(), edge_k=2, metrics="jaccard")
    # every l2 node keeps both l1 nodes: all graphs equal
    assert res["similarity"]["jaccard"]["all"] == {"real/painting": 1.0, "real/quickdraw": 1.0,
                                                   "painting/quickdraw": 1.0}


def test_wl_h2_is_h2_not_h3():
    a = circuit_similarity(circuit_source(), edge_k=1, metrics="wl_h2,wl_h3")
    v2 = a["per_class"]["wl_h2"]["0"]["real/painting"]
    v3 = a["per_class"]["wl_h3"]["0"]["real/painting"]
    assert v2 == pytest.approx(8 / 12) and v3 == pytest.approx(10 / 16) and v2 != v3


def test_highlight_summary_by_hand():
    m = [[1, 0.2, 0.4, 0.6], [0.2, 1, 0.8, 0.1], [0.4, 0.8, 1, 0.3], [0.6, 0.1, 0.3, 1]]
    doms = ["real", "clipart", "quickdraw", "sketch"]
    s = highlight_summary(m, doms, "quickdraw")
    assert s["with"] == pytest.approx((0.4 + 0.8 + 0.3) / 3)
    assert s["without"] == pytest.approx((0.2 + 0.6 + 0.1) / 3)
    # the published loop: every row, columns other than the row and quickdraw
    published = [0.2, 0.6, 0.2, 0.1, 0.4, 0.8, 0.6, 0.1, 0.3]  # quickdraw's own row is included
    assert s["published_excluding"] == pytest.approx(np.mean(published))


@pytest.mark.parametrize("kwargs, message", [
    ({"metrics": "jaccard,edit"}, "--metrics: unknown metric 'edit'"),
    ({"metrics": "wl_h11"}, "--metrics: unknown metric"),
    ({"metrics": ","}, "--metrics: needs at least one metric"),
    ({"edge_k": 0}, "--edge-k"),
    ({"domains": "clipart"}, "--domains: domain 'clipart' is not in"),
])
def test_circuit_similarity_bad_input(kwargs, message):
    with pytest.raises(ClipgenError, match=message):
        circuit_similarity(circuit_source(), **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# runners


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


@pytest.mark.slow
def test_run_node_similarity_writes_everything(tmp_path):
    out = tmp_path / "nodes"
    cfg = NodeSimilarityConfig(circuits=node_source(), out=out)
    assert run_node_similarity(cfg, progress=False) == out
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["node_similarity.json", "node_similarity.csv", "node_similarity_per_class.csv",
                            "config.json"] + [f"nodes_{k}_{s}.png" for k in ("pairs", "highlight")
                                              for s in ("all", "id", "ood")])
    data = json.loads((out / "node_similarity.json").read_text())
    assert data["format"] == "clipgen-circuit-node-similarity" and data["format_version"] == 1
    assert data["circuits"] == "/data/fake-circuits.h5" and data["settings"]["steps"] == 10
    assert data["provenance"]["model"] == "RN-tiny" and "per_class" not in data
    assert data["similarity"]["all"]["l1"]["real/painting"] == pytest.approx(5 / 9)
    rows = read_csv(out / "node_similarity.csv")
    assert list(rows[0]) == ["layer", "domain_a", "domain_b", "subset", "n_classes", "mean", "std", "min", "max"]
    assert len(rows) == 18
    r = next(r for r in rows if (r["layer"], r["domain_a"], r["domain_b"], r["subset"]) == ("l2", "real",
                                                                                             "quickdraw", "all"))
    assert float(r["mean"]) == pytest.approx(0.1) and r["n_classes"] == "2"
    per_class = read_csv(out / "node_similarity_per_class.csv")
    assert len(per_class) == (3 + 3 + 1) * 2  # (pairs of class 0 + class 1 + class 2) x layers
    assert {(p["label"], p["class"]) for p in per_class} == {("0", "aircraft carrier"), ("1", "airplane"),
                                                             ("2", "alarm clock")}
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "circuits nodes"
    assert config["config"]["circuits"] == "/data/fake-circuits.h5" and config["config"]["highlight"] == "quickdraw"
    assert (out / "nodes_pairs_all.png").read_bytes()[:4] == b"\x89PNG"
    # an existing output is refused without force, and left as it was
    with pytest.raises(ClipgenError, match="--force"):
        run_node_similarity(cfg, progress=False)
    assert sorted(p.name for p in out.iterdir()) == names
    cfg.force, cfg.domains = True, "real,painting"
    run_node_similarity(cfg, progress=True)
    assert "nodes_highlight_all.png" not in {p.name for p in out.iterdir()}  # no quickdraw: no highlight view
    assert [p.name for p in tmp_path.iterdir()] == ["nodes"]  # no temporaries left


def test_run_node_similarity_failure_leaves_nothing(tmp_path):
    cfg = NodeSimilarityConfig(circuits=node_source(), out=tmp_path / "nodes", subsets="ood,banana")
    with pytest.raises(ClipgenError, match="--subsets"):
        run_node_similarity(cfg, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_run_circuit_similarity_writes_everything(tmp_path):
    out = tmp_path / "circ"
    cfg = CircuitSimilarityConfig(circuits=circuit_source(), out=out, edge_k=1, metrics="jaccard,wl_h1")
    run_circuit_similarity(cfg, progress=False)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["circuit_similarity.json", "circuit_similarity.csv", "circuit_similarity_per_class.csv",
                            "config.json"] + [f"circuits_{m}_{s}.png" for m in ("jaccard", "wl_h1")
                                              for s in ("all", "id", "ood")])
    data = json.loads((out / "circuit_similarity.json").read_text())
    assert data["format"] == "clipgen-circuit-similarity" and data["edge_k"] == 1
    assert np.allclose(data["matrix"]["jaccard"]["all"], [[1, 2 / 3, 0], [2 / 3, 1, 1 / 3], [0, 1 / 3, 1]])
    assert data["matrix"]["jaccard"]["id"][0][2] is None  # JSON null, never NaN
    assert data["highlight"]["domain"] == "quickdraw"
    assert data["held_out"] == {"0": "aircraft carrier"}
    rows = read_csv(out / "circuit_similarity.csv")
    assert len(rows) == 2 * 3 * 3
    empty = next(r for r in rows if (r["metric"], r["subset"], r["domain_a"], r["domain_b"])
                 == ("jaccard", "id", "real", "quickdraw"))
    assert empty["n_classes"] == "0" and empty["mean"] == ""
    per_class = read_csv(out / "circuit_similarity_per_class.csv")
    assert len(per_class) == 2 * (3 + 1)
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "circuits similarity" and config["config"]["edge_k"] == 1
    with pytest.raises(ClipgenError, match="--force"):
        run_circuit_similarity(cfg, progress=False)


@pytest.mark.slow
def test_run_plot_png_and_exports(tmp_path):
    cfg = PlotConfig(circuits=circuit_source(), domain="q", class_name="Aircraft_Carrier", out=tmp_path / "c.png",
                     edge_k=1)
    files = run_plot(cfg)
    assert [p.name for p in files] == ["c.png", "c.graphml", "c.dot", "c.config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files)
    g = nx.read_graphml(tmp_path / "c.graphml")
    assert sorted(g.edges) == [("l1/0", "l2/1"), ("l1/1", "l2/0")]  # quickdraw, class 0: CROSSED
    assert g.graph["domain"] == "quickdraw" and g.graph["class_name"] == "aircraft carrier"
    dot = (tmp_path / "c.dot").read_text()
    assert '"l1/1" -> "l2/0" [score="1.0", color="red"];' in dot
    config = json.loads((tmp_path / "c.config.json").read_text())
    assert config["command"] == "circuits plot" and config["config"]["class_name"] == "Aircraft_Carrier"
    with pytest.raises(ClipgenError, match="already exists"):
        run_plot(cfg)
    cfg.force, cfg.export = True, "none"
    assert [p.name for p in run_plot(cfg)] == ["c.png", "c.config.json"]


@pytest.mark.slow
def test_run_plot_into_a_folder_by_label(tmp_path):
    cfg = PlotConfig(circuits=circuit_source(), domain="painting", class_name="1", out=tmp_path / "figs",
                     export="dot")
    files = run_plot(cfg)
    assert [p.name for p in files] == ["circuit_painting_airplane.png", "circuit_painting_airplane.dot",
                                       "circuit_painting_airplane.config.json"]


@pytest.mark.parametrize("domain, cls, message", [
    ("real", "aircraft carrierr", "--class: unknown DomainNet class 'aircraft carrierr'.*did you mean"),
    ("real", "lion", "--class: class 'lion' was not computed in /data/fake-circuits.h5"),
    ("real", "7", "--class: class label 7 is not in"),
    ("quickdraw", "airplane", r"--class: class 'airplane' \(1\) has no complete circuit in quickdraw.*painting, "
                              "real"),
    ("moon", "airplane", "--domain: unknown domain"),
    ("sketch", "airplane", "--domain: domain 'sketch' is not in"),
    ("all", "airplane", "--domain: names one domain"),
])
def test_run_plot_bad_input(tmp_path, domain, cls, message):
    with pytest.raises(ClipgenError, match=message):
        run_plot(PlotConfig(circuits=circuit_source(), domain=domain, class_name=cls, out=tmp_path / "c.png"))
    assert list(tmp_path.iterdir()) == []


def test_run_plot_bad_export_and_edge_k(tmp_path):
    with pytest.raises(ClipgenError, match="--export"):
        run_plot(PlotConfig(circuits=circuit_source(), domain="real", class_name="airplane", out=tmp_path / "c.png",
                            export="svg"))
    with pytest.raises(ClipgenError, match="--edge-k"):
        run_plot(PlotConfig(circuits=circuit_source(), domain="real", class_name="airplane", out=tmp_path / "c.png",
                            edge_k=0))
    assert list(tmp_path.iterdir()) == []


def test_path_source_goes_through_open_circuits(tmp_path):
    pytest.importorskip("clipgen.circuits.store")
    with pytest.raises(ClipgenError):
        node_similarity(tmp_path / "missing.h5")


@pytest.mark.slow
def test_node_highlight_band_stays_within_0_and_1():
    """A mean Jaccard of 1/6 with a std of 0.5 must not draw a band below 0 (nor above 1 for 5/6 + 0.5)."""
    from clipgen.circuits.similarity import jaccard_band, node_highlight_figure

    res = node_similarity(node_source())
    res["highlight"]["all"]["with"]["std"] = [0.5, 0.5]
    res["highlight"]["all"]["without"]["std"] = [0.5, 0.5]
    lo, hi = jaccard_band([1 / 6, 5 / 6], [0.5, 0.5])
    assert lo.tolist() == pytest.approx([0.0, 1 / 3]) and hi.tolist() == pytest.approx([2 / 3, 1.0])
    fig = node_highlight_figure(res, "all")
    bands = [c for c in fig.axes[0].collections if len(c.get_paths())]
    assert len(bands) == 2
    ys = np.concatenate([p.vertices[:, 1] for c in bands for p in c.get_paths()])
    assert ys.min() == pytest.approx(0.0) and ys.max() == pytest.approx(1.0)
