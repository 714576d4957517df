"""The sections of the study report, each from the artifacts :mod:`clipgen.study` found (see docs/report.md): the
report context and the study's own sections (data, accuracy, files); the analyses' sections are in
:mod:`clipgen.report.analysis_sections`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipgen.domainnet import DEFAULT_HIGHLIGHT
from clipgen.errors import ClipgenError
from clipgen.report.document import Document
from clipgen.report.numbers import (
    SETUP_LABELS,
    _cell,
    _mean_of,
    _read_json,
    pct,
    verdict,
)

SETUP_ORDER = ("natural-only", "cg-low", "cg-high", "leave-out-domain")
FIGURES_DIR = "report-figures"
#: Placeholders in the commands suggested for what is not computed yet.
DATA = "DOMAINNET_ROOT"


@dataclass
class _Ctx:
    study: Any  # clipgen.study.Study
    out: Path
    doc: Document
    findings: list[list[str]]
    demo: dict[str, Any] | None
    missing: list[tuple[str, str]] = field(default_factory=list)  # (what, command)
    accuracy: dict[str, tuple[float, int]] = field(default_factory=dict)  # run path -> (last ood_acc, n)

    def not_computed(self, what: str, command: str) -> None:
        self.missing.append((what, command))
        self.doc.p(f"*Not computed yet:* {what}. Computed by `{command}`.")

    def results(self, command: str, filename: str) -> list[tuple[Any, dict[str, Any]]]:
        """``(artifact, its readable results file)`` of every output of ``command`` in the study."""
        found = [(a, _read_json(a.path / filename)) for a in self.study.by_command(command)]
        return [(a, doc) for a, doc in found if doc]

    def label(self, artifact: Any) -> tuple[str, str, Any]:
        """``(setup label, run name, RunInfo or None)`` of the model an analysis looks at."""
        run = self.study.run_of(artifact)
        if run is None:
            return "analysed", artifact.path.name, None
        return SETUP_LABELS.get(run.setup or "", run.setup or "analysed"), run.name, run




def _intro(ctx: _Ctx, invocation_seconds: float | None) -> str:
    doc, study, demo = ctx.doc, ctx.study, ctx.demo
    if demo:
        c, s = demo.get("config", {}), demo.get("scale", {})
        x = c.get("test_domain", "?")
        stages = demo.get("stages", {})
        took = sum(float(v.get("seconds", 0.0)) for v in stages.values())
        doc.h(1, f"clipgen demo: domain and compositional generalization on synthetic DomainNet (test domain {x})")
        this = f" (this invocation: {invocation_seconds:.0f} s)" if invocation_seconds is not None else ""
        doc.p(f"This report reproduces the paper's study on clipgen's synthetic DomainNet: {s.get('n_classes')} "
              f"DomainNet classes in six rendering styles, {s.get('n_held_out')} of them held out (C2), "
              f"{s.get('model')} CLIP models trained for {s.get('epochs')} epochs with OpenCLIP's trainer on the "
              f"four training distributions of the paper's Figure 2 for the test domain **{x}**. Seed "
              f"{c.get('seed')}, one run per setup (the paper uses 3 seeds); device: {demo.get('device')}; "
              f"demo scale `{s.get('name')}`; its stages took {took:.0f} s when they ran{this}.")
        title = f"clipgen demo report ({x})"
    else:
        folders = ", ".join(f"`{p}`" for p in study.roots)
        doc.h(1, "clipgen study report")
        setups = sorted({r.setup for r in study.runs if r.setup},
                        key=lambda s: SETUP_ORDER.index(s) if s in SETUP_ORDER else 9)
        tds = sorted({r.test_domain for r in study.runs if r.test_domain})
        seeds = sorted({str(r.seed) for r in study.runs})
        doc.p(f"What clipgen found under {folders}: {len(study.runs)} run directories (setups "
              f"{', '.join(SETUP_LABELS.get(s, s) for s in setups) or 'none'}; test domains "
              f"{', '.join(tds) or 'none'}; seeds {', '.join(seeds) or 'none'}), {len(study.results)} evaluation "
              f"results, {len(study.stores)} activation stores and {len(study.analyses)} analysis outputs. "
              f"`clipgen status` lists them run by run; each figure below states the numbers behind it.")
        title = "clipgen study report"
    for art in study.synth:
        sheet = art.path / "contact_sheet.png"
        if sheet.is_file():
            doc.figure(sheet, "The synthetic DomainNet: one row per domain, one column per class (the class is the "
                              "object's shape; the domain is the rendering style).")
    return title


def _data_section(ctx: _Ctx) -> None:
    rows = []
    tds: set[str] = set()
    for path in ctx.study.mixtures:
        idx = _read_json(path) or {}
        entries = sorted(idx.get("mixtures", {}).values(), key=lambda e: (
            str(e.get("test_domain") or ""), SETUP_ORDER.index(e["setup"]) if e.get("setup") in SETUP_ORDER else 99))
        for e in entries:
            if e.get("split") != "train" or not str(e.get("file", "")).startswith("combined"):
                continue
            c = e.get("counts", {})
            x = e.get("test_domain") or ""
            tds.add(x) if x else None
            tx = c.get(x, {}) if isinstance(c.get(x), dict) else {}
            rows.append([SETUP_LABELS.get(e.get("setup"), e.get("setup")), f"`{e.get('file')}`",
                         "".join(d[0] for d in e.get("domains", [])), c.get("base", 0), c.get("total", 0),
                         x or "-", tx.get("id", 0), tx.get("ood", 0)])
    if not rows:
        return
    ctx.doc.h(2, "Training data")
    ctx.doc.p("The training mixtures (published file names; DomainNet part size-matched by the paper's first-k "
              "rule, natural-only not matched). Columns: domains included, base-dataset rows, total rows, and the "
              "test domain's ID / held-out images in training.")
    if len(tds) == 1:  # one test domain: name it in the columns
        x = next(iter(tds))
        ctx.doc.table(["setup", "file", "domains", "base", "total", f"{x} ID", f"{x} C2"],
                      [r[:5] + r[6:] for r in rows])
    else:
        ctx.doc.table(["setup", "file", "domains", "base", "total", "test domain", "its ID", "its C2"], rows)


def _accuracy_section(ctx: _Ctx) -> None:
    """Figure 2 from the evaluation results, grouped and averaged over seeds by ``clipgen eval summary``'s code."""
    from clipgen.evaluation import summary as sm
    from clipgen.evaluation.results import read_results

    doc, study = ctx.doc, ctx.study
    doc.h(2, "Zero-shot generalization (the paper's Figure 2)")
    if not study.results:
        target = " ".join(str(r.path) for r in study.runs[:1]) or "RUN_DIR"
        ctx.not_computed("no evaluation results", f"clipgen eval zero-shot --model-dir {target} --data-root {DATA}"
                         if study.runs else f"clipgen eval grid RUNS --data-root {DATA}")
        return
    runs = [sm.load_run(p) for p in study.results]
    groups = sm.group_runs(runs)
    docs = {str(r.path): read_results(r.path) for r in runs}

    def last(r: Any, domain: str, metric: str) -> float | None:
        v = (r.metrics.get(domain) or {}).get(metric)
        return None if not v or v[-1] is None else float(v[-1])

    def count(r: Any, domain: str, group: str) -> int:
        return int(((docs[str(r.path)].get("counts") or {}).get(domain) or {}).get(group, 0))

    for r in runs:
        v = last(r, r.test_domain, "ood_acc")
        ctx.accuracy[str(r.path.resolve())] = (float("nan") if v is None else v, count(r, r.test_domain, "ood"))
    families = list(dict.fromkeys(g.family for g in groups))
    captions, curves_txt = [], []
    for fam in families:
        for x in dict.fromkeys(g.test_domain for g in groups if g.family == fam):
            gs = [g for g in groups if g.family == fam and g.test_domain == x]
            seeds = sorted({str(r.seed) for g in gs for r in g.runs})
            where = f" ({fam})" if len(families) > 1 else ""
            if len(families) > 1 or len(gs) != len(groups):
                over = f"mean ± sample std over seeds {', '.join(seeds)}" if len(seeds) > 1 else f"seed {seeds[0]}"
                doc.p(f"**Test domain {x}**{where}: last evaluated epoch, {over}.")
            elif len(seeds) > 1:
                doc.p(f"Last evaluated epoch, mean ± sample std over seeds {', '.join(seeds)}.")
            rows = []
            for g in gs:
                def cell(domain: str, metric: str, g: Any = g) -> str:
                    return _cell([last(r, domain, metric) for r in g.runs])
                n_ood = sorted({count(r, x, "ood") for r in g.runs})
                n_id = sorted({count(r, x, "id") for r in g.runs})
                rows.append([g.setup_label, cell(x, "ood_acc"), cell(x, "ood_acc_unweighted"), cell(x, "id_acc"),
                             cell("real", "ood_acc"), cell("real", "id_acc"),
                             f"{'/'.join(map(str, n_ood))} / {'/'.join(map(str, n_id))}", str(len(g.runs))])
            doc.table(["setup", f"{x} C2 (held-out)", f"{x} C2 unweighted", f"{x} C1 (ID)", "real C2", "real C1",
                       f"{x} images C2 / C1", "seeds"], rows)
            vals = ", ".join(f"{g.setup_label} {_cell([last(r, x, 'ood_acc') for r in g.runs])}" for g in gs)
            classes = [int((docs[str(r.path)].get("classes") or {}).get("count", 0)) for g in gs for r in g.runs]
            chance = f"chance {pct(1 / max(classes))}; " if classes and max(classes) > 0 else ""
            ep = sorted({r.epochs[-1] for g in gs for r in g.runs})
            n_img = sorted({count(r, x, "ood") for g in gs for r in g.runs})
            captions.append(f"{x}{where} at epoch {'/'.join(map(str, ep))}: {vals} ({chance}"
                            f"{'/'.join(map(str, n_img))} test images per setup and seed)")
            for g in gs:
                common = sorted(set.intersection(*(set(r.epochs) for r in g.runs)))
                if len(common) > 1:
                    first = _mean_of([r.metrics[x]["ood_acc"][r.epochs.index(common[0])] for r in g.runs])
                    end = _mean_of([r.metrics[x]["ood_acc"][r.epochs.index(common[-1])] for r in g.runs])
                    curves_txt.append(f"{g.setup_label} on {x}{where} from {pct(first)} to {pct(end)}")
            _accuracy_findings(ctx, x, gs, last, count, where)
    fig2, curves_png = _figure2_files(ctx, runs, groups)
    mean_word = "mean over seeds, " if any(len(g.runs) > 1 for g in groups) else ""
    doc.figure(fig2, f"Held-out-class (C2) zero-shot accuracy, {mean_word}sample-weighted, error bars the std over "
                     f"seeds: " + "; ".join(captions) + ".")
    doc.figure(curves_png, "The same accuracy over the training epochs (epoch 0 = the untrained model): "
                           + (", ".join(curves_txt) or "one evaluated epoch only") + ".")


def _figure2_files(ctx: _Ctx, runs: list[Any], groups: list[Any]) -> tuple[Path, Path]:
    """An ``eval summary`` folder of exactly these results (headline settings, newer than every result) is reused;
    otherwise the figures are drawn into ``OUT/report-figures`` with the same code."""
    from clipgen.evaluation import summary as sm
    from clipgen.evaluation.summary import find_results

    mine = {r.path.resolve() for r in runs}
    newest = max(p.stat().st_mtime for p in mine)
    for a in ctx.study.by_command("eval summary"):
        c = a.config
        f2, cv = a.path / "figure2.png", a.path / "curves.png"
        if (c.get("metric"), str(c.get("epoch")), c.get("domain")) != ("ood_acc", "last", "test") \
                or not f2.is_file() or not cv.is_file() or min(f2.stat().st_mtime, cv.stat().st_mtime) < newest:
            continue
        try:
            theirs = {p.resolve() for p in find_results([Path(i) for i in c.get("inputs", [])])}
        except (ClipgenError, OSError):  # inputs moved or gone: not reusable
            continue
        if theirs == mine:
            return f2, cv
    figs = ctx.out / FIGURES_DIR
    rows = sm.summary_rows(groups, "ood_acc", "last", "test")
    order = sm.setup_order(groups)
    sm.bar_chart(rows, "ood_acc", order, figs / "figure2.png")
    sm.curves(groups, "ood_acc", "test", figs / "curves.png")
    return figs / "figure2.png", figs / "curves.png"


def _accuracy_findings(ctx: _Ctx, x: str, groups: list[Any], last: Any, count: Any, where: str) -> None:
    by_setup = {}
    for g in groups:
        key = next((s for s, lab in SETUP_LABELS.items() if lab == g.setup_label), None)
        if key is not None:
            by_setup[key] = g

    def acc(setup: str, domain: str, metric: str, group: str) -> tuple[float | None, int]:
        g = by_setup[setup]
        return _mean_of([last(r, domain, metric) for r in g.runs]), sum(count(r, domain, group) for r in g.runs)

    def cmp(claim: str, a: str, b: str) -> None:
        if a not in by_setup or b not in by_setup:
            return
        (va, na), (vb, nb) = acc(a, x, "ood_acc", "ood"), acc(b, x, "ood_acc", "ood")
        if va is None or vb is None:
            return
        v, se = verdict(va, na, vb, nb)
        ctx.findings.append([claim + where, f"{SETUP_LABELS[a]} {pct(va)} vs {SETUP_LABELS[b]} {pct(vb)} "
                                            f"(difference {100 * (va - vb):+.1f} points, 2 SE = {200 * se:.1f})", v])

    cmp(f"Domain diversity helps DG: leave-out-domain beats natural-only on {x} C2", "leave-out-domain",
        "natural-only")
    cmp(f"Domain diversity helps CG: CG high-diversity beats CG low-diversity on {x} C2", "cg-high", "cg-low")
    cmp(f"CG high-diversity beats natural-only on {x} C2", "cg-high", "natural-only")
    cmp(f"CG can be weaker than DG: leave-out-domain beats CG high-diversity on {x} C2 (the paper finds this for "
        f"some test domains)", "leave-out-domain", "cg-high")
    seen = [(s, acc(s, x, "id_acc", "id")[0], acc(s, "real", "id_acc", "id")[0])
            for s in ("cg-low", "cg-high") if s in by_setup]
    chance = _chance(ctx, groups)
    if seen and chance is not None:
        txt = "; ".join(f"{SETUP_LABELS[s]}: {x} C1 {pct(a)}, real C1 {pct(b)}" for s, a, b in seen)
        ok = all(a is not None and b is not None and a > 2 * chance and b > 2 * chance for _, a, b in seen)
        ctx.findings.append([f"The models learn the classes of the seen domains (C1 of {x} and real, both in "
                             f"training; rule: above twice chance = {pct(2 * chance)}){where}", txt,
                             "holds" if ok else "does not hold"])


def _chance(ctx: _Ctx, groups: list[Any]) -> float | None:
    from clipgen.evaluation.results import read_results

    counts = [int((read_results(r.path).get("classes") or {}).get("count", 0)) for g in groups for r in g.runs]
    return 1 / max(counts) if counts and max(counts) > 0 else None




def _analysed_run(ctx: _Ctx) -> Any:
    """The run an analysis would start with: a CG high-diversity run (the paper's choice), one with a store first."""
    runs = sorted(ctx.study.runs, key=lambda r: (r.setup != "cg-high", not r.stores))
    return runs[0] if runs else None


def _need_store(ctx: _Ctx, then: str) -> str:
    """The command that computes an analysis (``then`` with ``{store}``): from a store of the analysed run when there
    is one, else extraction first."""
    run = _analysed_run(ctx)
    stores = (run.stores if run is not None else []) or ctx.study.stores
    if stores:
        return then.format(store=stores[0].path)
    where = str(run.path) if run is not None else "RUN_DIR"
    return f"clipgen extract --model-dir {where} --data {DATA} --layer all --out STORE.h5, then " + \
        then.format(store="STORE.h5")


def _rerun_command(a: Any) -> str | None:
    """The command that rewrites an artifact, from its configuration."""
    c = a.config
    join = ",".join
    if a.command == "cka":
        return (f"clipgen cka {c['store']} --out {a.path} --subsets {join(c.get('subsets') or ['all'])} --kernels "
                f"{join(c.get('kernels') or ['linear'])} --highlight {c.get('highlight', DEFAULT_HIGHLIGHT)} --force")
    if a.command == "embeddings":
        return (f"clipgen embeddings {c['store']} --out {a.path} --highlight {c.get('highlight', DEFAULT_HIGHLIGHT)} "
                "--force")
    if a.command == "sae features":
        return f"clipgen sae features {c['store']} --sae {c['sae']} --out {a.path} --force"
    if a.command == "eval summary":
        return f"clipgen eval summary {' '.join(map(str, c.get('inputs', [])))} --out {a.path} --force"
    if a.command == "circuits nodes":
        return f"clipgen circuits nodes {c['circuits']} --out {a.path} --force"
    if a.command == "circuits similarity":
        return f"clipgen circuits similarity {c['circuits']} --out {a.path} --force"
    return None


def _files_section(ctx: _Ctx) -> None:
    doc, study, demo = ctx.doc, ctx.study, ctx.demo
    doc.h(2, "Artifacts and how to rerun a step")
    where = ", ".join(f"`{p}`" for p in study.roots)
    line = (f"Everything lives under {where}; each artifact has its configuration JSON beside it. Any single step "
            f"can be rerun by hand, e.g.:")
    if demo:
        line = line.replace("Any single", f"Rerunning `clipgen demo --out {study.roots[0]}` skips finished stages; "
                                          f"any single")
    doc.p(line)
    items = []
    run = _analysed_run(ctx)
    if run is not None:
        ev = next((e for e in run.evals if e.kind == "zero-shot"), None)
        data = DATA
        if ev is not None:
            cfg = _read_json(ev.path.with_name("results.config.json")) or {}
            data = (cfg.get("config") or {}).get("data_root") or DATA
        items.append(f"`clipgen eval zero-shot --model-dir {run.path} --data-root {data}`")
        for s in run.stores[:1]:
            items.append(f"`clipgen extract --model-dir {run.path} --data {s.option('data') or DATA} --out {s.path}`")
    seen: set[str] = set()
    for a in study.analyses:
        cmd = _rerun_command(a)
        if cmd is None or a.command in seen:
            continue
        seen.add(a.command)
        others = len(study.by_command(a.command)) - 1
        items.append(f"`{cmd}`" + (f" (and likewise for the other {others})" if others else ""))
    if items:
        doc.items(items)
    if ctx.missing:
        doc.p("Not computed yet, and the commands that compute it:")
        doc.items([f"{what}: `{cmd}`" for what, cmd in ctx.missing])
    stages = (demo or {}).get("stages", {})
    rows = [[name, f"{float(rec.get('seconds', 0)):.0f} s"] for name, rec in stages.items()]
    if rows:
        doc.table(["stage", "time (when it last ran)"], rows)
