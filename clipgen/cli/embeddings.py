"""``clipgen embeddings STORE``: UMAP by domain, distances between domain means, mean-difference curves."""

from __future__ import annotations

from pathlib import Path

import typer

from clipgen.analysis.embeddings import EmbeddingsConfig
from clipgen.cli.common import default, force_option, json_option, progress_option, split_list, writable


def embeddings(
    store: Path = typer.Argument(..., help="Activation store written by 'clipgen extract' (read only)."),
    out: Path | None = typer.Option(None, "--out", "-o", callback=writable,
                                    help="Output folder (default: STORE without suffix + "
                                         "'-embeddings' beside STORE)."),
    layer: str = typer.Option(default(EmbeddingsConfig, "layer"), "--layer",
                              help="Stored layer to analyse (the L2-normalised image "
                                   "embedding by default)."),
    domains: str | None = typer.Option(None, "--domains", help="Comma-separated domains (default: every domain in "
                                                               "the store)."),
    highlight: str = typer.Option(default(EmbeddingsConfig, "highlight"), "--highlight",
                                  help="Domain left out of the second UMAP and plotted alone in the mean-difference "
                                       "figure."),
    per_domain: int = typer.Option(default(EmbeddingsConfig, "per_domain"), "--per-domain",
                                   help="Images per domain in the UMAP sample (seeded)."),
    seed: int = typer.Option(default(EmbeddingsConfig, "seed"), "--seed",
                             help="Seed of the UMAP sample and of UMAP itself (42: the published "
                                  "random_state)."),
    umap: bool = typer.Option(default(EmbeddingsConfig, "umap"), "--umap/--no-umap",
                              help="Fit the two UMAPs (slow: umap-learn compiles with "
                                   "numba on first use)."),
    n_neighbors: int = typer.Option(default(EmbeddingsConfig, "n_neighbors"), "--n-neighbors",
                                    help="UMAP n_neighbors."),
    min_dist: float = typer.Option(default(EmbeddingsConfig, "min_dist"), "--min-dist", help="UMAP min_dist."),
    densmap: bool = typer.Option(default(EmbeddingsConfig, "densmap"), "--densmap/--no-densmap",
                                 help="densMAP, as in the paper."),
    figures: bool = typer.Option(default(EmbeddingsConfig, "figures"), "--figures/--no-figures",
                                 help="Write the PNG figures."),
    force: bool = force_option("Replace an existing output folder."),
    progress: bool = progress_option(),
    as_json: bool = json_option(),
) -> None:
    """Embedding analysis of one stored layer: UMAP coloured by domain (with and without --highlight), L2
    distances between domain means and their class-sensitive version, per-dimension mean differences.

    Writes embeddings.json, umap_*.csv, config.json and the PNG figures.
    """
    from clipgen.analysis.embeddings import EmbeddingsConfig, run_embeddings
    from clipgen.cli.common import emit_json, summary_console

    if out is None:
        out = store.with_name(store.stem + "-embeddings")
    cfg = EmbeddingsConfig(store=store, out=out, layer=layer,
                           domains=split_list(domains or None),
                           highlight=highlight.strip().lower(), per_domain=per_domain, seed=seed, umap=umap,
                           n_neighbors=n_neighbors, min_dist=min_dist, densmap=densmap, figures=figures, force=force)
    res = run_embeddings(cfg, progress=progress)
    con = summary_console(as_json)
    h = res.domains.index(res.highlight)
    others = [j for j in range(len(res.domains)) if j != h]
    con.print(f"[bold]embedding analysis[/] of '{res.layer}' over {len(res.domains)} domains "
              f"({', '.join(res.domains)}), {int(res.counts.sum())} images")
    con.print(f"  L2 distance of the {res.highlight} mean to the other domain means: mean "
              f"{res.domain_mean_l2[h, others].mean():.4f}; class-sensitive: "
              f"{res.class_sensitive_l2[h, others].mean():.4f}")
    for name, fit in res.umap.items():
        con.print(f"  UMAP {name}: {len(fit['rows'])} points")
    con.print(f"results: {res.out}", markup=False, highlight=False)
    if as_json:
        emit_json({"out": res.out, "files": res.files, "layer": res.layer, "domains": res.domains,
                   "highlight": res.highlight, "images": int(res.counts.sum()),
                   "highlight_mean_l2": float(res.domain_mean_l2[h, others].mean()) if others else None,
                   "highlight_class_sensitive_l2": float(res.class_sensitive_l2[h, others].mean()) if others
                   else None,
                   "umap_points": {name: len(fit["rows"]) for name, fit in res.umap.items()}})
