"""Image sets of the store writers: resolving ``--data``/``--tsv`` to records, and the batches of a block plan.

``clipgen extract`` and ``clipgen data cache`` read the same image sets and fill their part files block by block;
both take their records from :func:`resolve_image_set` and their batches from :func:`make_batches` (decoding image
files in data-loader workers), or from :func:`cache_batches` (reading an image cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipgen import domainnet as dn
from clipgen.errors import ClipgenError, ConfigFieldError
from clipgen.store.schema import image_set_sha256


def resolve_image_set(cfg: Any):
    """``(records, image_set provenance)`` for a DomainNet root or a TSV (``cfg``: data, tsv, split, domains)."""
    from clipgen.artifacts import sha256_file
    from clipgen.datasets import domainnet_records, tsv_records

    if (cfg.data is None) == (cfg.tsv is None):
        raise ConfigFieldError("data", "give exactly one image set: --data DOMAINNET_ROOT or --tsv FILE")
    if cfg.data is not None:
        root = Path(cfg.data)
        if not root.is_dir():
            raise ConfigFieldError("data", f"{root} is not a directory")
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
        raise ConfigFieldError("data" if cfg.data is not None else "tsv", "the image set is empty")
    info["sources"] = [{"path": str(Path(p).resolve()), "sha256": sha256_file(p)} for p in sources]
    info["sha256"] = image_set_sha256([r.rel or r.path for r in recs], [r.label for r in recs],
                                      [r.domain for r in recs], [r.split for r in recs])
    info["n_rows"] = len(recs)
    return recs, info


def make_batches(plan: Any, records, transform, todo: Sequence[int], *, workers: int, on_error: str,
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


def cache_batches(plan: Any, records, cache, transform, todo: Sequence[int], *, device, on_error: str):
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
