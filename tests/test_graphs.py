"""clipgen.circuits.graphs: the circuit DAG, Jaccard, the WL subtree kernel (by hand), drawing and export."""

from __future__ import annotations

import re
from collections import Counter

import networkx as nx
import numpy as np
import pytest

from clipgen.circuits.attribution import CircuitResult
from clipgen.circuits.graphs import (
    build_dag,
    circuit_graph,
    circuit_wl,
    dot_text,
    draw_circuit,
    export_graph,
    jaccard,
    jaccard_arrays,
    parse_export,
    wl_kernel,
    wl_kernel_matrices,
    wl_similarity,
)
from clipgen.errors import ClipgenError, ConfigFieldError


def tiny_result() -> CircuitResult:
    """input (3 ch) -> act1 (4) -> act2 (5) -> act3 (3), a few channels selected per layer."""
    layers = ["input", "act1", "act2", "act3"]
    nodes = {
        "input": np.array([0.1, -0.9, 0.2], np.float32),
        "act1": np.array([0.5, 0.0, -0.7, 0.1], np.float32),
        "act2": np.array([0.0, -0.6, 0.0, 0.3, 0.9], np.float32),
        "act3": np.array([-0.4, 0.1, 0.2], np.float32),
    }
    selected = {"input": np.array([1]), "act1": np.array([2, 0]), "act2": np.array([4, 1, 3]),
                "act3": np.array([0])}
    edges = {
        "act1": np.array([[9.0], [9.0]], np.float32),  # input -> act1: never an edge of the graph
        # rows: act2 channels 4, 1, 3; columns: act1 channels 2, 0
        "act2": np.array([[0.1, 0.2], [-0.3, -0.1], [0.0, 0.0]], np.float32),
        # row: act3 channel 0; columns: act2 channels 4, 1, 3
        "act3": np.array([[0.5, -1.0, 0.5]], np.float32),
    }
    return CircuitResult(layers, nodes, selected, edges, np.zeros(2, np.float32))


def edge_list(g) -> list[tuple[str, str, float]]:
    return sorted((u, v, round(d["weight"], 6)) for u, v, d in g.edges(data=True))


# ---------------------------------------------------------------------------------------------------------------
# the DAG


def test_build_dag_nodes_by_hand():
    g = build_dag(tiny_result(), edge_k=3)
    assert list(g.nodes) == ["act1/2", "act1/0", "act2/4", "act2/1", "act2/3", "act3/0"]  # chain, then best first
    assert g.nodes["act2/1"] == {"layer": "act2", "channel": 1, "score": pytest.approx(-0.6)}
    assert isinstance(g.nodes["act1/2"]["channel"], int) and isinstance(g.nodes["act1/2"]["score"], float)
    assert not any(n.startswith("input") for n in g.nodes)


def test_build_dag_edges_by_hand_signed_top_k_and_ties():
    r = tiny_result()
    # edge_k = 1: act2/4 row [0.1, 0.2] -> act1/0; act2/1 row [-0.3, -0.1] -> act1/0 (signed, not |.|);
    # act2/3 row [0, 0] tie -> the lower column, act1/2; act3/0 row [0.5, -1.0, 0.5]: tie 0.5/0.5 -> column 0 = act2/4
    assert edge_list(build_dag(r, edge_k=1)) == [
        ("act1/0", "act2/1", -0.1), ("act1/0", "act2/4", 0.2), ("act1/2", "act2/3", 0.0),
        ("act2/4", "act3/0", 0.5)]
    # edge_k = 2: act1 has only 2 selected channels, so every act2 node gets both; act3/0 gets columns 0 and 2,
    # not the |.|-largest -1.0
    assert edge_list(build_dag(r, edge_k=2)) == [
        ("act1/0", "act2/1", -0.1), ("act1/0", "act2/3", 0.0), ("act1/0", "act2/4", 0.2),
        ("act1/2", "act2/1", -0.3), ("act1/2", "act2/3", 0.0), ("act1/2", "act2/4", 0.1),
        ("act2/3", "act3/0", 0.5), ("act2/4", "act3/0", 0.5)]
    # edge_k larger than any selection: everything except input -> act1
    assert build_dag(r, edge_k=10).number_of_edges() == 3 * 2 + 1 * 3


def test_ties_are_broken_by_column_deterministically():
    r = tiny_result()
    r.edges["act3"] = np.zeros((1, 3), np.float32)
    for _ in range(3):
        assert edge_list(build_dag(r, edge_k=2))[-2:] == [("act2/1", "act3/0", 0.0), ("act2/4", "act3/0", 0.0)]
    # reversing the upstream selection order reverses which channels win the tie (columns, not channel numbers)
    r.selected["act2"] = np.array([3, 1, 4])
    r.edges["act2"] = r.edges["act2"][[2, 1, 0]]
    assert [e[:2] for e in edge_list(build_dag(r, edge_k=2)) if e[1] == "act3/0"] == [
        ("act2/1", "act3/0"), ("act2/3", "act3/0")]


def test_circuit_graph_matches_build_dag_and_codes():
    r = tiny_result()
    cg = circuit_graph(r, edge_k=2)
    g = build_dag(r, edge_k=2)
    names = cg.names()
    assert names == list(g.nodes)
    assert sorted(zip([names[s] for s in cg.src], [names[d] for d in cg.dst], strict=True)) == sorted(g.edges)
    # codes equal exactly when names are equal
    assert len(set(cg.node_codes.tolist())) == cg.n_nodes
    assert len(set(cg.edge_codes.tolist())) == cg.n_edges


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.edges.__setitem__("act2", np.zeros((2, 2))), "has shape"),
    (lambda r: r.edges.pop("act3"), "no edge matrix"),
    (lambda r: r.edges.__setitem__("act2", np.full((3, 2), np.nan)), "non-finite"),
    (lambda r: r.selected.__setitem__("act1", np.array([2, 7])), "outside"),
    (lambda r: r.selected.__setitem__("act1", np.array([2, 2])), "twice"),
    (lambda r: r.nodes.pop("act3"), "no node scores"),
])
def test_bad_circuits_are_one_line_errors(mutate, message):
    r = tiny_result()
    mutate(r)
    with pytest.raises(ClipgenError, match=message):
        build_dag(r)


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_edge_k_must_be_positive_int(k):
    with pytest.raises(ConfigFieldError, match="^edge_k"):
        build_dag(tiny_result(), edge_k=k)


# ---------------------------------------------------------------------------------------------------------------
# Jaccard


def test_jaccard_by_hand():
    assert jaccard({1, 2, 3}, {2, 3, 4, 5}) == pytest.approx(2 / 5)
    assert jaccard([1, 1, 2], [2]) == pytest.approx(1 / 2)  # sets, not multisets
    assert jaccard(set(), set()) == 1.0
    assert jaccard({1}, set()) == 0.0
    assert jaccard({("a", "b")}, {("a", "b"), ("b", "c")}) == 0.5
    a, b = np.array([5, 1, 9, 12]), np.array([9, 3, 5])
    assert jaccard_arrays(a, b) == pytest.approx(2 / 5) == jaccard(a.tolist(), b.tolist())
    assert jaccard_arrays(np.zeros(0, np.int64), np.zeros(0, np.int64)) == 1.0


# ---------------------------------------------------------------------------------------------------------------
# WL subtree kernel


def digraph(edges, nodes=()):
    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from(edges)
    return g


def test_wl_kernel_by_hand():
    g1 = digraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
    g2 = digraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "e")])
    # label multisets, iteration by iteration: label(i+1) = label(i) + (sorted successor labels(i))
    it0_1 = ["a", "b", "c", "d"]
    it0_2 = ["a", "b", "c", "d", "e"]
    it1_1 = ["a(b,c)", "b(d)", "c(d)", "d()"]
    it1_2 = ["a(b,c)", "b(d)", "c(e)", "d()", "e()"]
    it2_1 = ["a(b,c)(b(d),c(d))", "b(d)(d())", "c(d)(d())", "d()()"]
    it2_2 = ["a(b,c)(b(d),c(e))", "b(d)(d())", "c(e)(e())", "d()()", "e()()"]
    it3_1 = ["A1", "b(d)(d())(d()())", "C1", "d()()()"]  # a and c differ between the graphs from iteration 2 on
    it3_2 = ["A2", "b(d)(d())(d()())", "C2", "d()()()", "e()()()"]

    def dot(x, y):
        cx, cy = Counter(x), Counter(y)
        return sum(cx[k] * cy[k] for k in cx)

    per_it = [dot(*p) for p in ((it0_1, it0_2), (it1_1, it1_2), (it2_1, it2_2), (it3_1, it3_2))]
    assert per_it == [4, 3, 2, 2]
    for h in range(4):
        assert wl_kernel(g1, g2, h) == sum(per_it[:h + 1])  # 4, 7, 9, 11
        assert wl_kernel(g1, g1, h) == 4 * (h + 1)
        assert wl_kernel(g2, g2, h) == 5 * (h + 1)
        assert wl_similarity(g1, g2, h) == pytest.approx(sum(per_it[:h + 1]) / np.sqrt(4 * (h + 1) * 5 * (h + 1)))
    assert wl_similarity(g1, g2, 1) == pytest.approx(7 / np.sqrt(80))
    assert wl_similarity(g1, g2, 3) == pytest.approx(11 / np.sqrt(320))
    # per-iteration matrices
    m = wl_kernel_matrices([(np.array([0, 1, 2, 3]), np.array([0, 0, 1, 2]), np.array([1, 2, 3, 3])),
                            (np.array([0, 1, 2, 3, 4]), np.array([0, 0, 1, 2]), np.array([1, 2, 3, 4]))], 3)
    assert m[:, 0, 1].tolist() == per_it and m[:, 0, 0].tolist() == [4] * 4 and m[:, 1, 1].tolist() == [5] * 4


def test_wl_uses_successors_not_predecessors():
    g1 = digraph([("x", "y")])
    g2 = digraph([("x", "y"), ("z", "y")])
    # successors: x -> {y} in both, y -> {} in both, z only in g2 -> iteration 1 shares x and y
    assert wl_kernel(g1, g2, 1) == 2 + 2
    # with predecessors y's label would differ ({x} vs {x, z}): reversing the edges shows it
    assert wl_kernel(g1.reverse(), g2.reverse(), 1) == 2 + 1


def test_wl_normalised_self_is_one_and_relabelled_order_is_one():
    rng = np.random.default_rng(0)
    g = random_dag(rng, 30, 60)
    assert wl_similarity(g, g, 3) == pytest.approx(1.0)
    nodes = list(g.nodes)
    rng.shuffle(nodes)
    edges = list(g.edges)
    rng.shuffle(edges)
    g_shuffled = digraph(edges, nodes)
    assert list(g_shuffled.nodes) != list(g.nodes)
    for h in (0, 1, 2, 3):
        assert wl_similarity(g, g_shuffled, h) == 1.0
    # same shape, one node renamed: names are labels, so no longer identical
    renamed = nx.relabel_nodes(g, {nodes[0]: "elsewhere"})
    assert nx.is_isomorphic(g, renamed)
    assert wl_similarity(g, renamed, 1) < 1.0


def test_wl_empty_graphs():
    empty = nx.DiGraph()
    assert wl_similarity(empty, empty, 2) == 1.0
    assert wl_similarity(empty, digraph([("a", "b")]), 2) == 0.0
    assert wl_kernel(empty, empty, 3) == 0.0


def random_dag(rng, n, m, prefix="n"):
    g = nx.DiGraph()
    names = [f"{prefix}{i}" for i in range(n)]
    g.add_nodes_from(names)
    while g.number_of_edges() < m:
        i, j = sorted(rng.choice(n, 2, replace=False))
        g.add_edge(names[i], names[j])
    return g


def naive_wl_per_iteration(g1, g2, h):
    """An independent dictionary implementation: labels are nested tuples (no compression)."""
    labels = [{v: v for v in g} for g in (g1, g2)]
    out = []
    for it in range(h + 1):
        if it:
            labels = [{v: (lab[v], tuple(sorted(map(repr, (lab[w] for w in g.successors(v)))))) for v in g}
                      for g, lab in zip((g1, g2), labels, strict=True)]
        c1, c2 = Counter(map(repr, labels[0].values())), Counter(map(repr, labels[1].values()))
        out.append(sum(c1[k] * c2[k] for k in c1))
    return out


def test_wl_against_naive_and_provable_h_facts():
    rng = np.random.default_rng(1)
    for trial in range(6):
        n = int(rng.integers(8, 25))
        g1 = random_dag(rng, n, int(rng.integers(n, 3 * n)))
        g2 = nx.DiGraph(g1)
        # perturb g2: drop some edges, add others and a few foreign nodes
        for e in list(g2.edges)[: trial + 1]:
            g2.remove_edge(*e)
        g2.add_edges_from([("n0", "extra1"), ("extra1", "extra2")])
        naive = naive_wl_per_iteration(g1, g2, 4)
        ks = [wl_kernel(g1, g2, h) for h in range(5)]
        assert ks == list(np.cumsum(naive))
        sims = [wl_similarity(g1, g2, h) for h in range(5)]
        # unique names: k_h(G, G) = (h + 1)|V|
        assert [wl_kernel(g2, g2, h) for h in range(5)] == [g2.number_of_nodes() * (h + 1) for h in range(5)]
        # k_h grows with h, by non-increasing increments (each iteration refines the previous labels) ...
        assert all(b >= a for a, b in zip(ks, ks[1:], strict=False))
        assert all(b <= a for a, b in zip(naive, naive[1:], strict=False))
        # ... so the normalised similarity (a running mean of non-increasing terms) never grows with h
        assert all(b <= a + 1e-12 for a, b in zip(sims, sims[1:], strict=False))
        assert all(0.0 <= s <= 1.0 for s in sims)
        assert sims[0] == pytest.approx(len(set(g1) & set(g2)) / np.sqrt(len(g1) * len(g2)))


def test_circuit_wl_matches_networkx_path():
    rng = np.random.default_rng(2)
    results = [random_result(rng) for _ in range(3)]
    cgs = [circuit_graph(r, 2) for r in results]
    sims = circuit_wl(cgs, [1, 3])
    dags = [build_dag(r, 2) for r in results]
    for h in (1, 3):
        assert np.diag(sims[h]) == pytest.approx(1.0)
        for a in range(3):
            for b in range(3):
                assert sims[h][a, b] == pytest.approx(wl_similarity(dags[a], dags[b], h))
    with pytest.raises(ConfigFieldError, match="^metrics"):
        circuit_wl(cgs, [-1])


def random_result(rng, channels=(3, 8, 8, 16, 12), fraction=0.25) -> CircuitResult:
    from clipgen.circuits.attribution import select_channels

    layers = ["input"] + [f"l{i}" for i in range(1, len(channels))]
    nodes = {name: rng.standard_normal(c).astype(np.float32) for name, c in zip(layers, channels, strict=True)}
    sel = {name: select_channels(nodes[name], fraction) for name in layers}
    edges = {layers[i]: rng.standard_normal((sel[layers[i]].size, sel[layers[i - 1]].size)).astype(np.float32)
             for i in range(1, len(layers))}
    return CircuitResult(layers, nodes, sel, edges, np.zeros(1, np.float32))


# ---------------------------------------------------------------------------------------------------------------
# export and drawing


def test_graphml_round_trip(tmp_path):
    g = build_dag(tiny_result(), edge_k=2)
    path = export_graph(g, tmp_path / "c.graphml")
    back = nx.read_graphml(path)
    assert back.is_directed()
    assert list(back.nodes) == list(g.nodes)
    assert sorted(back.edges) == sorted(g.edges)
    for v, d in g.nodes(data=True):
        assert back.nodes[v]["layer"] == d["layer"]
        assert back.nodes[v]["channel"] == d["channel"]
        assert back.nodes[v]["score"] == pytest.approx(d["score"])
    for u, v, d in g.edges(data=True):
        assert back.edges[u, v]["weight"] == pytest.approx(d["weight"])
    assert back.graph["edge_k"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["c.graphml"]  # no temporary left


def test_dot_edges_line_by_line(tmp_path):
    g = build_dag(tiny_result(), edge_k=2)
    text = export_graph(g, tmp_path / "c.dot").read_text()
    lines = text.splitlines()
    assert lines[0] == "digraph circuit {" and lines[-1] == "}"
    edge_re = re.compile(r'^  "([^"]+)" -> "([^"]+)" \[score="([^"]+)", color="(red|blue|gray)"\];$')
    found = {}
    for line in lines:
        if "->" in line:
            m = edge_re.match(line)
            assert m, line
            found[(m[1], m[2])] = (float(m[3]), m[4])
    assert set(found) == set(g.edges)
    for (u, v), (score, colour) in found.items():
        w = g.edges[u, v]["weight"]
        assert score == w  # repr round-trips exactly
        assert colour == ("red" if w > 0 else "blue" if w < 0 else "gray")
    node_re = re.compile(r'^  "([^"]+)" \[layer="([^"]+)", channel="(\d+)", score="([^"]+)", '
                         r'fillcolor="#[0-9A-F]{6}"\];$')
    nodes = {m[1]: m for m in map(node_re.match, lines) if m}
    assert list(nodes) == list(g.nodes)
    assert float(nodes["act2/1"][4]) == g.nodes["act2/1"]["score"]
    assert sum(line.lstrip().startswith("{ rank=same;") for line in lines) == 3  # one rank per layer


def test_dot_escapes_names():
    g = nx.DiGraph()
    g.add_edge('say "hi"', "back\\slash", weight=-1.0)
    text = dot_text(g)
    assert '"say \\"hi\\"" -> "back\\\\slash" [score="-1.0", color="blue"];' in text


def test_export_rejects_unknown_formats(tmp_path):
    with pytest.raises(ClipgenError, match="unknown graph format"):
        export_graph(nx.DiGraph(), tmp_path / "c.gexf")
    assert parse_export("graphml, dot") == ["graphml", "dot"]
    assert parse_export("none") == [] and parse_export("") == []
    with pytest.raises(ConfigFieldError, match="^export"):
        parse_export("png")


@pytest.mark.slow
def test_draw_circuit_writes_png(tmp_path):
    import matplotlib.image as mpimg

    r = random_result(np.random.default_rng(3), channels=(3, 16, 64, 256, 1024), fraction=0.1)
    path = draw_circuit(r, tmp_path / "c.png", edge_k=3, title="test circuit")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 400 and img.shape[1] > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["c.png"]


def test_layout_rows_follow_the_chain():
    from clipgen.circuits.graphs import _layout

    cg = circuit_graph(tiny_result(), 2)
    x, rows, present = _layout(cg)
    assert [cg.layers[li] for li in present] == ["act1", "act2", "act3"]  # bottom to top
    assert rows.tolist() == [0, 0, 1, 1, 1, 2]
    assert ((x > 0) & (x < 1)).all()
    for r in range(3):  # evenly spread, no two nodes of a row on top of each other
        xs = np.sort(x[rows == r])
        assert np.allclose(xs, (np.arange(xs.size) + 0.5) / xs.size)
