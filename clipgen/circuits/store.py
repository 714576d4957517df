"""The circuits file (HDF5, schema version 1): writing entry by entry, resuming, shards, reading.

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

What is generic (header and version check, part files, atomic header and assembly, fingerprints) is the shared HDF5
layer of :mod:`clipgen.store.kind`; this module holds the circuits file's :data:`KIND` and what is circuits-specific.
Shard files are joined by :mod:`clipgen.circuits.merge`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipgen.errors import ClipgenError, file_error
from clipgen.store.kind import FileKind, attr_str, canonical_json, open_h5, parts_dir, str_array
from clipgen.store.testing import SimulatedCrash

#: Provenance / settings keys (dotted) that make up the fingerprint.
FINGERPRINT_KEYS = ("model", "model_config", "checkpoint.sha256", "epoch", "data.sources", "settings")

#: The circuits file as a file kind: bumping the schema is one edit, ``schema_version`` here.
KIND = FileKind(format="clipgen-circuits", schema_version="1.0", title="circuits file", noun="circuits",
                fingerprint_keys=FINGERPRINT_KEYS, part_name=lambda key: f"{key[0]}-{int(key[1]):03d}.h5",
                part_pattern=r"^([a-z0-9_]+)-(\d+)\.h5$", part_key=lambda m: (m.group(1), int(m.group(2))))
FORMAT = KIND.format

__all__ = ["FINGERPRINT_KEYS", "FORMAT", "KIND", "CircuitsFile", "CircuitsHeader", "SimulatedCrash", "assemble",
           "fingerprint", "fingerprint_diff", "open_circuits", "parts_dir", "parts_on_disk", "plan_sha256",
           "read_header", "verified_entries", "write_entry", "write_header"]


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


def _identified(provenance: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    return dict(provenance, settings=_identity_settings(settings))


def fingerprint(provenance: dict[str, Any], settings: dict[str, Any]) -> str:
    """sha256 (hex) of the identity fields (model, weights, epoch, image lists, settings)."""
    return KIND.fingerprint(_identified(provenance, settings))


def fingerprint_diff(a: CircuitsHeader, b: CircuitsHeader) -> list[str]:
    """Identity fields in which two headers differ (settings are named one by one)."""
    return KIND.fingerprint_diff(_identified(a.provenance, a.settings), _identified(b.provenance, b.settings),
                                 itemise=("settings",))


def plan_sha256(plan: Iterable[tuple[str, int]]) -> str:
    return hashlib.sha256(canonical_json([[d, int(lab)] for d, lab in plan]).encode()).hexdigest()


def part_name(domain: str, label: int) -> str:
    return KIND.part_name((domain, label))


def entry_group(domain: str, label: int) -> str:
    return f"entries/{domain}/{int(label)}"


def write_attrs(f, h: CircuitsHeader, complete: bool) -> None:
    from clipgen.artifacts import utc_now

    a = f.attrs
    KIND.stamp(a, created=h.created or utc_now(), complete=complete)
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
        t.create_dataset("template", data=str_array(templates))


def write_header(path: str | Path, header: CircuitsHeader) -> None:
    """Write the in-progress header (atomically) and create the parts folder."""
    from clipgen.artifacts import utc_now

    header.created = header.created or utc_now()
    with KIND.writing_header(path) as f:
        write_attrs(f, header, complete=False)


def _jsonattr_str(path: Path, attrs, key: str, default: Any) -> Any:
    text = attr_str(attrs, key)
    if not text:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise file_error(path, f"corrupt '{key}' attribute") from None


def _open_h5(path: Path):
    return open_h5(path, what="a circuits file", short="circuits file")


def check_format(path: Path, f) -> None:
    """Refuse a file that is not a circuits file this version reads."""
    KIND.check(path, f)


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
            provenance=_jsonattr_str(path, a, "provenance", {}), settings=_jsonattr_str(path, a, "settings", {}),
            layers=_jsonattr_str(path, a, "layers", []), domains=list(_jsonattr_str(path, a, "domains", [])),
            classes={int(k): str(v) for k, v in _jsonattr_str(path, a, "classes", {}).items()},
            held_out=[int(x) for x in _jsonattr_str(path, a, "held_out", [])],
            plan=[(str(d), int(lab)) for d, lab in _jsonattr_str(path, a, "plan", [])],
            absent=[(str(d), int(lab)) for d, lab in _jsonattr_str(path, a, "absent", [])],
            shard=_jsonattr_str(path, a, "shard", None) or None, text=text, created=attr_str(a, "created") or None,
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
    g.create_dataset("image_path", data=str_array(image_paths))
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
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.attrs["fingerprint"] = header.fingerprint
        f.attrs["domain"], f.attrs["label"] = domain, int(label)
        g = f.create_group(entry_group(domain, label))
        _write_entry_group(g, result, image_paths, image_line, header.classes.get(int(label), str(label)),
                           domain, label)
    with KIND.writing_part(path, (domain, label)) as tmp:
        try:
            with open(tmp, "wb") as out:
                out.write(buf.getbuffer())
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(tmp)) from None  # name the file (a bare ENOSPC does not)
    return parts_dir(path) / part_name(domain, label)


def parts_on_disk(path: str | Path) -> dict[tuple[str, int], Path]:
    return KIND.parts_on_disk(path)


def verified_entries(path: str | Path, header: CircuitsHeader, *, clean: bool = True) -> set[tuple[str, int]]:
    """Planned entries whose part file is whole and has this header's fingerprint; with ``clean`` stray,
    foreign and temporary files are removed."""

    def ok(key: tuple[str, int], f) -> bool:
        g = f.get(entry_group(*key))
        return f.attrs.get("fingerprint") == header.fingerprint and g is not None and bool(g.attrs.get("complete",
                                                                                                           False))

    return KIND.verified_parts(path, set(header.plan), ok, clean=clean)


def assemble(path: str | Path, header: CircuitsHeader) -> Path:
    """Copy every part into the final file (replacing the header atomically) and remove the parts folder."""
    import h5py

    from clipgen.artifacts import ensure_free_space

    path = Path(path)
    have = parts_on_disk(path)
    missing = [k for k in header.plan if k not in have]
    if missing:
        raise file_error(parts_dir(path), f"cannot assemble: {len(missing)} entries missing, first {missing[0]}")
    ensure_free_space(path.parent, sum(have[k].stat().st_size for k in header.plan), f"the final file {path}")
    with KIND.assembling(path) as f:
        write_attrs(f, header, complete=True)
        for key in header.plan:
            with h5py.File(have[key], "r", locking=False) as src:
                copy_entry(src, f, *key)
    return path


def copy_entry(src, dst, domain: str, label: int) -> None:
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
        self.fingerprint: str = attr_str(f.attrs, "fingerprint")
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
            timings = json.loads(attr_str(g.attrs, "timings") or "{}")
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
            "path": str(self.path), "format": FORMAT, "schema_version": attr_str(self._f.attrs, "schema_version"),
            "clipgen_version": attr_str(self._f.attrs, "clipgen_version"),
            "created": attr_str(self._f.attrs, "created"),
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
