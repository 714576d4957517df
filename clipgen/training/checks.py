"""Checks done before a training run starts, so bad input fails in a second with one line, not after an hour.

- a training/validation TSV is read completely (header, field counts), and a sample of its image paths is
  checked to exist (and two images to decode) before anything is launched;
- a run directory is inspected: does it exist, which checkpoints does it hold, is the last one readable.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipgen.artifacts import sha256_file
from clipgen.errors import ClipgenError, ConfigFieldError, file_error
from clipgen.runs import MANIFEST_NAME, list_checkpoints


@dataclass
class TsvSummary:
    """What the manifest records about a data file."""

    path: str  # absolute
    sha256: str
    rows: int
    checked_images: int = 0

    def manifest_entry(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "rows": self.rows}


def line_of_row(path: str | Path, index: int) -> int:
    """The 1-based file line of data row ``index`` (0-based, header excluded), counting blank lines as the
    reader does; used only to name the line in an error message."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        next(reader, None)
        i = -1
        for row in reader:
            if not row:
                continue
            i += 1
            if i == index:
                return reader.line_num
    return index + 2


def sample_indices(n: int, sample: int, seed: int = 0) -> list[int]:
    """The first and last 8 rows plus ``sample`` seeded random rows (sorted, unique)."""
    if n <= 0:
        return []
    head = list(range(min(8, n)))
    tail = list(range(max(0, n - 8), n))
    rng = random.Random(seed)
    rand = rng.sample(range(n), min(sample, n))
    return sorted(set(head + tail + rand))


def check_tsv(path: str | Path, field: str = "train", *, sample: int = 256, decode: int = 2,
              min_rows: int = 1) -> TsvSummary:
    """Validate a ``filepath<TAB>title`` TSV and a sample of its image paths; returns path, sha256 and rows.

    Relative image paths are resolved against the current directory, as open_clip_train resolves them. A missing
    file is an error of config field ``field``.
    """
    from clipgen.tsv import iter_tsv

    p = Path(path)
    if not p.is_file():
        raise ConfigFieldError(field, f"{p}: TSV file not found")
    files = [fp for fp, _ in iter_tsv(p)]
    if len(files) < min_rows:
        raise file_error(p, f"has {len(files)} data rows; need at least {min_rows}")
    idx = sample_indices(len(files), sample) if sample > 0 else []
    for i in idx:
        if not Path(files[i]).is_file():
            raise file_error(p, f"image {files[i]} does not exist (checked {len(idx)} sampled rows before "
                                f"training)", line=line_of_row(p, i))
    if decode:
        from clipgen.datasets import load_image

        for i in idx[:decode]:
            try:
                load_image(files[i])
            except ClipgenError as e:
                raise file_error(p, str(e), line=line_of_row(p, i)) from None
    return TsvSummary(str(p.resolve()), sha256_file(p), len(files), len(idx))


@dataclass
class RunState:
    """What a run directory holds."""

    run_dir: Path
    exists: bool
    has_manifest: bool
    has_log: bool
    checkpoints: dict[int, Path] = field(default_factory=dict)

    @property
    def last_epoch(self) -> int | None:
        return max(self.checkpoints) if self.checkpoints else None

    @property
    def started(self) -> bool:
        """Anything a training run leaves behind (manifest, log, checkpoints)."""
        return self.has_manifest or self.has_log or bool(self.checkpoints)


def run_state(run_dir: str | Path) -> RunState:
    d = Path(run_dir)
    return RunState(d, d.exists(), (d / MANIFEST_NAME).is_file(), (d / "out.log").is_file(), list_checkpoints(d))


def check_run_dir(state: RunState) -> None:
    """An existing run directory is continued by the same command (or replaced with ``--force``); only something
    that is not a directory in its place is an error."""
    if state.exists and not state.run_dir.is_dir():
        raise file_error(state.run_dir, "exists and is not a directory")


def refuse_other_settings(run_dir: str | Path, diff: list[str]) -> None:
    """The one-line error for a run continued with settings that differ from its manifest (``diff``: what changed)."""
    if diff:
        raise ConfigFieldError("name", f"run {run_dir} was started with other settings ({'; '.join(diff)}); rerun with "
                                       f"its settings to continue it, pass --force to start it over, or choose another "
                                       f"--name")


class UnreadableCheckpoint(ClipgenError):
    """A checkpoint file that cannot be unpickled (typically truncated by a kill during the save)."""


def load_checkpoint(path: str | Path, required: tuple[str, ...] = ("epoch", "state_dict")) -> dict:
    """Load a training checkpoint on CPU; an unreadable file (:class:`UnreadableCheckpoint`) or missing keys is a
    one-line error."""
    import torch

    p = Path(path)
    try:
        ck = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise UnreadableCheckpoint(str(file_error(p, f"corrupt or unreadable checkpoint ({e.__class__.__name__}); "
                                                     f"delete it to resume from the previous one"))) from None
    if not isinstance(ck, dict):
        raise file_error(p, "not a training checkpoint (expected a dict)")
    missing = [k for k in required if k not in ck]
    if missing:
        raise file_error(p, f"checkpoint lacks {', '.join(missing)}; cannot resume from it")
    return ck
