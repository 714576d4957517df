"""Activation extraction: one forward pass over an image set captures every requested layer into a store.

Forward hooks on the catalogued modules (:mod:`clipgen.models.layers`) pool each output *on the device, at once*
(spatial mean of conv maps, class token or patch-token mean of ViT tokens), so later in-place operations (ReLU with
``inplace=True``, ``out += identity``) cannot change what was captured, and only pooled values cross to the host.
All layers of a batch are packed into one tensor and copied to the host asynchronously; a writer thread
(:mod:`clipgen.store.blocks`) assembles row blocks and writes them as part files (:mod:`clipgen.store.parts`),
compressing chunks on a thread pool while the model computes the next batches. The store is resumable after any
interruption and identical to an uninterrupted run; ``--shard i/n`` writes one part of the image set for
:func:`clipgen.store.merge.run_merge`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipgen import __version__
from clipgen import domainnet as dn
from clipgen.data.image_sets import cache_batches, make_batches, resolve_image_set
from clipgen.errors import ConfigFieldError
from clipgen.store import schema
from clipgen.store.blocks import BlockWriter
from clipgen.store.parts import (
    StorePlan,
    assemble,
    check_existing,
    discard_if_empty,
    existing_settings,
    verified_blocks,
    write_header,
)
from clipgen.store.reader import header_extras
from clipgen.store.shards import parse_shard, shard_path, shard_range
from clipgen.store.testing import SimulatedCrash
from clipgen.store.writer import LayerDef, SampleTable

POOLINGS = ("mean", "none")
TOKEN_POOLINGS = ("cls", "mean")
#: Host memory one row block may take (pooled layers of all rows of a block).
BLOCK_BYTES = 256 << 20


@dataclass
class ExtractConfig:
    """``clipgen extract``: the resolved options (written beside the store as ``STORE.config.json``)."""

    out: Path
    model_dir: Path | None = None
    epoch: int | None = None
    checkpoint: Path | None = None  # a checkpoint trained outside clipgen (with ``model``)
    model: str | None = None
    data: Path | None = None  # DomainNet root (real or synthetic)
    tsv: Path | None = None  # or a filepath<TAB>title TSV
    split: str = "test"
    domains: str = "all"
    layers: str = "all"
    pooling: str = "mean"  # mean | none
    token_pooling: str = "cls"  # cls | mean (ViT token layers)
    dtype: str = "float16"
    precision: str = "auto"
    device: str = "auto"
    batch_size: int | None = None  # default: 256 on GPU, 32 on CPU; on resume: the store's
    block_rows: int | None = None  # rows per part file; default: batch multiple of about BLOCK_BYTES
    workers: int | None = None  # data-loader processes; default: from the CPUs this process may use
    on_error: str = "fail"  # fail | skip (missing or corrupt images)
    templates: str = "paper"
    text: bool = True
    compression: str = "gzip"
    max_size_gb: float = 20.0  # refusal limit for --pooling none
    channels_last: str = "auto"  # auto (on for ResNets on GPU) | on | off
    shard: str | None = None  # "i/n" (0-based) or "auto" (SLURM array / torchrun environment)
    writer_threads: int = 0  # chunk-compression threads; 0: min(8, cores)
    images: Path | None = None  # an image cache ('clipgen data cache') holding the image set's model inputs
    resume: bool = False  # accepted for compatibility: the same command always continues its store
    force: bool = False


@dataclass
class ExtractResult:
    path: Path
    rows: int
    skipped: list[tuple[int, str, str]] = field(default_factory=list)
    blocks_computed: int = 0
    blocks_total: int = 0
    already_complete: bool = False
    fingerprint: str = ""


# -- layers and hooks ------------------------------------------------------------------------------------------

def layer_defs(catalogue, names: Sequence[str], pooling: str, token_pooling: str, embed_dim: int) -> list[LayerDef]:
    """Stored shape and pooling of each requested layer."""
    by = {s.name: s for s in catalogue}
    out = []
    for name in names:
        if name == schema.EMBEDDING:
            out.append(LayerDef(name, (embed_dim,), (embed_dim,), "l2-normalised", "embedding"))
            continue
        s = by[name]
        if s.kind == "vector":
            out.append(LayerDef(name, s.shape, s.shape, "-", s.kind))
        elif pooling == "none":
            out.append(LayerDef(name, s.shape, s.shape, "none", s.kind))
        elif s.kind == "conv":
            out.append(LayerDef(name, (s.channels,), s.shape, "mean", s.kind))
        else:
            out.append(LayerDef(name, (s.channels,), s.shape, "cls" if token_pooling == "cls" else "token-mean",
                                s.kind))
    return out


class Capture:
    """Forward hooks that pool each layer's output on the device the moment it is produced."""

    def __init__(self, visual, catalogue, defs: Sequence[LayerDef], store_dtype):
        from clipgen.models.layers import get_module

        by = {s.name: s for s in catalogue}
        self.values: dict[str, Any] = {}
        self.handles = []
        self.batch_first = bool(getattr(getattr(visual, "transformer", None), "batch_first", True))
        for d in defs:
            if d.kind == "embedding":
                continue
            mod = get_module(visual, by[d.name].module)
            self.handles.append(mod.register_forward_hook(self._hook(d, store_dtype)))

    def _hook(self, d: LayerDef, store_dtype):
        import torch

        def hook(_m, _i, out):
            t = out[0] if isinstance(out, tuple) else out
            if d.kind == "tokens" and not self.batch_first:
                t = t.permute(1, 0, 2)
            if d.pooling == "none":
                v = t.detach().to(store_dtype, copy=True)
            elif d.pooling == "mean":
                v = t.detach().mean(dim=(2, 3), dtype=torch.float32)
            elif d.pooling == "cls":
                v = t.detach()[:, 0].float()
            elif d.pooling == "token-mean":
                v = t.detach()[:, 1:].mean(dim=1, dtype=torch.float32)
            else:
                v = t.detach().float()
            self.values[d.name] = v

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


class Extractor:
    """The model side: images in, one packed ``(B, W)`` tensor of every layer (and the embedding) out."""

    def __init__(self, model, catalogue, defs: Sequence[LayerDef], *, dtype: str, device, precision: str,
                 channels_last: bool):
        import torch

        self.model, self.defs, self.device, self.precision = model, list(defs), device, precision
        self.channels_last = channels_last
        self.store_dtype = torch.float16 if dtype == "float16" else torch.float32
        self.pooled = [d for d in self.defs if d.kind != "embedding"]
        self.want_embedding = any(d.kind == "embedding" for d in self.defs)
        self.widths = [int(np.prod(d.shape)) for d in self.pooled]
        if channels_last:
            model.to(memory_format=torch.channels_last)
        if getattr(device, "type", str(device)) == "cuda":
            torch.backends.cudnn.benchmark = True  # every batch has the same shape: let cuDNN pick its fastest convs
        self.capture = Capture(model.visual, catalogue, self.defs, self.store_dtype)

    def forward(self, images):
        """``(packed layers (B, W) in the store dtype, embedding (B, D) float32 or None)``, on the device."""
        import torch

        from clipgen.devices import autocast

        x = images.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.capture.values.clear()
        with torch.inference_mode(), autocast(self.device, self.precision):
            out = self.model.visual(x)
        with torch.inference_mode():
            emb = torch.nn.functional.normalize(out.float(), dim=-1) if self.want_embedding else None
            parts = [self.capture.values[d.name].reshape(len(x), -1).to(self.store_dtype) for d in self.pooled]
            packed = torch.cat(parts, dim=1) if parts else None
        return packed, emb

    def unpack(self, packed: np.ndarray | None, emb: np.ndarray | None) -> dict[str, np.ndarray]:
        out, off = {}, 0
        for d, w in zip(self.pooled, self.widths, strict=True):
            out[d.name] = packed[:, off:off + w].reshape(len(packed), *d.shape)
            off += w
        for d in self.defs:
            if d.kind == "embedding":
                out[d.name] = emb
        return out

    def close(self) -> None:
        self.capture.remove()


# -- the forward loop ------------------------------------------------------------------------------------------

def run_blocks(plan: StorePlan, extractor: Extractor, batches: Iterable[tuple[Any, np.ndarray, list]], *,
               writer_threads: int = 0, on_rows: Callable[[int], None] | None = None,
               crash_after_blocks: int | None = None) -> int:
    """Forward every batch and write its rows. ``batches`` yields ``(images or None, plan rows of the images,
    [(plan row, reason), ...] for images that could not be read)``; a batch never spans two blocks.
    Returns the number of blocks written. ``crash_after_blocks=k`` (tests) stops dead after k part files, the
    way a killed process would: nothing is cleaned up."""
    import torch

    writer = BlockWriter(plan, extractor, threads=writer_threads, on_rows=on_rows, max_blocks=crash_after_blocks)
    cuda = getattr(extractor.device, "type", str(extractor.device)) == "cuda"
    ok = False
    try:
        for images, rows, skipped in batches:
            rows = np.asarray(rows, dtype=np.int64)
            first = int(rows[0]) if len(rows) else int(skipped[0][0])
            k = first // plan.block_rows
            a, _ = plan.block_range(k)
            packed = emb = event = None
            if images is not None and len(rows):
                packed, emb = extractor.forward(images)
                if cuda:
                    packed = packed.to("cpu", non_blocking=True) if packed is not None else None
                    emb = emb.to("cpu", non_blocking=True) if emb is not None else None
                    event = torch.cuda.Event()
                    event.record()
            writer.put(k, rows - a, packed, emb, event, [(int(r) - a, why) for r, why in skipped])
        ok = True
    finally:
        writer.close(wait=ok)
    return writer.written


# -- orchestration ---------------------------------------------------------------------------------------------

def row_bytes(defs: Sequence[LayerDef], dtype: str) -> int:
    """Bytes one image takes in the store (every layer in ``dtype``, the embedding in float32)."""
    itemsize = 2 if dtype == "float16" else 4
    return sum(int(np.prod(d.shape)) * (4 if d.kind == "embedding" else itemsize) for d in defs)


def default_block_rows(batch: int, bytes_per_row: int) -> int:
    """Rows per resumable block: a multiple of ``batch``, at most 2048 rows (or one batch) and about BLOCK_BYTES."""
    m = max(1, BLOCK_BYTES // max(1, batch * bytes_per_row))
    return batch * min(m, max(1, 2048 // batch))


def _text(loaded, records, template_set: str, device) -> tuple[dict[int, str], tuple | None, list[str]]:
    """class names, (labels, text embeddings, templates) and the template list, for labelled image sets."""
    from clipgen.datasets import folders_of
    from clipgen.models.zeroshot_classifier import build_classifier, classnames_from_folders, templates

    folders = folders_of(records)
    if not folders:
        return {}, None, []
    labels = sorted(folders)
    names = classnames_from_folders([folders[k] for k in labels])
    tl = templates(template_set)
    emb = build_classifier(loaded.model, loaded.tokenizer, names, tl, device=device)
    return dict(zip(labels, names, strict=True)), (labels, emb.cpu().numpy(), tl), tl


def resolve_held_out(manifest, records) -> list[int]:
    """The run's mixture held-out labels if recorded (all of them, with or without images here: the store keeps
    the run's record), else the paper's 15 held-out classes present in the sample folders."""
    from clipgen.datasets import folders_of

    return dn.run_held_out_labels(getattr(manifest, "mixture", None), folders_of(records))


def describe_model(cfg: ExtractConfig, device: Any = "cpu"):
    """``(loaded model, catalogue)`` for ``--model-dir``/``--epoch`` (or ``--checkpoint`` + ``--model``)."""
    from clipgen.models.layers import layer_catalogue
    from clipgen.runs import load_clip

    loaded = load_clip(cfg.model_dir, cfg.epoch, checkpoint=cfg.checkpoint, model_name=cfg.model, device=device)
    return loaded, layer_catalogue(loaded.model.visual)


def list_layers(cfg: ExtractConfig) -> list[dict[str, Any]]:
    """The layer catalogue of a run's image tower: names, channels, output shapes and stored bytes per image."""
    loaded, cat = describe_model(cfg)
    rows = []
    for s in cat:
        rows.append({"name": s.name, "module": s.module, "kind": s.kind, "channels": s.channels,
                     "shape": list(s.shape), "pooled_bytes_fp16": 2 * s.channels,
                     "full_bytes_fp16": 2 * int(np.prod(s.shape))})
    d = int(loaded.model_config.get("embed_dim", 0)) or int(loaded.model.visual.output_dim)
    rows.append({"name": schema.EMBEDDING, "module": "(L2-normalised image embedding)", "kind": "embedding",
                 "channels": d, "shape": [d], "pooled_bytes_fp16": 4 * d, "full_bytes_fp16": 4 * d})
    return rows


def _run_info(manifest) -> dict[str, Any] | None:
    """The run's name, seed and training mixture (setup, test domain, held-out classes) from its manifest: later
    commands take their defaults from it (e.g. ``clipgen sae features`` scores the mixture's test domain)."""
    if manifest is None:
        return None
    mix = manifest.mixture or {}
    keys = ("file", "setup", "test_domain", "domains", "held_out", "aligned", "pseudo", "identifier")
    return {"name": manifest.name, "seed": manifest.seed, "mixture": {k: mix.get(k) for k in keys} if mix else None}


def run_extract(cfg: ExtractConfig, *, progress: bool = True, crash_after_blocks: int | None = None,
                note: Callable[[str], None] | None = None) -> ExtractResult:
    """Run (or resume) an extraction and return where the finished store is.

    The store is written under an exclusive writer lock (:mod:`clipgen.locks`): a second process on the same output
    is refused. Temporary files a killed final assembly left beside the store are removed first. A run that fails
    before writing any row leaves nothing behind (no header, no parts folder); one that fails later (a disk filling
    up, an unreadable image) keeps its finished blocks for ``--resume``.
    """
    from clipgen.locks import writing_output

    _check_numbers(cfg)
    shard = parse_shard(cfg.shard)
    out = shard_path(Path(cfg.out), *shard) if shard is not None else Path(cfg.out)
    with writing_output(out, lambda o: discard_if_empty(o), keep=(SimulatedCrash,)):
        return _extract(cfg, progress=progress, crash_after_blocks=crash_after_blocks, note=note)


def _check_numbers(cfg: ExtractConfig) -> None:
    """Numeric options, checked before any work (the CLI checks them too; this guards library callers)."""
    for name, val, lo in (("batch_size", cfg.batch_size, 1), ("block_rows", cfg.block_rows, 1),
                          ("workers", cfg.workers, 0), ("writer_threads", cfg.writer_threads, 0),
                          ("epoch", cfg.epoch, 0)):
        if val is not None and val < lo:
            raise ConfigFieldError(name, f"{val} is below the minimum {lo}")
    if not cfg.max_size_gb > 0:
        raise ConfigFieldError("max_size_gb", f"{cfg.max_size_gb:g} is not a positive size")


def _extract(cfg: ExtractConfig, *, progress: bool = True, crash_after_blocks: int | None = None,
             note: Callable[[str], None] | None = None) -> ExtractResult:
    import torch

    from clipgen.artifacts import command_line, sha256_file, utc_now, write_config
    from clipgen.devices import resolve_device, resolve_precision
    from clipgen.models.layers import select_layers
    from clipgen.progress import make_progress

    say = note or (lambda _m: None)
    for name, val, allowed in (("pooling", cfg.pooling, POOLINGS), ("token_pooling", cfg.token_pooling,
                               TOKEN_POOLINGS), ("dtype", cfg.dtype, schema.DTYPES),
                               ("on_error", cfg.on_error, ("fail", "skip")),
                               ("channels_last", cfg.channels_last, ("auto", "on", "off"))):
        if val not in allowed:
            raise ConfigFieldError(name, f"unknown value {val!r} (one of {', '.join(allowed)})")
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    records, image_set = resolve_image_set(cfg)
    shard = parse_shard(cfg.shard)
    loaded, cat = describe_model(cfg, device)
    names = select_layers(cat, cfg.layers)
    embed_dim = int(loaded.model_config.get("embed_dim", 0)) or int(loaded.model.visual.output_dim)
    defs = layer_defs(cat, names, cfg.pooling, cfg.token_pooling, embed_dim)
    per_row = row_bytes(defs, cfg.dtype)
    total = per_row * len(records)
    if cfg.pooling == "none" and total > cfg.max_size_gb * 1e9:
        raise ConfigFieldError("pooling", f"'none' would store about {total / 1e9:.1f} GB for {len(records)} images "
                                          f"(limit {cfg.max_size_gb:g} GB): select fewer --layer/--domains or raise "
                                          f"--max-size-gb")
    cuda = device.type == "cuda"
    out = shard_path(Path(cfg.out), *shard) if shard is not None else Path(cfg.out)
    old = {} if cfg.force else existing_settings(out)
    batch_size = cfg.batch_size or old.get("batch_size") or (256 if cuda else 32)
    block_rows = cfg.block_rows or old.get("block_rows") or default_block_rows(batch_size, per_row)
    if block_rows % batch_size:
        raise ConfigFieldError("block_rows", f"{block_rows} is not a multiple of --batch-size {batch_size}")
    if shard is not None:
        i, n = shard
        a, b = shard_range(len(records), i, n, align=batch_size)
        shard_info = {"index": i, "count": n, "start": a, "stop": b, "total": len(records)}
    else:
        a, b, shard_info = 0, len(records), None
    sub = records[a:b]
    if not sub:
        raise ConfigFieldError("shard", f"shard {cfg.shard} of {len(records)} images is empty; use fewer shards")
    pcfg = dict(loaded.model.visual.preprocess_cfg) if hasattr(loaded.model.visual, "preprocess_cfg") else {}
    provenance = {
        "model": {"name": loaded.model_name, "config": loaded.model_config},
        "checkpoint": {"path": str(Path(loaded.checkpoint).resolve()), "sha256": sha256_file(loaded.checkpoint)},
        "epoch": loaded.epoch,
        "run_dir": str(Path(cfg.model_dir).resolve()) if cfg.model_dir else None,
        "run": _run_info(loaded.manifest),
        "image_set": image_set,
        "preprocess": {"transform": repr(loaded.preprocess), **{k: pcfg[k] for k in sorted(pcfg)}},
        "pooling": {"conv": cfg.pooling, "tokens": (cfg.token_pooling if cfg.pooling == "mean" else "none")
                    if any(d.kind == "tokens" for d in defs) else None},
        "layers": [d.name for d in defs],
        "dtype": cfg.dtype,
        "precision": precision,
        "text": {"templates": cfg.templates if cfg.text else None},
        "device": str(device) if not cuda else torch.cuda.get_device_name(device),
        "batch_size": batch_size,
        "clipgen_version": __version__,
        "torch_version": torch.__version__,
        "command_line": command_line(),
        "started": utc_now(),
    }
    plan_samples = SampleTable([r.path for r in sub], [r.label for r in sub], [r.domain for r in sub],
                               [r.split for r in sub], list(range(a, b)))
    plan = StorePlan(out=out, samples=plan_samples, layers=defs, dtype=cfg.dtype, provenance=provenance,
                     block_rows=block_rows, batch_size=batch_size, shard=shard_info, compression=cfg.compression)
    head = check_existing(plan, cfg.force)
    if head is not None and head["complete"]:
        import shutil

        shutil.rmtree(plan.parts, ignore_errors=True)  # left behind by a kill between the final rename and cleanup
        say(f"{out}: already complete ({head['n_samples']} rows); nothing to do")
        return ExtractResult(out, head["n_samples"], already_complete=True, fingerprint=plan.fingerprint)
    cache = None
    if cfg.images is not None:  # refused before anything is written when it does not fit
        from clipgen.evaluation.runner import open_images

        cache, _ = open_images(cfg.images, sub, cfg.on_error)
        try:
            cache.check_transform(loaded.preprocess)
        except BaseException:
            cache.close()
            raise
        plan.provenance["image_cache"] = {"path": str(Path(cfg.images).resolve()), "fingerprint": cache.fingerprint}
    if head is not None:
        plan.class_names, plan.text, plan.held_out_labels = header_extras(out)
        plan.provenance = dict(head["provenance"], resumed=[*head["provenance"].get("resumed", []), utc_now()])
        done = verified_blocks(plan)
        say(f"{out}: resuming, {len(done)} of {plan.n_blocks} blocks already written")
    else:
        if cfg.text:
            plan.class_names, plan.text, _ = _text(loaded, records, cfg.templates, device)
        else:
            from clipgen.datasets import folders_of
            from clipgen.models.zeroshot_classifier import classnames_from_folders

            fo = folders_of(records)
            plan.class_names = dict(zip(fo, classnames_from_folders(list(fo.values())), strict=True))
        plan.held_out_labels = resolve_held_out(loaded.manifest, records)
        write_header(plan)
        done = set()
    todo = [k for k in range(plan.n_blocks) if k not in done]
    from clipgen.devices import resolve_workers

    workers = resolve_workers(cfg.workers)
    channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and cuda
                                                  and not hasattr(loaded.model.visual, "transformer"))
    extractor = Extractor(loaded.model, cat, defs, dtype=cfg.dtype, device=device, precision=precision,
                          channels_last=channels_last)
    rows_before = sum(plan.block_range(k)[1] - plan.block_range(k)[0] for k in done)
    try:
        with make_progress(disable=not progress) as bar:
            task = bar.add_task(f"extract {out.name}", total=plan.n_rows, completed=rows_before)
            if cache is not None:
                batches = cache_batches(plan, sub, cache, loaded.preprocess, todo, device=device,
                                        on_error=cfg.on_error)
            else:
                batches = make_batches(plan, sub, loaded.preprocess, todo, workers=workers, on_error=cfg.on_error,
                                       pin_memory=cuda)
            written = run_blocks(plan, extractor, batches, writer_threads=cfg.writer_threads,
                                 on_rows=lambda n: bar.advance(task, n), crash_after_blocks=crash_after_blocks)
    finally:
        extractor.close()
        if cache is not None:
            cache.close()
    rows, skipped = assemble(plan)
    write_config(out, "extract", cfg)
    if skipped:
        say(f"{out}: skipped {len(skipped)} unreadable image(s), listed under /skipped: "
            + "; ".join(f"{p} ({why})" for _, p, why in skipped[:3]) + (" ..." if len(skipped) > 3 else ""))
    return ExtractResult(out, rows, skipped, written, plan.n_blocks, fingerprint=plan.fingerprint)


__all__ = ["ExtractConfig", "ExtractResult", "Extractor", "default_block_rows", "layer_defs", "list_layers",
           "row_bytes", "run_blocks", "run_extract"]
