# Over 500 lines on purpose: Alg. 1-2 on arrays, the run from a store and its figures all share FeatureSharing.
"""SAE feature sharing between domains (the paper's App. C.1, Alg. 1 "get topk features" and Alg. 2
"measure feature sharing").

For every class ``c`` (the held-out classes by default) and domain ``d``, the histogram ``H[c, d]`` counts, over the
images of ``(c, d)``, how often each SAE latent is among the image's ``top`` (20) latents with an activation > 0.
``pct_shared_k(Ha, Hb) = |topk(Ha) & topk(Hb)| / k`` and ``mpct = mean over k in ks (5, 10, 15, 20)``. The per-class
domain x domain matrices ``M_c`` are averaged over classes into ``M``; the score of the test domain ``t`` is the mean
of ``M[t, j]`` over the other domains ``j``.

Differences from the published ``analyze_sae_features.py`` (all documented in docs/sae.md):

* the score uses the row of the requested test domain; the published code always scored the sketch row (its loop
  variable ``domain`` shadows the argument, a bug of the published script). ``published_code_score`` keeps that value;
* ties (equal activations, equal histogram counts, notably the many zero counts) are broken by the lowest latent
  index, with a stable sort, so results do not depend on ``torch.topk``'s unspecified order;
* a (class, domain) without images gives NaN entries (``null`` in JSON) that are left out of the class mean and of
  the score, instead of comparing empty histograms;
* ``zero_bins="exclude"`` optionally keeps bins with a zero count out of the top-k sets (by default they are in,
  as in the paper, and with the index tie-break such bins coincide across domains).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipgen.errors import ClipgenError, ConfigFieldError

DEFAULT_KS = (5, 10, 15, 20)
TOP_LATENTS = 20
ZERO_BINS = ("include", "exclude")
RESULT_FILE = "feature-sharing.json"
HISTOGRAM_FILE = "histograms.npz"
FIGURE_FILE = "feature-sharing.png"
CLASS_FIGURE_FILE = "feature-sharing-classes.png"


# ---------------------------------------------------------------------------------------------------------------
# Alg. 1 and 2 on arrays


def top_latents(latents: np.ndarray, k: int = TOP_LATENTS) -> np.ndarray:
    """Indices of each row's ``k`` largest latents with activation > 0, ``-1`` where fewer are active.

    Equal activations are ordered by the lower latent index (stable sort), so the result is deterministic.
    """
    f = np.asarray(latents)
    if f.ndim != 2:
        raise ClipgenError(f"latents must be (rows, latents), got shape {f.shape}")
    k = min(int(k), f.shape[1])
    order = np.argsort(-f, axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(f, order, axis=1)
    return np.where(vals > 0, order, -1)


def latent_histogram(latents: np.ndarray, n_latents: int | None = None, k: int = TOP_LATENTS) -> np.ndarray:
    """Alg. 1: for each latent, the number of rows having it among their top-``k`` active latents."""
    f = np.asarray(latents)
    m = int(n_latents if n_latents is not None else f.shape[1])
    idx = top_latents(f, k)
    return np.bincount(idx[idx >= 0], minlength=m).astype(np.int64)


def top_bins(hist: np.ndarray, k: int, *, zero_bins: str = "include") -> np.ndarray:
    """The ``k`` most frequent latents of a histogram; ties by the lower index (``exclude``: counts > 0 only)."""
    h = np.asarray(hist)
    order = np.argsort(-h, kind="stable")[:k]
    if zero_bins == "exclude":
        order = order[h[order] > 0]
    return order


def pct_shared(ha: np.ndarray, hb: np.ndarray, k: int, *, zero_bins: str = "include") -> float:
    """``|topk(Ha) & topk(Hb)| / k``."""
    a = set(top_bins(ha, k, zero_bins=zero_bins).tolist())
    b = set(top_bins(hb, k, zero_bins=zero_bins).tolist())
    return len(a & b) / k


def mpct_shared(ha: np.ndarray, hb: np.ndarray, ks: Sequence[int] = DEFAULT_KS, *,
                zero_bins: str = "include") -> float:
    """Alg. 2: the mean of :func:`pct_shared` over ``ks``."""
    return float(np.mean([pct_shared(ha, hb, k, zero_bins=zero_bins) for k in ks]))


def sharing_matrix(hists: np.ndarray, present: np.ndarray | None = None, ks: Sequence[int] = DEFAULT_KS, *,
                   zero_bins: str = "include") -> np.ndarray:
    """``M[a, b] = mpct(H[a], H[b])`` for domain histograms ``hists`` (D, m); NaN rows/columns where absent."""
    h = np.asarray(hists)
    n = h.shape[0]
    pres = np.ones(n, dtype=bool) if present is None else np.asarray(present, dtype=bool)
    out = np.full((n, n), np.nan)
    for a in range(n):
        for b in range(a, n):
            if pres[a] and pres[b]:
                out[a, b] = out[b, a] = mpct_shared(h[a], h[b], ks, zero_bins=zero_bins)
    return out


def domain_scores(mean: np.ndarray) -> np.ndarray:
    """For each domain ``t``: the mean of ``M[t, j]`` over the other domains ``j`` (NaN entries left out)."""
    m = np.asarray(mean, dtype=float)
    out = np.full(m.shape[0], np.nan)
    for t in range(m.shape[0]):
        row = np.delete(m[t], t)
        row = row[~np.isnan(row)]
        if len(row) and not np.isnan(m[t, t]):
            out[t] = row.mean()
    return out


@dataclass
class FeatureSharing:
    """Histograms, per-class matrices, their mean and the scores."""

    classes: list[str]
    labels: list[int]
    domains: list[str]
    histograms: np.ndarray  # (C, D, m) int64
    images: np.ndarray  # (C, D) images per class and domain
    matrices: np.ndarray  # (C, D, D), NaN where a domain has no images of the class
    mean: np.ndarray  # (D, D) mean over the classes defined at each cell
    n_classes: np.ndarray  # (D, D) classes contributing to each cell of the mean
    scores: dict[str, float]  # every domain's score (mean of its row without the diagonal)
    test_domain: str | None = None
    ks: list[int] = field(default_factory=lambda: list(DEFAULT_KS))
    top: int = TOP_LATENTS
    zero_bins: str = "include"

    @property
    def score(self) -> float | None:
        return None if self.test_domain is None else self.scores.get(self.test_domain)

    def mean_table(self) -> list[str]:
        """The mean sharing matrix as text lines: a header of full domain names, one row per domain, '-' where a
        cell has no value (each column as wide as its domain name, at least 6 characters)."""
        w = max(len(d) for d in self.domains)
        widths = [max(6, len(d)) for d in self.domains]
        lines = [" " * (w + 1) + " ".join(f"{d:>{n}}" for d, n in zip(self.domains, widths, strict=True))]
        for i, d in enumerate(self.domains):
            cells = " ".join(f"{'-':>{n}}" if v != v else f"{v:{n}.3f}"
                             for v, n in zip(self.mean[i], widths, strict=True))
            lines.append(f"{d:>{w}} {cells}")
        return lines

    def to_json(self) -> dict[str, Any]:
        def clean(a: np.ndarray) -> Any:
            return [clean(x) for x in a] if np.ndim(a) else (None if np.isnan(a) else float(a))

        published = self.scores.get("sketch")
        return {
            "test_domain": self.test_domain,
            "score": _none_if_nan(self.score),
            "scores_by_domain": {d: _none_if_nan(v) for d, v in self.scores.items()},
            "published_code_score": _none_if_nan(published),
            "published_code_score_note": "what the published analyze_sae_features.py writes as 'score' whatever "
                                         "--domain says: the sketch row (a bug of the published script)",
            "domains": self.domains,
            "classes": self.classes,
            "labels": self.labels,
            "mean": clean(self.mean),
            "n_classes": self.n_classes.tolist(),
            "per_class": {c: {"label": lab, "matrix": clean(self.matrices[i]),
                              "images": {d: int(self.images[i, j]) for j, d in enumerate(self.domains)}}
                          for i, (c, lab) in enumerate(zip(self.classes, self.labels, strict=True))},
            "top": self.top,
            "ks": self.ks,
            "zero_bins": self.zero_bins,
            "tie_break": "stable: equal activations and equal histogram counts go to the lower latent index",
        }


def _none_if_nan(v: float | None) -> float | None:
    return None if v is None or np.isnan(v) else float(v)


def accumulate_histograms(hist: np.ndarray, top_idx: np.ndarray, cls: np.ndarray, dom: np.ndarray) -> None:
    """Add rows' top-latent indices (``-1`` = none) to ``hist[cls, dom]`` (C, D, m), in place."""
    rows = np.repeat(np.arange(len(top_idx)), top_idx.shape[1])
    flat = top_idx.reshape(-1)
    ok = flat >= 0
    np.add.at(hist, (cls[rows[ok]], dom[rows[ok]], flat[ok]), 1)


def feature_sharing_from_histograms(hist: np.ndarray, images: np.ndarray, classes: Sequence[str],
                                    labels: Sequence[int], domains: Sequence[str], *, test_domain: str | None,
                                    ks: Sequence[int] = DEFAULT_KS, top: int = TOP_LATENTS,
                                    zero_bins: str = "include") -> FeatureSharing:
    """Matrices, mean and scores from histograms ``hist`` (C, D, m) and image counts ``images`` (C, D)."""
    if zero_bins not in ZERO_BINS:
        raise ConfigFieldError("zero_bins", f"unknown value {zero_bins!r} (one of {', '.join(ZERO_BINS)})")
    mats = np.stack([sharing_matrix(hist[c], images[c] > 0, ks, zero_bins=zero_bins) for c in range(len(classes))])
    defined = ~np.isnan(mats)
    n_cls = defined.sum(axis=0)
    with np.errstate(invalid="ignore"):
        mean = np.where(n_cls > 0, np.nansum(mats, axis=0) / np.maximum(n_cls, 1), np.nan)
    scores = dict(zip(domains, domain_scores(mean).tolist(), strict=True))
    return FeatureSharing(classes=list(classes), labels=[int(x) for x in labels], domains=list(domains),
                          histograms=hist, images=images, matrices=mats, mean=mean, n_classes=n_cls, scores=scores,
                          test_domain=test_domain, ks=[int(k) for k in ks], top=int(top), zero_bins=zero_bins)


def feature_sharing(latents: np.ndarray, row_labels: np.ndarray, row_domains: Sequence[str],
                    classes: dict[int, str], domains: Sequence[str], *, test_domain: str | None = None,
                    ks: Sequence[int] = DEFAULT_KS, top: int = TOP_LATENTS,
                    zero_bins: str = "include") -> FeatureSharing:
    """Alg. 1-2 on in-memory latents (rows, m): ``classes`` maps the labels to analyse to names."""
    f = np.asarray(latents)
    labs = list(classes)
    c_of = {lab: i for i, lab in enumerate(labs)}
    d_of = {d: j for j, d in enumerate(domains)}
    rl = np.asarray(row_labels)
    keep = np.array([lab in c_of and d in d_of for lab, d in zip(rl.tolist(), row_domains, strict=True)], dtype=bool)
    cls = np.array([c_of[lab] for lab in rl[keep].tolist()], dtype=np.int64)
    dom = np.array([d_of[d] for d, k in zip(row_domains, keep, strict=True) if k], dtype=np.int64)
    hist = np.zeros((len(labs), len(domains), f.shape[1]), dtype=np.int64)
    images = np.zeros((len(labs), len(domains)), dtype=np.int64)
    np.add.at(images, (cls, dom), 1)
    accumulate_histograms(hist, top_latents(f[keep], top), cls, dom)
    return feature_sharing_from_histograms(hist, images, [classes[lab] for lab in labs], labs, domains,
                                           test_domain=test_domain, ks=ks, top=top, zero_bins=zero_bins)


# ---------------------------------------------------------------------------------------------------------------
# From a store and an SAE


@dataclass
class FeatureSharingConfig:
    """``clipgen sae features``: every option, resolved; written as ``config.json`` next to the results."""

    store: str = ""
    sae: str = ""
    out: str = ""
    layer: str | None = None  # default: the layer the SAE was trained on
    test_domain: str | None = None  # default: the mixture test domain recorded in the store's provenance
    classes: list[str] | None = None  # default: the store's held-out classes
    split: str = "auto"  # auto: the "test" rows when the store has any, else every row; "all": every row
    top: int = TOP_LATENTS
    ks: list[int] = field(default_factory=lambda: list(DEFAULT_KS))
    zero_bins: str = "include"
    batch_size: int = 4096
    device: str = "auto"
    names: str | None = None  # 'sae names' output to attach (default: SAE_RUN/names when it exists)
    force: bool = False  # overwrite existing results in out


def find_test_domain(provenance: Any) -> str | None:
    """The first ``test_domain`` recorded anywhere in a store's provenance (the run's mixture entry), if any."""
    stack = [provenance]
    while stack:
        cur = stack.pop(0)
        if isinstance(cur, dict):
            v = cur.get("test_domain")
            if isinstance(v, str) and v:
                return v
            stack.extend(x for x in cur.values() if isinstance(x, (dict, list)))
        elif isinstance(cur, list):
            stack.extend(x for x in cur if isinstance(x, (dict, list)))
    return None


def _ordered_domains(names: Sequence[str], present_ids: np.ndarray) -> list[str]:
    from clipgen.domainnet import DOMAINS

    present = {names[i] for i in present_ids if i >= 0}
    return [d for d in DOMAINS if d in present] + sorted(present - set(DOMAINS))


def _resolve_classes(st: Any, names: Sequence[str] | None) -> dict[int, str]:
    from clipgen.domainnet import normalise_class_name

    table = st.class_names
    if names:
        by_name = {normalise_class_name(v): k for k, v in table.items()}
        out = {}
        for n in names:
            key = normalise_class_name(n)
            if key not in by_name:
                raise ConfigFieldError("classes", f"{st.path}: unknown class {n!r} (not among the store's "
                                                  f"{len(table)} classes)")
            out[by_name[key]] = table[by_name[key]]
        return out
    held = st.held_out_labels
    if not held:
        raise ConfigFieldError("classes", f"{st.path} records no held-out classes; name the classes to analyse "
                                          "with --classes")
    return {int(lab): table.get(int(lab), str(lab)) for lab in held}


def run_feature_sharing(cfg: FeatureSharingConfig, *, progress: bool = True) -> tuple[FeatureSharing, Path]:
    """Encode the selected rows of the store with the SAE and write results, histograms and figures to ``cfg.out``.

    ``OUT/feature-sharing.json`` (:meth:`FeatureSharing.to_json` plus the inputs), ``OUT/histograms.npz``
    (``histograms`` (C, D, m), ``images`` (C, D), ``labels``, ``classes``, ``domains``), ``OUT/feature-sharing.png``
    (the mean matrix), ``OUT/feature-sharing-classes.png`` (one matrix per class) and ``OUT/config.json``.
    """
    import torch

    from clipgen.analysis.sae import check_width, load_sae
    from clipgen.artifacts import atomic_path, write_config, write_json_atomic
    from clipgen.devices import resolve_device
    from clipgen.domainnet import DOMAIN_LETTERS
    from clipgen.progress import make_progress
    from clipgen.store import open_store

    if cfg.top < 1 or not cfg.ks or min(cfg.ks) < 1:
        raise ConfigFieldError("ks" if cfg.top >= 1 else "top", "must be positive")
    if cfg.batch_size < 1:
        raise ConfigFieldError("batch_size", f"must be at least 1, got {cfg.batch_size}")
    if cfg.zero_bins not in ZERO_BINS:
        raise ConfigFieldError("zero_bins", f"unknown value {cfg.zero_bins!r} (one of {', '.join(ZERO_BINS)})")
    out = Path(cfg.out)
    if not cfg.out:
        raise ConfigFieldError("out", "an output folder is required")
    if (out / RESULT_FILE).exists() and not cfg.force:
        raise ConfigFieldError("out", f"{out / RESULT_FILE} already exists; pass --force to overwrite it")
    device = resolve_device(cfg.device)
    model, info = load_sae(cfg.sae, device=device)
    names = _names_file(cfg, info["path"])  # checked before any work
    m = model.arch.d_sae
    if names is not None:
        from clipgen.analysis.sae_names import load_names

        if load_names(names).indices.shape[0] != m:
            raise ConfigFieldError("names", f"{names} names the latents of another SAE (not {m} latents)")
    for name, vals in (("top", [cfg.top]), ("ks", cfg.ks)):
        if max(vals) > m:
            raise ConfigFieldError(name, f"{max(vals)} exceeds the {m} latents of the SAE {info['path']}")
    layer = cfg.layer or info.get("layer") or "embedding"
    with open_store(cfg.store) as st:
        if layer not in st.layers:
            raise ConfigFieldError("layer", f"{cfg.store}: no layer {layer!r} in this store (layers: "
                                            f"{' '.join(st.layers)})")
        shape = st.layer_info(layer)["shape"]
        if len(shape) != 2:
            raise ConfigFieldError("layer", f"{cfg.store}: layer {layer!r} is stored unpooled ({shape[1:]} per row); "
                                            "the SAE needs one vector per image")
        check_width(info["path"], model.arch, cfg.store, layer, int(shape[1]))
        classes = _resolve_classes(st, cfg.classes)
        smp = st.samples
        if cfg.split == "all":
            split = None
        elif cfg.split == "auto":
            split = "test" if (smp.splits == "test").any() else None
        else:
            split = cfg.split
            if not (smp.splits == split).any():
                have = sorted({str(x) for x in smp.splits})
                raise ConfigFieldError("split", f"{cfg.store}: no rows of split {split!r} (splits: {', '.join(have)})")
        domains = _ordered_domains(smp.domain_names, np.unique(smp.domains))
        test = cfg.test_domain or find_test_domain(st.provenance)
        if test is None:
            raise ConfigFieldError("test_domain", f"{cfg.store} does not record the run's test domain; pass "
                                                  "--test-domain")
        test = DOMAIN_LETTERS.get(test.strip().lower(), test.strip().lower())
        if test not in domains:
            raise ConfigFieldError("test_domain", f"{test!r} is not a domain of {cfg.store} (domains: "
                                                  f"{', '.join(domains)})")
        labs = list(classes)
        mask = np.isin(smp.labels, labs) & (smp.domains >= 0)
        if split is not None:
            mask &= smp.splits == split
        missing = [classes[lab] for lab in labs if not (mask & (smp.labels == lab)).any()]
        if missing:
            where = f"{split!r} rows" if split else "rows"
            raise ConfigFieldError("classes", f"{cfg.store}: no {where} of class(es) {', '.join(missing)}")
        rows = np.flatnonzero(mask)
        c_of = {lab: i for i, lab in enumerate(labs)}
        d_of = {smp.domain_names.index(d): j for j, d in enumerate(domains)}
        cls = np.array([c_of[int(x)] for x in smp.labels[rows]], dtype=np.int64)
        dom = np.array([d_of[int(x)] for x in smp.domains[rows]], dtype=np.int64)
        hist = np.zeros((len(labs), len(domains), model.arch.d_sae), dtype=np.int64)
        images = np.zeros((len(labs), len(domains)), dtype=np.int64)
        np.add.at(images, (cls, dom), 1)
        pos = 0
        with make_progress(disable=not progress) as bar, torch.no_grad():
            task = bar.add_task(f"sae features {layer}", total=len(rows))
            for sel, block in st.iter_layer(layer, rows=rows, block_rows=max(1, cfg.batch_size)):
                n = len(sel)
                f = model.encode(torch.from_numpy(block).to(device)).float().cpu().numpy()
                accumulate_histograms(hist, top_latents(f, cfg.top), cls[pos:pos + n], dom[pos:pos + n])
                pos += n
                bar.update(task, advance=n)
        fingerprint = st.fingerprint
    res = feature_sharing_from_histograms(hist, images, [classes[lab] for lab in labs], labs, domains,
                                          test_domain=test, ks=cfg.ks, top=cfg.top, zero_bins=cfg.zero_bins)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / HISTOGRAM_FILE) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, histograms=hist, images=images, labels=np.asarray(labs),
                            classes=np.asarray(res.classes), domains=np.asarray(domains))
    plot_matrix(res, out / FIGURE_FILE)
    plot_class_matrices(res, out / CLASS_FIGURE_FILE)
    payload = res.to_json()
    payload.update({"store": {"path": str(cfg.store), "fingerprint": fingerprint, "split": split or "all",
                              "rows": int(len(rows))},
                    "sae": {"path": info["path"], "layer": layer, "arch": info["arch"], "steps": info["steps"]}})
    if names is not None:
        from clipgen.analysis.sae_names import NAMED_LATENTS_JSON, annotate_features

        annotate_features(out, names)
        payload["names"] = {"path": str(Path(names).resolve()), "named_latents": NAMED_LATENTS_JSON}
    write_config(out, "sae features", cfg)
    write_json_atomic(out / RESULT_FILE, payload)  # last: its presence means the folder is complete
    return res, out


def _names_file(cfg: FeatureSharingConfig, sae_path: str) -> Path | None:
    """``--names`` (a names folder or file), else the SAE run's ``names/names.json`` when there is one."""
    from clipgen.analysis.sae_names import NAMES_DIR, NAMES_JSON, sae_run_dir

    if cfg.names:
        p = Path(cfg.names)
        p = p / NAMES_JSON if p.is_dir() else p
        if not p.is_file():
            raise ConfigFieldError("names", f"{p}: no such names file (run 'clipgen sae names' first)")
        return p
    auto = sae_run_dir(Path(sae_path)) / NAMES_DIR / NAMES_JSON
    return auto if auto.is_file() else None


# ---------------------------------------------------------------------------------------------------------------
# Figures


def _heatmap(ax, m: np.ndarray, domains: Sequence[str], test: str | None, *, annotate: bool = True,
             title: str | None = None):
    im = ax.imshow(np.ma.masked_invalid(m), vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(domains)), domains, rotation=45, ha="right")
    ax.set_yticks(range(len(domains)), domains)
    for lab in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
        if lab.get_text() == test:
            lab.set_fontweight("bold")
            lab.set_color("crimson")
    if annotate:
        for a in range(m.shape[0]):
            for b in range(m.shape[1]):
                txt = "–" if np.isnan(m[a, b]) else f"{m[a, b]:.2f}"
                ax.text(b, a, txt, ha="center", va="center", fontsize=7,
                        color="white" if np.isnan(m[a, b]) or m[a, b] < 0.6 else "black")
    if test in domains:
        from matplotlib.patches import Rectangle

        t = list(domains).index(test)
        ax.add_patch(Rectangle((-0.5, t - 0.5), len(domains), 1, fill=False, edgecolor="crimson", linewidth=1.5))
    if title:
        ax.set_title(title, fontsize=9)
    return im


def plot_matrix(res: FeatureSharing, path: str | Path) -> Path:
    """Heatmap of the class-mean sharing matrix; the test domain's row is outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clipgen.artifacts import atomic_path

    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    im = _heatmap(ax, res.mean, res.domains, res.test_domain)
    score = res.score
    ax.set_title(f"SAE feature sharing (mpct@{max(res.ks)}), {len(res.classes)} classes"
                 + (f"\nscore({res.test_domain}) = {score:.3f}" if score is not None and not np.isnan(score) else ""),
                 fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)
    return Path(path)


def plot_class_matrices(res: FeatureSharing, path: str | Path) -> Path:
    """One small heatmap per class, with one colour scale (0 to 1) for all of them."""
    import matplotlib.pyplot as plt

    from clipgen.artifacts import atomic_path

    fig = class_matrices_figure(res)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def class_matrices_figure(res: FeatureSharing):
    """The figure of :func:`plot_class_matrices` (a matplotlib Figure, not saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(res.classes)
    cols = min(5, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols + 0.8, 2.6 * rows), squeeze=False)
    im = None
    for i, ax in enumerate(axes.flat):
        if i < n:
            im = _heatmap(ax, res.matrices[i], res.domains, res.test_domain, annotate=False, title=res.classes[i])
            ax.tick_params(labelsize=6)
        else:
            ax.axis("off")
    fig.tight_layout()
    if im is not None:  # every map uses vmin 0, vmax 1: one colour bar for all of them
        cbar = fig.colorbar(im, ax=list(axes.flat), fraction=0.02, pad=0.02)
        cbar.set_label(f"mpct@{max(res.ks)}", fontsize=8)
    return fig
