"""clipgen.analysis.feature_sharing: Alg. 1-2 against hand computations, tie-breaking, store runs and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clipgen.analysis.feature_sharing import (
    FeatureSharingConfig,
    domain_scores,
    feature_sharing,
    find_test_domain,
    latent_histogram,
    mpct_shared,
    pct_shared,
    run_feature_sharing,
    top_bins,
    top_latents,
)
from clipgen.analysis.sae import SAEArch, SparseAutoencoder, save_sae
from clipgen.errors import ClipgenError, ConfigFieldError
from tests._fixtures_sae import make_store


def test_mpct_hand_computation():
    ha = np.arange(30, 0, -1)  # strictly decreasing: top-k = {0..k-1}
    hb = np.arange(1, 31)  # strictly increasing: top-k = {30-k..29}
    # k=5,10,15: disjoint; k=20: {0..19} & {10..29} = 10 of 20
    assert [pct_shared(ha, hb, k) for k in (5, 10, 15, 20)] == [0.0, 0.0, 0.0, 0.5]
    assert mpct_shared(ha, hb) == pytest.approx(0.125)
    assert mpct_shared(ha, ha) == 1.0


def test_zero_bins_tie_break_and_exclusion():
    ha = np.zeros(30, dtype=int)
    ha[[3, 7]] = 5
    hb = np.zeros(30, dtype=int)
    hb[[7, 9]] = 2
    # include (paper): zero bins join the top-k in index order
    assert top_bins(ha, 5).tolist() == [3, 7, 0, 1, 2]
    assert top_bins(hb, 5).tolist() == [7, 9, 0, 1, 2]
    assert pct_shared(ha, hb, 5) == pytest.approx(4 / 5)  # {7, 0, 1, 2}
    assert pct_shared(ha, hb, 10) == 1.0  # both {0..9}
    assert pct_shared(ha, hb, 15) == 1.0 and pct_shared(ha, hb, 20) == 1.0
    # exclude: only {3, 7} and {7, 9} take part
    assert top_bins(ha, 5, zero_bins="exclude").tolist() == [3, 7]
    expect = np.mean([1 / 5, 1 / 10, 1 / 15, 1 / 20])
    assert mpct_shared(ha, hb, zero_bins="exclude") == pytest.approx(expect)


def test_top_latents_ties_and_inactive():
    row = np.array([[0.5, 0.9, 0.5, 0.9, 0.0, 0.5]])
    assert top_latents(row, 3).tolist() == [[1, 3, 0]]
    assert top_latents(row, 5).tolist() == [[1, 3, 0, 2, 5]]
    assert top_latents(row, 6).tolist() == [[1, 3, 0, 2, 5, -1]]  # zero activation: not counted
    # the same answer for the row in any batch, and on repeated calls
    batch = np.vstack([np.random.default_rng(0).random((4, 6)), row, row])
    assert top_latents(batch, 5)[4:].tolist() == [[1, 3, 0, 2, 5]] * 2
    f = np.array([[0.0, 0.2, 0.0, 0.0, 0.1], [0.0, 0.0, 0.0, 0.0, 0.3]])
    assert latent_histogram(f, k=20).tolist() == [0, 1, 0, 0, 2]  # only activations > 0 count
    assert latent_histogram(f, k=1).tolist() == [0, 1, 0, 0, 1]


def _onehot_rows(active: list[int], n: int, m: int = 60) -> np.ndarray:
    x = np.zeros((n, m), dtype=np.float32)
    x[:, active] = np.linspace(1.0, 0.5, len(active))  # distinct values: the top-20 are exactly these
    return x


def test_feature_sharing_matrices_mean_and_score_by_hand():
    # class 0: clipart {0..19}, real {0..9, 30..39}, sketch {40..59}; class 1: clipart = sketch {0..19}, no real
    parts = [(0, "clipart", list(range(20)), 3), (0, "real", list(range(10)) + list(range(30, 40)), 2),
             (0, "sketch", list(range(40, 60)), 4), (1, "clipart", list(range(20)), 2),
             (1, "sketch", list(range(20)), 1)]
    lat = np.vstack([_onehot_rows(a, n) for _, _, a, n in parts])
    labels = np.concatenate([[c] * n for c, _, _, n in parts])
    doms = [d for _, d, _, n in parts for _ in range(n)]
    res = feature_sharing(lat, labels, doms, {0: "axe", 1: "bed"}, ["clipart", "real", "sketch"],
                          test_domain="clipart")
    cr = (1 + 1 + 10 / 15 + 10 / 20) / 4
    m0 = np.array([[1, cr, 0], [cr, 1, 0], [0, 0, 1]])
    np.testing.assert_allclose(res.matrices[0], m0)
    m1 = res.matrices[1]
    assert np.isnan(m1[1]).all() and np.isnan(m1[:, 1]).all() and m1[0, 2] == 1.0
    np.testing.assert_allclose(res.mean, [[1, cr, 0.5], [cr, 1, 0], [0.5, 0, 1]])
    assert res.n_classes.tolist() == [[2, 1, 2], [1, 1, 1], [2, 1, 2]]
    assert res.images.tolist() == [[3, 2, 4], [2, 0, 1]]
    assert res.score == pytest.approx((cr + 0.5) / 2)  # the clipart row, not the sketch row
    assert res.scores["sketch"] == pytest.approx(0.25)
    j = res.to_json()
    assert j["score"] == pytest.approx((cr + 0.5) / 2) and j["published_code_score"] == pytest.approx(0.25)
    assert j["per_class"]["bed"]["matrix"][1] == [None, None, None]
    assert j["per_class"]["bed"]["images"] == {"clipart": 2, "real": 0, "sketch": 1}
    json.dumps(j)  # plain JSON (no NaN)


def test_domain_scores_skip_missing():
    m = np.array([[1.0, 0.2, np.nan], [0.2, 1.0, 0.4], [np.nan, 0.4, 1.0]])
    np.testing.assert_allclose(domain_scores(m), [0.2, 0.3, 0.4])


def test_find_test_domain_in_provenance():
    assert find_test_domain({"model": {"name": "RN-tiny"}, "run": {"mixture": {"test_domain": "sketch"}}}) == "sketch"
    assert find_test_domain({"model": {"name": "x"}}) is None
    assert find_test_domain({"run": {"mixture": {"test_domain": None}}}) is None


# -- from a store ----------------------------------------------------------------------------------------------


def _sae_file(path, width=16, seed=0, layer="embedding"):
    m = SparseAutoencoder(SAEArch(d_in=width, d_sae=4 * width), seed=seed)
    with torch.no_grad():
        m.b_enc.add_(0.2)
    save_sae(path, m, layer=layer)
    return m


@pytest.mark.slow
def test_run_feature_sharing_matches_arrays(tmp_path):
    store, x = make_store(tmp_path / "s.h5", provenance={"run": {"mixture": {"test_domain": "sketch"}}})
    model = _sae_file(tmp_path / "sae.pt")
    cfg = FeatureSharingConfig(store=str(store), sae=str(tmp_path / "sae.pt"), out=str(tmp_path / "fs"),
                               device="cpu")
    res, out = run_feature_sharing(cfg, progress=False)
    # reference: the array implementation on the test rows of the held-out classes
    from clipgen.store import open_store

    with open_store(store) as st:
        smp = st.samples
        rows = np.flatnonzero(np.isin(smp.labels, [11, 13]) & (smp.splits == "test"))
        doms = [smp.domain_names[i] for i in smp.domains[rows]]
        labels = smp.labels[rows]
    with torch.no_grad():
        lat = model.encode(torch.from_numpy(x[rows])).numpy()
    ref = feature_sharing(lat, labels, doms, {11: "axe", 13: "banana"}, ["clipart", "real", "sketch"],
                          test_domain="sketch")
    np.testing.assert_array_equal(res.histograms, ref.histograms)
    np.testing.assert_allclose(res.mean, ref.mean)
    assert res.test_domain == "sketch" and res.score == pytest.approx(ref.score)
    j = json.loads((out / "feature-sharing.json").read_text())
    assert j["classes"] == ["axe", "banana"] and j["domains"] == ["clipart", "real", "sketch"]
    assert j["store"]["split"] == "test" and j["store"]["rows"] == 2 * 3 * 6
    assert j["sae"]["layer"] == "embedding" and j["tie_break"].startswith("stable")
    for name in ("feature-sharing.png", "feature-sharing-classes.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    npz = np.load(out / "histograms.npz")
    assert npz["histograms"].shape == (2, 3, 64) and npz["images"].tolist() == [[6, 6, 6], [6, 6, 6]]
    assert json.loads((out / "config.json").read_text())["command"] == "sae features"
    with pytest.raises(ClipgenError, match="already exists; pass --force"):
        run_feature_sharing(cfg, progress=False)
    cfg.force = True  # force is a config field, recorded in config.json like the others
    assert run_feature_sharing(cfg, progress=False)[0].classes == res.classes
    assert json.loads((out / "config.json").read_text())["config"]["force"] is True
    # explicit classes and test domain (letters accepted), every row
    cfg2 = FeatureSharingConfig(store=str(store), sae=str(tmp_path / "sae.pt"), out=str(tmp_path / "fs2"),
                                classes=["Aircraft Carrier", "bed"], test_domain="c", split="all", device="cpu")
    res2, _ = run_feature_sharing(cfg2, progress=False)
    assert res2.classes == ["aircraft carrier", "bed"] and res2.test_domain == "clipart"
    assert res2.images.tolist() == [[12, 12, 12], [12, 12, 12]]


@pytest.mark.slow
def test_run_feature_sharing_refusals(tmp_path):
    store, _ = make_store(tmp_path / "s.h5")
    _sae_file(tmp_path / "sae.pt")

    def run(**kw):
        base = dict(store=str(store), sae=str(tmp_path / "sae.pt"), out=str(tmp_path / "o"), device="cpu")
        base.update(kw)
        return run_feature_sharing(FeatureSharingConfig(**base), progress=False)

    with pytest.raises(ConfigFieldError, match="^test_domain: .* does not record the run's test domain"):
        run()
    with pytest.raises(ConfigFieldError, match="^test_domain: 'quickdraw' is not a domain"):
        run(test_domain="quickdraw")
    with pytest.raises(ConfigFieldError, match="^classes: .*unknown class 'zebra'"):
        run(test_domain="sketch", classes=["zebra"])
    with pytest.raises(ConfigFieldError, match="^split: .*no rows of split 'val'"):
        run(test_domain="sketch", split="val")
    none_held, _ = make_store(tmp_path / "n.h5", held_out=())
    with pytest.raises(ConfigFieldError, match="^classes: .*records no held-out classes"):
        run(store=str(none_held), test_domain="sketch")
    _sae_file(tmp_path / "wide.pt", width=24)
    with pytest.raises(ClipgenError, match=r"wide.pt: SAE expects 24-wide inputs, but layer 'embedding' .* is 16"):
        run(sae=str(tmp_path / "wide.pt"), test_domain="sketch")
    # the SAE has 64 latents: top-k sets larger than that are meaningless
    with pytest.raises(ConfigFieldError, match=r"^ks: 65 exceeds the 64 latents of the SAE .*sae.pt"):
        run(test_domain="sketch", ks=[5, 65])
    with pytest.raises(ConfigFieldError, match=r"^top: 100 exceeds the 64 latents"):
        run(test_domain="sketch", top=100)
    with pytest.raises(ConfigFieldError, match=r"^batch_size: must be at least 1, got 0"):
        run(test_domain="sketch", batch_size=0)
    with pytest.raises(ConfigFieldError, match=r"^layer: .*s.h5: no layer 'attnpool' in this store"):
        run(test_domain="sketch", layer="attnpool")
    unpooled, _ = make_store(tmp_path / "u.h5", layer="conv", x=np.zeros((144, 4, 2, 2), dtype=np.float32))
    with pytest.raises(ConfigFieldError, match=r"^layer: .*u.h5: layer 'conv' is stored unpooled \(\(4, 2, 2\) per "
                                              r"row\); the SAE needs one vector per image"):
        run(store=str(unpooled), test_domain="sketch", layer="conv")
    assert not (tmp_path / "o").exists()


def test_class_maps_have_one_shared_colour_bar():
    import numpy as np

    from clipgen.analysis.feature_sharing import FeatureSharing, class_matrices_figure

    mats = np.array([[[1.0, 0.2], [0.2, 1.0]], [[1.0, 0.0], [0.0, 1.0]], [[1.0, np.nan], [np.nan, 1.0]]])
    res = FeatureSharing(classes=["a", "b", "c"], labels=[0, 1, 2], domains=["real", "sketch"],
                         histograms=np.zeros((3, 2, 4), np.int64), images=np.ones((3, 2)), matrices=mats,
                         mean=mats[:2].mean(0), n_classes=np.full((2, 2), 2), scores={}, test_domain="sketch")
    fig = class_matrices_figure(res)
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1
    assert bars[0].get_ylim() == (0.0, 1.0)
    assert len(fig.axes) == 3 + 1
