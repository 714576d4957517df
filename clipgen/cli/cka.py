"""``clipgen cka STORE``: cross-domain CKA of class-mean activations, layer by layer (Fig. 6a)."""

from __future__ import annotations

from pathlib import Path

import typer

from clipgen.analysis.cka import CKAConfig
from clipgen.cli.common import default, default_list, force_option, json_option, progress_option, split_list, writable


def cka(
    store: Path = typer.Argument(..., help="Activation store written by 'clipgen extract' (read only)."),
    out: Path | None = typer.Option(None, "--out", "-o", callback=writable,
                                    help="Output folder (default: STORE without suffix + '-cka' beside STORE)."),
    layers: str | None = typer.Option(None, "--layers",
                                      help="Comma-separated layers (default: every stored layer, forward order)."),
    domains: str | None = typer.Option(None, "--domains",
                                       help="Comma-separated domains; every unordered pair is compared "
                                            "(default: every domain in the store)."),
    subsets: str = typer.Option(default_list(CKAConfig, "subsets"), "--subsets",
                                help="Class subsets: all, id (not held out), ood (held out)."),
    kernels: str = typer.Option(default_list(CKAConfig, "kernels"), "--kernels",
                                help="Kernels: linear, rbf (sigma^2 = median of the "
                                     "non-zero squared distances)."),
    estimators: str = typer.Option(default_list(CKAConfig, "estimators"), "--estimators",
                                   help="HSIC estimators: unbiased (Song et al., the paper's) and/or biased."),
    rbf_median: str = typer.Option(default(CKAConfig, "rbf_median"), "--rbf-median",
                                   help="sigma^2 of the RBF kernel for an even number of distances: lower (the "
                                        "lower of the two middle values, as published) or mean (their mean)."),
    held_out: str | None = typer.Option(None, "--held-out",
                                        help="Comma-separated class names that define 'ood'/'id' "
                                             "(default: the store's held-out classes)."),
    classes_from: str | None = typer.Option(None, "--classes-from",
                                            help="Also restrict every pair to the classes present in this domain; "
                                                 "'painting' reproduces the published script's class list "
                                                 "(default: the classes present in both domains of each pair)."),
    highlight: str = typer.Option(default(CKAConfig, "highlight"), "--highlight",
                                  help="Domain whose pairs the highlight figure sets against the other pairs."),
    figures: bool = typer.Option(default(CKAConfig, "figures"), "--figures/--no-figures",
                                 help="Write the PNG figures."),
    force: bool = force_option("Replace an existing output folder."),
    progress: bool = progress_option(),
    as_json: bool = json_option(),
) -> None:
    """Linear/RBF CKA between the class-mean activations of every domain pair, for every stored layer.

    Uses the classes present in both domains of each pair, float64, and the unbiased HSIC estimator by default.
    Writes cka.json, cka.csv (layer x pair x subset x kernel x estimator), config.json and the figures.
    """
    from clipgen.analysis.cka import CKAConfig
    from clipgen.analysis.cka_sweep import run_cka
    from clipgen.cli.common import emit_json, summary_console

    if out is None:
        out = store.with_name(store.stem + "-cka")
    cfg = CKAConfig(store=store, out=out, layers=split_list(layers), domains=split_list(domains),
                    subsets=split_list(subsets) or [], kernels=split_list(kernels) or [],
                    estimators=split_list(estimators) or [], held_out=split_list(held_out),
                    classes_from=classes_from.strip().lower() if classes_from else None,
                    rbf_median=rbf_median.strip().lower(),
                    highlight=highlight.strip().lower(), figures=figures, force=force)
    res = run_cka(cfg, progress=progress)
    con = summary_console(as_json)
    con.print(f"[bold]CKA[/] {len(res.layers)} layers x {len(res.pairs)} domain pairs x {len(res.subsets)} subsets "
              f"x {len(res.kernels)} kernels x {len(res.estimators)} estimators = {len(res.records)} values")
    hl = cfg.highlight if cfg.highlight in res.domains else None
    rows = res.highlight_means(hl) if hl else []
    if rows:
        r0 = rows[0]
        con.print(f"mean CKA ({r0['subset']} classes, {r0['kernel']} kernel, {r0['estimator']}): pairs with {hl} "
                  f"vs the other pairs", highlight=False)
        w = max(len(r["layer"]) for r in rows)
        for r in rows:
            con.print(f"  {r['layer']:<{w}}  {_num(r['with'])}  vs  {_num(r['without'])}", markup=False,
                      highlight=False)
    con.print(f"results: {res.out}", markup=False, highlight=False)
    if as_json:
        emit_json({"out": res.out, "files": res.files, "layers": res.layers, "domains": res.domains,
                   "pairs": [list(p) for p in res.pairs], "values": len(res.records), "highlight": hl,
                   "highlight_means": rows})


def _num(x: float | None) -> str:
    return "   n/a" if x is None else f"{x:.4f}"
