"""``clipgen data``: every data preparation step of the paper, for real data and a synthetic stand-in."""

from __future__ import annotations

from pathlib import Path

import typer

from clipgen.cli.common import default, default_list, force_option, json_option, progress_option, split_list, writable
from clipgen.data.base import MergeBaseConfig
from clipgen.data.captions import CaptionConfig
from clipgen.data.image_cache import CacheConfig
from clipgen.data.imagenet_captions import ImageNetCaptionsConfig
from clipgen.data.imagenet_sketch import SketchConfig
from clipgen.data.mixtures import MixturesConfig
from clipgen.data.synth import SynthConfig

app = typer.Typer(help="Prepare data: synthetic DomainNet, captions, ImageNet-Captions, mixtures, merges.",
                  no_args_is_help=True)


@app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", "-o", callback=writable,
                             help="Output folder (the synthetic DomainNet root)."),
    n_classes: int = typer.Option(default(SynthConfig, "n_classes"), "--n-classes",
                                  min=1, help="Number of classes (ignored with --classes)."),
    classes: str | None = typer.Option(None, "--classes",
                                          help="Explicit comma-separated DomainNet class names."),
    n_held_out: int | None = typer.Option(None, "--n-held-out", min=0,
                                             help="How many of the paper's 15 held-out classes the default set "
                                                  "includes [default: a third of --n-classes]."),
    train_per_class: int = typer.Option(default(SynthConfig, "train_per_class"), "--train-per-class",
                                        min=1, help="Train images per class and domain."),
    test_per_class: int = typer.Option(default(SynthConfig, "test_per_class"), "--test-per-class",
                                       min=1, help="Test images per class and domain."),
    base_per_class: int = typer.Option(default(SynthConfig, "base_per_class"), "--base-per-class",
                                       min=0, help="Base-dataset images per class."),
    base_extra_classes: int = typer.Option(default(SynthConfig, "base_extra_classes"), "--base-extra-classes", min=0,
                                           help="Base-only classes (like ImageNet classes absent from DomainNet)."),
    image_size: int = typer.Option(default(SynthConfig, "image_size"), "--image-size",
                                   min=8, help="Image side in pixels."),
    seed: int = typer.Option(default(SynthConfig, "seed"), "--seed",
                             help="Random seed; the output is deterministic in it."),
    quirks: bool = typer.Option(default(SynthConfig, "quirks"), "--quirks/--no-quirks",
                                help="Mimic the real dataset's quirks (a class without painting test images)."),
    workers: int = typer.Option(default(SynthConfig, "workers"), "--workers",
                                min=0, help="Rendering processes (0: one per core, at most 8)."),
    split_sizes: str | None = typer.Option(None, "--split-sizes",
                                           help="Images per domain and split instead of the per-class counts: "
                                                "'paper' (the real DomainNet's) or DOMAIN=TRAIN/TEST,... spread "
                                                "over the classes."),
    base_rows: int | None = typer.Option(None, "--base-rows", min=1,
                                         help="Base-dataset rows (train + val), cycling over --base-per-class "
                                              "images per class [default: one row per image]."),
    fast: bool = typer.Option(default(SynthConfig, "fast"), "--fast",
                              help="Draw at the output size (no 2x supersampling): ~3x faster."),
    distinct_images: int | None = typer.Option(None, "--distinct-images", min=1,
                                               help="At most N distinct images per domain, split and class; the "
                                                    "others are hard links to them (large datasets in minutes)."),
    force: bool = force_option("Replace an existing synthetic dataset in --out."),
) -> None:
    """Generate a synthetic DomainNet (six rendering styles) plus a natural-style base dataset, offline."""
    from clipgen.data.synth import SynthConfig, parse_split_sizes, run_synth
    from clipgen.progress import out as con

    cfg = SynthConfig(
        out=out, classes=split_list(classes or None),
        n_classes=n_classes, n_held_out=n_held_out, train_per_class=train_per_class, test_per_class=test_per_class,
        base_per_class=base_per_class, base_extra_classes=base_extra_classes, image_size=image_size, seed=seed,
        quirks=quirks, workers=workers, split_sizes=parse_split_sizes(split_sizes) if split_sizes else None,
        base_rows=base_rows, fast=fast, distinct_images=distinct_images, force=force,
    )
    res = run_synth(cfg)
    total = sum(sum(v.values()) for v in res.counts.values())
    con.print(f"[bold]synthetic DomainNet[/] in {res.root}: {len(res.classes)} classes "
              f"({len(res.held_out)} held-out: {', '.join(res.held_out)}), {total} images in {len(res.counts)} "
              f"domains, base dataset {res.base_counts['train']} train / {res.base_counts['val']} val")
    if res.empty_painting_test_class:
        con.print(f"quirk: class {res.empty_painting_test_class!r} has no painting test images (as in DomainNet)")
    con.print(f"contact sheet: {res.contact_sheet}")


def _float_list(value: str | None, option: str) -> list[float]:
    from clipgen.errors import option_error

    out = []
    for v in split_list(value) or []:
        try:
            out.append(float(v))
        except ValueError:
            raise option_error(option, f"{v!r} is not a number") from None
    return out


@app.command("captions")
def captions(
    root: Path = typer.Option(..., "--root", help="DomainNet root (real or synthetic) with {domain}_{split}.txt."),
    out: Path | None = typer.Option(None, "--out", "-o", callback=writable,
                                    help="Output folder (default: ROOT/captions)."),
    seed: int = typer.Option(default(CaptionConfig, "seed"), "--seed",
                             help="Random seed (42 gives the paper's captions)."),
    aligned: bool = typer.Option(default(CaptionConfig, "aligned"), "--aligned/--no-aligned",
                                 help="Also write the aligned captions (generic terms only) to OUT/aligned-captions."),
    check_files: bool = typer.Option(default(CaptionConfig, "check_files"), "--check-files",
                                     help="Check that every image of the split files exists."),
    force: bool = force_option("Overwrite existing caption files."),
    progress: bool = progress_option(),
    as_json: bool = json_option(),
) -> None:
    """Caption files for every domain and split, with the paper's six templates, terms and seed."""
    from rich.table import Table

    from clipgen.cli.common import emit_json, summary_console
    from clipgen.data.captions import CaptionConfig, run_captions

    res = run_captions(CaptionConfig(root=root, out=out, seed=seed, aligned=aligned, check_files=check_files,
                                     force=force), progress=progress)
    con = summary_console(as_json)
    t = Table(title=f"captions in {res.out} (seed {seed})", title_justify="left")
    t.add_column("domain")
    t.add_column("train", justify="right")
    t.add_column("test", justify="right")
    for kind in res.domain_term_fraction:
        t.add_column(f"{kind}: domain term", justify="right")
    for d, c in res.counts.items():
        t.add_row(d, f"{c['train']:,}", f"{c['test']:,}",
                  *[f"{res.domain_term_fraction[k][d]:.1%}" for k in res.domain_term_fraction])
    con.print(t)
    con.print(f"wrote {len(res.files)} caption files; summary: {res.summary}", markup=False, highlight=False)
    if as_json:
        emit_json({"out": res.out, "files": res.files, "summary": res.summary, "counts": res.counts,
                   "domain_term_fraction": res.domain_term_fraction})


@app.command("mixtures")
def mixtures(
    root: Path = typer.Option(..., "--root", help="DomainNet root (real or synthetic)."),
    out: Path = typer.Option(..., "--out", "-o", callback=writable,
                             help="Output folder for the TSVs, mixtures.json and the summary."),
    captions_dir: Path | None = typer.Option(None, "--captions",
                                             help="Caption folder (default: ROOT/captions)."),
    paper: bool = typer.Option(default(MixturesConfig, "paper"), "--paper",
                               help="The main grid: natural-only + CG low, CG high, leave-out-domain per test domain."),
    setup: str | None = typer.Option(None, "--setup",
                                     help="Comma-separated setups: natural-only, cg-low, cg-high, leave-out-domain."),
    domains: str | None = typer.Option(None, "--domains",
                                       help="Comma-separated domain subsets as letters (e.g. 'qrs,prs'); each must "
                                            "hold the test domain."),
    test_domain: str = typer.Option("all", "--test-domain",
                                    help="Comma-separated test domains (names or letters), or 'all'."),
    pseudo: bool = typer.Option(default(MixturesConfig, "pseudo"), "--pseudo",
                                help="Upper bound: keep the test domain's held-out classes."),
    allow_pct: str | None = typer.Option(None, "--allow-pct",
                                         help="Comma-separated fractions of held-out test-domain images to allow."),
    aligned: bool = typer.Option(default(MixturesConfig, "aligned"), "--aligned",
                                 help="Use the aligned (domain-neutral) captions."),
    size_match: bool = typer.Option(default(MixturesConfig, "size_match"), "--size-match/--no-size-match",
                                    help="Match the DomainNet part to CG low-diversity's size (natural-only never)."),
    subsample: str = typer.Option(default(MixturesConfig, "subsample"), "--subsample",
                                  help="first-k (the published rule) or random (seeded, the same sizes)."),
    seed: int = typer.Option(default(MixturesConfig, "seed"), "--seed", help="Seed of --subsample random."),
    held_out: str | None = typer.Option(None, "--held-out",
                                        help="Comma-separated held-out class names (default: the paper's 15, "
                                             "those present in the data)."),
    base: Path | None = typer.Option(None, "--base", help="Base dataset training TSV (filepath<TAB>title)."),
    base_val: Path | None = typer.Option(None, "--base-val", help="Base dataset validation TSV."),
    check_files: bool = typer.Option(default(MixturesConfig, "check_files"), "--check-files",
                                     help="Check that every image exists."),
    force: bool = force_option("Overwrite existing TSVs."),
    progress: bool = progress_option(),
    as_json: bool = json_option(),
) -> None:
    """Training/validation TSVs of the paper's data mixtures, with the published names and size matching."""
    from clipgen import domainnet as dn
    from clipgen.cli.common import emit_json, summary_console
    from clipgen.data.mixtures import MixturesConfig, render_summary, run_mixtures

    tds = list(dn.parse_domains(test_domain, field="test_domains", allowed=dn.TEST_DOMAINS))
    cfg = MixturesConfig(
        root=root, out=out, captions=captions_dir, paper=paper, setups=split_list(setup) or [],
        domain_sets=split_list(domains) or [], test_domains=tds, pseudo=pseudo,
        allow_pct=_float_list(allow_pct, "--allow-pct"), aligned=aligned, size_match=size_match,
        subsample=subsample, seed=seed, held_out=split_list(held_out),
        base=base, base_val=base_val, check_files=check_files, force=force,
    )
    res = run_mixtures(cfg, progress=progress)
    con = summary_console(as_json)
    h = res.held_out
    if h.explicit:
        con.print(f"held-out classes: {', '.join(h.names)}")
    elif h.absent:
        con.print(f"held-out classes: the {len(h.names)} of the paper's 15 present in the data: {', '.join(h.names)}"
                  f" (absent: {', '.join(h.absent)})")
    else:
        con.print("held-out classes: the paper's 15")
    if res.reference_sizes:
        con.print("reference sizes S(X) = |real train| + |X train without held-out classes|: "
                  + ", ".join(f"{x} {n:,}" for x, n in res.reference_sizes.items()))
    for t in render_summary(res.infos):
        con.print(t)
    con.print(f"wrote {len(res.infos)} TSVs to {res.out}; index {res.index.name}, summary {res.summary.name}",
              markup=False, highlight=False)
    if as_json:
        emit_json({"out": res.out, "index": res.index, "summary": res.summary, "held_out": list(h.names),
                   "reference_sizes": res.reference_sizes,
                   "mixtures": [{"file": i.file, "split": i.split, "setup": i.setup, "test_domain": i.test_domain,
                                 "identifier": i.identifier, "rows": i.counts.get("total")} for i in res.infos]})


@app.command("imagenet-captions")
def imagenet_captions(
    captions_json: Path = typer.Option(..., "--captions-json",
                                       help="imagenet_captions.json (mlfoundations/imagenet-captions)."),
    imagenet_train: Path = typer.Option(..., "--imagenet-train", help="ImageNet train folder (<wnid>/<file>.JPEG)."),
    out: Path = typer.Option(..., "--out", "-o", callback=writable,
                             help="Output folder for in-captions-{train,val}.tsv."),
    val_fraction: float = typer.Option(default(ImageNetCaptionsConfig, "val_fraction"), "--val-fraction",
                                       help="Validation fraction per class."),
    seed: int = typer.Option(default(ImageNetCaptionsConfig, "seed"), "--seed", help="Seed of the train/val split."),
    force: bool = force_option("Overwrite existing TSVs."),
) -> None:
    """ImageNet-Captions train/val TSVs (caption = title; tags; description) with a seeded split."""
    from clipgen.data.imagenet_captions import ImageNetCaptionsConfig, run_imagenet_captions
    from clipgen.progress import out as con

    res = run_imagenet_captions(ImageNetCaptionsConfig(captions_json, imagenet_train, out, val_fraction, seed,
                                                       force=force))
    con.print(f"ImageNet-Captions: {res.n_train:,} train ({res.train}), {res.n_val:,} val ({res.val}) "
              f"from {res.n_entries:,} entries")
    if res.missing:
        shown = ", ".join(res.missing[:3])
        con.print(f"[yellow]{len(res.missing):,} images missing[/] from {imagenet_train} (no rows written for them), "
                  f"e.g. {shown}; full list: {res.missing_file}")
    if res.duplicates:
        con.print(f"{res.duplicates:,} duplicate entries skipped")


@app.command("merge-base")
def merge_base(
    base: Path = typer.Option(..., "--base", help="Base training TSV (filepath<TAB>title), e.g. cc3m-train.tsv."),
    mixtures_dir: Path = typer.Option(..., "--mixtures", help="Folder written by 'clipgen data mixtures'."),
    out: Path = typer.Option(..., "--out", "-o", callback=writable, help="Output folder (may be the mixtures folder)."),
    identifiers: str = typer.Option(default_list(MergeBaseConfig, "identifiers"), "--identifiers",
                                    help="Comma-separated mixture identifiers (lso-...), 'paper-cc' (the paper's "
                                         "seven CC mixtures) or 'all' training mixtures of the folder."),
    name: str | None = typer.Option(None, "--name", help="Output prefix (default: base file name without -train)."),
    check_files: bool = typer.Option(default(MergeBaseConfig, "check_files"), "--check-files",
                                     help="Check that every base image exists."),
    force: bool = force_option("Overwrite existing TSVs."),
) -> None:
    """Merge a base dataset (CC3M/CC12M) with the DomainNet part of mixtures: NAME-train-IDENTIFIER.tsv."""
    from clipgen.data.base import MergeBaseConfig, run_merge_base
    from clipgen.progress import out as con

    res = run_merge_base(MergeBaseConfig(base=base, mixtures=mixtures_dir, out=out,
                                         identifiers=split_list(identifiers) or [], name=name, check_files=check_files,
                                         force=force))
    for f, i in zip(res.files, res.infos, strict=True):
        con.print(f"{f}: {res.base_rows:,} base + {i.counts['total'] - res.base_rows:,} DomainNet rows")


@app.command("imagenet-sketch")
def imagenet_sketch(
    root: Path = typer.Option(..., "--root", help="DomainNet root (real or synthetic)."),
    sketch_root: Path = typer.Option(..., "--sketch-root", help="ImageNet-Sketch folder (<wnid>/*.JPEG)."),
    out: Path = typer.Option(..., "--out", "-o", callback=writable, help="Output folder."),
    variant: str = typer.Option(default_list(SketchConfig, "variants"), "--variant",
                                help="add, mix, or both (comma-separated)."),
    modes: str = typer.Option("all", "--modes",
                              help="mix modes: fiftyp, twentyfivep, thirtyp, tenp, fivep, onep, one, or all."),
    filter_: str = typer.Option(default(SketchConfig, "filter"), "--filter",
                                help="class (by ImageNet class index) or substring (the published caption test)."),
    caption_seed: int = typer.Option(default(SketchConfig, "caption_seed"), "--caption-seed",
                                     help="Seed of the ImageNet-Sketch captions."),
    seed: int = typer.Option(default(SketchConfig, "seed"), "--seed", help="Seed of the rows and classes drawn."),
    captions_dir: Path | None = typer.Option(None, "--captions",
                                             help="DomainNet caption folder (default: ROOT/captions)."),
    held_out: str | None = typer.Option(None, "--held-out", help="Comma-separated held-out class names."),
    base: Path | None = typer.Option(None, "--base", help="Base dataset training TSV."),
    base_val: Path | None = typer.Option(None, "--base-val", help="Base dataset validation TSV."),
    size_match: bool = typer.Option(default(SketchConfig, "size_match"), "--size-match/--no-size-match",
                                    help="Size-match the source mixtures."),
    subsample: str = typer.Option(default(SketchConfig, "subsample"), "--subsample", help="first-k or random."),
    subsample_seed: int = typer.Option(default(SketchConfig, "subsample_seed"), "--subsample-seed",
                                       help="Seed of --subsample random."),
    check_files: bool = typer.Option(default(SketchConfig, "check_files"), "--check-files",
                                     help="Check that every image exists."),
    force: bool = force_option("Overwrite existing TSVs."),
) -> None:
    """ImageNet-Sketch experiments for the sketch test domain: add sketches to three mixtures, or mix them in."""
    from clipgen.data.imagenet_sketch import SketchConfig, render_sketch_summary, run_sketch_mixtures
    from clipgen.data.mixture_info import SKETCH_MIX_MODES
    from clipgen.progress import out as con

    mode_list = list(SKETCH_MIX_MODES) if modes.strip() == "all" else split_list(modes) or []
    cfg = SketchConfig(root=root, sketch_root=sketch_root, out=out, variants=split_list(variant) or [], modes=mode_list,
                       filter=filter_, caption_seed=caption_seed, seed=seed, captions=captions_dir,
                       held_out=split_list(held_out), base=base,
                       base_val=base_val, size_match=size_match, subsample=subsample, subsample_seed=subsample_seed,
                       check_files=check_files, force=force)
    res = run_sketch_mixtures(cfg)
    other = "substring" if filter_ == "class" else "class"
    con.print(f"ImageNet-Sketch: {res.n_images:,} images, {res.n_kept:,} kept ({res.n_classes_kept} classes without "
              f"a DomainNet counterpart, filter {filter_}); the {other} filter would keep {res.n_kept_other_filter:,}")
    con.print(render_sketch_summary(res.infos))
    con.print(f"wrote {len(res.infos)} TSVs and {res.captions_file.name} to {res.out}")


@app.command("cache")
def cache(
    out: Path = typer.Option(..., "--out", "-o", help="The image cache (CACHE.h5)."),
    data: Path | None = typer.Option(None, "--data", help="DomainNet root (real or synthetic) with "
                                                          "{domain}_{split}.txt."),
    tsv: Path | None = typer.Option(None, "--tsv", help="Or a filepath<TAB>title TSV of the images."),
    split: str = typer.Option(default(CacheConfig, "split"), "--split", help="Split of --data: train or test."),
    domains: str = typer.Option(default(CacheConfig, "domains"), "--domains",
                                help="Domains of --data: all, letters (cipqrs) or "
                                     "comma-separated names."),
    size: int | None = typer.Option(None, "--size", help="Model input size: open_clip's evaluation transform "
                                                         "(bicubic resize of the short side, center crop) at N px."),
    model: str | None = typer.Option(None, "--model", help="Or the evaluation transform of this model name."),
    model_dir: Path | None = typer.Option(None, "--model-dir", help="Or the evaluation transform of this run's "
                                                                    "model."),
    batch_size: int = typer.Option(default(CacheConfig, "batch_size"), "--batch-size", help="Images per loader batch."),
    block_rows: int = typer.Option(default(CacheConfig, "block_rows"), "--block-rows",
                                   help="Images per resumable part file (a multiple of "
                                        "--batch-size)."),
    workers: int | None = typer.Option(None, "--workers", help="Decoding processes (default: one less than the CPU "
                                                               "cores this process may use, at most 16).",
                                       show_default=False),
    on_error: str = typer.Option(default(CacheConfig, "on_error"), "--on-error",
                                 help="Unreadable image: fail, or skip it (listed in the "
                                      "cache's /skipped)."),
    compression: str = typer.Option(default(CacheConfig, "compression"), "--compression",
                                    help="none (fastest reads), lzf or gzip."),
    force: bool = force_option("Replace an existing cache (even one for other images or another transform)."),
    progress: bool = progress_option(),
    as_json: bool = json_option(),
) -> None:
    """Decode an image set once into a cache of model-input images (uint8, resized and cropped, not normalised)
    that 'eval zero-shot', 'eval supervised', 'extract' and 'circuits compute' read with --images CACHE; rerun
    the same command to continue an interrupted cache."""
    from clipgen.cli.common import emit_json, summary_console
    from clipgen.data.image_cache import CacheConfig, run_cache

    con = summary_console(as_json)
    cfg = CacheConfig(out=out, data=data, tsv=tsv, split=split, domains=domains, size=size, model=model,
                      model_dir=model_dir, batch_size=batch_size, block_rows=block_rows, workers=workers,
                      on_error=on_error, compression=compression, force=force)
    res = run_cache(cfg, progress=progress, note=lambda m: con.print(m, markup=False, highlight=False))
    if not res.already_complete:
        con.print(f"wrote {res.rows:,} images to {res.path} ({res.blocks_computed} of {res.blocks_total} blocks "
                  f"computed now; {len(res.skipped)} skipped)", markup=False, highlight=False)
    if as_json:
        emit_json({"out": res.path, "rows": res.rows, "skipped": len(res.skipped),
                   "blocks_computed": res.blocks_computed, "blocks_total": res.blocks_total,
                   "already_complete": res.already_complete})
