"""The circuits file (HDF5, schema version 1): writing entry by entry, resuming, shards, merging, reading.

One file per circuits computation (one model checkpoint, one set of settings). Layout::

    /                     attrs: format="clipgen-circuits", schema_version, clipgen_version, created, complete,
                                 fingerprint, provenance (JSON), settings (JSON), layers (JSON: name, channels,
                                 shape of every chain layer), domains (JSON), classes (JSON {label: name}),
                                 held_out (JSON), plan (JSON [[domain, label], ...], the entries this file is for),
                                 absent (JSON: planned-out (domain, label) pairs without test images),
                                 shard (JSON {index, count, start, stop, total, plan_sha256} or "")
    /text/label (K,) int64, /text/embedding (K, D) float32, /text/template (T,) utf-8
    /entries/<domain>/<label>/            one circuit; attrs: domain, label, class_name, n_images, complete,
                                          timings (JSON)
        nodes/<layer>       (C,) float32     signed IG node score of every channel
        selected/<layer>    (k,) int64       the selected channels, best first
        edges/<layer>       (k_down, k_up) float32, for every layer but ``input``: from the previous layer
        metric              (B,) float32     clean true-class logit per image
        image_path          (B,) utf-8       the images used, in batch order
        image_line          (B,) int64       their line in the domain's test split file (1-based)

While a computation runs, ``OUT.h5`` is a *header* (``complete = False``, no ``/entries``), written once and never
modified, and each finished circuit is a part file ``OUT.h5.parts/<domain>-<label>.h5`` (the same ``/entries``
group), written under a temporary name and renamed when whole. A kill at any moment leaves the header and whole
part files; the same command resumes at the next missing entry. When every planned entry exists, the parts are
copied into the final file, which atomically replaces the header, and the parts folder is removed. Entries are
computed independently of each other (their images are drawn per entry), so a resumed or sharded computation is
identical to an uninterrupted one.

The fingerprint is the sha256 of what decides the numbers (model, weights, epoch, settings, templates, image lists);
resuming and merging refuse a mismatch. Device, memory budget, dates and command line stay out of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipgen.errors import ClipgenError, file_error
from clipgen.store.schema import canonical_json, dotted_get

FORMAT = "clipgen-circuits"
SCHEMA_VERSION = "1.0"
SCHEMA_MAJOR = 1
PARTS_SUFFIX = ".parts"
_PART_RE = re.compile(r"^([a-z0-9_]+)-(\d+)\.h5$")

#: Provenance / settings keys (dotted) that make up the fingerprint.
FINGERPRINT_KEYS = ("model", "model_config", "checkpoint.sha256", "epoch", "data.sources", "settings")


class SimulatedCrash(RuntimeError):
    """Raised by ``compute_circuits(..., crash_after=k)`` (tests): dies like a killed process, leaving parts."""


# ---------------------------------------------------------------------------------------------------------------
# header


@dataclass
class CircuitsHeader:
    """Everything a circuits file holds except the entries."""

    provenance: dict[str, Any]
    settings: dict[str, Any]
    layers: list[dict[str, Any]]  # {"name", "channels", "shape"}
    domains: list[str]
    classes: dict[int, str]
    held_out: list[int]
    plan: list[tuple[str, int]]  # the entries this file is for (a shard's share)
    absent: list[tuple[str, int]] = field(default_factory=list)
    shard: dict[str, Any] | None = None
    text: tuple | None = None  # (labels, embeddings (K, D), templates)
    created: str | None = None
    complete: bool = False  # as read from a file (writing sets it explicitly)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.provenance, self.settings)

    @property
    def layer_names(self) -> list[str]:
        return [str(la["name"]) for la in self.layers]


#: Settings that files written before they existed imply (ResNet channels): left out of the fingerprint at that value,
#: so those files keep their fingerprint (they resume, and count as complete).
IMPLIED_SETTINGS = {"family": "resnet", "nodes": "channels"}


def _identity_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (settings or {}).items() if k not in IMPLIED_SETTINGS or IMPLIED_SETTINGS[k] != v}


def identity(provenance: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    both = dict(provenance, settings=_identity_settings(settings))
    return {k: dotted_get(both, k) for k in FINGERPRINT_KEYS}


def fingerprint(provenance: dict[str, Any], settings: dict[str, Any]) -> str:
    """sha256 (hex) of the identity fields (model, weights, epoch, image lists, settings)."""
    return hashlib.sha256(canonical_json(identity(provenance, settings)).encode()).hexdigest()


def fingerprint_diff(a: CircuitsHeader, b: CircuitsHeader) -> list[str]:
    """Identity fields in which two headers differ (settings are named one by one)."""
    ia, ib = identity(a.provenance, a.settings), identity(b.provenance, b.settings)
    out = [k for k in FINGERPRINT_KEYS if k != "settings" and canonical_json(ia[k]) != canonical_json(ib[k])]
    sa, sb = _identity_settings(a.settings), _identity_settings(b.settings)
    out += [f"settings.{k}" for k in sorted(set(sa) | set(sb)) if canonical_json(sa.get(k)) != canonical_json(
        sb.get(k))]
    return out


def plan_sha256(plan: Iterable[tuple[str, int]]) -> str:
    return hashlib.sha256(canonical_json([[d, int(lab)] for d, lab in plan]).encode()).hexdigest()


def parts_dir(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + PARTS_SUFFIX)


def part_name(domain: str, label: int) -> str:
    return f"{domain}-{int(label):03d}.h5"


def entry_group(domain: str, label: int) -> str:
    return f"entries/{domain}/{int(label)}"


def _str_array(values: Sequence[Any]):
    import h5py

    return np.array([str(v) for v in values], dtype=h5py.string_dtype("utf-8"))


def _write_attrs(f, h: CircuitsHeader, complete: bool) -> None:
    from clipgen import __version__
    from clipgen.artifacts import utc_now

    a = f.attrs
    a["format"] = FORMAT
    a["schema_version"] = SCHEMA_VERSION
    a["clipgen_version"] = __version__
    a["created"] = h.created or utc_now()
    a["complete"] = bool(complete)
    a["fingerprint"] = h.fingerprint
    a["provenance"] = canonical_json(h.provenance)
    a["settings"] = canonical_json(h.settings)
    a["layers"] = canonical_json(h.layers)
    a["domains"] = json.dumps(list(h.domains))
    a["classes"] = json.dumps({str(int(k)): str(v) for k, v in sorted(h.classes.items())})
    a["held_out"] = json.dumps(sorted(int(x) for x in h.held_out))
    a["plan"] = json.dumps([[d, int(lab)] for d, lab in h.plan])
    a["absent"] = json.dumps([[d, int(lab)] for d, lab in h.absent])
    a["shard"] = json.dumps(h.shard) if h.shard else ""
    if h.text is not None:
        labels, emb, templates = h.text
        t = f.create_group("text")
        t.create_dataset("label", data=np.asarray(labels, dtype=np.int64))
        t.create_dataset("embedding", data=np.asarray(emb, dtype=np.float32))
        t.create_dataset("template", data=_str_array(templates))


def write_header(path: str | Path, header: CircuitsHeader) -> None:
    """Write the in-progress header (atomically) and create the parts folder."""

    from clipgen.artifacts import atomic_path, hdf5_create, utc_now

    header.created = header.created or utc_now()
    parts_dir(path).mkdir(parents=True, exist_ok=True)
    with atomic_path(path, force=True) as tmp, hdf5_create(tmp) as f:
        _write_attrs(f, header, complete=False)


def _attr(attrs, key: str, default: str = "") -> str:
    v = attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else str(v)


def _json_attr(path: Path, attrs, key: str, default: Any) -> Any:
    text = _attr(attrs, key)
    if not text:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise file_error(path, f"corrupt '{key}' attribute") from None


def _open_h5(path: Path):
    from clipgen.store.reader import open_h5

    return open_h5(path, what="a circuits file", short="circuits file")


def check_format(path: Path, f) -> None:
    """Refuse a file that is not a circuits file this version reads."""
    fmt = _attr(f.attrs, "format")
    if fmt != FORMAT:
        what = f"format {fmt!r}" if fmt else "no 'format' attribute"
        raise file_error(path, f"not a clipgen circuits file ({what}; expected {FORMAT!r})")
    ver = _attr(f.attrs, "schema_version")
    try:
        major = int(ver.split(".")[0])
    except ValueError:
        major = -1
    if major != SCHEMA_MAJOR:
        raise file_error(path, f"unsupported circuits schema version: found {ver or 'none'}, this clipgen reads "
                               f"{SCHEMA_MAJOR}.x (schema {SCHEMA_VERSION})"
                               + ("; upgrade clipgen" if major > SCHEMA_MAJOR else ""))


def read_header(path: str | Path, f=None) -> CircuitsHeader:
    """The header of a circuits file (final, in progress, or a shard)."""
    path = Path(path)
    own = f is None
    f = _open_h5(path) if own else f
    try:
        check_format(path, f)
        a = f.attrs
        text = None
        if "text" in f:
            t = f["text"]
            text = (t["label"][...].tolist(), t["embedding"][...], list(t["template"].asstr()[...]))
        return CircuitsHeader(
            provenance=_json_attr(path, a, "provenance", {}), settings=_json_attr(path, a, "settings", {}),
            layers=_json_attr(path, a, "layers", []), domains=list(_json_attr(path, a, "domains", [])),
            classes={int(k): str(v) for k, v in _json_attr(path, a, "classes", {}).items()},
            held_out=[int(x) for x in _json_attr(path, a, "held_out", [])],
            plan=[(str(d), int(lab)) for d, lab in _json_attr(path, a, "plan", [])],
            absent=[(str(d), int(lab)) for d, lab in _json_attr(path, a, "absent", [])],
            shard=_json_attr(path, a, "shard", None) or None, text=text, created=_attr(a, "created") or None,
            complete=bool(a.get("complete", False)))
    finally:
        if own:
            f.close()


# ---------------------------------------------------------------------------------------------------------------
# entries


def _write_entry_group(g, result, image_paths: Sequence[str], image_line: Sequence[int], class_name: str,
                       domain: str, label: int) -> None:
    nodes, sel, edges = g.create_group("nodes"), g.create_group("selected"), g.create_group("edges")
    for name in result.layers:
        nodes.create_dataset(name, data=np.asarray(result.nodes[name], dtype=np.float32))
        sel.create_dataset(name, data=np.asarray(result.selected[name], dtype=np.int64))
    for name in result.layers[1:]:
        edges.create_dataset(name, data=np.asarray(result.edges[name], dtype=np.float32))
    g.create_dataset("metric", data=np.asarray(result.metric, dtype=np.float32))
    g.create_dataset("image_path", data=_str_array(image_paths))
    g.create_dataset("image_line", data=np.asarray(image_line, dtype=np.int64))
    g.attrs["domain"] = domain
    g.attrs["label"] = int(label)
    g.attrs["class_name"] = class_name
    g.attrs["n_images"] = len(image_paths)
    g.attrs["timings"] = json.dumps({k: round(float(v), 6) for k, v in (result.timings or {}).items()})
    g.attrs["complete"] = True


def write_entry(path: str | Path, header: CircuitsHeader, domain: str, label: int, result, *,
                image_paths: Sequence[str], image_line: Sequence[int]) -> Path:
    """Write one circuit as a whole part file of ``path`` (temporary name, then rename).

    The HDF5 file is built in memory and written to disk with plain file I/O: a full disk is then an ordinary
    OSError naming the file, and never an HDF5 file that fails to close (whose half-released objects flood stderr
    with HDF5 errors and can crash the interpreter at exit)."""
    import io

    import h5py

    if list(result.layers) != header.layer_names:
        raise ClipgenError(f"circuit ({domain}, {label}): layers {result.layers} differ from the file's")
    pdir = parts_dir(path)
    final = pdir / part_name(domain, label)
    tmp = pdir / f".{final.name}.tmp"
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.attrs["fingerprint"] = header.fingerprint
        f.attrs["domain"], f.attrs["label"] = domain, int(label)
        g = f.create_group(entry_group(domain, label))
        _write_entry_group(g, result, image_paths, image_line, header.classes.get(int(label), str(label)),
                           domain, label)
    try:
        try:
            with open(tmp, "wb") as out:
                out.write(buf.getbuffer())
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(tmp)) from None  # name the file (a bare ENOSPC does not)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def parts_on_disk(path: str | Path) -> dict[tuple[str, int], Path]:
    pdir = parts_dir(path)
    if not pdir.is_dir():
        return {}
    out = {}
    for p in pdir.iterdir():
        m = _PART_RE.match(p.name)
        if m:
            out[(m.group(1), int(m.group(2)))] = p
    return out


def verified_entries(path: str | Path, header: CircuitsHeader, *, clean: bool = True) -> set[tuple[str, int]]:
    """Planned entries whose part file is whole and has this header's fingerprint; with ``clean`` stray,
    foreign and temporary files are removed."""
    import h5py

    planned = set(header.plan)
    done = set()
    for key, p in parts_on_disk(path).items():
        ok = False
        if key in planned:
            try:
                with h5py.File(p, "r", locking=False) as f:
                    g = f.get(entry_group(*key))
                    ok = (f.attrs.get("fingerprint") == header.fingerprint and g is not None
                          and bool(g.attrs.get("complete", False)))
            except (OSError, KeyError):
                ok = False
        if ok:
            done.add(key)
        elif clean:
            p.unlink(missing_ok=True)
    if clean:
        for stray in parts_dir(path).glob(".*.tmp"):
            stray.unlink(missing_ok=True)
    return done


def assemble(path: str | Path, header: CircuitsHeader) -> Path:
    """Copy every part into the final file (replacing the header atomically) and remove the parts folder."""
    import h5py

    from clipgen.artifacts import atomic_path, ensure_free_space, hdf5_create

    path = Path(path)
    have = parts_on_disk(path)
    missing = [k for k in header.plan if k not in have]
    if missing:
        raise file_error(parts_dir(path), f"cannot assemble: {len(missing)} entries missing, first {missing[0]}")
    ensure_free_space(path.parent, sum(have[k].stat().st_size for k in header.plan), f"the final file {path}")
    with atomic_path(path, force=True) as tmp, hdf5_create(tmp) as f:
        _write_attrs(f, header, complete=True)
        for key in header.plan:
            with h5py.File(have[key], "r", locking=False) as src:
                _copy_entry(src, f, *key)
    shutil.rmtree(parts_dir(path), ignore_errors=True)
    return path


def _copy_entry(src, dst, domain: str, label: int) -> None:
    parent = dst.require_group(f"entries/{domain}")
    src.copy(src[entry_group(domain, label)], parent, name=str(int(label)))


# ---------------------------------------------------------------------------------------------------------------
# reading


class CircuitsFile:
    """A read-only view of a circuits file (use :func:`open_circuits`; close it, or use ``with``)."""

    def __init__(self, path: Path, f, header: CircuitsHeader, complete: bool):
        self.path = Path(path)
        self._f = f
        self.header = header
        self.complete = complete
        self.layers: list[str] = header.layer_names
        self.domains: list[str] = list(header.domains)
        self.classes: dict[int, str] = dict(header.classes)
        self.held_out: list[int] = [h for h in header.held_out if h in header.classes]
        self.settings: dict[str, Any] = dict(header.settings)
        self.provenance: dict[str, Any] = dict(header.provenance)
        self.fingerprint: str = _attr(f.attrs, "fingerprint")
        self.shard = header.shard
        self.plan: list[tuple[str, int]] = list(header.plan)
        self.absent: list[tuple[str, int]] = list(header.absent)
        self._parts: dict[tuple[str, int], Path] = {}
        if not complete:
            done = verified_entries(self.path, header, clean=False)
            self._parts = {k: p for k, p in parts_on_disk(self.path).items() if k in done}

    # -- context manager ---------------------------------------------------------------------------------------
    def __enter__(self) -> CircuitsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    # -- entries -----------------------------------------------------------------------------------------------
    def entries(self) -> list[tuple[str, int]]:
        """``(domain, label)`` of every complete circuit, in the order computed."""
        if self.complete:
            return [k for k in self.plan if entry_group(*k) in self._f]
        return [k for k in self.plan if k in self._parts]

    @contextlib.contextmanager
    def _group(self, domain: str, label: int):
        import h5py

        key = (str(domain), int(label))
        if self.complete:
            g = self._f.get(entry_group(*key))
            if g is None:
                raise self._absent(key)
            yield g
            return
        p = self._parts.get(key)
        if p is None:
            raise self._absent(key)
        with h5py.File(p, "r", locking=False) as f:
            yield f[entry_group(*key)]

    def _absent(self, key: tuple[str, int]) -> ClipgenError:
        name = self.classes.get(key[1], str(key[1]))
        if key in self.absent:
            why = "the domain has no test images of it"
        elif key in self.plan:
            why = "not computed yet"
        else:
            why = "not part of this file"
        return file_error(self.path, f"no circuit for class {name!r} ({key[1]}) in domain {key[0]} ({why})")

    def read(self, domain: str, label: int):
        """The :class:`~clipgen.circuits.attribution.CircuitResult` of one (domain, class)."""
        from clipgen.circuits.attribution import CircuitResult

        with self._group(domain, label) as g:
            nodes = {n: g["nodes"][n][...] for n in self.layers}
            sel = {n: g["selected"][n][...] for n in self.layers}
            edges = {n: g["edges"][n][...] for n in self.layers[1:]}
            m = g["metric"][...]
            timings = json.loads(_attr(g.attrs, "timings") or "{}")
        return CircuitResult(list(self.layers), nodes, sel, edges, m, timings)

    def n_images(self, domain: str, label: int) -> int:
        with self._group(domain, label) as g:
            return int(g.attrs["n_images"])

    def image_paths(self, domain: str, label: int) -> list[str]:
        with self._group(domain, label) as g:
            return list(g["image_path"].asstr()[...])

    def text_embeddings(self):
        """``(labels, embeddings (K, D), templates)`` of the classes, or None."""
        return self.header.text

    def summary(self) -> dict[str, Any]:
        """What ``clipgen circuits info`` prints."""
        entries = self.entries()
        counts = [self.n_images(d, lab) for d, lab in entries]
        per_domain = {d: sum(1 for e in entries if e[0] == d) for d in self.domains}
        return {
            "path": str(self.path), "format": FORMAT, "schema_version": _attr(self._f.attrs, "schema_version"),
            "clipgen_version": _attr(self._f.attrs, "clipgen_version"), "created": _attr(self._f.attrs, "created"),
            "complete": self.complete, "fingerprint": self.fingerprint, "shard": self.shard,
            "model": self.provenance.get("model"), "epoch": self.provenance.get("epoch"),
            "checkpoint": self.provenance.get("checkpoint"), "settings": self.settings,
            "layers": self.header.layers, "domains": self.domains, "n_classes": len(self.classes),
            "held_out": {str(h): self.classes[h] for h in self.held_out},
            "entries": {"planned": len(self.plan), "complete": len(entries), "per_domain": per_domain,
                        "absent": [list(a) for a in self.absent]},
            "images_per_entry": {"min": min(counts) if counts else None, "max": max(counts) if counts else None,
                                 "total": int(sum(counts))},
        }


def open_circuits(path: str | Path, *, allow_incomplete: bool = False) -> CircuitsFile:
    """Open a circuits file. Refused with a one-line error naming the file: a missing, foreign or
    unknown-version file, and (unless ``allow_incomplete``) one still being computed or a shard file."""
    path = Path(path)
    f = _open_h5(path)
    try:
        header = read_header(path, f)
        complete = bool(f.attrs.get("complete", False))
        cf = CircuitsFile(path, f, header, complete)
        if not allow_incomplete:
            if header.shard:
                sh = header.shard
                raise file_error(path, f"is shard {sh.get('index')}/{sh.get('count')} of a circuits computation "
                                       f"({len(header.plan)} of {sh.get('total')} entries); join the shards with "
                                       f"'clipgen circuits merge'")
            if not complete:
                raise file_error(path, f"incomplete circuits file ({len(cf.entries())} of {len(header.plan)} "
                                       f"entries computed): finish it by rerunning the same 'clipgen circuits "
                                       f"compute' command")
        return cf
    except BaseException:
        f.close()
        raise


# ---------------------------------------------------------------------------------------------------------------
# merging shards


@dataclass
class MergeResult:
    path: Path
    shards: int
    entries: int


def merge_circuits(shards: Sequence[str | Path], out: str | Path, *, force: bool = False) -> MergeResult:
    """Join finished shard files (``clipgen circuits compute --shard i/n``) into one circuits file.

    Every shard must be complete, carry the same fingerprint, shard count and full plan, and together the shards
    must hold each planned (domain, class) exactly once: gaps, overlaps and mismatches are refused.
    """

    from clipgen.artifacts import atomic_path, hdf5_create

    out = Path(out)
    if not shards:
        raise ClipgenError("merge: no shard files given")
    if out.exists() and not force:
        raise file_error(out, "already exists; pass --force to overwrite it")
    opened: list[CircuitsFile] = []
    try:
        for p in shards:
            if Path(p).resolve() == out.resolve():
                raise file_error(out, "the output is one of the shards")
            opened.append(open_circuits(p, allow_incomplete=True))
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
            have = sorted(int(c.shard["index"]) for c in opened)
            absent = [i for i in range(int(first.shard["count"])) if i not in have]
            hint = f" (shard(s) {', '.join(map(str, absent))} of {first.shard['count']} not given)" if absent else ""
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
        with atomic_path(out, force=True) as tmp, hdf5_create(tmp) as f:
            _write_attrs(f, header, complete=True)  # merged_from is not part of the identity: same fingerprint
            for key in full:
                _copy_entry(by_path[owner[key]]._f, f, *key)
        return MergeResult(out, len(opened), len(full))
    finally:
        for cf in opened:
            cf.close()


@dataclass
class MergeConfig:
    """``clipgen circuits merge``: written beside the merged file as ``OUT.config.json``."""

    shards: list[Path]
    out: Path
    force: bool = False


def run_merge(cfg: MergeConfig) -> MergeResult:
    from clipgen.artifacts import write_config

    res = merge_circuits(cfg.shards, cfg.out, force=cfg.force)
    write_config(res.path, "circuits merge", cfg)
    return res
