"""clipgen.circuits.similarity_figures: the figures of node and circuit similarity."""

from __future__ import annotations

import numpy as np
import pytest

from clipgen.circuits.similarity_compute import node_similarity
from tests._similarity_fakes import node_source


@pytest.mark.slow
def test_node_highlight_band_stays_within_0_and_1():
    """A mean Jaccard of 1/6 with a std of 0.5 must not draw a band below 0 (nor above 1 for 5/6 + 0.5)."""
    from clipgen.circuits.similarity_figures import jaccard_band, node_highlight_figure

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
