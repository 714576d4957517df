"""Embedding analysis (Fig. 5): UMAP by domain, distances between domain means, mean-difference curves.

All numbers come from one stored layer (default ``embedding``, the L2-normalised image embedding):

* **domain means**: the mean over every stored image of a domain (count-weighted, as the published script does),
  and their pairwise L2 distances;
* **class-sensitive distances**: for each pair of domains, the mean over the classes present in both of
  ``|mean_a,k - mean_b,k|₂`` (per-class domain means);
* **mean-difference curves**: for each domain, ``|mean(domain) - mean(all other analysed domains)|`` per embedding
  dimension, sorted (the paper plots the highlighted domain, quickdraw, and every domain);
* **UMAP** (umap-learn, 2-D, ``densmap=True`` as in the paper, seeded) on a fixed number of images per domain drawn
  with a seeded generator (the published sampling is unseeded), once with every domain and once without the
  highlighted domain (the same sampled images minus that domain's).

A layer stored unpooled (``(N, *shape)`` per row) is analysed on its flattened features, as ``clipgen cka`` does.
Means and distances are streamed from the store (:meth:`ActivationStore.class_means`); only the UMAP sample is read
as rows. ``umap`` (and numba) is imported only inside :func:`fit_umap`: importing and compiling it takes seconds.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipgen.domainnet import DEFAULT_HIGHLIGHT
from clipgen.errors import ClipgenError, ConfigFieldError

FORMAT = "clipgen-embedding-analysis"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------------------------
# Statistics on per-class means
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class DomainStats:
    """Per-domain, per-class means and counts of one layer (float64)."""

    domains: list[str]
    class_labels: dict[str, np.ndarray]  # domain -> sorted labels present
    class_means: dict[str, np.ndarray]  # domain -> (K_d, C)
    class_counts: dict[str, np.ndarray]  # domain -> (K_d,) images per class

    @property
    def width(self) -> int:
        return int(next(iter(self.class_means.values())).shape[1])

    def counts(self) -> np.ndarray:
        """Images per domain."""
        return np.array([int(self.class_counts[d].sum()) for d in self.domains])

    def domain_means(self) -> np.ndarray:
        """``(D, C)``: each domain's mean over all its images (count-weighted class means)."""
        return np.stack([(self.class_counts[d][:, None] * self.class_means[d]).sum(axis=0)
                         / self.class_counts[d].sum() for d in self.domains])


def stats_from_arrays(x: np.ndarray, domains: Sequence[str], labels: Sequence[int],
                      order: Sequence[str] | None = None) -> DomainStats:
    """:class:`DomainStats` from rows ``x`` (N, C) with a domain name and a label per row."""
    x = np.asarray(x, dtype=np.float64)
    dom = np.asarray(domains)
    lab = np.asarray(labels, dtype=np.int64)
    names = list(order) if order is not None else list(dict.fromkeys(dom.tolist()))
    cl, cm, cc = {}, {}, {}
    for d in names:
        m = dom == d
        if not m.any():
            raise ClipgenError(f"domain {d!r} has no rows")
        present, inv, counts = np.unique(lab[m], return_inverse=True, return_counts=True)
        sums = np.zeros((present.size, x.shape[1]))
        np.add.at(sums, inv, x[m])
        cl[d], cm[d], cc[d] = present, sums / counts[:, None], counts
    return DomainStats(names, cl, cm, cc)


def domain_mean_distances(stats: DomainStats) -> np.ndarray:
    """``(D, D)`` L2 distances between the domain means."""
    mu = stats.domain_means()
    return np.sqrt(np.maximum(((mu[:, None, :] - mu[None, :, :]) ** 2).sum(axis=-1), 0.0))


def class_sensitive_distances(stats: DomainStats) -> tuple[np.ndarray, np.ndarray]:
    """``(D, D)`` mean over shared classes of the L2 distance between per-class domain means, and the number of
    shared classes per pair. A pair without a shared class is an error."""
    n = len(stats.domains)
    dist = np.zeros((n, n))
    shared = np.zeros((n, n), dtype=np.int64)
    for i, a in enumerate(stats.domains):
        shared[i, i] = stats.class_labels[a].size
        for j in range(i + 1, n):
            b = stats.domains[j]
            common, ia, ib = np.intersect1d(stats.class_labels[a], stats.class_labels[b], return_indices=True)
            if common.size == 0:
                raise ClipgenError(f"domains {a!r} and {b!r} share no class: no class-sensitive distance")
            diff = stats.class_means[a][ia] - stats.class_means[b][ib]
            dist[i, j] = dist[j, i] = float(np.linalg.norm(diff, axis=1).mean())
            shared[i, j] = shared[j, i] = common.size
    return dist, shared


def mean_differences(stats: DomainStats) -> dict[str, np.ndarray]:
    """Per domain: ``|mean(domain) - mean(images of every other analysed domain)|`` per dimension (unsorted)."""
    mu = stats.domain_means()
    counts = stats.counts().astype(np.float64)
    total = (counts[:, None] * mu).sum(axis=0)
    out = {}
    for i, d in enumerate(stats.domains):
        rest_n = counts.sum() - counts[i]
        if rest_n <= 0:
            raise ClipgenError(f"mean differences need a second domain besides {d!r}")
        rest = (total - counts[i] * mu[i]) / rest_n
        out[d] = np.abs(mu[i] - rest)
    return out


# ---------------------------------------------------------------------------------------------------------------
# UMAP
# ---------------------------------------------------------------------------------------------------------------

def sample_rows(domain_of_row: np.ndarray, domains: Sequence[str], per_domain: int, seed: int) -> dict[str, np.ndarray]:
    """Per domain (in order), ``min(per_domain, n_d)`` row indices drawn without replacement, seeded, sorted."""
    if per_domain < 1:
        raise ConfigFieldError("per_domain", f"must be at least 1, got {per_domain}")
    rng = np.random.default_rng(seed)
    dom = np.asarray(domain_of_row)
    out = {}
    for d in domains:
        rows = np.flatnonzero(dom == d)
        if rows.size == 0:
            raise ClipgenError(f"domain {d!r} has no rows")
        out[d] = np.sort(rng.choice(rows, size=min(per_domain, rows.size), replace=False))
    return out


#: umap-learn's ``spread`` (left at its default): ``min_dist`` may not exceed it.
UMAP_SPREAD = 1.0


def check_umap_settings(n_neighbors: int, min_dist: float) -> None:
    """The UMAP settings umap-learn would reject with a traceback, as one-line option errors."""
    if n_neighbors < 2:
        raise ConfigFieldError("n_neighbors", f"must be at least 2, got {n_neighbors}")
    if not 0.0 <= min_dist <= UMAP_SPREAD:
        raise ConfigFieldError("min_dist", f"must be between 0 and {UMAP_SPREAD:g} (UMAP's spread), got {min_dist:g}")


def fit_umap(x: np.ndarray, *, seed: int = 42, n_neighbors: int = 15, min_dist: float = 0.1,
             densmap: bool = True) -> np.ndarray:
    """2-D UMAP of the rows of ``x`` (umap-learn; ``random_state=seed``, which makes it single-threaded)."""
    import warnings

    n = int(np.asarray(x).shape[0])
    check_umap_settings(n_neighbors, min_dist)
    if n <= n_neighbors:
        raise ConfigFieldError("n_neighbors", f"{n_neighbors} neighbours need more than {n_neighbors} points, the "
                                              f"sample has {n} (raise --per-domain or lower --n-neighbors)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap warns that a seed disables parallelism, and numba chatter
        import umap

        reducer = umap.UMAP(n_components=2, densmap=densmap, random_state=seed, n_neighbors=n_neighbors,
                            min_dist=min_dist, spread=UMAP_SPREAD)
        x = np.asarray(x, dtype=np.float32)
        return np.asarray(reducer.fit_transform(x.reshape(n, -1)), dtype=np.float64)


# ---------------------------------------------------------------------------------------------------------------
# From a store, with outputs
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class EmbeddingsConfig:
    """``clipgen embeddings STORE``: the resolved configuration, written as ``config.json`` beside the results."""

    store: Path
    out: Path
    layer: str = "embedding"
    domains: list[str] | None = None  # None: every stored domain
    highlight: str = DEFAULT_HIGHLIGHT
    per_domain: int = 2000
    seed: int = 42  # the published UMAP random_state; here it also seeds the sample
    umap: bool = True
    n_neighbors: int = 15
    min_dist: float = 0.1
    densmap: bool = True
    figures: bool = True
    force: bool = False


@dataclass
class EmbeddingsResult:
    layer: str
    domains: list[str]
    highlight: str
    counts: np.ndarray
    domain_mean_l2: np.ndarray
    class_sensitive_l2: np.ndarray
    shared_classes: np.ndarray
    mean_diff: dict[str, np.ndarray]
    umap: dict[str, dict] = field(default_factory=dict)  # fit name -> {"rows", "domains", "labels", "coords"}
    out: Path | None = None
    files: list[Path] = field(default_factory=list)

    def to_json(self) -> dict:
        md = {}
        for d, v in self.mean_diff.items():
            order = np.argsort(v, kind="stable")
            md[d] = {"sorted_abs_diff": v[order], "dims": order, "top_dims": order[::-1][:10]}
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "layer": self.layer,
            "domains": self.domains,
            "highlight": self.highlight,
            "images_per_domain": dict(zip(self.domains, self.counts.tolist(), strict=True)),
            "domain_mean_l2": self.domain_mean_l2,
            "class_sensitive_l2": self.class_sensitive_l2,
            "shared_classes": self.shared_classes,
            "mean_difference": {"description": "per domain: |mean(domain) - mean(other domains)| per dimension, "
                                               "ascending ('dims' gives the dimension of each value)",
                                "per_domain": md},
            "umap": {name: {"n_points": int(len(f["rows"])),
                            "points_per_domain": {d: int(np.sum(f["domains"] == d)) for d in self.domains
                                                  if np.any(f["domains"] == d)},
                            "file": f"umap_{name}.csv"} for name, f in self.umap.items()},
        }


def stats_from_store(store, layer: str, domains: Sequence[str],
                     on_domain: Callable[[str], None] | None = None) -> DomainStats:
    """Class means (streamed, float64) and class counts per domain from an open store."""
    from clipgen.analysis.selection import domain_name_to_id

    ids = domain_name_to_id(store)
    dom = np.asarray(store.samples.domains)
    lab = np.asarray(store.samples.labels)
    cl, cm, cc = {}, {}, {}
    for d in domains:
        labels, means = store.class_means(layer, d, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        counts = np.bincount(np.searchsorted(labels, lab[dom == ids[d]]), minlength=labels.size)
        cl[d], cm[d], cc[d] = labels, np.asarray(means, dtype=np.float64).reshape(labels.size, -1), counts
        if on_domain is not None:
            on_domain(d)
    return DomainStats(list(domains), cl, cm, cc)


def compute_embeddings(store, cfg: EmbeddingsConfig, *, progress: bool = False) -> EmbeddingsResult:
    from clipgen.analysis.selection import domain_of_rows, resolve_domains

    if cfg.layer not in store.layers:
        raise ConfigFieldError("layer", f"layer {cfg.layer!r} is not in the store (it has: {', '.join(store.layers)})")
    domains = resolve_domains(store, cfg.domains)
    if cfg.highlight not in domains:
        raise ConfigFieldError("highlight", f"domain {cfg.highlight!r} is not among the analysed domains "
                                            f"({', '.join(domains)})")
    fits: list[tuple[str, np.ndarray]] = []
    if cfg.umap:  # draw the sample and check the UMAP settings before any heavy work
        check_umap_settings(cfg.n_neighbors, cfg.min_dist)
        dom_names = domain_of_rows(store)
        picks = sample_rows(dom_names, domains, cfg.per_domain, cfg.seed)
        rows = np.sort(np.concatenate([picks[d] for d in domains]))
        fits = [("all", rows), (f"without_{cfg.highlight}", rows[dom_names[rows] != cfg.highlight])]
        for name, r in fits:
            if r.size <= cfg.n_neighbors:
                raise ConfigFieldError("n_neighbors", f"{cfg.n_neighbors} neighbours need more than {cfg.n_neighbors} "
                                                      f"points, the UMAP sample '{name}' has {r.size} (raise "
                                                      f"--per-domain or lower --n-neighbors)")

    steps = len(domains) + (2 if cfg.umap else 0)
    bar = None
    if progress:
        from clipgen.progress import make_progress

        bar = make_progress()
        bar.start()
        task = bar.add_task("embedding statistics", total=steps)

    def tick(desc: str) -> None:
        if bar is not None:
            bar.update(task, advance=1, description=desc)

    try:
        stats = stats_from_store(store, cfg.layer, domains, on_domain=lambda d: tick(f"class means {d}"))
        dist = domain_mean_distances(stats)
        cs, shared = class_sensitive_distances(stats)
        res = EmbeddingsResult(layer=cfg.layer, domains=domains, highlight=cfg.highlight, counts=stats.counts(),
                               domain_mean_l2=dist, class_sensitive_l2=cs, shared_classes=shared,
                               mean_diff=mean_differences(stats))
        if fits:
            rows = fits[0][1]
            x = store.read_layer(cfg.layer, rows=rows).reshape(rows.size, -1)  # unpooled layers: flattened
            for name, r in fits:
                coords = fit_umap(x[np.isin(rows, r)], seed=cfg.seed, n_neighbors=cfg.n_neighbors,
                                  min_dist=cfg.min_dist, densmap=cfg.densmap)
                res.umap[name] = {"rows": r, "domains": dom_names[r], "labels": np.asarray(store.samples.labels)[r],
                                  "paths": np.asarray(store.samples.paths)[r], "coords": coords}
                tick(f"UMAP {name}")
    finally:
        if bar is not None:
            bar.stop()
    return res


def umap_csv(fit: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "path", "domain", "label", "x", "y"])
    for r, p, d, lab, (x, y) in zip(fit["rows"], fit["paths"], fit["domains"], fit["labels"], fit["coords"],
                                    strict=True):
        w.writerow([int(r), p, d, int(lab), repr(float(x)), repr(float(y))])
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _domain_colors(domains: Sequence[str]) -> dict[str, tuple]:
    from clipgen.domainnet import DOMAINS

    plt = _plt()
    cmap = plt.get_cmap("tab10")
    order = list(DOMAINS) + [d for d in domains if d not in DOMAINS]
    return {d: cmap(order.index(d) % 10) for d in domains}


def plot_umap(fit: dict, domains: Sequence[str], title: str, path: Path) -> Path:
    plt = _plt()
    colors = _domain_colors(domains)
    fig, ax = plt.subplots(figsize=(6.5, 6))
    for d in domains:
        m = fit["domains"] == d
        if m.any():
            ax.scatter(fit["coords"][m, 0], fit["coords"][m, 1], s=3, color=colors[d], label=f"{d} ({m.sum()})",
                       rasterized=True)
    ax.set_aspect("equal", "datalim")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    ax.legend(markerscale=4, fontsize=8, loc="best", frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_heatmap(mat: np.ndarray, domains: Sequence[str], title: str, path: Path) -> Path:
    plt = _plt()
    n = len(domains)
    fig, ax = plt.subplots(figsize=(1.0 * n + 2.5, 0.9 * n + 1.5))
    im = ax.imshow(mat, cmap="viridis")
    ax.set_xticks(range(n))
    ax.set_xticklabels(domains, rotation=45, ha="right")
    ax.set_yticks(range(n))
    ax.set_yticklabels(domains)
    thresh = (np.nanmax(mat) + np.nanmin(mat)) / 2 if mat.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{mat[i, j]:.3f}", ha="center", va="center", fontsize=8,
                    color="black" if mat[i, j] > thresh else "white")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def plot_mean_differences(mean_diff: Mapping[str, np.ndarray], domains: Sequence[str], title: str,
                          path: Path) -> Path:
    plt = _plt()
    colors = _domain_colors(list(mean_diff))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for d in domains:
        ax.plot(np.sort(mean_diff[d]), color=colors[d], lw=1.5, label=f"{d} vs rest")
    ax.set_xlabel("embedding dimension (sorted by |mean difference|)")
    ax.set_ylabel("|mean difference|")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def run_embeddings(cfg: EmbeddingsConfig, *, progress: bool = True) -> EmbeddingsResult:
    """``clipgen embeddings``: compute from ``cfg.store`` and write the folder ``cfg.out`` atomically.

    Files: ``embeddings.json``, ``config.json``, ``umap_all.csv`` and ``umap_without_<highlight>.csv`` (with UMAP),
    and the figures ``umap_all.png``, ``umap_without_<highlight>.png``, ``l2_domain_means.png``,
    ``l2_class_sensitive.png``, ``mean_difference_<highlight>.png``, ``mean_difference_all.png``.
    """
    from clipgen.artifacts import atomic_path, ensure_writable_output, write_config, write_json_atomic
    from clipgen.store import open_store

    out = Path(cfg.out)
    ensure_writable_output(out, cfg.force)
    with open_store(cfg.store) as store:
        res = compute_embeddings(store, cfg, progress=progress)
        info = {"store": str(cfg.store), "store_fingerprint": store.fingerprint}
    cfg.domains = res.domains
    names = ["embeddings.json"]
    with atomic_path(out, force=cfg.force) as tmp:
        tmp.mkdir()
        write_json_atomic(tmp / "embeddings.json", {**info, **res.to_json(),
                                                     "umap_settings": {"per_domain": cfg.per_domain,
                                                                       "seed": cfg.seed,
                                                                       "n_neighbors": cfg.n_neighbors,
                                                                       "min_dist": cfg.min_dist,
                                                                       "densmap": cfg.densmap} if cfg.umap else None})
        for name, fit in res.umap.items():
            (tmp / f"umap_{name}.csv").write_text(umap_csv(fit), encoding="utf-8")
            names.append(f"umap_{name}.csv")
        if cfg.figures:
            h = cfg.highlight
            for name, fit in res.umap.items():
                label = "all domains" if name == "all" else f"without {h}"
                plot_umap(fit, res.domains, f"UMAP of '{res.layer}' ({label}; densmap={cfg.densmap}, "
                                            f"seed {cfg.seed})", tmp / f"umap_{name}.png")
                names.append(f"umap_{name}.png")
            plot_heatmap(res.domain_mean_l2, res.domains, f"L2 distance between domain means ('{res.layer}')",
                         tmp / "l2_domain_means.png")
            plot_heatmap(res.class_sensitive_l2, res.domains,
                         f"class-sensitive L2 distance (mean over shared classes, '{res.layer}')",
                         tmp / "l2_class_sensitive.png")
            plot_mean_differences(res.mean_diff, [h], f"{h} vs the other domains", tmp / f"mean_difference_{h}.png")
            plot_mean_differences(res.mean_diff, res.domains, "each domain vs the other domains",
                                  tmp / "mean_difference_all.png")
            names += ["l2_domain_means.png", "l2_class_sensitive.png", f"mean_difference_{h}.png",
                      "mean_difference_all.png"]
        write_config(tmp, "embeddings", cfg)
        names.append("config.json")
    res.out = out
    res.files = [out / n for n in names]
    return res
