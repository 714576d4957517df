"""Activation extraction: one forward pass over an image set captures every requested layer into a store.

Forward hooks on the catalogued modules (:mod:`clipgen.models.layers`) pool each output *on the device, at once*
(spatial mean of conv maps, class token or patch-token mean of ViT tokens), so later in-place operations (ReLU with
``inplace=True``, ``out += identity``) cannot change what was captured, and only pooled values cross to the host.
All layers of a batch are packed into one tensor and copied to the host asynchronously; a writer thread assembles
row blocks and writes them as part files (:mod:`clipgen.store.parts`), compressing chunks on a thread pool while the
model computes the next batches. The store is resumable after any interruption and identical to an uninterrupted
run; ``--shard i/n`` writes one part of the image set for :func:`clipgen.store.merge.merge_shards`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipgen import __version__
from clipgen import domainnet as dn
from clipgen.errors import ClipgenError, file_error, option_error
from clipgen.store import schema
from clipgen.store.parts import StorePlan, assemble, parts_dir, read_plan_header, verified_blocks, write_header
from clipgen.store.writer import LayerDef, SampleTable

POOLINGS = ("mean", "none")
TOKEN_POOLINGS = ("cls", "mean")
#: Host memory one row block may take (pooled layers of all rows of a block).
BLOCK_BYTES = 256 << 20


class SimulatedCrash(RuntimeError):
    """Raised by ``extract(..., crash_after_blocks=k)`` (tests): dies like a killed process, leaving parts."""


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


# -- image sets ------------------------------------------------------------------------------------------------

def resolve_image_set(cfg: ExtractConfig):
    """``(records, image_set provenance)`` for a DomainNet root or a TSV."""
    from clipgen.artifacts import sha256_file
    from clipgen.datasets import domainnet_records, tsv_records

    if (cfg.data is None) == (cfg.tsv is None):
        raise option_error("--data", "give exactly one image set: --data DOMAINNET_ROOT or --tsv FILE")
    if cfg.data is not None:
        root = Path(cfg.data)
        if not root.is_dir():
            raise option_error("--data", f"{root} is not a directory")
        domains = dn.parse_domains(cfg.domains)
        recs = domainnet_records(root, domains, cfg.split)
        sources = [dn.split_file(root, d, cfg.split) for d in domains]
        info = {"kind": "domainnet", "index": str(root.resolve()), "split": cfg.split, "domains": list(domains)}
    else:
        tsv = Path(cfg.tsv)
        recs = tsv_records(tsv)
        sources = [tsv]
        info = {"kind": "tsv", "index": str(tsv.resolve())}
    if not recs:
        raise option_error("--data" if cfg.data is not None else "--tsv", "the image set is empty")
    info["sources"] = [{"path": str(Path(p).resolve()), "sha256": sha256_file(p)} for p in sources]
    info["sha256"] = schema.image_set_sha256([r.rel or r.path for r in recs], [r.label for r in recs],
                                             [r.domain for r in recs], [r.split for r in recs])
    info["n_rows"] = len(recs)
    return recs, info


def parse_shard(spec: str | None, option: str = "--shard") -> tuple[int, int] | None:
    """``i/n`` (0 <= i < n) or ``auto`` (SLURM_ARRAY_TASK_ID/COUNT, or torchrun RANK/WORLD_SIZE)."""
    if not spec:
        return None
    s = spec.strip().lower()
    if s == "auto":
        env = os.environ
        if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            i = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
            n = int(env["SLURM_ARRAY_TASK_COUNT"])
        elif "RANK" in env and "WORLD_SIZE" in env:
            i, n = int(env["RANK"]), int(env["WORLD_SIZE"])
        else:
            raise option_error(option, "'auto' needs SLURM_ARRAY_TASK_ID/COUNT or RANK/WORLD_SIZE in the environment")
    else:
        try:
            a, b = s.split("/")
            i, n = int(a), int(b)
        except ValueError:
            raise option_error(option, f"expected i/n (e.g. 0/4), got {spec!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise option_error(option, f"shard {i}/{n}: need 0 <= i < n")
    return i, n


def shard_path(out: Path, i: int, n: int) -> Path:
    """The part file of shard ``i`` of ``n``: ``STORE.shard-i-of-n.h5``."""
    return out.with_name(f"{out.stem}.shard-{i}-of-{n}{out.suffix or '.h5'}")


def shard_range(n_rows: int, i: int, n: int, align: int = 1) -> tuple[int, int]:
    """Rows ``[start, stop)`` of shard ``i`` of ``n``; boundaries on multiples of ``align`` (the batch size, so every
    batch holds the same images as in a single run) when every shard still gets rows."""
    if align > 1 and n_rows >= n * align:
        cut = [min(n_rows, round(j * n_rows / n / align) * align) for j in range(n + 1)]
        cut[-1] = n_rows
        return cut[i], cut[i + 1]
    return i * n_rows // n, (i + 1) * n_rows // n


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


# -- the block writer ------------------------------------------------------------------------------------------

class BlockWriter:
    """A thread that gathers batches into row blocks and writes each block as a part file.

    Writing is behind-the-scenes too: a finished block is handed to a single I/O thread (which compresses its chunks
    on the thread pool and writes the part file) while this thread goes on filling the next block from the queue, so
    the model never waits for compression unless the writing falls a whole block behind. Host memory: the block being
    filled, at most one block being written, and ``max_queue`` batches.
    """

    def __init__(self, plan: StorePlan, extractor: Extractor, *, threads: int = 0,
                 on_rows: Callable[[int], None] | None = None, max_queue: int = 4, max_blocks: int | None = None):
        self.plan, self.ex = plan, extractor
        self.q: queue.Queue = queue.Queue(maxsize=max_queue)
        self.pool = ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1))
        self.io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipgen-store-io")
        self.pending = None  # the Future of the part file being written
        self.on_rows, self.max_blocks = on_rows, max_blocks
        self.error: BaseException | None = None
        self.blocks: dict[int, dict[str, Any]] = {}
        self.written = 0
        self.thread = threading.Thread(target=self._run, name="clipgen-store-writer", daemon=True)
        self.thread.start()

    def put(self, block: int, local_rows: np.ndarray, packed, emb, event, skipped: Sequence[tuple[int, str]]):
        """Queue one batch: rows ``local_rows`` (within ``block``) of the device tensors, plus skipped rows."""
        if self.error is not None:
            raise self.error
        while True:
            try:
                self.q.put((block, local_rows, packed, emb, event, list(skipped)), timeout=0.5)
                return
            except queue.Full:
                if self.error is not None:
                    raise self.error from None

    def _buffer(self, k: int) -> dict[str, Any]:
        if k not in self.blocks:
            a, b = self.plan.block_range(k)
            n = b - a
            arrays = {d.name: np.full((n, *d.shape), np.nan, dtype=np.float32 if d.kind == "embedding"
                                      else self.plan.dtype) for d in self.plan.layers}
            self.blocks[k] = {"arrays": arrays, "reasons": [""] * n, "left": n}
        return self.blocks[k]

    def _run(self) -> None:
        try:
            while True:
                item = self.q.get()
                if item is None:
                    self._wait_pending()
                    return
                k, rows, packed, emb, event, skipped = item
                if event is not None:
                    event.synchronize()
                buf = self._buffer(k)
                if len(rows):
                    host = self.ex.unpack(packed.numpy() if packed is not None else None,
                                          emb.numpy() if emb is not None else None)
                    for name, arr in host.items():
                        buf["arrays"][name][rows] = arr
                for r, reason in skipped:
                    buf["reasons"][r] = reason
                buf["left"] -= len(rows) + len(skipped)
                if buf["left"] == 0:
                    self._finish(k, buf)
                if self.on_rows:
                    self.on_rows(len(rows) + len(skipped))
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            self.error = e

    def _finish(self, k: int, buf: dict[str, Any]) -> None:
        for d in self.plan.layers:
            arr = buf["arrays"][d.name]
            if d.kind != "embedding" and self.plan.dtype == "float16":
                good = np.array([not r for r in buf["reasons"]])
                if not np.isfinite(arr[good]).all():
                    raise ClipgenError(f"layer {d.name}: activations exceed the float16 range (or are not "
                                       f"finite) in rows {self.plan.block_range(k)}; extract with --dtype float32")
        self._wait_pending()  # at most one block is being written while the next one fills
        del self.blocks[k]
        self.pending = self.io.submit(self._write, k, buf)
        if self.max_blocks is not None:  # tests: die right after the k-th whole part file, as a killed process would
            self._wait_pending()
            if self.written >= self.max_blocks:
                raise SimulatedCrash(f"simulated crash after {self.written} blocks")

    def _write(self, k: int, buf: dict[str, Any]) -> None:
        from clipgen.store.parts import write_part

        write_part(self.plan, k, buf["arrays"], buf["reasons"], self.pool)
        self.written += 1

    def _wait_pending(self) -> None:
        """Wait for the part file being written; re-raise its error."""
        if self.pending is not None:
            fut, self.pending = self.pending, None
            fut.result()

    def close(self, wait: bool = True) -> None:
        """Finish queued work (``wait``) or abandon it (a crash, an error in the main thread); re-raise the thread's
        error. Abandoning drops the queued batches and the block being filled; a part file being written is finished
        or not written at all (never half)."""
        if wait:
            while self.thread.is_alive():
                try:
                    self.q.put(None, timeout=0.5)
                    break
                except queue.Full:
                    if self.error is not None:
                        break
            self.thread.join()
        else:
            while True:  # let the thread end: drop what is queued, then the end marker
                try:
                    self.q.get_nowait()
                except queue.Empty:
                    break
            with contextlib.suppress(queue.Full):
                self.q.put_nowait(None)
        self.io.shutdown(wait=wait)
        self.pool.shutdown(wait=wait)
        if self.error is not None and (wait or isinstance(self.error, SimulatedCrash)):
            raise self.error


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


def _check_existing(plan: StorePlan, force: bool) -> dict[str, Any] | None:
    """Decide what to do with an existing output; returns its header to continue it (or skip it when complete), None
    to start fresh. The same command continues its own store; a store of other settings needs ``force``."""
    import shutil

    out = plan.out
    if not out.exists():
        if plan.parts.exists():
            shutil.rmtree(plan.parts)  # leftovers without a header: nothing to resume
        return None
    try:
        head = read_plan_header(out)
    except ClipgenError:
        if force:
            out.unlink()
            shutil.rmtree(plan.parts, ignore_errors=True)
            return None
        raise file_error(out, "exists and is not a readable clipgen store; pass --force to overwrite it") from None
    if force or (not head["complete"] and head["rows_done"] == 0):
        out.unlink()  # (an interrupted store without a single row holds nothing to resume: start it afresh)
        shutil.rmtree(plan.parts, ignore_errors=True)
        return None
    if head["fingerprint"] != plan.fingerprint:
        diff = schema.fingerprint_diff(head["provenance"], plan.provenance)
        raise file_error(out, f"fingerprint mismatch: the existing store was made from a different "
                              f"{', '.join(diff) or 'configuration'}; pass --force (or another --out) for a new store")
    s = head["settings"]
    if not head["complete"] and (s["block_rows"] != plan.block_rows or s["batch_size"] != plan.batch_size):
        raise option_error("--batch-size", f"the interrupted store was started with --batch-size {s['batch_size']} "
                                           f"--block-rows {s['block_rows']}; rerun with those to continue it, "
                                           f"or pass --force to start over")
    return head


def _load_header_extras(path: Path) -> tuple[dict[int, str], tuple | None, list[int]]:
    from clipgen.store.reader import ActivationStore, open_h5

    f = open_h5(path)
    try:
        st = ActivationStore(path, f)
        te = st.text_embeddings
        text = (te[0].tolist(), te[1], te[2]) if te is not None else None
        return dict(st.class_names), text, list(st.held_out_labels)
    finally:
        f.close()


def make_batches(plan: StorePlan, records, transform, todo: Sequence[int], *, workers: int, on_error: str,
                 pin_memory: bool):
    """Batches of the blocks in ``todo`` from image files: ``(images, plan rows, skipped [(row, reason)])``."""
    from torch.utils.data import DataLoader

    from clipgen.datasets import CountingLoader, ImageDataset, collate_skip, load_image, raise_unreadable

    batch_sampler = []
    for k in todo:
        a, b = plan.block_range(k)
        batch_sampler.extend(list(range(s, min(s + plan.batch_size, b))) for s in range(a, b, plan.batch_size))
    # the dataset always skips; a failure is raised here, in the main process, with its one-line message (raised in
    # a worker it would come back wrapped in the worker's traceback)
    ds = ImageDataset(records, transform, "skip")
    kw = {"prefetch_factor": 4, "persistent_workers": False} if workers else {}
    loader = CountingLoader(DataLoader(ds, batch_sampler=batch_sampler, num_workers=workers, collate_fn=collate_skip,
                                       pin_memory=pin_memory, **kw))
    for images, kept, bad in loader:
        if on_error == "fail" and len(bad):
            raise_unreadable(records, bad.tolist())
        skipped = []
        for i in bad.tolist():
            try:
                load_image(records[i].path)
                why = "unreadable image"
            except ClipgenError as e:
                why = str(e)
            skipped.append((i, why))
        yield images, kept.numpy(), skipped


def cache_batches(plan: StorePlan, records, cache, transform, todo: Sequence[int], *, device, on_error: str):
    """:func:`make_batches` from an image cache (the same batches, already normalised on ``device``)."""
    batch_rows = []
    for k in todo:
        a, b = plan.block_range(k)
        batch_rows.extend(range(s, min(s + plan.batch_size, b)) for s in range(a, b, plan.batch_size))
    if not batch_rows:
        return
    for images, kept, bad in cache.batches(records, transform, device=device, on_error=on_error,
                                           batch_rows=batch_rows):
        yield images, kept.numpy(), [(int(i), cache.reason(records[int(i)])) for i in bad.tolist()]


def _run_info(manifest) -> dict[str, Any] | None:
    """The run's name, seed and training mixture (setup, test domain, held-out classes) from its manifest: later
    commands take their defaults from it (e.g. ``clipgen sae features`` scores the mixture's test domain)."""
    if manifest is None:
        return None
    mix = manifest.mixture or {}
    keys = ("file", "setup", "test_domain", "domains", "held_out", "aligned", "pseudo", "identifier")
    return {"name": manifest.name, "seed": manifest.seed, "mixture": {k: mix.get(k) for k in keys} if mix else None}


def extract(cfg: ExtractConfig, *, progress: bool = True, crash_after_blocks: int | None = None,
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
    with writing_output(out, lambda o: _discard_if_empty(o), keep=(SimulatedCrash,)):
        return _extract(cfg, progress=progress, crash_after_blocks=crash_after_blocks, note=note)


def _check_numbers(cfg: ExtractConfig) -> None:
    """Numeric options, checked before any work (the CLI checks them too; this guards library callers)."""
    for opt, val, lo in (("--batch-size", cfg.batch_size, 1), ("--block-rows", cfg.block_rows, 1),
                         ("--workers", cfg.workers, 0), ("--writer-threads", cfg.writer_threads, 0),
                         ("--epoch", cfg.epoch, 0)):
        if val is not None and val < lo:
            raise option_error(opt, f"{val} is below the minimum {lo}")
    if not cfg.max_size_gb > 0:
        raise option_error("--max-size-gb", f"{cfg.max_size_gb:g} is not a positive size")


def _discard_if_empty(out: Path) -> None:
    """Remove a store header (and its parts folder) in which no block was written: nothing to resume."""
    import shutil

    from clipgen.store.parts import completed_blocks_on_disk

    pdir = parts_dir(out)
    if completed_blocks_on_disk(pdir):
        return
    with contextlib.suppress(OSError, ClipgenError):
        if out.is_file() and not read_plan_header(out)["complete"]:
            out.unlink()
    if not out.exists():
        shutil.rmtree(pdir, ignore_errors=True)


def _extract(cfg: ExtractConfig, *, progress: bool = True, crash_after_blocks: int | None = None,
             note: Callable[[str], None] | None = None) -> ExtractResult:
    import torch

    from clipgen.artifacts import command_line, sha256_file, utc_now, write_config
    from clipgen.devices import resolve_device, resolve_precision
    from clipgen.models.layers import select_layers
    from clipgen.progress import make_progress

    say = note or (lambda _m: None)
    for opt, val, allowed in (("--pooling", cfg.pooling, POOLINGS), ("--token-pooling", cfg.token_pooling,
                              TOKEN_POOLINGS), ("--dtype", cfg.dtype, schema.DTYPES),
                              ("--on-error", cfg.on_error, ("fail", "skip")),
                              ("--channels-last", cfg.channels_last, ("auto", "on", "off"))):
        if val not in allowed:
            raise option_error(opt, f"unknown value {val!r} (one of {', '.join(allowed)})")
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
        raise option_error("--pooling", f"'none' would store about {total / 1e9:.1f} GB for {len(records)} images "
                                        f"(limit {cfg.max_size_gb:g} GB): select fewer --layer/--domains or raise "
                                        f"--max-size-gb")
    cuda = device.type == "cuda"
    out = shard_path(Path(cfg.out), *shard) if shard is not None else Path(cfg.out)
    old = {} if cfg.force else _existing_settings(out)
    batch_size = cfg.batch_size or old.get("batch_size") or (256 if cuda else 32)
    block_rows = cfg.block_rows or old.get("block_rows") or default_block_rows(batch_size, per_row)
    if block_rows % batch_size:
        raise option_error("--block-rows", f"{block_rows} is not a multiple of --batch-size {batch_size}")
    if shard is not None:
        i, n = shard
        a, b = shard_range(len(records), i, n, align=batch_size)
        shard_info = {"index": i, "count": n, "start": a, "stop": b, "total": len(records)}
    else:
        a, b, shard_info = 0, len(records), None
    sub = records[a:b]
    if not sub:
        raise option_error("--shard", f"shard {cfg.shard} of {len(records)} images is empty; use fewer shards")
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
    head = _check_existing(plan, cfg.force)
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
        plan.class_names, plan.text, plan.held_out_labels = _load_header_extras(out)
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


def _existing_settings(out: Path) -> dict[str, int]:
    """Batch size and block rows of an existing store (empty if none or unreadable: _check_existing decides)."""
    from clipgen.store.parts import header_settings
    from clipgen.store.reader import open_h5

    if not out.is_file():
        return {}
    try:
        f = open_h5(out)
    except ClipgenError:
        return {}
    try:
        return {k: v for k, v in header_settings(f).items() if k in ("batch_size", "block_rows") and v}
    except (KeyError, OSError):
        return {}
    finally:
        f.close()


__all__ = ["ExtractConfig", "ExtractResult", "Extractor", "SimulatedCrash", "default_block_rows", "extract",
           "layer_defs", "list_layers", "parts_dir", "row_bytes", "run_blocks"]
