"""The one resumable, sharded, versioned HDF5 layer under the activation store and the circuits file.

A :class:`FileKind` is one kind of clipgen HDF5 file: its ``format`` name and schema version (checked on every open),
the provenance keys of its fingerprint, and how its part files are named. Everything else is shared:

* the header attributes every file starts with (format, schema_version, clipgen_version, created, complete) and the
  check that refuses a foreign file or a schema this clipgen does not read;
* the identity/fingerprint of a provenance and which identity fields differ between two (for error messages);
* part files ``OUT.h5.parts/<part name>``: each written under a temporary name and renamed when whole, listed,
  verified (stray, foreign and temporary files removed);
* writing the in-progress header and the final file, both to a temporary name renamed when complete.

Bumping a kind's schema is one edit, its ``schema_version``; the reader keeps opening every major version from
``oldest_major`` on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipgen.errors import file_error

PARTS_SUFFIX = ".parts"


# -- small shared helpers ----------------------------------------------------------------------------------------

def attr_str(attrs, key: str, default: str = "") -> str:
    """An HDF5 attribute as ``str`` (bytes decoded)."""
    v = attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else str(v)


def parse_version(text: Any) -> tuple[int, int]:
    """``"1.0"`` -> (1, 0); anything unparsable -> (-1, 0)."""
    try:
        s = text.decode() if isinstance(text, bytes) else str(text)
        major, _, minor = s.partition(".")
        return int(major), int(minor or 0)
    except (ValueError, AttributeError):
        return -1, 0


def dotted_get(d: dict, dotted: str) -> Any:
    """``d["a"]["b"]`` for ``"a.b"``; None where a part is missing."""
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def canonical_json(obj: Any) -> str:
    from clipgen.artifacts import to_jsonable

    return json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def str_array(values: Sequence[Any]) -> np.ndarray:
    """A utf-8 string array for h5py (None -> "")."""
    import h5py

    return np.array(["" if v is None else str(v) for v in values], dtype=h5py.string_dtype("utf-8"))


def parts_dir(path: str | Path) -> Path:
    """The folder of the part files of ``path``: ``OUT.h5.parts``."""
    path = Path(path)
    return path.with_name(path.name + PARTS_SUFFIX)


def _check_file(path: Path, what: str, short: str) -> None:
    import h5py

    if not path.exists():
        raise file_error(path, f"{short} not found")
    if path.is_dir():
        raise file_error(path, f"is a directory, not {what}")
    try:
        ok = h5py.is_hdf5(str(path))
    except OSError:
        ok = False
    if not ok:
        raise file_error(path, f"not an HDF5 file (truncated, or not {what})")


def open_h5(path: str | Path, mode: str = "r", *, what: str = "an activation store", short: str = "store"):
    """Open an HDF5 file with a one-line error for anything unreadable; ``what`` / ``short`` name the kind of
    file in the messages ("is a directory, not an activation store", "store not found")."""
    import h5py

    path = Path(path)
    if mode == "r":
        _check_file(path, what, short)
    try:
        return h5py.File(path, mode, locking=False, rdcc_nbytes=32 << 20)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise file_error(path, f"truncated or corrupt HDF5 file ({first})") from None


@contextlib.contextmanager
def writing_h5(path: str | Path) -> Iterator[Any]:
    """A new HDF5 file at ``path``, written under a temporary name and renamed when the block ends without error."""
    from clipgen.artifacts import atomic_path, hdf5_create

    with atomic_path(path, force=True) as tmp, hdf5_create(tmp) as f:
        yield f


# -- the file kind -----------------------------------------------------------------------------------------------

@dataclass(eq=False)
class FileKind:
    """One kind of resumable, sharded HDF5 file: exactly what differs between the activation store and the circuits
    file. Part keys are whatever identifies a part (a block number, a (domain, label) pair)."""

    format: str  # the root ``format`` attribute
    schema_version: str  # written into new files; its major is the newest one read
    title: str  # "activation store": "not a clipgen activation store"
    noun: str  # "store": "unsupported store schema version"
    fingerprint_keys: tuple[str, ...]  # provenance keys (dotted for nested ones) of the identity
    part_name: Callable[[Any], str]  # part key -> file name in the parts folder
    part_pattern: str  # regular expression of part file names
    part_key: Callable[[re.Match], Any]  # a match of ``part_pattern`` -> part key
    oldest_major: int = 1  # the oldest schema major this clipgen still reads

    # -- header --------------------------------------------------------------------------------------------------
    @property
    def major(self) -> int:
        return parse_version(self.schema_version)[0]

    def stamp(self, attrs, *, created: str, complete: bool) -> None:
        """The attributes every file of this kind starts with."""
        from clipgen import __version__

        attrs["format"] = self.format
        attrs["schema_version"] = self.schema_version
        attrs["clipgen_version"] = __version__
        attrs["created"] = created
        attrs["complete"] = bool(complete)

    def check(self, path: Path, f) -> None:
        """Refuse a file that is not of this kind, or of a schema version this clipgen does not read."""
        fmt = attr_str(f.attrs, "format")
        if fmt != self.format:
            what = f"format {fmt!r}" if fmt else "no 'format' attribute"
            raise file_error(path, f"not a clipgen {self.title} ({what}; expected {self.format!r})")
        ver = attr_str(f.attrs, "schema_version")
        major, _ = parse_version(ver)
        if not self.oldest_major <= major <= self.major:
            reads = f"{self.major}.x" if self.oldest_major == self.major else f"{self.oldest_major}.x to {self.major}.x"
            raise file_error(path, f"unsupported {self.noun} schema version: found {ver or 'none'}, this clipgen reads "
                                   f"{reads} (schema {self.schema_version})"
                                   + ("; upgrade clipgen" if major > self.major else ""))

    @contextlib.contextmanager
    def writing_header(self, path: str | Path) -> Iterator[Any]:
        """The in-progress header file (written atomically), after creating the parts folder."""
        parts_dir(path).mkdir(parents=True, exist_ok=True)
        with writing_h5(path) as f:
            yield f

    @contextlib.contextmanager
    def assembling(self, path: str | Path, *, keep_parts: bool = False) -> Iterator[Any]:
        """The final file, replacing the header atomically when the block ends; then the parts folder goes."""
        with writing_h5(path) as f:
            yield f
        if not keep_parts:
            shutil.rmtree(parts_dir(path), ignore_errors=True)

    # -- identity ------------------------------------------------------------------------------------------------
    def identity(self, provenance: dict[str, Any]) -> dict[str, Any]:
        """The part of a provenance the fingerprint covers."""
        return {k: dotted_get(provenance, k) for k in self.fingerprint_keys}

    def fingerprint(self, provenance: dict[str, Any]) -> str:
        """sha256 (hex) of the identity fields of ``provenance``."""
        return hashlib.sha256(canonical_json(self.identity(provenance)).encode()).hexdigest()

    def fingerprint_diff(self, a: dict[str, Any], b: dict[str, Any], *, itemise: Container[str] = ()) -> list[str]:
        """The identity fields in which two provenances differ (for error messages); the dict-valued fields named in
        ``itemise`` are compared item by item (``settings.steps``)."""
        ia, ib = self.identity(a), self.identity(b)
        out = []
        for k in self.fingerprint_keys:
            if k in itemise:
                sa, sb = ia[k] or {}, ib[k] or {}
                out += [f"{k}.{s}" for s in sorted(set(sa) | set(sb))
                        if canonical_json(sa.get(s)) != canonical_json(sb.get(s))]
            elif canonical_json(ia[k]) != canonical_json(ib[k]):
                out.append(k)
        return out

    # -- parts ---------------------------------------------------------------------------------------------------
    def parts_in(self, pdir: Path) -> dict[Any, Path]:
        """``{part key: path}`` of the whole part files in the folder ``pdir``."""
        if not pdir.is_dir():
            return {}
        rx = re.compile(self.part_pattern)
        return {self.part_key(m): p for p in pdir.iterdir() if (m := rx.match(p.name))}

    def parts_on_disk(self, path: str | Path) -> dict[Any, Path]:
        return self.parts_in(parts_dir(path))

    @contextlib.contextmanager
    def writing_part(self, path: str | Path, key: Any) -> Iterator[Path]:
        """A temporary file name for part ``key`` of ``path``: renamed to the part's name when the block ends without
        error, removed when it fails (so a part file is whole or absent)."""
        pdir = parts_dir(path)
        final = pdir / self.part_name(key)
        tmp = pdir / f".{final.name}.tmp"
        try:
            yield tmp
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def verified_parts(self, path: str | Path, wanted: Container[Any], accept: Callable[[Any, Any], bool], *,
                       clean: bool = True) -> set[Any]:
        """Keys of the part files of ``path`` that are ``wanted`` and whole (``accept(key, open h5py.File)``); with
        ``clean`` the others (stray, foreign, unreadable) and temporary files are removed."""
        import h5py

        done = set()
        for key, p in sorted(self.parts_on_disk(path).items()):
            ok = False
            if key in wanted:
                try:
                    with h5py.File(p, "r", locking=False) as f:
                        ok = bool(accept(key, f))
                except (OSError, KeyError):
                    ok = False
            if ok:
                done.add(key)
            elif clean:
                p.unlink(missing_ok=True)
        if clean:
            for stray in parts_dir(path).glob(".*.tmp"):  # a part being written when the process died
                stray.unlink(missing_ok=True)
        return done
