"""clipgen.circuits.similarity: the runners of ``circuits nodes`` and ``circuits similarity``, their outputs and
refusals."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from clipgen.circuits.similarity import (
    CircuitSimilarityConfig,
    NodeSimilarityConfig,
    parse_metrics,
    parse_subsets,
    run_circuit_similarity,
    run_node_similarity,
)
from clipgen.errors import ClipgenError
from tests._similarity_fakes import circuit_source, node_source


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
    assert config["config"]["subsets"] == ["all", "id", "ood"]  # a list (files written before hold "all,id,ood")
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
    with pytest.raises(ClipgenError, match="^subsets: "):
        run_node_similarity(cfg, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_run_circuit_similarity_writes_everything(tmp_path):
    out = tmp_path / "circ"
    cfg = CircuitSimilarityConfig(circuits=circuit_source(), out=out, edge_k=1, metrics=["jaccard", "wl_h1"])
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
    assert config["config"]["metrics"] == ["jaccard", "wl_h1"] and config["config"]["subsets"] == ["all", "id", "ood"]
    with pytest.raises(ClipgenError, match="--force"):
        run_circuit_similarity(cfg, progress=False)


def test_list_fields_of_a_config_read_back_from_a_file_that_holds_strings():
    """config.json written before the list fields holds comma-separated strings: both forms give the same config."""
    old = {"circuits": "c.h5", "out": "o", "metrics": "jaccard,wl_h1", "subsets": "all,ood"}
    new = {"circuits": "c.h5", "out": "o", "metrics": ["jaccard", "wl_h1"], "subsets": ["all", "ood"]}
    for doc in (old, new):
        cfg = CircuitSimilarityConfig(**doc)
        assert parse_metrics(cfg.metrics) == ["jaccard", "wl_h1"]
        assert parse_subsets(cfg.subsets) == (["all", "ood"], True)
