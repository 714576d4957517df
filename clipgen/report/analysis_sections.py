"""The analysis sections of the study report (CKA, SAE feature sharing, embeddings, circuits), each from the
artifacts :mod:`clipgen.study` found; the study's own sections (data, accuracy, files) are in
:mod:`clipgen.report.sections`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from clipgen.domainnet import DEFAULT_HIGHLIGHT
from clipgen.report.document import Document
from clipgen.report.numbers import (
    _mean,
    _read_json,
    cka_layer_means,
    intermediate,
    num,
    pct,
)
from clipgen.report.sections import DATA, _analysed_run, _Ctx, _need_store


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
