"""Joining circuits shard files (``clipgen circuits compute --shard i/n``) into one circuits file.

Every shard must be complete, carry the same fingerprint, shard count and full plan, and together the shards must
hold each planned (domain, class) exactly once: gaps, overlaps and mismatches are refused. The merged file copies
every entry (:mod:`clipgen.circuits.store` describes the file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipgen.circuits.store import (
    CircuitsHeader,
    copy_entry,
    fingerprint_diff,
    open_circuits,
    write_attrs,
)
from clipgen.errors import ClipgenError, file_error
from clipgen.store.kind import writing_h5
from clipgen.store.shards import missing_shards_hint, opened_shards


@dataclass
class MergeResult:
    path: Path
    shards: int
    entries: int


@dataclass
class MergeConfig:
    """``clipgen circuits merge``: written beside the merged file as ``OUT.config.json``."""

    shards: list[Path]
    out: Path
    force: bool = False


def run_merge(cfg: MergeConfig) -> MergeResult:
    """Join finished shard files (``clipgen circuits compute --shard i/n``) into one circuits file ``cfg.out``, its
    config written beside it.

    Every shard must be complete, carry the same fingerprint, shard count and full plan, and together the shards
    must hold each planned (domain, class) exactly once: gaps, overlaps and mismatches are refused.
    """
    from clipgen.artifacts import write_config

    shards, out = cfg.shards, Path(cfg.out)
    if not shards:
        raise ClipgenError("merge: no shard files given")
    with opened_shards(shards, out, lambda p: open_circuits(p, allow_incomplete=True), force=cfg.force) as opened:
        for cf in opened:
            if not cf.shard:
                raise file_error(cf.path, "is not a shard file (computed without --shard); nothing to merge")
            if not cf.complete:
                raise file_error(cf.path, f"shard {cf.shard['index']}/{cf.shard['count']} is unfinished "
                                          f"({len(cf.entries())} of {len(cf.plan)} entries); rerun its 'clipgen "
                                          f"circuits compute ... --shard' command to finish it")
        first = opened[0]
        for cf in opened[1:]:
            if cf.fingerprint != first.fingerprint:
                diff = ", ".join(fingerprint_diff(first.header, cf.header)) or "the header"
                raise file_error(cf.path, f"fingerprint differs from {first.path.name} (in {diff}): shards of "
                                          f"different computations cannot be merged")
            if (cf.shard["count"], cf.shard["plan_sha256"]) != (first.shard["count"], first.shard["plan_sha256"]):
                raise file_error(cf.path, f"is shard of {cf.shard['count']} of a different (domain, class) list "
                                          f"than {first.path.name} (shard of {first.shard['count']})")
        full = [(str(d), int(lab)) for d, lab in first.shard["full_plan"]]
        owner: dict[tuple[str, int], Path] = {}
        for cf in sorted(opened, key=lambda c: c.shard["index"]):
            for key in cf.entries():
                if key in owner:
                    raise file_error(cf.path, f"overlap: ({key[0]}, {first.classes.get(key[1], key[1])}) is also in "
                                              f"{owner[key].name}")
                owner[key] = cf.path
        missing = [k for k in full if k not in owner]
        if missing:
            hint = missing_shards_hint([c.shard["index"] for c in opened], first.shard["count"])
            raise ClipgenError(f"merge: gap: {len(missing)} (domain, class) entries are in no shard, first "
                               f"({missing[0][0]}, {first.classes.get(missing[0][1], missing[0][1])}){hint}")
        extra = [k for k in owner if k not in set(full)]
        if extra:
            raise file_error(owner[extra[0]], f"holds ({extra[0][0]}, {extra[0][1]}), which is not in the plan")
        absent_all = sorted({tuple(a) for cf in opened for a in cf.absent})
        prov = dict(first.provenance, merged_from=[c.path.name for c in sorted(opened, key=lambda c: c.shard[
            "index"])])
        header = CircuitsHeader(provenance=prov, settings=first.settings, layers=first.header.layers,
                                domains=first.domains, classes=first.classes, held_out=first.header.held_out,
                                plan=full, absent=[(d, int(lab)) for d, lab in absent_all], shard=None,
                                text=first.header.text, created=first.header.created)
        by_path = {c.path: c for c in opened}
        with writing_h5(out) as f:
            write_attrs(f, header, complete=True)  # merged_from is not part of the identity: same fingerprint
            for key in full:
                copy_entry(by_path[owner[key]]._f, f, *key)
        res = MergeResult(out, len(opened), len(full))
    write_config(res.path, "circuits merge", cfg)
    return res
