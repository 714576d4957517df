"""The study report of ``clipgen demo``: ``report.md`` and ``report.html`` (figures embedded) from the artifacts.

The report reads only files the stages wrote (results.json of every run, the eval summary, cka.json,
embeddings.json, feature-sharing.json, the SAE metrics, the circuits results), so it can be rebuilt from a demo folder
at any time. Every figure comes with one sentence saying what it shows and the numbers behind it. The section
"Which of the paper's findings hold here" compares numbers with fixed rules written down in the report itself
(:func:`verdict`), never with wording chosen after looking at the outcome.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SETUP_LABELS = {"natural-only": "Natural-only", "cg-low": "CG low-diversity", "cg-high": "CG high-diversity",
                "leave-out-domain": "Leave-out-domain"}


# ---------------------------------------------------------------------------------------------------------------
# a tiny document model rendered to Markdown and HTML


@dataclass
class Block:
    kind: str  # h1 h2 h3 p table figure list
    text: str = ""
    rows: list[list[str]] = field(default_factory=list)  # table rows (first = header) or list items ([item])
    path: Path | None = None  # figure


class Document:
    def __init__(self) -> None:
        self.blocks: list[Block] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(Block(f"h{level}", text))

    def p(self, text: str) -> None:
        self.blocks.append(Block("p", text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.blocks.append(Block("table", rows=[list(map(str, header))] + [[str(c) for c in r] for r in rows]))

    def items(self, items: Sequence[str]) -> None:
        self.blocks.append(Block("list", rows=[[i] for i in items]))

    def figure(self, path: Path | None, caption: str) -> None:
        """A figure with its one-sentence caption; a missing file becomes a note, never a broken link."""
        if path is None or not Path(path).is_file():
            self.p(f"*(figure not available: {caption})*")
            return
        self.blocks.append(Block("figure", caption, path=Path(path)))

    # -- rendering -----------------------------------------------------------------------------------------------
    def markdown(self, base: Path) -> str:
        out: list[str] = []
        for b in self.blocks:
            if b.kind.startswith("h"):
                out.append("#" * int(b.kind[1]) + " " + b.text)
            elif b.kind == "p":
                out.append(b.text)
            elif b.kind == "list":
                out.append("\n".join(f"- {r[0]}" for r in b.rows))
            elif b.kind == "table":
                head, *body = b.rows
                lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                lines += ["| " + " | ".join(r) + " |" for r in body]
                out.append("\n".join(lines))
            elif b.kind == "figure":
                rel = _relative(b.path, base)
                out.append(f"![{_md_alt(b.text)}]({rel})\n\n*{b.text}*")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
                 f"</title>\n<style>{_CSS}</style></head><body>"]
        for b in self.blocks:
            if b.kind.startswith("h"):
                parts.append(f"<{b.kind}>{_inline(b.text)}</{b.kind}>")
            elif b.kind == "p":
                parts.append(f"<p>{_inline(b.text)}</p>")
            elif b.kind == "list":
                parts.append("<ul>" + "".join(f"<li>{_inline(r[0])}</li>" for r in b.rows) + "</ul>")
            elif b.kind == "table":
                head, *body = b.rows
                parts.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head)
                             + "</tr></thead><tbody>"
                             + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                             + "</tbody></table>")
            elif b.kind == "figure":
                data = base64.b64encode(b.path.read_bytes()).decode("ascii")
                parts.append(f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{html.escape(b.text)}\">"
                             f"<figcaption>{_inline(b.text)}</figcaption></figure>")
        parts.append("</body></html>\n")
        return "\n".join(parts)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;line-height:1.45}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.25em .6em;text-align:left}"
        "th{background:#f0f0f0}figure{margin:1.5em 0}img{max-width:100%}figcaption{font-style:italic;color:#333}"
        "code{background:#f4f4f4;padding:0 .2em}")


def _relative(path: Path, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(base).resolve()))
    except ValueError:
        return str(path)


def _md_alt(text: str) -> str:
    return text.replace("[", "(").replace("]", ")")[:120]


def _inline(text: str) -> str:
    """Markdown's `code`, **bold** and *italic* in HTML (enough for the report's own text)."""
    import re

    s = html.escape(text)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)
    s = re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<em>\1</em>", s)
    return s


# ---------------------------------------------------------------------------------------------------------------
# numbers


def pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def std_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy ``p`` measured on ``n`` images."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n > 0 else float("nan")


def verdict(a: float, n_a: int, b: float, n_b: int) -> tuple[str, float]:
    """Does accuracy ``a`` exceed ``b``? ``holds`` when a - b > 2 standard errors of the difference,
    ``reversed`` when b - a > 2 SE, ``inconclusive`` otherwise (the rule the report states)."""
    se = math.sqrt(std_error(a, n_a) ** 2 + std_error(b, n_b) ** 2)
    d = a - b
    if se == 0 or math.isnan(se):
        return ("holds" if d > 0 else "reversed" if d < 0 else "inconclusive"), se
    if d > 2 * se:
        return "holds", se
    if d < -2 * se:
        return "reversed", se
    return "inconclusive", se


@dataclass
class RunNumbers:
    setup: str
    name: str
    epochs: list[int]
    metrics: dict[str, dict[str, list]]  # domain -> metric -> per-epoch values
    counts: dict[str, dict[str, Any]]
    n_classes: int

    def last(self, domain: str, metric: str) -> float | None:
        v = self.metrics.get(domain, {}).get(metric)
        return None if not v else v[-1]

    def n(self, domain: str, group: str) -> int:
        return int(self.counts.get(domain, {}).get(group, 0))


def load_run_numbers(setup: str, results_json: Path) -> RunNumbers:
    r = json.loads(Path(results_json).read_text(encoding="utf-8"))
    return RunNumbers(setup, r["run"]["name"], list(r["epochs"]), r["metrics"], r["counts"],
                      int(r["classes"]["count"]))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def cka_layer_means(cka: dict[str, Any], highlight: str, subset: str = "all", kernel: str = "linear",
                    estimator: str = "unbiased") -> dict[str, tuple[float, float]]:
    """Per layer: (mean CKA over the pairs with ``highlight``, mean over the other pairs)."""
    by_layer: dict[str, tuple[list[float], list[float]]] = {}
    for r in cka["results"]:
        if (r["subset"], r["kernel"], r["estimator"]) != (subset, kernel, estimator):
            continue
        h, o = by_layer.setdefault(r["layer"], ([], []))
        (h if highlight in (r["domain_a"], r["domain_b"]) else o).append(float(r["cka"]))
    return {layer: (_mean(h), _mean(o)) for layer, (h, o) in by_layer.items() if h and o}


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


def intermediate(layers: Sequence[str]) -> list[str]:
    """The middle third of the layer list (the "intermediate layers" the paper's claim is about)."""
    n = len(layers)
    return list(layers[n // 3: max(n // 3 + 1, (2 * n) // 3)])


# ---------------------------------------------------------------------------------------------------------------
# the demo report


def build_report(demo: Any, stages: dict[str, Any], *, total_seconds: float) -> tuple[Path, Path]:
    """Write ``OUT/report.md`` and ``OUT/report.html`` for a demo (:class:`clipgen.demo.Demo`)."""
    from clipgen.artifacts import write_text_atomic

    doc = Document()
    x, seed = demo.test_domain, demo.cfg.seed
    findings: list[list[str]] = []
    out = demo.out

    doc.h(1, f"clipgen demo: domain and compositional generalization on synthetic DomainNet (test domain {x})")
    doc.p(f"This report reproduces the paper's study on clipgen's synthetic DomainNet: {demo.scale.n_classes} "
          f"DomainNet classes in six rendering styles, {demo.scale.n_held_out} of them held out (C2), "
          f"{demo.scale.model} CLIP models trained for {demo.scale.epochs} epochs with OpenCLIP's trainer on the "
          f"four training distributions of the paper's Figure 2 for the test domain **{x}**. Seed {seed}, one run "
          f"per setup (the paper uses 3 seeds); device: {demo.device_line}; "
          f"demo scale `{demo.scale.name}`; its stages took {_stage_seconds(stages):.0f} s when they ran "
          f"(this invocation: {total_seconds:.0f} s).")
    doc.figure(demo.data / "contact_sheet.png", "The synthetic DomainNet: one row per domain, one column per class "
               "(the class is the object's shape; the domain is the rendering style).")
    _data_section(doc, demo)

    runs = {s: load_run_numbers(s, Path(demo.run_dir(s)) / "eval" / "zero-shot" / x / "results.json")
            for s in SETUP_ORDER if (Path(demo.run_dir(s)) / "eval" / "zero-shot" / x / "results.json").is_file()}
    if runs:
        _accuracy_section(doc, demo, runs, findings)
    cka_json = _read_json(out / "cka" / demo.run_name("cg-high") / "cka.json")
    if cka_json:
        _cka_section(doc, demo, cka_json, findings)
    _sae_section(doc, demo, runs, findings)
    emb = _read_json(out / "embeddings" / demo.run_name("cg-high") / "embeddings.json")
    if emb:
        _embedding_section(doc, demo, emb, findings)

    _circuits_section(doc, demo, findings)

    doc.h(2, "Which of the paper's findings hold here")
    doc.p("Rules, fixed before looking at the numbers: an accuracy comparison *holds* when the difference exceeds "
          "twice its binomial standard error (independent test images, one seed), is *reversed* when it exceeds it "
          "in the other direction, and is *inconclusive* otherwise. Comparisons of similarity scores (CKA, feature "
          "sharing, node and circuit similarity) have no error estimate from one seed; they are reported as "
          "*holds* / *does not hold* by the sign of the difference and should be read as descriptive.")
    if findings:
        doc.table(["finding (paper)", "numbers here", "verdict"], findings)
    doc.p(f"Seeds: data, mixtures and training seed {seed}; SAE seed {seed}; UMAP seed 42 (the paper's); circuit "
          f"images drawn with seed 42. Synthetic data is not DomainNet: these verdicts describe this demo, not the "
          f"paper's models.")

    _files_section(doc, demo, stages)
    md_path, html_path = out / "report.md", out / "report.html"
    write_text_atomic(md_path, doc.markdown(out))
    write_text_atomic(html_path, doc.html(f"clipgen demo report ({x})"))
    return md_path, html_path


SETUP_ORDER = ("natural-only", "cg-low", "cg-high", "leave-out-domain")


def _stage_seconds(stages: dict[str, Any]) -> float:
    return float(sum(getattr(rec, "seconds", 0.0) for rec in stages.values()))


def _data_section(doc: Document, demo: Any) -> None:
    idx = _read_json(demo.mixtures / "mixtures.json")
    if not idx:
        return
    rows = []
    for e in sorted(idx.get("mixtures", {}).values(), key=lambda e: SETUP_ORDER.index(e["setup"])
                    if e.get("setup") in SETUP_ORDER else 99):
        if e.get("split") != "train" or not str(e.get("file", "")).startswith("combined"):
            continue
        c = e.get("counts", {})
        x = demo.test_domain
        tx = c.get(x, {}) if isinstance(c.get(x), dict) else {}
        rows.append([SETUP_LABELS.get(e.get("setup"), e.get("setup")), f"`{e.get('file')}`",
                     "".join(d[0] for d in e.get("domains", [])), c.get("base", 0), c.get("total", 0),
                     tx.get("id", 0), tx.get("ood", 0)])
    if rows:
        doc.h(2, "Training data")
        doc.p("The four mixtures (published file names; DomainNet part size-matched by the paper's first-k rule, "
              "natural-only not matched). Columns: domains included, base-dataset rows, total rows, and the test "
              "domain's ID / held-out images in training.")
        doc.table(["setup", "file", "domains", "base", "total", f"{demo.test_domain} ID", f"{demo.test_domain} C2"],
                  rows)


def _accuracy_section(doc: Document, demo: Any, runs: dict[str, RunNumbers], findings: list[list[str]]) -> None:
    x = demo.test_domain
    any_run = next(iter(runs.values()))
    chance = 1 / any_run.n_classes
    ep = any_run.epochs[-1]
    doc.h(2, "Zero-shot generalization (the paper's Figure 2)")
    rows = []
    for s, r in runs.items():
        rows.append([SETUP_LABELS[s], pct(r.last(x, "ood_acc")), pct(r.last(x, "ood_acc_unweighted")),
                     pct(r.last(x, "id_acc")), pct(r.last("real", "ood_acc")), pct(r.last("real", "id_acc")),
                     f"{r.n(x, 'ood')} / {r.n(x, 'id')}"])
    doc.table(["setup", f"{x} C2 (held-out)", f"{x} C2 unweighted", f"{x} C1 (ID)", "real C2", "real C1",
               f"{x} images C2 / C1"], rows)
    vals = ", ".join(f"{SETUP_LABELS[s]} {pct(r.last(x, 'ood_acc'))}" for s, r in runs.items())
    doc.figure(demo.out / "eval-summary" / "figure2.png",
               f"Held-out-class (C2) zero-shot accuracy on {x} at epoch {ep}, sample-weighted: {vals} "
               f"(chance {pct(chance)}; {any_run.n(x, 'ood')} test images per setup).")
    curve_text = ", ".join(f"{SETUP_LABELS[s]} from {pct(r.metrics[x]['ood_acc'][0])} to "
                           f"{pct(r.metrics[x]['ood_acc'][-1])}" for s, r in runs.items() if x in r.metrics)
    doc.figure(demo.out / "eval-summary" / "curves.png",
               f"The same accuracy over the training epochs (epoch 0 = the untrained model): {curve_text}.")

    def cmp(claim: str, a: str, b: str, domain: str = x, metric: str = "ood_acc", group: str = "ood") -> None:
        if a not in runs or b not in runs:
            return
        va, vb = runs[a].last(domain, metric), runs[b].last(domain, metric)
        if va is None or vb is None:
            return
        v, se = verdict(va, runs[a].n(domain, group), vb, runs[b].n(domain, group))
        findings.append([claim, f"{SETUP_LABELS[a]} {pct(va)} vs {SETUP_LABELS[b]} {pct(vb)} "
                                f"(difference {100 * (va - vb):+.1f} points, 2 SE = {200 * se:.1f})", v])

    cmp(f"Domain diversity helps DG: leave-out-domain beats natural-only on {x} C2", "leave-out-domain",
        "natural-only")
    cmp(f"Domain diversity helps CG: CG high-diversity beats CG low-diversity on {x} C2", "cg-high", "cg-low")
    cmp(f"CG high-diversity beats natural-only on {x} C2", "cg-high", "natural-only")
    cmp(f"CG can be weaker than DG: leave-out-domain beats CG high-diversity on {x} C2 (the paper finds this for "
        f"some test domains)", "leave-out-domain", "cg-high")
    seen = [(s, r.last(x, "id_acc"), r.last("real", "id_acc")) for s, r in runs.items() if s in ("cg-low", "cg-high")]
    if seen:
        txt = "; ".join(f"{SETUP_LABELS[s]}: {x} C1 {pct(a)}, real C1 {pct(b)}" for s, a, b in seen)
        ok = all(a is not None and b is not None and a > 2 * chance and b > 2 * chance for _, a, b in seen)
        findings.append([f"The models learn the classes of the seen domains (C1 of {x} and real, both in training; "
                         f"rule: above twice chance = {pct(2 * chance)})", txt, "holds" if ok else "does not hold"])


def _cka_section(doc: Document, demo: Any, cka: dict[str, Any], findings: list[list[str]]) -> None:
    hl = demo.highlight
    means = cka_layer_means(cka, hl)
    layers = [lay for lay in cka["layers"] if lay in means]
    if not layers:
        return
    mid = intermediate(layers)
    h_mid = _mean([means[lay][0] for lay in mid])
    o_mid = _mean([means[lay][1] for lay in mid])
    doc.h(2, "Representational similarity across domains (CKA, the paper's Figure 6a)")
    cg = demo.run_name("cg-high")
    base = demo.out / "cka" / cg
    doc.figure(base / "highlight_all_linear_unbiased.png",
               f"Linear CKA (unbiased HSIC) between the class-mean activations of two domains, layer by layer, for "
               f"the CG high-diversity model ({cg}); pairs with {hl} against the other pairs. In the intermediate "
               f"layers ({mid[0]} to {mid[-1]}) the mean is {num(h_mid)} for pairs with {hl} and {num(o_mid)} for "
               f"the other pairs.")
    doc.figure(base / "pairs_all_linear_unbiased.png",
               f"The same for every domain pair; at the last layer ({layers[-1]}) the pairs with {hl} average "
               f"{num(means[layers[-1]][0])}, the others {num(means[layers[-1]][1])}.")
    findings.append([f"Representations of {hl} are less shared with the other domains in intermediate layers "
                     f"(CKA of pairs with {hl} below the other pairs)",
                     f"mean linear CKA {mid[0]}..{mid[-1]}: {num(h_mid)} with {hl} vs {num(o_mid)} others",
                     "holds" if h_mid < o_mid else "does not hold"])


def _sae_section(doc: Document, demo: Any, runs: dict[str, RunNumbers], findings: list[list[str]]) -> None:
    x = demo.test_domain
    res = {}
    for setup in ("cg-high", "leave-out-domain"):
        base = demo.out / "sae" / demo.run_name(setup)
        fs, m = _read_json(base / "features" / "feature-sharing.json"), _read_json(base / "metrics.json")
        if fs:
            res[setup] = (fs, m or {}, base)
    if not res:
        return
    doc.h(2, "SAE feature sharing (the paper's Appendix C.1)")
    rows = []
    for setup, (fs, m, _) in res.items():
        val = m.get("val") or m.get("final_train") or {}
        rows.append([SETUP_LABELS[setup], num(fs.get("score")), num(val.get("fve"), 2), num(val.get("l0"), 1),
                     str(val.get("dead", "n/a")), str(m.get("arch", {}).get("d_sae", "n/a"))])
    doc.table(["model", f"sharing score of {x} (mean mpct vs the other 5 domains)", "SAE FVE (val)", "L0 (val)",
               "dead latents (val)", "latents"], rows)
    for setup, (fs, _, base) in res.items():
        doc.figure(base / "features" / "feature-sharing.png",
                   f"mpct of the top-20 SAE latents between domains, averaged over the held-out classes, for the "
                   f"{SETUP_LABELS[setup]} model; the {x} row scores {num(fs.get('score'))}.")
    _sae_names_table(doc, {setup: base for setup, (_, _, base) in res.items()}, x)
    if len(res) == 2 and "cg-high" in runs and "leave-out-domain" in runs:
        s_cg, s_lod = res["cg-high"][0].get("score"), res["leave-out-domain"][0].get("score")
        a_cg, a_lod = runs["cg-high"].last(x, "ood_acc"), runs["leave-out-domain"].last(x, "ood_acc")
        if None not in (s_cg, s_lod, a_cg, a_lod):
            agree = (s_cg - s_lod) * (a_cg - a_lod) > 0
            findings.append(["The model that generalizes better to the held-out classes shares more SAE features "
                             f"of {x} with the other domains (CG high-diversity vs leave-out-domain)",
                             f"sharing {num(s_cg)} vs {num(s_lod)}; {x} C2 accuracy {pct(a_cg)} vs {pct(a_lod)}",
                             "holds" if agree else "does not hold"])


def _sae_names_table(doc: Document, bases: dict[str, Path], x: str) -> None:
    """The named SAE concepts: per model and held-out class its top shared latents and those specific to ``x``,
    each with its best vocabulary name (from ``features/named-latents.json``, written by ``clipgen sae names``)."""
    rows = []
    for setup, base in bases.items():
        nl = _read_json(base / "features" / "named-latents.json") or {}
        for cls, rec in nl.get("classes", {}).items():
            def fmt(es: list[dict[str, Any]]) -> str:
                return ", ".join(f"#{e['latent']} {e['names'][0]} ({e['similarity']:.2f})" for e in es) or "none"
            rows.append([SETUP_LABELS[setup], cls, fmt(rec.get("shared", [])[:3]),
                         fmt(rec.get("specific", {}).get(x, []))])
    if not rows:
        return
    doc.p("Named SAE concepts: each latent is named by the vocabulary term (DomainNet and ImageNet class names, "
          "domain words) whose text embedding is closest (cosine) to its decoder direction; shown are the latents "
          f"most often among the top latents of a class's images in at least two domains (shared) and in {x} only.")
    doc.table(["model", "class", "top shared latents (name, cosine)", f"latents specific to {x}"], rows)


def _embedding_section(doc: Document, demo: Any, emb: dict[str, Any], findings: list[list[str]]) -> None:
    import numpy as np

    hl = demo.highlight
    doms = emb["domains"]
    base = demo.out / "embeddings" / demo.run_name("cg-high")
    doc.h(2, "Embedding analysis (the paper's Figure 5)")
    if hl in doms:
        d = np.asarray(emb["domain_mean_l2"], dtype=float)
        i = doms.index(hl)
        others = [j for j in range(len(doms)) if j != i]
        to_hl = float(np.mean(d[i, others]))
        among = float(np.mean([d[a, b] for a in others for b in others if a < b]))
        umap_png = base / "umap_all.png"
        if umap_png.is_file():
            doc.figure(umap_png, f"UMAP (densMAP, seed 42) of the image embeddings of the CG high-diversity model, "
                                 f"coloured by domain; the domain means of {hl} lie {num(to_hl)} (mean L2) from the "
                                 f"other domains' means, which lie {num(among)} from each other.")
            doc.figure(base / f"umap_without_{hl}.png", f"The same UMAP fit without {hl}.")
        doc.figure(base / "l2_domain_means.png", f"L2 distances between the domain-mean embeddings: {hl} to the "
                                                 f"others {num(to_hl)} on average, among the others {num(among)}.")
        findings.append([f"{hl} embeddings are separated from the other domains (its domain mean is farther from "
                         f"the others than they are from each other)", f"{num(to_hl)} vs {num(among)}",
                         "holds" if to_hl > among else "does not hold"])


def _circuits_section(doc: Document, demo: Any, findings: list[list[str]]) -> None:
    base = demo.circuits_dir()
    nodes = _read_json(base / "nodes" / "node_similarity.json")
    sim = _read_json(base / "similarity" / "circuit_similarity.json")
    if not nodes and not sim:
        return
    hl = demo.highlight
    doc.h(2, "Circuits (the paper's Figures 6b and 6c)")
    classes = (nodes or sim or {}).get("classes", {})
    settings = (nodes or sim or {}).get("settings", {})
    doc.p(f"Neuron circuits of the CG high-diversity model's zero-shot classifier for {len(classes)} classes "
          f"({', '.join(classes.values())}) in every domain: integrated-gradient node scores against a zero "
          f"baseline ({settings.get('steps', '?')} steps, {settings.get('rule', '?')} rule) on up to "
          f"{settings.get('samples_per_class', '?')} test images per class and domain, the top "
          f"{100 * float(settings.get('node_fraction', 0.1)):.0f}% channels per layer, and edges between "
          f"consecutive layers.")
    if nodes and nodes.get("highlight"):
        h = nodes["highlight"].get("all", {})
        w, o = [v for v in h.get("with", {}).get("mean", []) if v is not None], \
            [v for v in h.get("without", {}).get("mean", []) if v is not None]
        layers = nodes.get("layers", [])
        mid = intermediate(layers)
        idx = [layers.index(x) for x in mid]
        wm = _mean([h["with"]["mean"][i] for i in idx if h["with"]["mean"][i] is not None])
        om = _mean([h["without"]["mean"][i] for i in idx if h["without"]["mean"][i] is not None])
        doc.figure(base / "nodes" / "nodes_highlight_all.png",
                   f"Node similarity: Jaccard overlap of the selected channels of two domains, layer by layer, "
                   f"averaged over the classes; pairs with {hl} average {num(_mean(w))} over all layers "
                   f"({num(wm)} in {mid[0]}..{mid[-1]}), the other pairs {num(_mean(o))} ({num(om)}).")
        findings.append([f"Circuits of {hl} share fewer nodes with the other domains (node Jaccard of pairs with "
                         f"{hl} below the other pairs, intermediate layers)", f"{num(wm)} vs {num(om)}",
                         "holds" if wm < om else "does not hold"])
    if sim:
        hlj = (sim.get("highlight") or {}).get("jaccard", {}).get("all", {})
        doc.figure(base / "similarity" / "circuits_jaccard_all.png",
                   f"Circuit similarity: Jaccard of the edge sets (top-{sim.get('edge_k', 3)} upstream edges per "
                   f"node) between the domain circuits of a class, averaged over the classes; pairs with {hl} "
                   f"{num(hlj.get('with'))}, the others {num(hlj.get('without'))}.")
        wl = (sim.get("highlight") or {}).get("wl_h1", {}).get("all", {})
        if wl:
            doc.figure(base / "similarity" / "circuits_wl_h1_all.png",
                       f"The same with the normalised Weisfeiler-Lehman subtree kernel (h = 1): pairs with {hl} "
                       f"{num(wl.get('with'))}, the others {num(wl.get('without'))}.")
        if hlj.get("with") is not None and hlj.get("without") is not None:
            findings.append([f"Circuits of {hl} are less similar to the other domains' (edge-set Jaccard)",
                             f"{num(hlj['with'])} vs {num(hlj['without'])}",
                             "holds" if hlj["with"] < hlj["without"] else "does not hold"])
    pngs = sorted((base / "plot").glob("*.png")) if (base / "plot").is_dir() else []
    if pngs:
        doc.figure(pngs[0], f"One circuit ({pngs[0].stem.removeprefix('circuit_').replace('_', ', ', 1)}): the "
                            f"selected channels from act1 (bottom) to attnpool (top), coloured by signed node "
                            f"score, with each node's top upstream edges coloured by sign (GraphML and DOT "
                            f"exports beside the PNG).")


def _files_section(doc: Document, demo: Any, stages: dict[str, Any]) -> None:
    doc.h(2, "Artifacts and how to rerun a step")
    doc.p(f"Everything lives under `{demo.out}`; each artifact has its configuration JSON beside it. Rerunning "
          f"`clipgen demo --out {demo.out}` skips finished stages; any single step can be rerun by hand, e.g.:")
    cg = demo.run_name("cg-high")
    cka_rec = stages.get("cka")
    subsets = ",".join(cka_rec.outputs.get("subsets", [])) if cka_rec is not None else "all,id,ood"
    doc.items([
        f"`clipgen eval zero-shot --model-dir {demo.run_dir('cg-high')} --data-root {demo.data}`",
        f"`clipgen eval summary {demo.runs} --out {demo.out / 'eval-summary'} --force`",
        f"`clipgen extract --model-dir {demo.run_dir('cg-high')} --data {demo.data} --out "
        f"{demo.store('cg-high', 'test')}`",
        f"`clipgen cka {demo.store('cg-high', 'test')} --out {demo.out / 'cka' / cg} --subsets {subsets} --force`",
        f"`clipgen embeddings {demo.store('cg-high', 'test')} --out {demo.out / 'embeddings' / cg} --force`",
        f"`clipgen sae features {demo.store('cg-high', 'test')} --sae {demo.out / 'sae' / cg} --force`",
        f"`clipgen circuits similarity {demo.circuits_dir() / 'circuits.h5'} --out "
        f"{demo.circuits_dir() / 'similarity'} --force`",
    ])
    rows = [[name, f"{rec.seconds:.0f} s" if hasattr(rec, "seconds") else ""] for name, rec in stages.items()
            if hasattr(rec, "seconds")]
    if rows:
        doc.table(["stage", "time (when it last ran)"], rows)
