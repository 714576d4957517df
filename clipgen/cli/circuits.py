"""``clipgen circuits``: neuron circuits of a model (compute, merge, info) and their similarity and figures."""

from __future__ import annotations

from pathlib import Path

import typer

from clipgen.circuits.compute import CircuitsConfig
from clipgen.circuits.plot import PlotConfig
from clipgen.circuits.similarity import CircuitSimilarityConfig, NodeSimilarityConfig
from clipgen.cli.common import (
    default,
    default_list,
    device_option,
    force_option,
    json_option,
    positive,
    precision_option,
    progress_option,
    writable,
)
from clipgen.domainnet import split_names  # commas and spaces, lower-cased: as the library parses these names

app = typer.Typer(
    help="Neuron circuits of the zero-shot classifier (Fig. 6b/6c): integrated-gradient node scores and "
         "edge matrices per (domain, class), computed batched and locally; node and circuit similarity across "
         "domains; circuit figures.\n\n"
         "Start with 'clipgen circuits compute --model-dir RUN --data DOMAINNET_ROOT --out CIRCUITS.h5'. See "
         "docs/circuits.md and docs/circuits-similarity.md.",
    no_args_is_help=True,
)


#: Options shared by the commands that read a finished circuits file.
_CIRCUITS = typer.Argument(..., help="A complete circuits file.")
_DOMAINS = typer.Option(default(NodeSimilarityConfig, "domains"), "--domains",
                        help="all, letters or comma-separated names (at least two).")
_SUBSETS = typer.Option(default_list(NodeSimilarityConfig, "subsets"), "--subsets",
                        help="Class subsets: all, id (not held out), ood.")


def _say(message: str) -> None:
    from clipgen.progress import console

    console.print(message, markup=False, highlight=False)


@app.command("compute")
def compute(
    model_dir: Path | None = typer.Option(None, "--model-dir", help="Run directory of a ModifiedResNet or ViT CLIP "
                                                                    "(clipgen-run.json and its checkpoints "
                                                                    "epoch_N.pt)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="A checkpoint not trained by clipgen (open_clip "
                                                                      "or OpenAI weights file), with --model."),
    model: str | None = typer.Option(None, "--model", help="Model name for --checkpoint (e.g. RN50)."),
    data: Path = typer.Option(..., "--data", help="DomainNet root (real or synthetic) with {domain}_test.txt."),
    out: Path = typer.Option(..., "--out", "-o", callback=writable, help="The circuits file (CIRCUITS.h5)."),
    epoch: int | None = typer.Option(None, "--epoch", min=0, help="Checkpoint epoch (default: the last)."),
    classes: str = typer.Option(default(CircuitsConfig, "classes"), "--classes",
                                help="all, ood (the held-out classes), id (the others), or "
                                     "comma-separated class names or labels."),
    domains: str = typer.Option(default(CircuitsConfig, "domains"), "--domains",
                                help="Domains: all, letters (cipqrs) or comma-separated "
                                     "names."),
    samples_per_class: int = typer.Option(default(CircuitsConfig, "samples_per_class"), "--samples-per-class",
                                          min=1, help="Test images per (domain, class), a "
                                                      "seeded draw (fewer when fewer exist)."),
    seed: int = typer.Option(default(CircuitsConfig, "seed"), "--seed", help="Seed of the image draw."),
    steps: int = typer.Option(default(CircuitsConfig, "steps"), "--steps", min=1, help="Integrated-gradient steps."),
    rule: str = typer.Option(default(CircuitsConfig, "rule"), "--rule",
                             help="left (alpha = k/steps, the paper's) or midpoint (alpha = "
                                  "(k + 1/2)/steps)."),
    node_fraction: float = typer.Option(default(CircuitsConfig, "node_fraction"), "--node-fraction",
                                        help="Selected nodes per layer: the top "
                                             "ceil(fraction x channels) by |score|."),
    nodes: str = typer.Option(default(CircuitsConfig, "nodes"), "--nodes",
                              help="What a node is: channels (of a ResNet's feature maps, of "
                                   "a ViT's residual stream) or heads (a ViT's attention "
                                   "heads)."),
    templates: str = typer.Option(default(CircuitsConfig, "templates"), "--templates",
                                  help="Prompt templates of the class text embeddings: "
                                       "paper (86), openai, named-domain, simple."),
    device: str = device_option(),
    precision: str = precision_option("auto (fp32 on CPU, bf16 autocast on GPU), fp32, bf16, fp16."),
    memory_gb: float | None = typer.Option(None, "--memory-gb", callback=positive,
                                           help="Working memory of the batched passes "
                                                "(default: half the free GPU memory; 2 on "
                                                "CPU)."),
    images: Path | None = typer.Option(None, "--images", help="Image cache of the test images ('clipgen data "
                                                              "cache'): read instead of decoding the JPEGs; refused "
                                                              "if made for another preprocessing or other images."),
    shard: str | None = typer.Option(None, "--shard", help="Compute part i of n of the (domain, class) list "
                                                           "(0-based 'i/n', or 'auto' from the SLURM array task "
                                                           "id and count) into the shard file CIRCUITS + "
                                                           "'.shard-i-of-n.h5'; join with 'circuits merge'."),
    force: bool = force_option("Start over, replacing an existing file (even one from "
                                                      "another model or other settings)."),
    progress: bool = progress_option(),
) -> None:
    """Compute the circuit of every (domain, class) into a circuits file; rerun the same command to resume."""
    from clipgen.circuits.compute import CircuitsConfig, run_circuits
    from clipgen.progress import out as con

    cfg = CircuitsConfig(out=out, model_dir=model_dir, data=data, epoch=epoch, checkpoint=checkpoint, model=model,
                         classes=classes, domains=domains,
                         samples_per_class=samples_per_class, seed=seed, steps=steps, rule=rule,
                         node_fraction=node_fraction, nodes=nodes, templates=templates, device=device,
                         precision=precision, memory_gb=memory_gb, images=images, shard=shard, force=force)
    res = run_circuits(cfg, progress=progress, note=_say)
    per = f", {sum(res.seconds) / len(res.seconds):.2f} s per entry" if res.seconds else ""
    con.print(f"circuits {res.path}: {res.planned} (domain, class) entries, {res.computed} computed now{per}, "
              f"fingerprint {res.fingerprint[:12]}" + (" (already complete)" if res.already_complete else ""),
              markup=False, highlight=False)


@app.command("merge")
def merge(
    shards: list[Path] = typer.Argument(..., help="Shard files (CIRCUITS.shard-i-of-n.h5), in any order."),
    out: Path = typer.Option(..., "--out", "-o", callback=writable, help="The merged circuits file."),
    force: bool = force_option("Replace an existing output."),
) -> None:
    """Join shard files into one circuits file, refusing gaps, overlaps and mismatched fingerprints."""
    from clipgen.circuits.merge import MergeConfig, run_merge
    from clipgen.progress import out as con

    res = run_merge(MergeConfig(shards=list(shards), out=out, force=force))
    con.print(f"merged {res.shards} shard(s) into {res.path}: {res.entries} (domain, class) entries", markup=False,
              highlight=False)


@app.command("info")
def info(
    circuits: Path = typer.Argument(..., help="A circuits file (also one being computed, or a shard)."),
    as_json: bool = json_option("Print JSON."),
) -> None:
    """Provenance, settings, layers and progress of a circuits file."""
    import json

    from clipgen.artifacts import to_jsonable
    from clipgen.circuits.store import open_circuits
    from clipgen.progress import out as con

    with open_circuits(circuits, allow_incomplete=True) as cf:
        s = cf.summary()
    if as_json:
        con.print_json(json.dumps(to_jsonable(s)))
        return
    st = s["settings"]
    e = s["entries"]
    ck = s["checkpoint"] or {}
    state = "complete" if s["complete"] else "in progress"
    if s["shard"]:
        sh = s["shard"]
        state += f", shard {sh['index']}/{sh['count']} (entries {sh['start']}..{sh['stop']} of {sh['total']})"
    lines = [
        f"{s['path']}: {s['format']} {s['schema_version']} ({state}), clipgen {s['clipgen_version']}, "
        f"created {s['created']}",
        f"model {s['model']} epoch {s['epoch']}, checkpoint {ck.get('path')} (sha256 {str(ck.get('sha256'))[:12]})",
        f"settings: steps {st.get('steps')} ({st.get('rule')} rule), node fraction {st.get('node_fraction')}, "
        f"up to {st.get('samples_per_class')} images (seed {st.get('seed')}), precision {st.get('precision')}, "
        f"templates {st.get('templates')}",
        "layers: " + " ".join(f"{la['name']}({la['channels']})" for la in s["layers"]),
        f"classes: {s['n_classes']} ({len(s['held_out'])} held out: {', '.join(s['held_out'].values()) or '-'})",
        f"entries: {e['complete']} of {e['planned']} complete; per domain "
        + ", ".join(f"{d} {n}" for d, n in e["per_domain"].items())
        + (f"; {len(e['absent'])} (domain, class) without test images" if e["absent"] else ""),
        f"images per entry: {s['images_per_entry']['min']}..{s['images_per_entry']['max']} "
        f"({s['images_per_entry']['total']} in all); fingerprint {s['fingerprint'][:12]}",
    ]
    for line in lines:
        con.print(line, markup=False, highlight=False)


@app.command("nodes")
def nodes(
    circuits: Path = _CIRCUITS,
    out: Path | None = typer.Option(None, "--out", "-o", callback=writable,
                                    help="Output folder (default: CIRCUITS without suffix + "
                                         "'-nodes' beside it)."),
    domains: str = _DOMAINS,
    subsets: str = _SUBSETS,
    highlight: str = typer.Option(default(NodeSimilarityConfig, "highlight"), "--highlight",
                                  help="Domain whose pairs are set against the others "
                                       "(none: no highlight)."),
    force: bool = force_option("Replace an existing output folder."),
    progress: bool = progress_option(),
    as_json: bool = json_option(),
) -> None:
    """Node similarity (Fig. 6b): Jaccard of the selected channels per layer and domain pair, over classes."""
    from clipgen.circuits.similarity import NodeSimilarityConfig, run_node_similarity

    cfg = NodeSimilarityConfig(circuits=circuits, out=out or circuits.with_name(circuits.stem + "-nodes"),
                               domains=domains, subsets=split_names(subsets), highlight=highlight, force=force)
    path = run_node_similarity(cfg, progress=progress)
    _similarity_summary("node similarity", path, as_json)


@app.command("similarity")
def similarity(
    circuits: Path = _CIRCUITS,
    out: Path | None = typer.Option(None, "--out", "-o", callback=writable,
                                    help="Output folder (default: CIRCUITS without suffix + "
                                         "'-similarity' beside it)."),
    edge_k: int = typer.Option(default(CircuitSimilarityConfig, "edge_k"), "--edge-k", min=1,
                               help="Edges per downstream node: its top-k upstream nodes by signed "
                                    "edge score."),
    metrics: str = typer.Option(default_list(CircuitSimilarityConfig, "metrics"), "--metrics",
                                help="jaccard (edge sets) and/or "
                                     "wl_hN (Weisfeiler-Lehman, h = N)."),
    domains: str = _DOMAINS,
    subsets: str = _SUBSETS,
    highlight: str = typer.Option(default(CircuitSimilarityConfig, "highlight"), "--highlight",
                                  help="Domain left out of the 'without' average "
                                       "(none: no highlight)."),
    force: bool = force_option("Replace an existing output folder."),
    progress: bool = progress_option(),
    as_json: bool = json_option(),
) -> None:
    """Circuit similarity (Fig. 6c): edge-set Jaccard and WL kernels between the domain graphs of each class."""
    from clipgen.circuits.similarity import CircuitSimilarityConfig, run_circuit_similarity

    cfg = CircuitSimilarityConfig(circuits=circuits, out=out or circuits.with_name(circuits.stem + "-similarity"),
                                  edge_k=edge_k, metrics=split_names(metrics), domains=domains,
                                  subsets=split_names(subsets),
                                  highlight=highlight, force=force)
    path = run_circuit_similarity(cfg, progress=progress)
    _similarity_summary("circuit similarity", path, as_json)


def _similarity_summary(label: str, path: Path, as_json: bool) -> None:
    """The highlighted domain's mean similarity vs the other pairs, then the output folder (or one JSON document)."""
    from clipgen.circuits.similarity import highlight_means
    from clipgen.cli.common import emit_json, summary_console

    con = summary_console(as_json)
    hl = highlight_means(path)
    if hl is not None:
        groups = ({f"{s} classes, mean over layers": v for s, v in hl["subsets"].items()} if "subsets" in hl else
                  {f"{m}, {s} classes": v for m, by_s in hl["metrics"].items() for s, v in by_s.items()})
        con.print(f"{label}: pairs with {hl['domain']} vs the other pairs", markup=False, highlight=False)
        for name, v in groups.items():
            con.print(f"  {name}: {_num(v['with'])} vs {_num(v['without'])}", markup=False, highlight=False)
    con.print(f"{label}: {path}", markup=False, highlight=False)
    if as_json:
        emit_json({"out": path, "files": sorted(p.name for p in Path(path).iterdir()), "highlight": hl})


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


@app.command("plot")
def plot(
    circuits: Path = _CIRCUITS,
    domain: str = typer.Option(..., "--domain", help="The domain (name or letter)."),
    class_name: str = typer.Option(..., "--class", help="The class: a name or a label."),
    out: Path | None = typer.Option(None, "--out", "-o", callback=writable,
                                    help="The PNG, or a folder for circuit_<domain>_"
                                         "<class>.png (default: CIRCUITS without suffix + "
                                         "'-plots' beside it)."),
    edge_k: int = typer.Option(default(PlotConfig, "edge_k"), "--edge-k", min=1,
                               help="Edges per downstream node (top-k upstream by signed score)."),
    export: str = typer.Option(default_list(PlotConfig, "export"), "--export",
                               help="Graph files next to the PNG: graphml, dot, or "
                                    "none."),
    force: bool = force_option("Replace existing files."),
) -> None:
    """Draw one circuit as a layered graph (bottom: the first layer after input; top: the embedding) and export it
    as GraphML/DOT."""
    from clipgen.circuits.plot import PlotConfig, run_plot
    from clipgen.progress import out as con

    cfg = PlotConfig(circuits=circuits, domain=domain, class_name=class_name,
                     out=out or circuits.with_name(circuits.stem + "-plots"), edge_k=edge_k, export=split_names(export),
                     force=force)
    for p in run_plot(cfg):
        con.print(str(p), markup=False, highlight=False)
