"""SAE files: the final SAE (:func:`save_sae`, :func:`load_sae`), training checkpoints, and the run's log."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from clipgen.analysis.sae.model import SAEArch, SparseAutoencoder
from clipgen.artifacts import save_torch_atomic, to_jsonable, write_text_atomic
from clipgen.errors import file_error

SAE_FORMAT = "clipgen-sae"
CHECKPOINT_FORMAT = "clipgen-sae-checkpoint"
SAE_VERSION = 1
SAE_FILE = "sae.pt"
LOG_FILE = "log.jsonl"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"


def save_sae(path: str | Path, model: SparseAutoencoder, *, layer: str, steps: int = 0, samples: int = 0,
             train_config: Any = None, data: dict[str, Any] | None = None) -> Path:
    """Write a final SAE file (what :func:`load_sae` and ``clipgen sae features`` read), atomically."""
    obj = {"format": SAE_FORMAT, "version": SAE_VERSION, "arch": dataclasses.asdict(model.arch),
           "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "layer": layer,
           "steps": int(steps), "samples": int(samples), "train_config": to_jsonable(train_config or {}),
           "data": to_jsonable(data or {})}
    save_torch_atomic(obj, Path(path))
    return Path(path)


def load_sae(path: str | Path, device: torch.device | str = "cpu") -> tuple[SparseAutoencoder, dict[str, Any]]:
    """An SAE from ``OUT/sae.pt``, a training checkpoint, or a run folder (its ``sae.pt``, else newest checkpoint).

    Returns the model (eval mode) and its record: ``layer``, ``arch``, ``steps``, ``train_config``, ``data``, ``path``.
    """
    p = Path(path)
    if p.is_dir():
        if (p / SAE_FILE).is_file():
            p = p / SAE_FILE
        else:
            ck = list_checkpoints(p)
            if not ck:
                raise file_error(p, "no sae.pt and no checkpoints here (not a 'clipgen sae train' output)")
            p = next(reversed(ck.values()))
    elif not p.is_file():
        raise file_error(p, "no such SAE file or folder")
    obj = torch_load(p)
    fmt = obj.get("format")
    if fmt == SAE_FORMAT:
        state = obj["state_dict"]
    elif fmt == CHECKPOINT_FORMAT:
        state = obj["model"]
    else:
        raise file_error(p, f"not a clipgen SAE (format {fmt!r})")
    if int(obj.get("version", 0)) > SAE_VERSION:
        raise file_error(p, f"SAE version {obj.get('version')} is newer than this clipgen reads ({SAE_VERSION})")
    try:
        arch = SAEArch(**obj["arch"])
        model = SparseAutoencoder(arch, seed=0)
        model.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError) as e:
        raise file_error(p, f"damaged SAE file ({type(e).__name__})") from None
    model.to(device).eval()
    cfgd = obj.get("train_config", {})
    info = {"path": str(p), "layer": obj.get("layer", cfgd.get("layer")), "arch": obj["arch"],
            "steps": obj.get("steps", obj.get("step")), "train_config": cfgd, "data": obj.get("data", {})}
    return model, info


def check_width(sae_path: str | Path, arch: SAEArch, store_path: str | Path, layer: str, width: int) -> None:
    """One-line error when an SAE does not fit the stored layer."""
    if arch.d_in != width:
        raise file_error(sae_path, f"SAE expects {arch.d_in}-wide inputs, but layer {layer!r} of {store_path} is "
                                   f"{width} wide (train an SAE on this layer, or pick the layer it was trained on)")


def list_checkpoints(out: str | Path) -> dict[int, Path]:
    """Step -> checkpoint file in ``OUT/checkpoints`` (``step_0000001234.pt``)."""
    d = Path(out) / CHECKPOINT_DIR
    found = {}
    if d.is_dir():
        for p in d.glob("step_*.pt"):
            try:
                found[int(p.stem.split("_", 1)[1])] = p
            except ValueError:
                continue
    return dict(sorted(found.items()))


def torch_load(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user-facing error
        raise file_error(path, f"unreadable SAE file ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    if not isinstance(obj, dict):
        raise file_error(path, "not a clipgen SAE file")
    return obj



def truncate_log(path: Path, max_step: int) -> None:
    """Drop log lines written after ``max_step`` (the resumed checkpoint), so a resumed run logs no duplicates."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the interruption
        if int(rec.get("step", 0)) <= max_step:
            keep.append(line)
    write_text_atomic(path, "".join(k + "\n" for k in keep))



def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``log.jsonl`` (unreadable lines skipped)."""
    recs = []
    p = Path(path)
    if p.is_file():
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return recs



def last_log_record(path: Path, kind: str) -> dict[str, Any]:
    last: dict[str, Any] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("kind") == kind:
                last = rec
    return last

