"""Image sets shared by training, evaluation, extraction and circuits.

An image set is a list of :class:`ImageRecord` (absolute path, label, domain, split), read from a DomainNet
root (real or synthetic, filtered by domain, split and class) or from any ``filepath<TAB>title`` TSV. The
torch :class:`ImageDataset` decodes them; unreadable images either fail with a one-line error naming the file
or, with ``on_error="skip"``, are dropped by :func:`collate_skip` and reported by index, never silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipgen import domainnet as dn
from clipgen.errors import ClipgenError, file_error


@dataclass(frozen=True)
class ImageRecord:
    path: str  # absolute
    label: int  # DomainNet label, or -1 when unknown (TSV image sets)
    domain: str | None = None
    split: str | None = None
    rel: str | None = None  # path as written in the index (split file or TSV)


def domainnet_records(root: str | Path, domains: Sequence[str] = dn.DOMAINS, split: str = "test", *,
                      labels: Iterable[int] | None = None, check_files: bool = False) -> list[ImageRecord]:
    """Records of ``{domain}_{split}.txt`` for each domain (in the given order), optionally only ``labels``."""
    if split not in dn.SPLITS:
        raise ClipgenError(f"--split: unknown split {split!r} (one of {', '.join(dn.SPLITS)})")
    root = Path(root).resolve()
    keep = set(labels) if labels is not None else None
    out = []
    for d in domains:
        for s in dn.read_split(root, d, split, check_files=check_files):
            if keep is None or s.label in keep:
                out.append(ImageRecord(str(root / s.path), s.label, d, split, s.path))
    return out


def tsv_records(tsv: str | Path, *, check_files: bool = False) -> list[ImageRecord]:
    """Records of a ``filepath<TAB>title`` TSV (labels unknown: -1)."""
    from clipgen.tsv import iter_tsv

    return [ImageRecord(str(Path(fp).resolve()), -1, None, None, fp) for fp, _ in iter_tsv(tsv,
                                                                                           check_files=check_files)]


def folders_of(records: Iterable[ImageRecord]) -> dict[int, str]:
    """label -> class folder, from DomainNet-layout paths (``domain/folder/file``)."""
    out: dict[int, str] = {}
    for r in records:
        if r.rel and r.label >= 0:
            parts = r.rel.split("/")
            if len(parts) >= 3:
                out.setdefault(r.label, parts[-2])
    return dict(sorted(out.items()))


def load_image(path: str):
    """Decode an image to RGB; a missing or corrupt file is a ClipgenError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise file_error(path, "image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise file_error(path, f"corrupt or unreadable image ({e.__class__.__name__})") from None


def raise_unreadable(records: Sequence[Any], indices: Sequence[int]) -> None:
    """Raise the one-line error of the first unreadable image among ``indices`` (decoded again here, in the main
    process: an error raised inside a DataLoader worker would come back wrapped in the worker's traceback)."""
    for i in indices:
        load_image(records[int(i)].path)  # raises a ClipgenError naming the file
    if len(indices):
        raise ClipgenError(f"{records[int(indices[0])].path}: unreadable image")


class ImageDataset:
    """A torch map-style dataset of ``(image_tensor, index)``; ``None`` for a bad image with on_error="skip"."""

    def __init__(self, records: Sequence[ImageRecord], transform: Any, on_error: str = "fail"):
        if on_error not in ("fail", "skip"):
            raise ClipgenError(f"--on-error: must be 'fail' or 'skip', not {on_error!r}")
        self.records, self.transform, self.on_error = list(records), transform, on_error

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        try:
            img = load_image(self.records[i].path)
        except ClipgenError:
            if self.on_error == "skip":
                return None, i
            raise
        return self.transform(img), i


def collate_skip(batch):
    """Stack a batch, dropping bad images: returns ``(images or None, kept indices, skipped indices)``."""
    import torch

    good = [(x, i) for x, i in batch if x is not None]
    bad = [i for x, i in batch if x is None]
    if not good:
        return None, torch.empty(0, dtype=torch.long), torch.tensor(bad, dtype=torch.long)
    return (torch.stack([x for x, _ in good]), torch.tensor([i for _, i in good], dtype=torch.long),
            torch.tensor(bad, dtype=torch.long))


class DecodeCounter:
    """How many images the loaders of this process have decoded (in the main process or in worker processes).

    Counted as the batches arrive in the main process, so images decoded by DataLoader workers count too.
    """

    def __init__(self) -> None:
        self.count = 0

    def reset(self) -> int:
        n, self.count = self.count, 0
        return n


#: Images decoded by :func:`make_loader` loaders since the process started (or the last ``reset()``).
DECODES = DecodeCounter()


class CountingLoader:
    """A DataLoader (of :func:`collate_skip` batches) whose batches add their image count (kept + skipped) to
    :data:`DECODES`."""

    def __init__(self, loader: Any):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, kept, skipped in self.loader:
            DECODES.count += len(kept) + len(skipped)
            yield images, kept, skipped


def make_loader(records: Sequence[ImageRecord], transform: Any, *, batch_size: int = 256, workers: int = 0,
                on_error: str = "fail", pin_memory: bool = False):
    """An ordered DataLoader over ``records`` yielding ``(images, kept_indices, skipped_indices)``; the decoded
    images are counted in :data:`DECODES`."""
    from torch.utils.data import DataLoader

    ds = ImageDataset(records, transform, on_error)
    return CountingLoader(DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                                      collate_fn=collate_skip, pin_memory=pin_memory, persistent_workers=False))
