"""Hand-built circuits for the similarity tests: a stand-in for a circuits file and small circuits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clipgen.circuits.attribution import CircuitResult
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


# l2 rows (channels 0, 1) x l1 columns (channels 0, 1); with edge_k = 1 each l2 node keeps its argmax
EYE = [[1, 0], [0, 1]]  # l1/0 -> l2/0, l1/1 -> l2/1
BOTH_FROM_0 = [[1, 0], [1, 0]]  # l1/0 -> l2/0, l1/0 -> l2/1
CROSSED = [[0, 1], [1, 0]]  # l1/1 -> l2/0, l1/0 -> l2/1


def circuit_source() -> FakeCircuits:
    r = {("real", 0): result([0, 1], [0, 1], EYE), ("painting", 0): result([0, 1], [0, 1], BOTH_FROM_0),
         ("quickdraw", 0): result([0, 1], [0, 1], CROSSED),
         ("real", 1): result([0, 1], [0, 1], BOTH_FROM_0), ("painting", 1): result([0, 1], [0, 1], BOTH_FROM_0)}
    return FakeCircuits(r, {0: "aircraft carrier", 1: "airplane"}, held_out=[0])
