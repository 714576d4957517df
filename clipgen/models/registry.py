"""Model names: open_clip's own plus clipgen's small configurations, all created through open_clip.

clipgen ships small configurations with the module structure of the paper's RN50 (``ModifiedResNet``: act1..3,
avgpool, layer1..4, attnpool), so every analysis that runs on RN50 runs on them unchanged, plus a small ViT:

============ =============================================================== ===========================
name         image tower                                                     use
============ =============================================================== ===========================
RN-tiny      ModifiedResNet [1,1,1,1], width 16, 64 px, embed 64             tests, demo, CPU
RN-small     ModifiedResNet [2,2,2,2], width 32, 64 px, embed 128            ``--full`` demo
ViT-tiny     ViT, 4 layers, width 128, patch 8, 64 px, embed 64              ViT code paths
RN50 ...     any open_clip model (the paper: RN50, from scratch)             real data, GPU
============ =============================================================== ===========================

open_clip only knows configurations registered in the running process, so :func:`register_configs` is
called by every clipgen entry point that creates a model, including the training subprocess.
"""

from __future__ import annotations

import contextlib
import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

from clipgen.errors import ConfigFieldError

CONFIG_DIR = Path(__file__).parent / "configs"


def clipgen_model_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


@lru_cache(maxsize=1)
def register_configs() -> None:
    """Add clipgen's configurations to open_clip's registry (idempotent)."""
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)


def list_models() -> list[str]:
    import open_clip

    register_configs()
    return list(open_clip.list_models())


def model_config(name: str, field: str = "model") -> dict[str, Any]:
    """The open_clip configuration dict of ``name``; an unknown name is an error listing similar names."""
    own = CONFIG_DIR / f"{name}.json"
    if own.is_file():
        return json.loads(own.read_text())
    import open_clip

    register_configs()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        import difflib

        close = difflib.get_close_matches(name, list_models(), n=4)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see 'open_clip.list_models()'"
        raise ConfigFieldError(field, f"unknown model {name!r}{hint}")
    return cfg


class _NoPretrainedNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def quiet_open_clip():
    """clipgen never loads pretrained weights, so open_clip's warning about it is noise."""
    f = _NoPretrainedNotice()
    logging.getLogger().addFilter(f)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(f)


def create_model(name: str, *, device: str = "cpu", precision: str = "fp32", model_config_override: dict | None = None):
    """Create ``(model, preprocess_train, preprocess_val)`` with random weights (never a download).

    ``model_config_override`` lets a run directory recreate exactly the architecture it was trained with,
    even if the named configuration changed since.
    """
    import open_clip

    register_configs()
    if model_config_override is None:
        model_config(name)  # validates the name with a clear message
        with quiet_open_clip():
            return open_clip.create_model_and_transforms(name, pretrained=None, device=device, precision=precision)
    from open_clip.factory import _MODEL_CONFIGS

    key = f"__clipgen_run__{name}"
    _MODEL_CONFIGS[key] = json.loads(json.dumps(model_config_override))
    try:
        with quiet_open_clip():
            return open_clip.create_model_and_transforms(key, pretrained=None, device=device, precision=precision)
    finally:
        _MODEL_CONFIGS.pop(key, None)


def get_tokenizer(name: str, model_config_override: dict | None = None):
    """The tokenizer of ``name`` (open_clip's bundled BPE; never a download)."""
    import open_clip

    register_configs()
    if model_config_override is not None:
        ctx = model_config_override.get("text_cfg", {}).get("context_length", 77)
        return open_clip.SimpleTokenizer(context_length=ctx)
    model_config(name)
    return open_clip.get_tokenizer(name)
