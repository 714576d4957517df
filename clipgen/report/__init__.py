"""The study report: ``report.md`` and ``report.html`` (figures embedded) of any study folder (``clipgen report``);
``clipgen demo`` writes its own report with it.

The report reads only files the commands wrote (found by :mod:`clipgen.study`: results.json of every run, cka.json,
embeddings.json, feature-sharing.json, the SAE metrics, the circuits results), so it can be rebuilt at any time.
Every figure comes with one sentence saying what it shows and the numbers behind it. The section "Which of the
paper's findings hold here" compares numbers with fixed rules written down in the report itself (:func:`verdict`),
never with wording chosen after looking at the outcome. Sections whose inputs are absent say "not computed yet"
with the command that computes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from clipgen.report.analysis_sections import _circuits_section, _cka_section, _embedding_section, _sae_section
from clipgen.report.document import Block, Document
from clipgen.report.numbers import SETUP_LABELS, cka_layer_means, intermediate, num, pct, std_error, verdict
from clipgen.report.sections import (
    SETUP_ORDER,
    _accuracy_section,
    _Ctx,
    _data_section,
    _files_section,
    _intro,
    _read_json,
)

__all__ = ["SETUP_LABELS", "SETUP_ORDER", "Block", "Document", "ReportConfig", "run_report", "cka_layer_means",
           "intermediate", "num", "pct", "std_error", "verdict"]


@dataclass
class ReportConfig:
    """Options of ``clipgen report`` (written beside the report as ``report.config.json``)."""

    inputs: list[Path]
    out: Path | None = None  # default: the first input folder
    runs: list[Path] = field(default_factory=list)
    stores: list[Path] = field(default_factory=list)
    analyses: list[Path] = field(default_factory=list)




def run_report(cfg: ReportConfig, *, invocation_seconds: float | None = None) -> tuple[Path, Path]:
    """Find everything under ``cfg.inputs`` and write ``OUT/report.md`` and ``OUT/report.html`` (figures embedded),
    plus ``report.config.json``. Returns the two report paths."""
    from clipgen.artifacts import write_config, write_text_atomic
    from clipgen.study import discover

    study = discover(cfg.inputs, runs=cfg.runs, stores=cfg.stores, analyses=cfg.analyses)
    out = Path(cfg.out if cfg.out is not None else cfg.inputs[0])
    demo = _read_json(study.demo) if study.demo is not None else None
    ctx = _Ctx(study, out, Document(), [], demo)
    doc = ctx.doc
    title = _intro(ctx, invocation_seconds)
    _data_section(ctx)
    _accuracy_section(ctx)
    _cka_section(ctx)
    _sae_section(ctx)
    _embedding_section(ctx)
    _circuits_section(ctx)

    doc.h(2, "Which of the paper's findings hold here")
    doc.p("Rules, fixed before looking at the numbers: an accuracy comparison *holds* when the difference exceeds "
          "twice its binomial standard error (independent test images, one seed), is *reversed* when it exceeds it "
          "in the other direction, and is *inconclusive* otherwise. With several seeds the accuracies are the means "
          "over the seeds and the image counts are summed over them. Comparisons of similarity scores (CKA, "
          "feature sharing, node and circuit similarity) have no error estimate from one seed; they are reported "
          "as *holds* / *does not hold* by the sign of the difference and should be read as descriptive.")
    if ctx.findings:
        doc.table(["finding (paper)", "numbers here", "verdict"], ctx.findings)
    else:
        doc.p("*No finding can be checked yet: its inputs are not computed.*")
    if demo:
        seed = demo.get("config", {}).get("seed", 0)
        doc.p(f"Seeds: data, mixtures and training seed {seed}; SAE seed {seed}; UMAP seed 42 (the paper's); "
              f"circuit images drawn with seed 42. Synthetic data is not DomainNet: these verdicts describe this "
              f"demo, not the paper's models.")
    _files_section(ctx)
    out.mkdir(parents=True, exist_ok=True)
    md_path, html_path = out / "report.md", out / "report.html"
    write_text_atomic(md_path, doc.markdown(out))
    write_text_atomic(html_path, doc.html(title))
    write_config(md_path, "report", cfg)
    return md_path, html_path
