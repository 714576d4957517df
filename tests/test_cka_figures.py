"""The CKA figures."""

from __future__ import annotations


def test_pair_plot_highlights_the_highlighted_domains_pairs_and_mutes_the_others():
    import itertools

    import matplotlib.colors as mcolors

    from clipgen.analysis.cka_figures import pairs_figure
    from clipgen.analysis.cka_sweep import CKARecord, CKAResult

    domains = ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]
    pairs = list(itertools.combinations(domains, 2))  # 15 pairs
    layers = ["l1", "l2"]
    recs = [CKARecord(layer, a, b, "all", "linear", "unbiased", 3, 0.5) for layer in layers for a, b in pairs]
    res = CKAResult(layers, domains, pairs, ["all"], ["linear"], ["unbiased"], [], {}, recs)
    fig = pairs_figure(res, "all", "linear", "unbiased", highlight="quickdraw")
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert len(lines) == 15
    hl = [ln for lab, ln in lines.items() if "quickdraw" in lab]
    other = [ln for lab, ln in lines.items() if "quickdraw" not in lab]
    assert len(hl) == 5
    # the 5 highlighted pairs: 5 different saturated colours, thicker than every other line
    colours = {mcolors.to_hex(ln.get_color()) for ln in hl}
    assert len(colours) == 5
    assert all(mcolors.rgb_to_hsv(mcolors.to_rgb(c))[1] > 0.3 for c in colours)
    assert min(ln.get_linewidth() for ln in hl) > max(ln.get_linewidth() for ln in other)
    # the others are muted: no saturation
    assert all(mcolors.rgb_to_hsv(mcolors.to_rgb(ln.get_color()))[1] < 0.05 for ln in other)
    # and the 10 others are still told apart by grey level x dash pattern
    assert len({(mcolors.to_hex(ln.get_color()), ln.get_linestyle()) for ln in other}) == 10
    # highlighted pairs first in the legend
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert all("quickdraw" in t for t in legend[:5])
