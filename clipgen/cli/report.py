"""``clipgen report STUDY_DIR...``: the study's results section (report.md + self-contained report.html)."""

from __future__ import annotations

from pathlib import Path

import typer

from clipgen.cli.common import default
from clipgen.report import ReportConfig


def report(
    study: list[Path] = typer.Argument(..., metavar="STUDY_DIR",
                                       help="Study folder(s): run directories, evaluation results, stores and "
                                            "analysis outputs are found under them by their marker files."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="Folder for report.md and report.html (default: the first STUDY folder)."),
    runs: list[Path] = typer.Option(default(ReportConfig, "runs"), "--runs",
                                    help="Another folder of run directories (repeatable)."),
    stores: list[Path] = typer.Option(default(ReportConfig, "stores"), "--stores",
                                      help="Another folder of activation stores (repeatable)."),
    analyses: list[Path] = typer.Option(default(ReportConfig, "analyses"), "--analyses",
                                        help="Another folder of analysis outputs (CKA, embeddings, SAE, circuits, "
                                             "eval summary; repeatable)."),
) -> None:
    """Write the study report: the Figure-2 table and bars (mean ± std over seeds), accuracy over epochs, CKA, SAE
    feature sharing, embeddings, node and circuit similarity, circuit drawings, and which of the paper's findings
    hold, by rules fixed in advance.

    Sections whose inputs are absent say 'not computed yet' with the command that computes them. report.html embeds
    every figure. See docs/report.md.
    """
    from clipgen.progress import out as con
    from clipgen.report import ReportConfig, run_report

    md, html = run_report(ReportConfig(inputs=list(study), out=out, runs=list(runs), stores=list(stores),
                                       analyses=list(analyses)))
    con.print(f"report: {md} and {html.name}")
