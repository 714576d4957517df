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
    chunk_planner,
    class_header,
    default_out_dir,
    default_test_domain,
    evaluate_checkpoints,
    opened_images,
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
    workers: int | None = None  # None: derived from the CPUs this process may use
    memory_gb: float | None = None  # models of one pass over the images; None: derived from the device
    per_checkpoint: bool = False  # one pass over the images per checkpoint (the old loop; for comparisons)
    images: Path | None = None  # an image cache ('clipgen data cache') of the evaluated images
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
    return domainnet_topk_many([model], records, transform, class_labels, device=device, precision=precision,
                               batch_size=batch_size, workers=workers, on_error=on_error, k=k, progress=progress,
                               description=description)[0]


def domainnet_topk_many(models: list, records: list, transform: Any, class_labels: list[int], *, device: Any,
                        precision: str, batch_size: int, workers: int, on_error: str, k: int = TOP_K,
                        progress: Any = None, description: str = "images", images: Any = None) -> list[np.ndarray]:
    """:func:`domainnet_topk` of several models in one pass over the images (each batch decoded once, or read from
    the image cache ``images``)."""
    import torch

    from clipgen.devices import autocast
    from clipgen.evaluation.zeroshot import image_batches
    from clipgen.models.supervised import NUM_DOMAINNET

    cols = torch.as_tensor(class_labels, dtype=torch.long)
    k = min(k, len(class_labels))
    outs = [np.full((len(records), k), -1, dtype=np.int64) for _ in models]
    labels = np.asarray(class_labels, dtype=np.int64)
    with torch.no_grad():
        for x, kept, _ in image_batches(records, transform, device=device, batch_size=batch_size, workers=workers,
                                        on_error=on_error, progress=progress, description=description,
                                        images=images):
            if x is None:
                continue
            for model, out in zip(models, outs, strict=True):
                with autocast(device, precision):
                    logits = model(x)
                dn_logits = logits.float()[:, -NUM_DOMAINNET:][:, cols.to(logits.device)]
                idx = dn_logits.topk(k, dim=1).indices.cpu().numpy()
                out[kept.numpy()] = labels[idx]
    return outs


def run_supervised(cfg: SupervisedConfig) -> EvalOutcome:
    """Evaluate a supervised run's checkpoints (skipping those already in the output's results.json)."""
    from clipgen.devices import check_memory_gb, resolve_device, resolve_precision, resolve_workers
    from clipgen.models.registry import model_config

    manifest, refs = resolve_checkpoints(cfg.model_dir, cfg.epochs, cfg.checkpoints, cfg.model, kind="supervised")
    test_domain = default_test_domain(manifest, cfg.test_domain)
    out_dir = default_out_dir(cfg.out, cfg.model_dir, "supervised", test_domain)
    image_set = build_eval_set(cfg.data_root, test_domain)
    held = resolve_held_out(image_set, cfg.held_out, (manifest.mixture or {}).get("held_out_labels")
                            if manifest is not None else None)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device, kind="supervised")
    memory_gb = check_memory_gb(cfg.memory_gb, device)
    workers = resolve_workers(cfg.workers)
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

    def predict(chunk: list[CheckpointRef], bar: Any) -> list[Prediction]:
        shas = [sha256_file(ref.path) for ref in chunk]
        loaded = [load_supervised(ref.path, name, mcfg, device) for ref in chunk]
        label = f"epoch {chunk[0].epoch}" if len(chunk) == 1 else f"epochs {chunk[0].epoch}-{chunk[-1].epoch}"
        topks = domainnet_topk_many([m for m, _ in loaded], image_set.records, loaded[0][1], image_set.class_labels,
                                    device=device, precision=precision, batch_size=cfg.batch_size, workers=workers,
                                    on_error=cfg.on_error, progress=bar, description=f"{label} images",
                                    images=cache)
        return [Prediction(t, {"sha256": sha, "features": "forward", "store": None, "precision": precision,
                               "device": str(device), "image_cache": cache_path})
                for t, sha in zip(topks, shas, strict=True)]

    with results_dir(out_dir), opened_images(cfg.images, image_set.records, cfg.on_error) as (cache, cache_path):
        outcome = evaluate_checkpoints(out_dir, header, image_set, held.labels, refs, predict, force=cfg.force,
                                       progress=cfg.progress, plan=chunk_planner(cfg.per_checkpoint, memory_gb))
    write_config(out_dir / "results.json", "eval supervised", cfg)
    return outcome
