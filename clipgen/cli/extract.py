"""``clipgen extract``: the versioned HDF5 activation store (extraction, layers, merge, info, validate)."""

from __future__ import annotations

from pathlib import Path

import typer

from clipgen.cli.common import (
    default,
    device_option,
    force_option,
    json_option,
    positive,
    precision_option,
    progress_option,
    writable,
)
from clipgen.extraction import ExtractConfig

app = typer.Typer(
    help="Extract activations of every requested layer into a versioned HDF5 store, in one forward pass.\n\n"
         "Run it as 'clipgen extract --model-dir RUN --data DOMAINNET_ROOT --out STORE.h5'; the subcommands list "
         "layers, merge shard files, and inspect or validate a store. See docs/extract.md for the schema.",
    no_args_is_help=True,
    invoke_without_command=True,
)


@app.callback(invoke_without_command=True)
def extract(
    ctx: typer.Context,
    model_dir: Path | None = typer.Option(None, "--model-dir", help="Run directory (clipgen-run.json and its "
                                                                    "checkpoints epoch_N.pt)."),
    epoch: int | None = typer.Option(None, "--epoch", min=0,
                                     help="Checkpoint epoch of --model-dir (default: the last)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="A checkpoint trained outside clipgen "
                                                                      "(with --model)."),
    model: str | None = typer.Option(None, "--model", help="Model name for --checkpoint (e.g. RN50)."),
    data: Path | None = typer.Option(None, "--data", help="DomainNet root (real or synthetic) with split files."),
    tsv: Path | None = typer.Option(None, "--tsv", help="Or: any filepath<TAB>title TSV (labels unknown)."),
    split: str = typer.Option(default(ExtractConfig, "split"), "--split", help="DomainNet split: test or train."),
    domains: str = typer.Option(default(ExtractConfig, "domains"), "--domains",
                                help="Domains: all, letters (cpqs) or comma-separated names."),
    layer: str = typer.Option(default(ExtractConfig, "layers"), "--layer", "--layers",
                              help="all, or comma-separated layer names "
                                   "(see 'clipgen extract layers')."),
    pooling: str = typer.Option(default(ExtractConfig, "pooling"), "--pooling",
                                help="mean: spatial mean of conv maps (the paper); none: "
                                     "full maps (large; see --max-size-gb)."),
    token_pooling: str = typer.Option(default(ExtractConfig, "token_pooling"), "--token-pooling",
                                      help="ViT token layers: cls (class token) or mean "
                                           "(mean of the patch tokens)."),
    dtype: str = typer.Option(default(ExtractConfig, "dtype"), "--dtype",
                              help="Stored dtype of layers: float16 or float32 (the "
                                   "embedding is always float32)."),
    precision: str = precision_option("auto (fp32 on CPU, bf16 autocast on GPU), fp32, bf16, fp16."),
    device: str = device_option(),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Images per forward pass (default: 256 on "
                                                                            "GPU, 32 on CPU; continuing a store: its "
                                                                            "own)."),
    block_rows: int | None = typer.Option(None, "--block-rows", min=1, help="Rows per resumable block (a multiple of "
                                                                            "--batch-size) (default: about 256 MB)."),
    workers: int | None = typer.Option(None, "--workers", min=0,
                                       help="Image-decoding processes (default: one less than the CPU cores this "
                                            "process may use, at most 16)."),
    images: Path | None = typer.Option(None, "--images", help="Image cache of the image set ('clipgen data cache'): "
                                                              "read instead of decoding the JPEGs; refused if made "
                                                              "for another preprocessing or other images."),
    on_error: str = typer.Option(default(ExtractConfig, "on_error"), "--on-error",
                                 help="Missing or corrupt image: fail, or skip it (listed "
                                      "under /skipped in the store and reported)."),
    templates: str = typer.Option(default(ExtractConfig, "templates"), "--templates",
                                  help="Prompt templates of the stored class text "
                                       "embeddings: paper (86), openai, named-domain, "
                                       "simple."),
    text: bool = typer.Option(default(ExtractConfig, "text"), "--text/--no-text",
                              help="Store the template-averaged class text embeddings."),
    compression: str = typer.Option(default(ExtractConfig, "compression"), "--compression",
                                    help="gzip (+shuffle), lzf, or none."),
    max_size_gb: float = typer.Option(default(ExtractConfig, "max_size_gb"), "--max-size-gb", callback=positive,
                                      help="Refuse --pooling none above this estimated "
                                           "store size."),
    channels_last: str = typer.Option(default(ExtractConfig, "channels_last"), "--channels-last",
                                      help="auto (ResNets on GPU), on, off."),
    shard: str | None = typer.Option(None, "--shard", help="Write part i of n (0-based 'i/n', or 'auto' from "
                                                           "SLURM_ARRAY_TASK_ID/COUNT or RANK/WORLD_SIZE) to "
                                                           "STORE.shard-i-of-n.h5; join with 'extract merge'."),
    writer_threads: int = typer.Option(default(ExtractConfig, "writer_threads"), "--writer-threads", min=0,
                                       help="Chunk-compression threads (0: min(8, cores))."),
    out: Path | None = typer.Option(None, "--out", "-o", callback=writable, help="The store file (STORE.h5)."),
    resume: bool = typer.Option(default(ExtractConfig, "resume"), "--resume",
                                help="Accepted for compatibility: the same command continues an "
                                     "interrupted store (and skips a complete one) anyway."),
    force: bool = force_option("Replace an existing store (needed when its settings differ)."),
    progress: bool = progress_option(),
    as_json: bool = json_option(),
) -> None:
    """Extract activations into an HDF5 store (or run a subcommand). Rerun the same command to continue an interrupted
    store; a complete one is skipped."""
    if ctx.invoked_subcommand is not None:
        return
    from clipgen.errors import option_error

    if out is None:
        raise option_error("--out", "missing: where to write the store (STORE.h5)")
    from clipgen.cli.common import emit_json, summary_console
    from clipgen.extraction import ExtractConfig, run_extract
    from clipgen.progress import console

    con = summary_console(as_json)
    cfg = ExtractConfig(out=out, model_dir=model_dir, epoch=epoch, checkpoint=checkpoint, model=model, data=data,
                        tsv=tsv, split=split, domains=domains, layers=layer, pooling=pooling,
                        token_pooling=token_pooling, dtype=dtype, precision=precision, device=device,
                        batch_size=batch_size, block_rows=block_rows, workers=workers, images=images,
                        on_error=on_error, templates=templates, text=text, compression=compression,
                        max_size_gb=max_size_gb, channels_last=channels_last, shard=shard,
                        writer_threads=writer_threads, resume=resume, force=force)
    res = run_extract(cfg, progress=progress, note=lambda m: console.print(m, markup=False, highlight=False))
    size = res.path.stat().st_size
    con.print(f"store {res.path}: {res.rows} rows, fingerprint {res.fingerprint[:12]}, {size / 1e6:.1f} MB"
              + (f", {len(res.skipped)} image(s) skipped (see /skipped)" if res.skipped else "")
              + (" (already complete)" if res.already_complete else ""), markup=False, highlight=False)
    if as_json:
        emit_json({"out": res.path, "rows": res.rows, "fingerprint": res.fingerprint, "bytes": size,
                   "skipped": len(res.skipped), "already_complete": res.already_complete})


@app.command("layers")
def layers(
    model_dir: Path | None = typer.Option(None, "--model-dir", help="Run directory."),
    epoch: int | None = typer.Option(None, "--epoch", min=0, help="Checkpoint epoch (default: the last)."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="A checkpoint trained outside clipgen."),
    model: str | None = typer.Option(None, "--model", help="Model name for --checkpoint."),
    as_json: bool = json_option("Print JSON instead of a table."),
) -> None:
    """List the layers a run's image tower offers: names, channels, output shapes, bytes per image."""
    import json

    from clipgen.extraction import ExtractConfig, list_layers
    from clipgen.progress import out as con

    rows = list_layers(ExtractConfig(out=Path("-"), model_dir=model_dir, epoch=epoch, checkpoint=checkpoint,
                                     model=model))
    if as_json:
        con.print_json(json.dumps(rows))
        return
    con.print(f"{'layer':<12} {'kind':<9} {'channels':>8}  {'output shape':<16} {'pooled B/img':>12} "
              f"{'full B/img':>11}  module", markup=False)
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        con.print(f"{r['name']:<12} {r['kind']:<9} {r['channels']:>8}  {shape:<16} {r['pooled_bytes_fp16']:>12} "
                  f"{r['full_bytes_fp16']:>11}  {r['module']}", markup=False, highlight=False)


@app.command("merge")
def merge(
    shards: list[Path] = typer.Argument(..., help="Shard files (STORE.shard-i-of-n.h5), in any order."),
    out: Path = typer.Option(..., "--out", "-o", callback=writable, help="The merged store."),
    copy: bool = typer.Option(False, "--copy", help="Copy the rows into a self-contained store (default: virtual "
                                                    "datasets that read the shard files in place)."),
    force: bool = force_option(),
) -> None:
    """Join shard files into one store, checking fingerprints and that no row is missing or duplicated."""
    from clipgen.progress import out as con
    from clipgen.store.merge import MergeConfig, run_merge

    res = run_merge(MergeConfig(shards=list(shards), out=out, copy=copy, force=force))
    kind = "virtual datasets over the shard files (keep them beside it)" if res.virtual else "self-contained copy"
    con.print(f"merged {res.shards} shard(s) into {res.path}: {res.rows} rows, {kind}", markup=False,
              highlight=False)


@app.command("info")
def info(
    store: Path = typer.Argument(..., help="A store file."),
    as_json: bool = json_option("Print JSON."),
) -> None:
    """Print a store's provenance, layers, shapes, sizes and completeness."""
    import json

    from clipgen.progress import out as con
    from clipgen.store.inspect import store_info

    d = store_info(store)
    if as_json:
        con.print_json(json.dumps(d))
        return
    state = "complete" if d["complete"] else ("finished shard " + f"{d['shard']['index']}/{d['shard']['count']}"
                                               if d["shard"] and d["rows_complete"]
                                               else f"INCOMPLETE ({d['rows_done']} of {d['rows']} rows written)")
    p = lambda s: con.print(s, markup=False, highlight=False)  # noqa: E731
    p(f"{d['path']}: {d['format']} schema {d['schema_version']}, {state}")
    p(f"  model {d['model']} epoch {d['epoch']}  checkpoint {d['checkpoint']} (sha256 "
      f"{(d['checkpoint_sha256'] or '')[:12]})")
    img = d["image_set"]
    p(f"  image set {img.get('kind')} {img.get('index')} split {img.get('split', '-')} domains "
      f"{','.join(img.get('domains') or []) or '-'} ({img.get('n_rows')} rows, "
      f"sha256 {(img.get('sha256') or '')[:12]})")
    p(f"  rows {d['rows']} ({', '.join(f'{k} {v}' for k, v in d['domains'].items())}), skipped {d['skipped']}, "
      f"classes {d['classes']}, held-out labels {d['held_out_labels']}")
    p(f"  pooling {d['pooling']}  dtype {d['dtype']}  precision {d['precision']}  fingerprint {d['fingerprint'][:16]}")
    p(f"  text {d['text']}  clipgen {d['clipgen_version']}  created {d['created']}")
    p(f"  command: {d['command_line']}")
    total = 0
    for r in d["layers"]:
        total += r["stored_bytes"]
        shape = "x".join(map(str, r["shape"]))
        orig = "x".join(map(str, r["original_shape"]))
        size = "virtual" if r["virtual"] else f"{r['stored_bytes'] / 1e6:9.2f} MB"
        p(f"  {r['name']:<12} {shape:<14} from {orig:<12} {r['pooling']:<13} {r['dtype']:<8} {size}")
    p(f"  file {d['file_bytes'] / 1e6:.2f} MB")


@app.command("validate")
def validate(
    store: Path = typer.Argument(..., help="A store file."),
    quick: bool = typer.Option(False, "--quick", help="Check structure only, not every value."),
) -> None:
    """Check a store: header, rows, coverage of the image set, finite values, unit-norm embeddings, text."""
    from clipgen.errors import file_error
    from clipgen.progress import out as con
    from clipgen.store.inspect import validate_store

    problems = validate_store(store, check_values=not quick)
    if problems:
        raise file_error(store, f"{len(problems)} problem(s): " + "; ".join(problems[:4])
                         + (" ..." if len(problems) > 4 else ""))
    con.print(f"{store}: ok", markup=False, highlight=False)
