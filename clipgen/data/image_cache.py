"""``clipgen data cache``: the model-input images of an image set, decoded once into an HDF5 file.

A cache holds every image of an image set (a DomainNet root + split + domains, or a ``filepath<TAB>title`` TSV)
as the model sees it *before normalisation*: decoded, converted to RGB, resized and center-cropped, as uint8
``(3, S, S)``. Normalisation (``/255``, mean, std) happens on the device when the images are read, so reading the
cache gives exactly the tensors the JPEG path gives (``ToTensor`` of the uint8 PIL image, then ``Normalize``).

The file is an activation store (:mod:`clipgen.store`, schema 1) with one layer, ``pixels`` (kind ``image``, stored
uint8), so it shares the store's header, samples table, fingerprint, resumable part files and assembly. Its
fingerprint covers the image set (paths, labels, domains, splits), the geometric transform with its parameters and
the cache version; ``eval zero-shot``, ``eval supervised``, ``extract`` and ``circuits compute`` accept it with
``--images CACHE`` and refuse a cache whose transform differs from the model's or that lacks a requested image.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipgen.errors import ConfigFieldError, file_error

#: Version of the cache's content (part of the fingerprint): bump when what is stored changes.
CACHE_VERSION = 1
#: The layer that holds the images.
PIXELS = "pixels"
#: Rows per resumable part file by default.
BLOCK_ROWS = 1024
COMPRESSIONS = ("none", "lzf", "gzip")


@dataclass
class CacheConfig:
    """Options of ``clipgen data cache``."""

    out: Path
    data: Path | None = None  # DomainNet root (real or synthetic)
    tsv: Path | None = None  # or a filepath<TAB>title TSV
    split: str = "test"
    domains: str = "all"
    size: int | None = None  # input size of open_clip's evaluation transform
    model: str | None = None  # or the evaluation transform of this model (registry name)
    model_dir: Path | None = None  # or of this run's model
    batch_size: int = 64
    block_rows: int = BLOCK_ROWS
    workers: int | None = None  # None: derived from the CPUs this process may use
    on_error: str = "fail"
    compression: str = "none"
    force: bool = False


@dataclass
class CacheResult:
    path: Path
    rows: int
    skipped: list[tuple[int, str, str]]
    blocks_computed: int
    blocks_total: int
    already_complete: bool = False


# -- the transform ---------------------------------------------------------------------------------------------

def _step_name(t: Any) -> str:
    """A stable description of one transform step: functions by name (their repr holds an address), objects by
    their repr, completed with their simple attributes where the repr shows none (``MaybeConvertMode()``)."""
    if callable(t) and hasattr(t, "__name__") and not hasattr(t, "forward"):
        return f"{getattr(t, '__module__', '')}.{t.__name__}"
    r = repr(t)
    extra = {k: v for k, v in getattr(t, "__dict__", {}).items()
             if not k.startswith("_") and k != "training" and isinstance(v, (bool, int, float, str, tuple, list))}
    if r.endswith("()") and extra:
        r = r[:-1] + ", ".join(f"{k}={v!r}" for k, v in sorted(extra.items())) + ")"
    return r


def split_transform(transform: Any, field: str = "images") -> tuple[list[Any], list[float], list[float]]:
    """``(geometric steps, mean, std)`` of an evaluation transform ``Compose([..., ToTensor(), Normalize()])``."""
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    if len(steps) < 2 or not isinstance(steps[-2], T.ToTensor) or not isinstance(steps[-1], T.Normalize):
        raise ConfigFieldError(field, f"cannot cache images for this preprocessing (expected Compose([..., ToTensor(), "
                                       f"Normalize(...)]), got {transform!r})")
    norm = steps[-1]
    return steps[:-2], [float(x) for x in norm.mean], [float(x) for x in norm.std]


def describe_transform(transform: Any, field: str = "images") -> dict[str, Any]:
    """What a cache made for ``transform`` stores: its geometric steps (the fingerprinted part) and normalisation."""
    geo, mean, std = split_transform(transform, field)
    return {"steps": [_step_name(t) for t in geo], "mean": mean, "std": std}


def uint8_transform(transform: Any, field: str = "images") -> Any:
    """The geometric steps of ``transform`` followed by PILToTensor: the uint8 ``(3, S, S)`` model input."""
    from torchvision import transforms as T

    geo, _, _ = split_transform(transform, field)
    return T.Compose([*geo, T.PILToTensor()])


def cache_transform(cfg: CacheConfig) -> tuple[Any, str]:
    """``(evaluation transform, where it came from)`` for ``--size``, ``--model`` or ``--model-dir``."""
    given = [o for o, v in (("--size", cfg.size), ("--model", cfg.model), ("--model-dir", cfg.model_dir))
             if v is not None]
    if len(given) != 1:
        raise ConfigFieldError("size", "give exactly one of --size N, --model NAME or --model-dir RUN_DIR (the "
                                       "preprocessing the cached images are made for)")
    if cfg.size is not None:
        if cfg.size < 1:
            raise ConfigFieldError("size", f"must be a positive number of pixels, not {cfg.size}")
        from open_clip import image_transform

        return image_transform(int(cfg.size), is_train=False), f"open_clip evaluation transform, {cfg.size} px"
    from clipgen.models.registry import create_model, model_config

    if cfg.model is not None:
        _, _, pre = create_model(cfg.model, model_config_override=model_config(cfg.model))
        return pre, f"model {cfg.model}"
    from clipgen.runs import read_manifest

    man = read_manifest(cfg.model_dir)
    if man.kind == "supervised":
        from clipgen.models.supervised import create_supervised

        _, _, pre = create_supervised(man.model, model_config=man.model_config)
    else:
        _, _, pre = create_model(man.model, model_config_override=man.model_config)
    return pre, f"run {Path(cfg.model_dir).resolve()} ({man.model})"


def crop_size(transform: Any) -> int:
    """The side of the square model input ``transform`` produces."""
    from PIL import Image

    return int(uint8_transform(transform)(Image.new("RGB", (37, 23))).shape[-1])


# -- writing ---------------------------------------------------------------------------------------------------

def run_cache(cfg: CacheConfig, *, progress: bool = True, crash_after_blocks: int | None = None,
              note: Any = None) -> CacheResult:
    """Write (or continue) the cache of ``cfg``; an interrupted cache continues where it stopped.

    As an extraction, under the output's writer lock (a second writer is refused); a run that fails before writing a
    block leaves nothing behind, one that fails later keeps its finished blocks for the same command to continue."""
    from clipgen.locks import writing_output
    from clipgen.store.parts import discard_if_empty
    from clipgen.store.testing import SimulatedCrash

    if cfg.on_error not in ("fail", "skip"):
        raise ConfigFieldError("on_error", f"must be 'fail' or 'skip', not {cfg.on_error!r}")
    if cfg.compression not in COMPRESSIONS:
        raise ConfigFieldError("compression", f"unknown compression {cfg.compression!r} (one of "
                                              f"{', '.join(COMPRESSIONS)})")
    if cfg.batch_size < 1 or cfg.block_rows < 1 or cfg.block_rows % cfg.batch_size:
        raise ConfigFieldError("block_rows", f"{cfg.block_rows} must be a positive multiple of --batch-size "
                                             f"{cfg.batch_size}")
    with writing_output(Path(cfg.out), discard_if_empty, keep=(SimulatedCrash,)):
        return _build_cache(cfg, progress=progress, crash_after_blocks=crash_after_blocks, note=note)


def _build_cache(cfg: CacheConfig, *, progress: bool, crash_after_blocks: int | None, note: Any) -> CacheResult:
    from clipgen import __version__
    from clipgen.artifacts import write_config
    from clipgen.data.image_sets import make_batches, resolve_image_set
    from clipgen.devices import resolve_workers
    from clipgen.progress import make_progress
    from clipgen.store.parts import StorePlan, assemble, check_existing, verified_blocks, write_header, write_part
    from clipgen.store.testing import crash_point
    from clipgen.store.writer import LayerDef, SampleTable

    say = note or (lambda _m: None)
    workers = resolve_workers(cfg.workers)
    transform, source = cache_transform(cfg)
    desc = describe_transform(transform, "--size")
    side = crop_size(transform)
    records, image_set = resolve_image_set(cfg)
    provenance = {
        "cache": {"version": CACHE_VERSION, "transform_source": source},
        "image_set": image_set,
        "preprocess": {"cache_version": CACHE_VERSION, "steps": desc["steps"], "shape": [3, side, side],
                       "dtype": "uint8"},
        "normalize": {"mean": desc["mean"], "std": desc["std"]},
        "layers": [PIXELS],
        "dtype": "uint8",
        "clipgen_version": __version__,
    }
    layer = LayerDef(PIXELS, (3, side, side), (3, side, side), "none", "image")
    samples = SampleTable([r.path for r in records], [r.label for r in records], [r.domain for r in records],
                          [r.split for r in records])
    plan = StorePlan(out=Path(cfg.out), samples=samples, layers=[layer], dtype="uint8", provenance=provenance,
                     block_rows=cfg.block_rows, batch_size=cfg.batch_size, compression=cfg.compression)
    plan.out.parent.mkdir(parents=True, exist_ok=True)
    head = check_existing(plan, cfg.force)
    if head is not None and head["complete"]:
        import shutil

        shutil.rmtree(plan.parts, ignore_errors=True)
        say(f"{plan.out}: already complete ({head['n_samples']} images); nothing to do")
        return CacheResult(plan.out, head["n_samples"], [], 0, plan.n_blocks, already_complete=True)
    if head is not None:
        plan.provenance = head["provenance"]
        done = verified_blocks(plan)
        say(f"{plan.out}: continuing, {len(done)} of {plan.n_blocks} blocks already written")
    else:
        write_header(plan)
        done = set()
    todo = [k for k in range(plan.n_blocks) if k not in done]
    written = 0
    with make_progress(disable=not progress) as bar:
        task = bar.add_task(f"cache {plan.out.name}", total=plan.n_rows,
                            completed=plan.n_rows - sum(plan.block_range(k)[1] - plan.block_range(k)[0]
                                                        for k in todo))
        batches = make_batches(plan, records, uint8_transform(transform), todo, workers=workers,
                               on_error=cfg.on_error, pin_memory=False)
        for k in todo:
            a, b = plan.block_range(k)
            arr = np.zeros((b - a, 3, side, side), dtype=np.uint8)
            reasons = [""] * (b - a)
            filled = 0
            while filled < b - a:
                images, rows, skipped = next(batches)
                if images is not None and len(rows):
                    arr[rows - a] = images.numpy()
                for i, why in skipped:
                    reasons[i - a] = why
                filled += len(rows) + len(skipped)
                bar.advance(task, len(rows) + len(skipped))
            write_part(plan, k, {PIXELS: arr}, reasons)
            written += 1
            crash_point(written, crash_after_blocks)  # testing hook
    rows, skipped = assemble(plan)
    write_config(plan.out, "data cache", cfg)
    if skipped:
        say(f"{plan.out}: skipped {len(skipped)} unreadable image(s), listed under /skipped: "
            + "; ".join(f"{p} ({why})" for _, p, why in skipped[:3]) + (" ..." if len(skipped) > 3 else ""))
    return CacheResult(plan.out, rows, skipped, written, plan.n_blocks)


# -- reading ---------------------------------------------------------------------------------------------------

def image_key(path: str) -> str:
    """domain/class_folder/file: the part of an image path that identifies it in any DomainNet root (a TSV image
    set keeps the same last three path parts wherever its root lies)."""
    return "/".join(Path(path).parts[-3:])


class ImageCache:
    """One or several complete image caches opened for reading, looked up as one (use :func:`open_cache`; close it,
    or use ``with``). Several files (a folder of caches, e.g. one per domain and split) must share one
    preprocessing."""

    def __init__(self, path: Path, stores: Sequence[Any], field: str):
        self.path, self.stores, self.field = Path(path), list(stores), field  # the config field that names the cache
        provs = [st.provenance for st in self.stores]
        self.provenance = provs[0]
        self.steps = list(provs[0]["preprocess"]["steps"])
        self.shape = tuple(provs[0]["preprocess"]["shape"])
        for st, prov in zip(self.stores, provs, strict=True):
            if list(prov["preprocess"]["steps"]) != self.steps or tuple(prov["preprocess"]["shape"]) != self.shape:
                raise file_error(st.path, f"made for another preprocessing than {self.stores[0].path}; the caches "
                                          f"read together must share one")
        import hashlib

        self.fingerprint = (self.stores[0].fingerprint if len(self.stores) == 1 else
                            hashlib.sha256(" ".join(sorted(st.fingerprint for st in self.stores)).encode()).hexdigest())
        self._row: dict[str, int] = {}
        labels, self._skipped, self._ds, offsets = [], {}, [], [0]
        for st in self.stores:
            samples = st.samples
            for i, p in enumerate(samples.paths):
                self._row.setdefault(image_key(p), offsets[-1] + i)
            labels.append(np.asarray(samples.labels, dtype=np.int64))
            self._skipped.update({image_key(p): why for _, p, why in st.skipped})
            self._ds.append(st.file["layers/" + PIXELS])
            offsets.append(offsets[-1] + len(samples.paths))
        self._labels = np.concatenate(labels)
        self._offsets = np.asarray(offsets, dtype=np.int64)

    def close(self) -> None:
        for st in self.stores:
            st.close()

    def __enter__(self) -> ImageCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._labels)

    def check_transform(self, transform: Any) -> dict[str, Any]:
        """Refuse a model whose preprocessing is not the one the cache was made for; returns the model's."""
        desc = describe_transform(transform, self.field)
        if desc["steps"] != self.steps:
            raise ConfigFieldError(self.field, f"{self.path} was made for another preprocessing "
                                               f"({'; '.join(self.steps)}) than the model's "
                                               f"({'; '.join(desc['steps'])}); build a cache for it with "
                                               f"'clipgen data cache'")
        return desc

    def rows_of(self, records: Sequence[Any], on_error: str = "fail") -> np.ndarray:
        """Cache row of every record (-1: skipped as unreadable when the cache was built, with ``on_error="skip"``);
        a record the cache lacks, or with another label, is a one-line error."""
        keys = [image_key(r.path) for r in records]
        rows = np.array([self._row.get(k, -1) for k in keys], dtype=np.int64)
        missing = [k for k, r in zip(keys, rows, strict=True) if r < 0]
        if missing:
            unread = [k for k in missing if k in self._skipped]
            if len(unread) < len(missing):
                first = next(k for k in missing if k not in self._skipped)
                raise ConfigFieldError(self.field, f"{self.path} does not hold {len(missing) - len(unread)} of the "
                                                   f"{len(keys)} requested images (first: {first}); it was made for "
                                                   f"another image set")
            if on_error == "fail":
                k = unread[0]
                raise ConfigFieldError(self.field, f"{k} could not be read when {self.path} was built "
                                                   f"({self._skipped[k]}); pass --on-error skip to leave it out")
        ok = rows >= 0
        want = np.array([r.label for r in records], dtype=np.int64)
        have = self._labels[rows[ok]]
        bad = np.flatnonzero((want[ok] >= 0) & (have >= 0) & (want[ok] != have))
        if len(bad):
            i = np.flatnonzero(ok)[bad[0]]
            raise ConfigFieldError(self.field, f"{self.path}: image {keys[i]} has label {int(self._labels[rows[i]])} "
                                               f"in the cache but {int(want[i])} in the requested image set")
        return rows

    def read(self, rows: np.ndarray) -> np.ndarray:
        """uint8 ``(len(rows), 3, S, S)`` images of cache ``rows`` (any order; a contiguous run is one slice)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return np.zeros((0, *self.shape), dtype=np.uint8)
        member = np.searchsorted(self._offsets, rows, side="right") - 1
        if member.min() == member.max():
            m = int(member[0])
            local = rows - self._offsets[m]
            if np.all(np.diff(local) == 1):
                return self._ds[m][int(local[0]):int(local[-1]) + 1]
            # one slice per run of consecutive rows (h5py's point selection is orders of magnitude slower)
            uniq, inv = np.unique(local, return_inverse=True)
            cuts = np.flatnonzero(np.diff(uniq) != 1) + 1
            parts = [self._ds[m][int(r[0]):int(r[-1]) + 1] for r in np.split(uniq, cuts)]
            return np.concatenate(parts)[inv]
        out = np.empty((len(rows), *self.shape), dtype=np.uint8)
        for m in np.unique(member):
            sel = member == m
            out[sel] = self.read(rows[sel])
        return out

    def batches(self, records: Sequence[Any], transform: Any, *, device: Any = "cpu", batch_size: int = 256,
                on_error: str = "fail", batch_rows: Sequence[Sequence[int]] | None = None, progress: Any = None,
                description: str = "images") -> Iterator[tuple[Any, Any, Any]]:
        """Batches of ``records`` as the model's ``transform`` gives them: ``(images on device or None, kept
        record indices, skipped record indices)``, normalised on the device. ``batch_rows``: the record indices of
        each batch (default: consecutive batches of ``batch_size``). The next batch is read while the current one
        is being used."""
        from concurrent.futures import ThreadPoolExecutor

        import torch

        mean, std = (torch.tensor(x, dtype=torch.float32).view(-1, 1, 1) for x in
                     (lambda d: (d["mean"], d["std"]))(self.check_transform(transform)))
        rows = self.rows_of(records, on_error)
        if batch_rows is None:
            batch_rows = [range(s, min(s + batch_size, len(records))) for s in range(0, len(records), batch_size)]
        on_gpu = getattr(device, "type", str(device)) == "cuda"
        mean, std = mean.to(device), std.to(device)

        def load(idx: Sequence[int]):
            idx = np.asarray(list(idx), dtype=np.int64)
            r = rows[idx]
            kept, skipped = idx[r >= 0], idx[r < 0]
            x = torch.from_numpy(np.ascontiguousarray(self.read(r[r >= 0]))) if len(kept) else None
            if x is not None and on_gpu:
                x = x.pin_memory()
            return x, torch.from_numpy(kept), torch.from_numpy(skipped)

        task = progress.add_task(description, total=len(records)) if progress is not None else None
        with ThreadPoolExecutor(1) as pool:
            nxt = pool.submit(load, batch_rows[0]) if len(batch_rows) else None
            for j in range(len(batch_rows)):
                x, kept, skipped = nxt.result()
                nxt = pool.submit(load, batch_rows[j + 1]) if j + 1 < len(batch_rows) else None
                if x is not None:
                    # ToTensor then Normalize, as the JPEG path does them (exact: the same float operations)
                    x = x.to(device, non_blocking=True).to(torch.float32).div_(255).sub_(mean).div_(std)
                yield x, kept, skipped
                if progress is not None:
                    progress.advance(task, len(kept) + len(skipped))
        if progress is not None:
            progress.remove_task(task)


    def reason(self, record: Any) -> str:
        """Why ``record`` is not in the cache (it could not be read when the cache was built)."""
        return self._skipped.get(image_key(record.path), "not in the image cache")

    def load(self, paths: Sequence[str], transform: Any) -> Any:
        """The model inputs of the images at ``paths`` (every one must be in the cache) as one CPU float tensor."""
        from clipgen.datasets import ImageRecord

        recs = [ImageRecord(str(p), -1) for p in paths]
        x, _, _ = next(self.batches(recs, transform, batch_size=max(1, len(recs)), on_error="fail"))
        return x


def open_cache(path: str | Path | Sequence[str | Path], field: str = "images") -> ImageCache:
    """Open a complete image cache, or several read as one (a folder: its ``*.h5`` files; or a list of files);
    anything else (missing, corrupt, partial, an activation store) is a one-line error naming the file."""
    if isinstance(path, (str, Path)):
        p = Path(path)
        if p.is_dir():
            files = sorted(x for x in p.glob("*.h5"))
            if not files:
                raise ConfigFieldError(field, f"no image cache (*.h5) in the folder {p}")
        else:
            files = [p]
        where = p
    else:
        files = [Path(x) for x in path]
        if not files:
            raise ConfigFieldError(field, "no image cache given")
        where = files[0]
    stores: list[Any] = []
    try:
        for f in files:
            stores.append(_open_one(f))
        return ImageCache(where, stores, field)
    except BaseException:
        for st in stores:
            st.close()
        raise


def _open_one(path: Path) -> Any:
    """One cache file as an open activation store, after checking it is an image cache of this version."""
    from clipgen.store import open_store
    from clipgen.store.kind import open_h5

    f = open_h5(path, what="an image cache", short="image cache")
    try:
        cache = (json.loads(str(f.attrs.get("provenance", "{}"))) or {}).get("cache")
    except (ValueError, TypeError, AttributeError):
        cache = None
    finally:
        f.close()
    if not isinstance(cache, dict):
        raise file_error(path, "not a clipgen image cache (make one with 'clipgen data cache')")
    if cache.get("version") != CACHE_VERSION:
        raise file_error(path, f"image cache version {cache.get('version')} (this clipgen reads {CACHE_VERSION}); "
                               f"rebuild it with 'clipgen data cache'")
    st = open_store(path, command="clipgen data cache")
    try:
        prov = st.provenance
        if PIXELS not in st.layers or "steps" not in prov.get("preprocess", {}):
            raise KeyError(PIXELS)
    except (KeyError, TypeError, AttributeError) as e:
        st.close()
        raise file_error(path, f"malformed image cache ({e.__class__.__name__}: {e})") from None
    return st
