"""clipgen.circuits.plot: one circuit drawn and exported, and refusals."""

from __future__ import annotations

import json

import networkx as nx
import pytest

from clipgen.circuits.plot import PlotConfig, run_plot
from clipgen.errors import ClipgenError
from tests._similarity_fakes import circuit_source


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
    assert config["config"]["export"] == ["graphml", "dot"]  # a list (files written before hold "graphml,dot")
    with pytest.raises(ClipgenError, match="already exists"):
        run_plot(cfg)
    cfg.force, cfg.export = True, "none"  # a string (as an old config.json holds it) still parses
    assert [p.name for p in run_plot(cfg)] == ["c.png", "c.config.json"]
    cfg.export = []
    assert [p.name for p in run_plot(cfg)] == ["c.png", "c.config.json"]


@pytest.mark.slow
def test_run_plot_into_a_folder_by_label(tmp_path):
    cfg = PlotConfig(circuits=circuit_source(), domain="painting", class_name="1", out=tmp_path / "figs",
                     export="dot")
    files = run_plot(cfg)
    assert [p.name for p in files] == ["circuit_painting_airplane.png", "circuit_painting_airplane.dot",
                                       "circuit_painting_airplane.config.json"]


@pytest.mark.parametrize("domain, cls, message", [
    ("real", "aircraft carrierr", "class_name: unknown DomainNet class 'aircraft carrierr'.*did you mean"),
    ("real", "lion", "class_name: class 'lion' was not computed in /data/fake-circuits.h5"),
    ("real", "7", "class_name: class label 7 is not in"),
    ("quickdraw", "airplane", r"class_name: class 'airplane' \(1\) has no complete circuit in quickdraw.*painting, "
                              "real"),
    ("moon", "airplane", "domain: unknown domain"),
    ("sketch", "airplane", "domain: domain 'sketch' is not in"),
    ("all", "airplane", "domain: names one domain"),
])
def test_run_plot_bad_input(tmp_path, domain, cls, message):
    with pytest.raises(ClipgenError, match=message):
        run_plot(PlotConfig(circuits=circuit_source(), domain=domain, class_name=cls, out=tmp_path / "c.png"))
    assert list(tmp_path.iterdir()) == []


def test_run_plot_bad_export_and_edge_k(tmp_path):
    with pytest.raises(ClipgenError, match="^export: "):
        run_plot(PlotConfig(circuits=circuit_source(), domain="real", class_name="airplane", out=tmp_path / "c.png",
                            export="svg"))
    with pytest.raises(ClipgenError, match="^edge_k: "):
        run_plot(PlotConfig(circuits=circuit_source(), domain="real", class_name="airplane", out=tmp_path / "c.png",
                            edge_k=0))
    assert list(tmp_path.iterdir()) == []
