"""``clipgen demo``: the whole study on the embedded synthetic DomainNet (what ``make demo`` runs)."""

from __future__ import annotations

from pathlib import Path

import typer

from clipgen.cli.common import default, device_option, force_option, progress_option, writable
from clipgen.demo import DemoConfig


def demo(
    out: Path = typer.Option(default(DemoConfig, "out"), "--out", "-o", callback=writable,
                             help="Output folder for every artifact and the report."),
    test_domain: str = typer.Option(default(DemoConfig, "test_domain"), "--test-domain",
                                    help="Test domain of the mixtures: clipart, infograph, painting, quickdraw or "
                                         "sketch."),
    seed: int = typer.Option(default(DemoConfig, "seed"), "--seed",
                             help="Seed of the synthetic data, the mixtures, training and the SAEs."),
    full: bool = typer.Option(default(DemoConfig, "full"), "--full",
                              help="A larger, slower, more faithful synthetic study (more classes and images, "
                                   "RN-small, more epochs)."),
    highlight: str = typer.Option(default(DemoConfig, "highlight"), "--highlight",
                                  help="Domain the analyses set against the others (the paper's: quickdraw)."),
    device: str = device_option("auto (a GPU when present), cpu, cuda or cuda:N."),
    force: bool = force_option("Redo every stage, even those finished earlier."),
    progress: bool = progress_option("Show progress bars."),
    scale: str | None = typer.Option(None, "--scale", hidden=True,
                                     help="default, full or tiny (the test suite's reduced demo)."),
) -> None:
    """Run the whole study on the synthetic default: data, mixtures, four tiny CLIPs, zero-shot evaluation,
    activation stores, CKA, SAE feature sharing, embedding analysis, circuits, and one report.

    Finished stages are skipped when rerun; every intermediate artifact stays in OUT, so any single clipgen command
    can be rerun on it. Writes OUT/report.md and OUT/report.html.
    """
    from clipgen.demo import DemoConfig, run_demo
    from clipgen.progress import out as con

    res = run_demo(DemoConfig(out=out, test_domain=test_domain, seed=seed, full=full, highlight=highlight,
                              device=device, force=force, progress=progress, scale=scale))
    con.print(f"report: {res.report_md}")
