"""Shards: ``--shard i/n`` parsing, shard file names and ranges, and what merging shard files of any kind shares.

A sharded job (a SLURM array task, a torchrun rank) writes shard ``i`` of ``n`` of its output as
``OUT.shard-i-of-n.h5``, covering a contiguous range of the work (rows of an image set, entries of a circuits plan);
a merge step joins the finished shard files into one file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from clipgen.errors import ConfigFieldError, file_error


def parse_shard(spec: str | None, field: str = "shard") -> tuple[int, int] | None:
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
            raise ConfigFieldError(field,
                                   "'auto' needs SLURM_ARRAY_TASK_ID/COUNT or RANK/WORLD_SIZE in the environment")
    else:
        try:
            a, b = s.split("/")
            i, n = int(a), int(b)
        except ValueError:
            raise ConfigFieldError(field, f"expected i/n (e.g. 0/4), got {spec!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigFieldError(field, f"shard {i}/{n}: need 0 <= i < n")
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


# -- merging -----------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def opened_shards(shards: Iterable[str | Path], out: str | Path, opener: Callable[[str | Path], Any], *,
                  force: bool = False) -> Iterator[list[Any]]:
    """The shard files opened with ``opener`` (each closed when the block ends), after refusing an existing ``out``
    (without ``force``) and an ``out`` that is one of the shards."""
    out = Path(out)
    if out.exists() and not force:
        raise file_error(out, "already exists; pass --force to overwrite it")
    opened: list[Any] = []
    try:
        for p in shards:
            if Path(p).resolve() == out.resolve():
                raise file_error(out, "the output is one of the shards")
            opened.append(opener(p))
        yield opened
    finally:
        for x in opened:
            x.close()


def missing_shards_hint(indices: Sequence[int], count: int) -> str:
    """`` (shard(s) 1, 3 of 4 not given)`` for the shard indices below ``count`` not among ``indices``, or ""."""
    have = {int(i) for i in indices}
    absent = [i for i in range(int(count)) if i not in have]
    return f" (shard(s) {', '.join(map(str, absent))} of {count} not given)" if absent else ""
