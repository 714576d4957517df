"""``clipgen eval supervised``: the same protocol and metrics for the supervised classifiers.

The classifier's last 345 logits are the DomainNet head (logit ``1000 + label`` scores DomainNet label
``label``). The published script takes the argmax over all 345; clipgen takes it over the columns of the
classes present in the evaluated data (``logits[:, -345:][:, class_labels]``), i.e. the same label space as
the zero-shot evaluation. On the real dataset all 345 classes are present and the two are identical; on a
synthetic subset the restriction keeps logits of classes without images from taking the prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipgen.artifacts import sha256_file, write_config
from clipgen.errors import file_error
from clipgen.evaluation.protocol import build_eval_set, resolve_held_out
from clipgen.evaluation.runner import (
    CheckpointRef,
    EvalOutcome,
    Prediction,
    class_header,
    default_out_dir,
    default_test_domain,
    evaluate_checkpoints,
    resolve_checkpoints,
    results_dir,
    run_info,
)

TOP_K = 5
METHOD = {"classifier": "supervised: argmax over the DomainNet head (the last 345 logits)",
          "restriction": "columns of the classes present in the evaluated data (all 345 on the real dataset)"}


@dataclass
class SupervisedConfig:
    """Options of ``clipgen eval supervised``."""

    data_root: Path
    model_dir: Path | None = None
    checkpoints: list[Path] = field(default_factory=list)
    model: str | None = None  # with explicit checkpoints: the image tower's model name
    epochs: str = "all"
    test_domain: str | None = None
    out: Path | None = None  # default: RUN_DIR/eval/supervised/<test domain>
    held_out: list[str] | None = None
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 256
    workers: int = 0
    on_error: str = "fail"
    force: bool = False
    progress: bool = True


def load_supervised(checkpoint: Path, model_name: str, model_config: dict[str, Any] | None, device: Any):
    """``(classifier in eval mode, eval transform)`` with the weights of ``checkpoint``."""
    from clipgen.models.supervised import create_supervised
    from clipgen.runs import load_state_dict

    sd = load_state_dict(checkpoint)
    model, _, preprocess = create_supervised(model_name, model_config=model_config)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise file_error(checkpoint, f"weights do not fit supervised model {model_name} ({first})") from None
    return model.to(device).eval(), preprocess


def domainnet_topk(model: Any, records: list, transform: Any, class_labels: list[int], *, device: Any,
                   precision: str, batch_size: int, workers: int, on_error: str, k: int = TOP_K,
                   progress: Any = None, description: str = "images") -> np.ndarray:
    """``(N, k)`` top-k DomainNet labels from the DomainNet head restricted to ``class_labels`` (-1: skipped)."""
    import torch

    from clipgen.datasets import make_loader
    from clipgen.devices import autocast
    from clipgen.evaluation.zeroshot import check_on_error, raise_unreadable
    from clipgen.models.supervised import NUM_DOMAINNET

    cols = torch.as_tensor(class_labels, dtype=torch.long)
    k = min(k, len(class_labels))
    out = np.full((len(records), k), -1, dtype=np.int64)
    labels = np.asarray(class_labels, dtype=np.int64)
    check_on_error(on_error)
    # the loader always skips; a failure is raised here, in the main process, with its one-line message
    loader = make_loader(records, transform, batch_size=batch_size, workers=workers, on_error="skip",
                         pin_memory=getattr(device, "type", str(device)) == "cuda")
    task = progress.add_task(description, total=len(records)) if progress is not None else None
    with torch.no_grad():
        for images, kept, skipped in loader:
            if on_error == "fail" and len(skipped):
                raise_unreadable(records, skipped.tolist())
            if images is not None:
                with autocast(device, precision):
                    logits = model(images.to(device, non_blocking=True))
                dn_logits = logits.float()[:, -NUM_DOMAINNET:][:, cols.to(logits.device)]
                idx = dn_logits.topk(k, dim=1).indices.cpu().numpy()
                out[kept.numpy()] = labels[idx]
            if progress is not None:
                progress.advance(task, len(kept) + len(skipped))
    if progress is not None:
        progress.remove_task(task)
    return out


def run_supervised(cfg: SupervisedConfig) -> EvalOutcome:
    """Evaluate a supervised run's checkpoints (skipping those already in the output's results.json)."""
    from clipgen.devices import resolve_device, resolve_precision
    from clipgen.models.registry import model_config

    manifest, refs = resolve_checkpoints(cfg.model_dir, cfg.epochs, cfg.checkpoints, cfg.model, kind="supervised")
    test_domain = default_test_domain(manifest, cfg.test_domain)
    out_dir = default_out_dir(cfg.out, cfg.model_dir, "supervised", test_domain)
    image_set = build_eval_set(cfg.data_root, test_domain)
    held = resolve_held_out(image_set, cfg.held_out, (manifest.mixture or {}).get("held_out_labels")
                            if manifest is not None else None)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    name = manifest.model if manifest is not None else cfg.model
    mcfg = manifest.model_config if manifest is not None else model_config(cfg.model)
    header = {
        "kind": "supervised",
        "run": run_info(manifest, cfg.model_dir, cfg.model, refs),
        "test_domain": test_domain,
        "domains": list(image_set.domains),
        "data": image_set.describe(),
        "classes": class_header(image_set),
        "held_out": held.describe(),
        "method": METHOD,
        "imagenet": None,
    }

    def predict(ref: CheckpointRef, bar: Any) -> Prediction:
        sha = sha256_file(ref.path)
        model, preprocess = load_supervised(ref.path, name, mcfg, device)
        topk = domainnet_topk(model, image_set.records, preprocess, image_set.class_labels, device=device,
                              precision=precision, batch_size=cfg.batch_size, workers=cfg.workers,
                              on_error=cfg.on_error, progress=bar, description=f"epoch {ref.epoch} images")
        return Prediction(topk, {"sha256": sha, "features": "forward", "store": None, "precision": precision,
                                 "device": str(device)})

    with results_dir(out_dir):
        outcome = evaluate_checkpoints(out_dir, header, image_set, held.labels, refs, predict, force=cfg.force,
                                       progress=cfg.progress)
    write_config(out_dir / "results.json", "eval supervised", cfg)
    return outcome
