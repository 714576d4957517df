"""``clipgen status STUDY_DIR...``: one table of the grid (runs, evaluations, stores, analyses)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from clipgen.cli.common import default
from clipgen.status import StatusConfig


def status(
    study: list[Path] = typer.Argument(..., metavar="STUDY_DIR",
                                       help="Study folder(s) searched for runs, results, stores and analyses."),
    runs: list[Path] = typer.Option(default(StatusConfig, "runs"), "--runs",
                                    help="Another folder of run directories (repeatable)."),
    stores: list[Path] = typer.Option(default(StatusConfig, "stores"), "--stores",
                                      help="Another folder of activation stores (repeatable)."),
    analyses: list[Path] = typer.Option(default(StatusConfig, "analyses"), "--analyses",
                                        help="Another folder of analysis outputs (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON instead of a table."),
) -> None:
    """Per run: trained epochs / planned, evaluated epochs per test domain, stores and analyses present."""
    from clipgen.progress import out as con
    from clipgen.status import StatusConfig, run_status, status_table

    st, rows = run_status(StatusConfig(inputs=list(study), runs=list(runs), stores=list(stores),
                                       analyses=list(analyses)))
    other = [{"command": a.command, "path": str(a.path)} for a in st.analyses if a.run is None]
    if as_json:
        typer.echo(json.dumps({"roots": [str(p) for p in st.roots], "runs": rows, "not_tied_to_a_run": other},
                              indent=2))
        return
    con.print(status_table(rows, f"{len(rows)} runs under {', '.join(str(p) for p in st.roots)}"))
    if other:
        con.print("not tied to a run: " + ", ".join(f"{a['command']} {a['path']}" for a in other))
