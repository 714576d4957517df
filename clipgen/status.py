"""``clipgen status STUDY_DIR``: the grid at a glance.

One row per run directory found under the study folders (see :mod:`clipgen.study`): trained epochs against the
planned ones, the epochs evaluated per test domain, the activation stores made from it and the analyses that read
them. The same rows are available as JSON (``--json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipgen.study import ANALYSIS_SHORT, Study, discover


@dataclass
class StatusConfig:
    """Options of ``clipgen status``."""

    inputs: list[Path]
    runs: list[Path] = field(default_factory=list)
    stores: list[Path] = field(default_factory=list)
    analyses: list[Path] = field(default_factory=list)


def epoch_ranges(epochs: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``; empty -> ``"-"``."""
    xs = sorted(set(int(e) for e in epochs))
    if not xs:
        return "-"
    parts, start, prev = [], xs[0], xs[0]
    for e in xs[1:] + [None]:
        if e is not None and e == prev + 1:
            prev = e
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if e is not None:
            start = prev = e
    return ",".join(parts)


def status_rows(study: Study) -> list[dict[str, Any]]:
    """One JSON-ready dict per run."""
    rows = []
    for r in study.runs:
        evals: dict[str, list[int]] = {}
        for e in r.evals:
            key = e.test_domain if e.kind == "zero-shot" else f"{e.test_domain} ({e.kind})"
            evals[key] = sorted(set(evals.get(key, [])) | set(e.epochs))
        analyses = sorted({ANALYSIS_SHORT.get(a.command, a.command) for a in r.analyses})
        trained = max(r.trained_epochs, default=0)
        rows.append({
            "run": r.name, "path": str(r.path), "kind": r.kind, "model": r.model, "setup": r.setup,
            "test_domain": r.test_domain, "seed": r.seed, "trained_epochs": trained,
            "planned_epochs": r.planned_epochs,
            "complete": r.planned_epochs is not None and trained >= r.planned_epochs,
            "status": r.status, "evaluated": evals,
            "stores": sorted(str(s.path) for s in r.stores), "analyses": analyses,
        })
    return rows


def run_status(cfg: StatusConfig) -> tuple[Study, list[dict[str, Any]]]:
    study = discover(cfg.inputs, runs=cfg.runs, stores=cfg.stores, analyses=cfg.analyses)
    return study, status_rows(study)


def status_table(rows: Sequence[dict[str, Any]], title: str) -> Any:
    """A rich table of :func:`status_rows`."""
    from rich.table import Table

    t = Table(title=title)
    t.add_column("run", no_wrap=True)
    for col in ("setup", "test domain", "seed", "trained", "evaluated (epochs per domain)", "stores", "analyses"):
        t.add_column(col)
    for r in rows:
        planned = "?" if r["planned_epochs"] is None else str(r["planned_epochs"])
        ev = "; ".join(f"{d}: {epoch_ranges(e)}" for d, e in r["evaluated"].items()) or "-"
        t.add_row(r["run"], r["setup"] or "-", r["test_domain"] or "-", str(r["seed"]),
                  f"{r['trained_epochs']}/{planned}", ev,
                  ", ".join(Path(s).name for s in r["stores"]) or "-", ", ".join(r["analyses"]) or "-")
    return t
