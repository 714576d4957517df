"""The sections of the study report, each from the artifacts :mod:`clipgen.study` found (see docs/report.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipgen.domainnet import DEFAULT_HIGHLIGHT
from clipgen.errors import ClipgenError
from clipgen.report.document import Document
from clipgen.report.numbers import (
    SETUP_LABELS,
    _cell,
    _mean,
    _mean_of,
    _read_json,
    cka_layer_means,
    intermediate,
    num,
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


def _cka_section(ctx: _Ctx) -> None:
    doc = ctx.doc
    arts = ctx.results("cka", "cka.json")
    doc.h(2, "Representational similarity across domains (CKA, the paper's Figure 6a)")
    if not arts:
        ctx.not_computed("CKA between the domains", _need_store(ctx, "clipgen cka {store}"))
        return
    for a, cka in arts:
        hl = a.option("highlight") or DEFAULT_HIGHLIGHT
        means = cka_layer_means(cka, hl)
        layers = [lay for lay in cka["layers"] if lay in means]
        if not layers:
            doc.p(f"*CKA of `{a.path}` has no linear unbiased values on all classes with pairs of {hl}.*")
            continue
        mid = intermediate(layers)
        h_mid = _mean([means[lay][0] for lay in mid])
        o_mid = _mean([means[lay][1] for lay in mid])
        label, name, _ = ctx.label(a)
        doc.figure(a.path / "highlight_all_linear_unbiased.png",
                   f"Linear CKA (unbiased HSIC) between the class-mean activations of two domains, layer by layer, "
                   f"for the {label} model ({name}); pairs with {hl} against the other pairs. In the intermediate "
                   f"layers ({mid[0]} to {mid[-1]}) the mean is {num(h_mid)} for pairs with {hl} and {num(o_mid)} "
                   f"for the other pairs.")
        doc.figure(a.path / "pairs_all_linear_unbiased.png",
                   f"The same for every domain pair; at the last layer ({layers[-1]}) the pairs with {hl} average "
                   f"{num(means[layers[-1]][0])}, the others {num(means[layers[-1]][1])}.")
        who = f" ({name})" if len(arts) > 1 else ""
        ctx.findings.append([f"Representations of {hl} are less shared with the other domains in intermediate "
                             f"layers (CKA of pairs with {hl} below the other pairs){who}",
                             f"mean linear CKA {mid[0]}..{mid[-1]}: {num(h_mid)} with {hl} vs {num(o_mid)} others",
                             "holds" if h_mid < o_mid else "does not hold"])


def _sae_names_table(doc: Document, features: dict[str, Path], x: str) -> None:
    """The named SAE concepts: per model (label -> its ``sae features`` folder) and held-out class its top shared
    latents and those specific to ``x``, each with its best vocabulary name (``named-latents.json``, written when the
    SAE run has names from ``clipgen sae names``)."""
    rows = []
    for label, base in features.items():
        nl = _read_json(base / "named-latents.json") or {}
        for cls, rec in nl.get("classes", {}).items():
            def fmt(es: list[dict[str, Any]]) -> str:
                return ", ".join(f"#{e['latent']} {e['names'][0]} ({e['similarity']:.2f})" for e in es) or "none"
            rows.append([label, cls, fmt(rec.get("shared", [])[:3]), fmt(rec.get("specific", {}).get(x, []))])
    if not rows:
        return
    doc.p("Named SAE concepts: each latent is named by the vocabulary term (DomainNet and ImageNet class names, "
          "domain words) whose text embedding is closest (cosine) to its decoder direction; shown are the latents "
          f"most often among the top latents of a class's images in at least two domains (shared) and in {x} only.")
    doc.table(["model", "class", "top shared latents (name, cosine)", f"latents specific to {x}"], rows)


def _sae_section(ctx: _Ctx) -> None:
    doc = ctx.doc
    res = []
    for a in ctx.study.by_command("sae features"):
        fs = _read_json(a.path / "feature-sharing.json")
        if not fs:
            continue
        sae_dir = Path(str(a.option("sae") or a.path.parent))
        m = _read_json(sae_dir / "metrics.json") or {}
        label, name, run = ctx.label(a)
        x = a.option("test_domain") or fs.get("test_domain") or (run.test_domain if run else None) or "?"
        res.append((a, fs, m, label, name, run, x))
    doc.h(2, "SAE feature sharing (the paper's Appendix C.1)")
    if not res:
        ctx.not_computed("SAE feature sharing", _need_store(
            ctx, "clipgen sae train {store} --out SAE_DIR, then clipgen sae features {store} --sae SAE_DIR"))
        return
    xs = sorted({r[6] for r in res})
    rows = []
    for _a, fs, m, label, name, _, _x in res:
        val = m.get("val") or m.get("final") or m.get("final_train") or {}
        rows.append([label if len(res) == len({r[3] for r in res}) else f"{label} ({name})", num(fs.get("score")),
                     num(val.get("fve"), 2), num(val.get("l0"), 1), str(val.get("dead", "n/a")),
                     str(m.get("arch", {}).get("d_sae", "n/a"))])
    xname = xs[0] if len(xs) == 1 else "the test domain"
    doc.table(["model", f"sharing score of {xname} (mean mpct vs the other 5 domains)", "SAE FVE (val)", "L0 (val)",
               "dead latents (val)", "latents"], rows)
    for a, fs, _, label, _, _, x in res:
        doc.figure(a.path / "feature-sharing.png",
                   f"mpct of the top-20 SAE latents between domains, averaged over the held-out classes, for the "
                   f"{label} model; the {x} row scores {num(fs.get('score'))}.")
    for x in xs:
        _sae_names_table(doc, {(r[3] if len(res) == len({q[3] for q in res}) else f"{r[3]} ({r[4]})"): r[0].path
                               for r in res if r[6] == x}, x)
    for x in xs:
        for seed in sorted({str(r[5].seed) for r in res if r[5] is not None}):
            pick = {r[5].setup: r for r in res if r[5] is not None and r[6] == x and str(r[5].seed) == seed}
            if "cg-high" not in pick or "leave-out-domain" not in pick:
                continue
            s_cg, s_lod = pick["cg-high"][1].get("score"), pick["leave-out-domain"][1].get("score")
            a_cg = _run_accuracy(ctx, pick["cg-high"][5], x)
            a_lod = _run_accuracy(ctx, pick["leave-out-domain"][5], x)
            if None in (s_cg, s_lod, a_cg, a_lod):
                continue
            agree = (s_cg - s_lod) * (a_cg - a_lod) > 0
            multi = f" (seed {seed})" if len(res) > 2 else ""
            ctx.findings.append(["The model that generalizes better to the held-out classes shares more SAE "
                                 f"features of {x} with the other domains (CG high-diversity vs leave-out-domain)"
                                 f"{multi}", f"sharing {num(s_cg)} vs {num(s_lod)}; {x} C2 accuracy {pct(a_cg)} vs "
                                             f"{pct(a_lod)}", "holds" if agree else "does not hold"])


def _run_accuracy(ctx: _Ctx, run: Any, x: str) -> float | None:
    """The last held-out-class accuracy on ``x`` of a run (its zero-shot results)."""
    for e in run.evals:
        if e.kind == "zero-shot" and e.test_domain == x:
            v = ctx.accuracy.get(str(e.path.resolve()))
            if v is not None and not math.isnan(v[0]):
                return v[0]
    return None


def _embedding_section(ctx: _Ctx) -> None:
    import numpy as np

    doc = ctx.doc
    arts = ctx.results("embeddings", "embeddings.json")
    doc.h(2, "Embedding analysis (the paper's Figure 5)")
    if not arts:
        ctx.not_computed("the embedding analysis", _need_store(ctx, "clipgen embeddings {store}"))
        return
    for a, emb in arts:
        hl = a.option("highlight") or DEFAULT_HIGHLIGHT
        doms = emb["domains"]
        if hl not in doms:
            doc.p(f"*`{a.path}` has no domain {hl}.*")
            continue
        label, name, _ = ctx.label(a)
        d = np.asarray(emb["domain_mean_l2"], dtype=float)
        i = doms.index(hl)
        others = [j for j in range(len(doms)) if j != i]
        to_hl = float(np.mean(d[i, others]))
        among = float(np.mean([d[p, q] for p in others for q in others if p < q]))
        umap_png = a.path / "umap_all.png"
        if umap_png.is_file():
            doc.figure(umap_png, f"UMAP (densMAP, seed 42) of the image embeddings of the {label} model ({name}), "
                                 f"coloured by domain; the domain means of {hl} lie {num(to_hl)} (mean L2) from the "
                                 f"other domains' means, which lie {num(among)} from each other.")
            doc.figure(a.path / f"umap_without_{hl}.png", f"The same UMAP fit without {hl}.")
        doc.figure(a.path / "l2_domain_means.png", f"L2 distances between the domain-mean embeddings: {hl} to the "
                                                   f"others {num(to_hl)} on average, among the others {num(among)}.")
        who = f" ({name})" if len(arts) > 1 else ""
        ctx.findings.append([f"{hl} embeddings are separated from the other domains (its domain mean is farther "
                             f"from the others than they are from each other){who}", f"{num(to_hl)} vs {num(among)}",
                             "holds" if to_hl > among else "does not hold"])


def _circuits_section(ctx: _Ctx) -> None:
    doc, study = ctx.doc, ctx.study
    groups: dict[str, dict[str, Any]] = {}
    for a in study.by_command("circuits nodes", "circuits similarity", "circuits plot"):
        key = str(Path(str(a.option("circuits"))).resolve())
        groups.setdefault(key, {"run": a, "plots": []})
        if a.command == "circuits plot":  # the PNG (GraphML and DOT exports share its configuration)
            groups[key]["plots"].append(a.path.with_suffix(".png"))
        else:
            name = "node_similarity.json" if a.command == "circuits nodes" else "circuit_similarity.json"
            data = _read_json(a.path / name)
            if data:
                groups[key][a.command] = (a, data)
    doc.h(2, "Circuits (the paper's Figures 6b and 6c)")
    if not any("circuits nodes" in g or "circuits similarity" in g for g in groups.values()):
        computed = study.by_command("circuits compute", "circuits merge")
        if computed:
            c = computed[0].path
            cmd = f"clipgen circuits nodes {c} --out NODES_DIR and clipgen circuits similarity {c} --out SIM_DIR"
        else:
            run = _analysed_run(ctx)
            where = run.path if run is not None else "RUN_DIR"
            cmd = (f"clipgen circuits compute --model-dir {where} --data {DATA} --out CIRCUITS.h5, then clipgen "
                   f"circuits nodes CIRCUITS.h5 and clipgen circuits similarity CIRCUITS.h5")
        ctx.not_computed("node and circuit similarity", cmd)
        return
    for g in groups.values():
        nodes = g.get("circuits nodes")
        sim = g.get("circuits similarity")
        if not nodes and not sim:
            continue
        first = (nodes or sim)[0]
        data = (nodes or sim)[1]
        label, name, _ = ctx.label(first)
        hl = first.option("highlight") or DEFAULT_HIGHLIGHT
        classes = data.get("classes", {})
        settings = data.get("settings", {})
        doc.p(f"Neuron circuits of the {label} model's zero-shot classifier ({name}) for {len(classes)} classes "
              f"({', '.join(map(str, classes.values()))}) in every domain: integrated-gradient node scores against "
              f"a zero baseline ({settings.get('steps', '?')} steps, {settings.get('rule', '?')} rule) on up to "
              f"{settings.get('samples_per_class', '?')} test images per class and domain, the top "
              f"{100 * float(settings.get('node_fraction', 0.1)):.0f}% channels per layer, and edges between "
              f"consecutive layers.")
        who = f" ({name})" if len(groups) > 1 else ""
        if nodes and nodes[1].get("highlight"):
            a, nd = nodes
            h = nd["highlight"].get("all", {})
            w = [v for v in h.get("with", {}).get("mean", []) if v is not None]
            o = [v for v in h.get("without", {}).get("mean", []) if v is not None]
            layers = nd.get("layers", [])
            mid = intermediate(layers)
            idx = [layers.index(x) for x in mid]
            wm = _mean([h["with"]["mean"][i] for i in idx if h["with"]["mean"][i] is not None])
            om = _mean([h["without"]["mean"][i] for i in idx if h["without"]["mean"][i] is not None])
            doc.figure(a.path / "nodes_highlight_all.png",
                       f"Node similarity: Jaccard overlap of the selected channels of two domains, layer by layer, "
                       f"averaged over the classes; pairs with {hl} average {num(_mean(w))} over all layers "
                       f"({num(wm)} in {mid[0]}..{mid[-1]}), the other pairs {num(_mean(o))} ({num(om)}).")
            ctx.findings.append([f"Circuits of {hl} share fewer nodes with the other domains (node Jaccard of pairs "
                                 f"with {hl} below the other pairs, intermediate layers){who}",
                                 f"{num(wm)} vs {num(om)}", "holds" if wm < om else "does not hold"])
        if sim:
            a, sd = sim
            hlj = (sd.get("highlight") or {}).get("jaccard", {}).get("all", {})
            doc.figure(a.path / "circuits_jaccard_all.png",
                       f"Circuit similarity: Jaccard of the edge sets (top-{sd.get('edge_k', 3)} upstream edges per "
                       f"node) between the domain circuits of a class, averaged over the classes; pairs with {hl} "
                       f"{num(hlj.get('with'))}, the others {num(hlj.get('without'))}.")
            wl = (sd.get("highlight") or {}).get("wl_h1", {}).get("all", {})
            if wl:
                doc.figure(a.path / "circuits_wl_h1_all.png",
                           f"The same with the normalised Weisfeiler-Lehman subtree kernel (h = 1): pairs with {hl} "
                           f"{num(wl.get('with'))}, the others {num(wl.get('without'))}.")
            if hlj.get("with") is not None and hlj.get("without") is not None:
                ctx.findings.append([f"Circuits of {hl} are less similar to the other domains' (edge-set "
                                     f"Jaccard){who}", f"{num(hlj['with'])} vs {num(hlj['without'])}",
                                     "holds" if hlj["with"] < hlj["without"] else "does not hold"])
        pngs = sorted(p for p in g["plots"] if p.is_file())
        if pngs:
            doc.figure(pngs[0], f"One circuit ({pngs[0].stem.removeprefix('circuit_').replace('_', ', ', 1)}): "
                                f"the selected channels from act1 (bottom) to attnpool (top), coloured by signed "
                                f"node score, with each node's top upstream edges coloured by sign (GraphML and DOT "
                                f"exports beside the PNG).")


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
