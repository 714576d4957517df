"""Run directories: the manifest every training run writes, its checkpoints, and loading a model from them.

A run directory (``<logs>/<name>/``) holds open_clip's ``checkpoints/epoch_N.pt`` and ``params.txt`` plus
``clipgen-run.json``, the manifest: model name and configuration, preset, hyper-parameters, training data with
sha256, seed, clipgen version and command. Every later command takes ``--model-dir RUN_DIR`` (and ``--epoch``)
and finds the architecture here, so nobody retypes the model name.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clipgen import __version__
from clipgen.artifacts import command_line, sha256_file, utc_now, write_json_atomic
from clipgen.errors import ClipgenError, ConfigFieldError, file_error

MANIFEST_NAME = "clipgen-run.json"
RUN_FORMAT = "clipgen-run"
RUN_VERSION = 1
_EPOCH_RE = re.compile(r"^epoch_(\d+)\.pt$")


@dataclass
class RunManifest:
    """What a run is: enough to rebuild the model and to know which experiment it belongs to."""

    kind: str  # "clip" or "supervised"
    name: str
    model: str
    model_config: dict[str, Any]
    preset: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # {"train": {"path", "sha256", "rows"}, "val": {...}}
    seed: int = 0
    mixture: dict[str, Any] | None = None  # the MixtureInfo of the training TSV, when known
    command: str = field(default_factory=command_line)
    clipgen_version: str = __version__
    created: str = field(default_factory=utc_now)
    format: str = RUN_FORMAT
    version: int = RUN_VERSION
    extra: dict[str, Any] = field(default_factory=dict)


def manifest_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / MANIFEST_NAME


def write_manifest(run_dir: str | Path, manifest: RunManifest) -> Path:
    return write_json_atomic(manifest_path(run_dir), asdict(manifest))


def read_manifest(run_dir: str | Path, field: str = "model_dir") -> RunManifest:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigFieldError(field, f"{run_dir} is not a directory")
    path = manifest_path(run_dir)
    if not path.is_file():
        raise file_error(path, "no clipgen run manifest here; for a run trained elsewhere pass the checkpoint "
                               "file(s) and --model NAME explicitly")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise file_error(path, f"unreadable manifest ({e})") from None
    if raw.get("format") != RUN_FORMAT:
        raise file_error(path, f"not a clipgen run manifest (format {raw.get('format')!r})")
    if int(raw.get("version", 0)) > RUN_VERSION:
        raise file_error(path, f"manifest version {raw.get('version')} is newer than this clipgen reads "
                               f"({RUN_VERSION}); upgrade clipgen")
    known = set(RunManifest.__dataclass_fields__)
    try:
        return RunManifest(**{k: v for k, v in raw.items() if k in known})
    except TypeError as e:
        raise file_error(path, f"incomplete manifest ({e})") from None


def checkpoint_files(checkpoint_dir: str | Path) -> dict[int, Path]:
    """``{epoch: path}`` of the ``epoch_N.pt`` files in ``checkpoint_dir``, sorted by epoch (empty if missing)."""
    ck = Path(checkpoint_dir)
    found = {}
    if ck.is_dir():
        for p in ck.iterdir():
            m = _EPOCH_RE.match(p.name)
            if m:
                found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def list_checkpoints(run_dir: str | Path) -> dict[int, Path]:
    """``{epoch: path}`` of ``checkpoints/epoch_N.pt``, sorted by epoch."""
    return checkpoint_files(Path(run_dir) / "checkpoints")


def parse_epochs(spec: str, available: list[int], field: str = "epochs") -> list[int]:
    """``all``, ``last``, ``N``, ``A-B`` or a comma list of those; every epoch must exist."""
    if not available:
        raise ConfigFieldError(field, "the run has no checkpoints")
    s = spec.strip().lower()
    if s == "all":
        return list(available)
    if s == "last":
        return [available[-1]]
    out: list[int] = []
    for part in s.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                out.extend(range(a, b + 1))
            elif part:
                out.append(int(part))
        except ValueError:
            raise ConfigFieldError(field, f"cannot parse {part!r} (use all, last, N, A-B or a comma list)") from None
    missing = [e for e in out if e not in available]
    if missing:
        raise ConfigFieldError(field, f"no checkpoint for epoch(s) {', '.join(map(str, missing))}; available: "
                                       f"{_ranges(available)}")
    return sorted(set(out))


def _ranges(xs: list[int]) -> str:
    if not xs:
        return "none"
    if xs == list(range(xs[0], xs[-1] + 1)) and len(xs) > 2:
        return f"{xs[0]}-{xs[-1]}"
    return ", ".join(map(str, xs))


def resolve_checkpoint(run_dir: str | Path, epoch: int | None = None, field: str = "epoch") -> tuple[int, Path]:
    """The checkpoint of ``epoch`` (default: the last one)."""
    cks = list_checkpoints(run_dir)
    if not cks:
        raise ConfigFieldError("model_dir", f"{run_dir} has no checkpoints/epoch_N.pt files")
    if epoch is None:
        epoch = max(cks)
    if epoch not in cks:
        raise ConfigFieldError(field, f"no checkpoint for epoch {epoch} in {run_dir}; available: {_ranges(list(cks))}")
    return epoch, cks[epoch]


#: Entries of OpenAI's CLIP files that are settings, not weights (``input_resolution`` etc. in a JIT archive).
_OPENAI_SETTINGS = ("input_resolution", "context_length", "vocab_size")


def load_state_dict(path: str | Path) -> dict:
    """The model weights of a checkpoint file; a corrupt file is a one-line error.

    Reads what open_clip itself loads from a local file: an open_clip or clipgen training checkpoint
    (``{"state_dict": ...}``, ``module.`` prefixes of distributed training removed), a plain state dict (the
    layout of open_clip's released ``.bin``/``.pt`` weights and of OpenAI's state dicts, fp16 included), or an
    OpenAI TorchScript archive (``RN50.pt``, ``ViT-B-32.pt``), whose weights are taken from the scripted module.
    The settings OpenAI files carry among the weights (``input_resolution``, ``context_length``, ``vocab_size``)
    are dropped.
    """
    import warnings

    import torch

    path = Path(path)
    if not path.is_file():
        raise file_error(path, "checkpoint not found")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TorchScript.*")  # torch.load reads those itself
            ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file, unless it is TorchScript
        ck = _load_torchscript(path)
        if ck is None:
            raise file_error(path, f"corrupt or unreadable checkpoint ({e.__class__.__name__})") from None
    if isinstance(ck, torch.jit.ScriptModule):
        ck = dict(ck.state_dict())
    sd = ck.get("state_dict", ck) if isinstance(ck, dict) else None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise file_error(path, "checkpoint holds no state_dict")
    if next(iter(sd)).startswith("module."):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if k not in _OPENAI_SETTINGS}


def _load_torchscript(path: Path):
    """The module of a TorchScript archive (OpenAI's released CLIP files), or None when ``path`` is not one."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's deprecation notice of TorchScript
            return torch.jit.load(str(path), map_location="cpu")
    except Exception:  # noqa: BLE001 - not a TorchScript archive either
        return None


def fit_state_dict(model: Any, sd: dict) -> dict:
    """``sd`` adapted to ``model`` as open_clip's ``load_checkpoint`` adapts it: the text tower of an OpenAI-layout
    state dict moved under ``text.`` for a model with a separate text module, a scalar ``logit_scale`` reshaped, and
    the model's non-persistent buffers (``attn_mask``, which a TorchScript archive saves) dropped."""
    transient = {k for k, _ in model.named_buffers()} - set(model.state_dict())
    sd = {k: v for k, v in sd.items() if k not in transient}
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        from open_clip.model import convert_to_custom_text_state_dict

        sd = convert_to_custom_text_state_dict(sd)
    for key in ("logit_scale", "logit_bias"):
        own = getattr(model, key, None)
        if key in sd and own is not None and own.ndim != sd[key].ndim:
            sd[key] = sd[key].reshape(own.shape)
    return sd


@dataclass
class LoadedModel:
    """A CLIP model ready for inference, with where it came from."""

    model: Any
    preprocess: Any  # evaluation transform
    tokenizer: Any
    model_name: str
    model_config: dict[str, Any]
    epoch: int | None
    checkpoint: Path
    manifest: RunManifest | None

    def checkpoint_sha256(self) -> str:
        return sha256_file(self.checkpoint)


def load_clip(run_dir: str | Path | None = None, epoch: int | None = None, *, checkpoint: str | Path | None = None,
              model_name: str | None = None, device: Any = "cpu") -> LoadedModel:
    """Load a trained CLIP in eval mode.

    Either ``run_dir`` (the manifest names the architecture; ``epoch`` defaults to the last), or an explicit
    ``checkpoint`` file with ``model_name`` for checkpoints trained outside clipgen.
    """
    from clipgen.models.registry import create_model, get_tokenizer, model_config

    manifest = None
    if run_dir is not None:
        manifest = read_manifest(run_dir)
        if manifest.kind != "clip":
            raise ConfigFieldError("model_dir", f"{run_dir} is a {manifest.kind} run, not a CLIP run")
        if checkpoint is None:
            epoch, checkpoint = resolve_checkpoint(run_dir, epoch)
        name, cfg = manifest.model, manifest.model_config
    else:
        if checkpoint is None or model_name is None:
            raise ClipgenError("pass --model-dir RUN_DIR, or a checkpoint file together with --model NAME")
        name, cfg = model_name, model_config(model_name)
        m = _EPOCH_RE.match(Path(checkpoint).name)
        epoch = int(m.group(1)) if m and epoch is None else epoch
    sd = load_state_dict(checkpoint)
    model, _, preprocess = create_model(name, model_config_override=cfg)
    try:
        model.load_state_dict(fit_state_dict(model, sd))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise file_error(checkpoint, f"weights do not fit model {name} ({first})") from None
    model.to(device).eval()
    return LoadedModel(model, preprocess, get_tokenizer(name, cfg), name, cfg, epoch, Path(checkpoint), manifest)
