"""ImageNet-Captions train/val TSVs: the paper's base dataset D0.

Input: ``imagenet_captions.json`` of ``mlfoundations/imagenet-captions`` (a JSON list of objects with
``filename``, ``wnid``, ``title``, ``tags`` (a list of strings) and ``description``) and an ImageNet train folder
laid out ``<train>/<wnid>/<filename>``.

Caption = ``"; ".join`` of the non-empty parts among ``title``, the tags joined by spaces, and ``description``,
with whitespace normalised (runs of spaces, tabs and newlines become one space; zero-width spaces are removed).

Train/val split: the published split file (``imagenet_captions_train_val_split.json``) is not available, so
clipgen makes its own, stratified by class and independent of the JSON's order: inside each wnid the images are
ordered by ``sha256(f"{seed}:{filename}")`` and the first ``round(val_fraction * n)`` are validation images. The
default ``val_fraction`` 0.08 gives about 426k training pairs of the 463.6k, close to the ≈425.4k the paper's step
counts imply. An image keeps its side when other images are added or removed (except at the class's cut-off).

Images missing from the ImageNet folder are reported (count, a few examples on the console, the full list in
``in-captions-missing.txt``) and get no row; they are left out before the split is made.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from clipgen.artifacts import config_record, write_json_atomic, write_text_atomic
from clipgen.errors import ClipgenError, ConfigFieldError, file_error

TRAIN_NAME = "in-captions-train.tsv"
VAL_NAME = "in-captions-val.tsv"
MISSING_NAME = "in-captions-missing.txt"
CONFIG_NAME = "in-captions.config.json"
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))


def normalise_whitespace(text: str) -> str:
    return " ".join(text.translate(_ZERO_WIDTH).split())


def make_caption(entry: dict) -> str:
    """``title; tags; description`` without empty parts, whitespace normalised (one line)."""
    tags = entry.get("tags") or []
    parts = [normalise_whitespace(str(entry.get("title") or "")),
             normalise_whitespace(" ".join(str(t) for t in tags)),
             normalise_whitespace(str(entry.get("description") or ""))]
    return "; ".join(p for p in parts if p)


def split_order_key(seed: int, filename: str) -> str:
    return hashlib.sha256(f"{seed}:{filename}".encode()).hexdigest()


def assign_val(filenames_by_class: dict[str, list[str]], val_fraction: float, seed: int) -> set[tuple[str, str]]:
    """The validation images ``(wnid, filename)``: per class, the first ``round(f * n)`` in hash order."""
    val: set[tuple[str, str]] = set()
    for wnid, names in filenames_by_class.items():
        k = round(val_fraction * len(names))
        val.update((wnid, n) for n in sorted(names, key=lambda n: split_order_key(seed, n))[:k])
    return val


@dataclass
class ImageNetCaptionsConfig:
    """Options of ``clipgen data imagenet-captions``."""

    captions_json: Path
    imagenet_train: Path
    out: Path
    val_fraction: float = 0.08
    seed: int = 0
    force: bool = False  # overwrite existing TSVs


@dataclass
class ImageNetCaptionsResult:
    train: Path
    val: Path
    n_train: int
    n_val: int
    n_entries: int
    missing: list[str]  # relative paths wnid/filename
    duplicates: int
    missing_file: Path | None


def _load_entries(path: Path) -> list[dict]:
    if not path.is_file():
        raise ConfigFieldError("captions_json", f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise file_error(path, f"invalid JSON ({e.msg})", line=e.lineno) from None
    except (OSError, UnicodeDecodeError) as e:
        raise file_error(path, f"cannot read ({e.__class__.__name__}: {e})") from None
    if not isinstance(data, list):
        raise file_error(path, "expected a JSON list of {filename, wnid, title, tags, description} objects")
    for i, e in enumerate(data):
        if not isinstance(e, dict):
            raise file_error(path, f"entry {i}: expected an object, found {type(e).__name__}")
        for key in ("filename", "wnid"):
            if not isinstance(e.get(key), str) or not e[key]:
                raise file_error(path, f"entry {i}: missing or empty {key!r}")
        if "/" in e["filename"] or "/" in e["wnid"]:
            raise file_error(path, f"entry {i}: 'filename' and 'wnid' must be plain names")
        tags = e.get("tags", [])
        if tags is not None and not isinstance(tags, list):
            raise file_error(path, f"entry {i}: 'tags' must be a list of strings")
    return data


def run_imagenet_captions(cfg: ImageNetCaptionsConfig, *, progress: bool = True) -> ImageNetCaptionsResult:
    """Write ``in-captions-train.tsv`` and ``in-captions-val.tsv`` (absolute paths) into ``cfg.out``."""
    from clipgen.progress import make_progress
    from clipgen.tsv import write_tsv

    if not 0 <= cfg.val_fraction < 1:
        raise ConfigFieldError("val_fraction", f"{cfg.val_fraction} is not in [0, 1)")
    train_dir = Path(cfg.imagenet_train)
    if not train_dir.is_dir():
        raise ConfigFieldError("imagenet_train", f"{train_dir} is not a folder")
    out = Path(cfg.out)
    targets = [out / TRAIN_NAME, out / VAL_NAME]
    if not cfg.force:
        for p in targets:
            if p.exists():
                raise ClipgenError(f"{p}: already exists (pass --force to overwrite)")
    entries = _load_entries(Path(cfg.captions_json))
    root = train_dir.resolve()
    listing: dict[str, set[str]] = {}

    def present(wnid: str, filename: str) -> bool:
        if wnid not in listing:
            try:
                listing[wnid] = {e.name for e in os.scandir(root / wnid) if e.is_file()}
            except (FileNotFoundError, NotADirectoryError):
                listing[wnid] = set()
        return filename in listing[wnid]

    rows: list[tuple[str, str, str, str]] = []  # wnid, filename, path, caption
    missing: list[str] = []
    seen: set[tuple[str, str]] = set()
    duplicates = 0
    with make_progress(disable=not progress) as bar:
        task = bar.add_task("checking images and captions", total=len(entries))
        for e in entries:
            key = (e["wnid"], e["filename"])
            if key in seen:
                duplicates += 1
            elif not present(*key):
                missing.append(f"{key[0]}/{key[1]}")
            else:
                seen.add(key)
                rows.append((key[0], key[1], str(root / key[0] / key[1]), make_caption(e)))
            bar.advance(task)
    if not rows:
        raise ConfigFieldError("imagenet_train", f"none of the {len(entries)} images of {cfg.captions_json} is under "
                                                 f"{train_dir} (expected <train>/<wnid>/<filename>)")
    by_class: dict[str, list[str]] = {}
    for wnid, fn, _, _ in rows:
        by_class.setdefault(wnid, []).append(fn)
    val = assign_val(by_class, cfg.val_fraction, cfg.seed)
    train_rows = [(p, c) for w, fn, p, c in rows if (w, fn) not in val]
    val_rows = [(p, c) for w, fn, p, c in rows if (w, fn) in val]
    if not train_rows:
        raise ConfigFieldError("val_fraction", "no training images left")
    write_tsv(targets[0], train_rows, force=True)
    write_tsv(targets[1], val_rows, force=True)
    missing_file = None
    if missing:
        missing_file = write_text_atomic(out / MISSING_NAME, "".join(f"{m}\n" for m in missing))
    elif (out / MISSING_NAME).exists():
        (out / MISSING_NAME).unlink()
    write_json_atomic(out / CONFIG_NAME, {**config_record("data imagenet-captions", cfg), "result": {
        "entries": len(entries), "train": len(train_rows), "val": len(val_rows), "missing": len(missing),
        "duplicates": duplicates}})
    return ImageNetCaptionsResult(targets[0], targets[1], len(train_rows), len(val_rows), len(entries), missing,
                                  duplicates, missing_file)
