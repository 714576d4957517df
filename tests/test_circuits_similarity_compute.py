"""clipgen.circuits.similarity_compute: node and circuit similarity by hand on hand-built circuits, and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from clipgen.circuits.attribution import CircuitResult
from clipgen.circuits.similarity_compute import circuit_similarity, highlight_summary, node_similarity
from clipgen.errors import ClipgenError
from tests._similarity_fakes import FakeCircuits, circuit_source, node_source, result

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
    with pytest.raises(ClipgenError, match="subsets: subset 'ood' has no classes"):
        node_similarity(src, subsets="all,ood")
    with pytest.raises(ClipgenError, match="subsets: subset 'ood' has no classes"):
        circuit_similarity(src, subsets=["ood"])


@pytest.mark.parametrize("kwargs, message", [
    ({"domains": "moon"}, "domains: unknown domain"),
    ({"domains": "real,sketch"}, "domains: domain 'sketch' is not in /data/fake-circuits.h5"),
    ({"domains": "real"}, "domains: needs at least 2 domains"),
    ({"subsets": "all,odd"}, "subsets: unknown class subset 'odd'"),
    ({"highlight": "sketch"}, "highlight: domain 'sketch' is not among the analysed domains"),
    ({"highlight": "moon"}, "highlight: unknown domain"),
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
    ({"metrics": "jaccard,edit"}, "metrics: unknown metric 'edit'"),
    ({"metrics": "wl_h11"}, "metrics: unknown metric"),
    ({"metrics": ","}, "metrics: needs at least one metric"),
    ({"edge_k": 0}, "^edge_k: "),
    ({"domains": "clipart"}, "domains: domain 'clipart' is not in"),
])
def test_circuit_similarity_bad_input(kwargs, message):
    with pytest.raises(ClipgenError, match=message):
        circuit_similarity(circuit_source(), **kwargs)


def test_path_source_goes_through_open_circuits(tmp_path):
    pytest.importorskip("clipgen.circuits.store")
    with pytest.raises(ClipgenError):
        node_similarity(tmp_path / "missing.h5")
