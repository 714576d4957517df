"""``clipgen cka STORE``: cross-domain CKA of class-mean activations, layer by layer (spec 5b, Fig. 6a)."""

from __future__ import annotations

from pathlib import Path

import typer

from clipgen.cli.options import writable


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def cka(
    store: Path = typer.Argument(..., help="Activation store written by 'clipgen extract' (read only)."),
    out: Path | None = typer.Option(None, "--out", "-o", callback=writable,
                                    help="Output folder (default: STORE without suffix + '-cka' beside STORE)."),
    layers: str | None = typer.Option(None, "--layers",
                                      help="Comma-separated layers (default: every stored layer, forward order)."),
    domains: str | None = typer.Option(None, "--domains",
                                       help="Comma-separated domains; every unordered pair is compared "
                                            "(default: every domain in the store)."),
    subsets: str = typer.Option("all,id,ood", "--subsets",
                                help="Class subsets: all, id (not held out), ood (held out)."),
    kernels: str = typer.Option("linear,rbf", "--kernels", help="Kernels: linear, rbf (sigma^2 = median of the "
                                                                 "non-zero squared distances)."),
    estimators: str = typer.Option("unbiased", "--estimators",
                                   help="HSIC estimators: unbiased (Song et al., the paper's) and/or biased."),
    rbf_median: str = typer.Option("lower", "--rbf-median",
                                   help="sigma^2 of the RBF kernel for an even number of distances: lower (the "
                                        "lower of the two middle values, as published) or mean (their mean)."),
    held_out: str | None = typer.Option(None, "--held-out",
                                        help="Comma-separated class names that define 'ood'/'id' "
                                             "(default: the store's held-out classes)."),
    classes_from: str | None = typer.Option(None, "--classes-from",
                                            help="Also restrict every pair to the classes present in this domain; "
                                                 "'painting' reproduces the published script's class list "
                                                 "(default: the classes present in both domains of each pair)."),
    highlight: str = typer.Option("quickdraw", "--highlight",
                                  help="Domain whose pairs the highlight figure sets against the other pairs."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Write the PNG figures."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
) -> None:
    """Linear/RBF CKA between the class-mean activations of every domain pair, for every stored layer.

    Uses the classes present in both domains of each pair, float64, and the unbiased HSIC estimator by default.
    Writes cka.json, cka.csv (layer x pair x subset x kernel x estimator), config.json and the figures.
    """
    from clipgen.analysis.cka import CKAConfig, run_cka
    from clipgen.progress import out as con

    if out is None:
        out = store.with_name(store.stem + "-cka")
    cfg = CKAConfig(store=store, out=out, layers=_split(layers), domains=_split(domains),
                    subsets=_split(subsets) or [], kernels=_split(kernels) or [],
                    estimators=_split(estimators) or [], held_out=_split(held_out),
                    classes_from=classes_from.strip().lower() if classes_from else None,
                    rbf_median=rbf_median.strip().lower(),
                    highlight=highlight.strip().lower(), figures=figures, force=force)
    res = run_cka(cfg)
    con.print(f"[bold]CKA[/] {len(res.layers)} layers x {len(res.pairs)} domain pairs x {len(res.subsets)} subsets "
              f"x {len(res.kernels)} kernels x {len(res.estimators)} estimators = {len(res.records)} values")
    last = res.layers[-1]
    for s in res.subsets:
        for k in res.kernels:
            vals = [r.cka for r in res.records if r.layer == last and r.subset == s and r.kernel == k
                    and r.estimator == res.estimators[0]]
            con.print(f"  {last} {s:>3} {k:>6}: mean {sum(vals) / len(vals):.4f} over {len(vals)} pairs "
                      f"(min {min(vals):.4f}, max {max(vals):.4f})")
    con.print(f"results: {res.out}")
