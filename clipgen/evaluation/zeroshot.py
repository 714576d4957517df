"""Zero-shot prediction: image embeddings of a CLIP model (one decode pass for several models), cosine-similarity
top-k against class embeddings.

The classifier itself (templates, class text embeddings) is model-level, in
:mod:`clipgen.models.zeroshot_classifier`; the ImageNet class names are in :mod:`clipgen.domainnet`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from clipgen.datasets import raise_unreadable
from clipgen.errors import ClipgenError, ConfigFieldError

__all__ = ["check_on_error", "encode_images", "encode_images_many", "image_batches", "predict_topk", "topk_many"]


def check_on_error(on_error: str, field: str = "on_error") -> str:
    if on_error not in ("fail", "skip"):
        raise ConfigFieldError(field, f"must be 'fail' or 'skip', not {on_error!r}")
    return on_error


def encode_images(model: Any, records: Sequence[Any], transform: Any, *, device: Any = "cpu",
                  precision: str = "fp32", batch_size: int = 256, workers: int = 0, on_error: str = "fail",
                  progress: Any = None, description: str = "images"):
    """``(N, D)`` float32 L2-normalised image embeddings of ``records`` (rows of skipped images are NaN).

    ``progress`` is an optional rich Progress to which a task over the images is added.
    """
    return encode_images_many([model], records, transform, device=device, precision=precision,
                              batch_size=batch_size, workers=workers, on_error=on_error, progress=progress,
                              description=description)[0]


def image_batches(records: Sequence[Any], transform: Any, *, device: Any, batch_size: int, workers: int,
                  on_error: str, progress: Any = None, description: str = "images", images: Any = None):
    """Decode ``records`` once, in order: yields ``(images on device or None, kept indices, skipped indices)``.

    Unreadable images fail with their one-line error (``on_error="fail"``) or are reported as skipped. ``images``:
    an open image cache (:func:`clipgen.data.image_cache.open_cache`) to read them from instead of decoding them.
    """
    from clipgen.datasets import make_loader

    check_on_error(on_error)
    if images is not None:
        yield from images.batches(records, transform, device=device, batch_size=batch_size, on_error=on_error,
                                  progress=progress, description=description)
        return
    on_gpu = getattr(device, "type", str(device)) == "cuda"
    # the loader always skips; a failure is raised here, in the main process, with its one-line message
    loader = make_loader(records, transform, batch_size=batch_size, workers=workers, on_error="skip",
                         pin_memory=on_gpu)
    task = progress.add_task(description, total=len(records)) if progress is not None else None
    for images, kept, skipped in loader:
        if on_error == "fail" and len(skipped):
            raise_unreadable(records, skipped.tolist())
        yield (None if images is None else images.to(device, non_blocking=True)), kept, skipped
        if progress is not None:
            progress.advance(task, len(kept) + len(skipped))
    if progress is not None:
        progress.remove_task(task)


def encode_images_many(models: Sequence[Any], records: Sequence[Any], transform: Any, *, device: Any = "cpu",
                       precision: str = "fp32", batch_size: int = 256, workers: int = 0, on_error: str = "fail",
                       progress: Any = None, description: str = "images", images: Any = None):
    """:func:`encode_images` for several models in one pass over the images: each batch is decoded once (or read
    from the image cache ``images``) and fed to every model's image tower. Returns one ``(N, D)`` tensor per model,
    in order."""
    import torch

    def keep(j: int, f: torch.Tensor) -> torch.Tensor:
        return f

    return _encode_many(models, records, transform, keep, nan=True, device=device, precision=precision,
                        batch_size=batch_size, workers=workers, on_error=on_error, progress=progress,
                        description=description, images=images)


def topk_many(models: Sequence[Any], classifiers: Sequence[Any], class_labels: Sequence[int], k: int,
              records: Sequence[Any], transform: Any, *, device: Any = "cpu", precision: str = "fp32",
              batch_size: int = 256, workers: int = 0, on_error: str = "fail", progress: Any = None,
              description: str = "images", images: Any = None) -> list[Any]:
    """:func:`predict_topk` of every model (with its class embeddings ``classifiers[j]``) in one pass over the
    images, batch by batch: memory holds ``(N, k)`` labels per model, never the ``(N, D)`` embeddings (at the paper's
    size those would be ~0.4 GB per checkpoint of RN50, times the checkpoints of a pass). The same labels as
    :func:`predict_topk` of :func:`encode_images_many`'s embeddings; skipped images get ``-1``."""
    import numpy as np
    import torch

    weights = [torch.as_tensor(w, dtype=torch.float32) for w in classifiers]

    def keep(j: int, f: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(predict_topk(f, weights[j], class_labels, k))

    out = _encode_many(models, records, transform, keep, nan=False, device=device, precision=precision,
                       batch_size=batch_size, workers=workers, on_error=on_error, progress=progress,
                       description=description, images=images)
    return [np.asarray(t.numpy(), dtype=np.int64) for t in out]


def _encode_many(models: Sequence[Any], records: Sequence[Any], transform: Any, keep: Any, *, nan: bool,
                 device: Any, precision: str, batch_size: int, workers: int, on_error: str, progress: Any,
                 description: str, images: Any) -> list[Any]:
    """One pass over the images through every model: ``keep(j, embeddings)`` of each batch (L2-normalised float32
    on the CPU) goes into row ``kept`` of model ``j``'s output; rows of skipped images are NaN (``nan``) or -1."""
    import torch

    from clipgen.devices import autocast

    outs: list[torch.Tensor | None] = [None] * len(models)
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.no_grad():
            for x, kept, _ in image_batches(records, transform, device=device, batch_size=batch_size,
                                            workers=workers, on_error=on_error, progress=progress,
                                            description=description, images=images):
                if x is None:
                    continue
                for j, model in enumerate(models):
                    with autocast(device, precision):
                        f = model.encode_image(x)
                    r = keep(j, torch.nn.functional.normalize(f.float(), dim=-1).cpu())
                    if outs[j] is None:
                        outs[j] = (torch.full((len(records), *r.shape[1:]), float("nan")) if nan else
                                   torch.full((len(records), *r.shape[1:]), -1, dtype=r.dtype))
                    outs[j][kept] = r
    finally:
        for m, t in zip(models, was_training, strict=True):
            m.train(t)
    if any(o is None for o in outs):
        raise ClipgenError(f"none of the {len(records)} images could be read")
    return outs


def predict_topk(image_features: Any, class_embeddings: Any, class_labels: Sequence[int], k: int = 5):
    """``(N, min(k, K))`` int64 labels of the ``k`` most similar classes (cosine similarity), best first.

    ``image_features`` ``(N, D)`` and ``class_embeddings`` ``(K, D)`` are L2-normalised; rows that are NaN
    (skipped images) get ``-1``.
    """
    import numpy as np
    import torch

    x = torch.as_tensor(image_features, dtype=torch.float32)
    w = torch.as_tensor(class_embeddings, dtype=torch.float32).to(x.device)
    k = min(k, w.shape[0])
    bad = torch.isnan(x).any(dim=1)
    scores = torch.nan_to_num(x) @ w.T
    idx = scores.topk(k, dim=1).indices.cpu().numpy()
    out = np.asarray(class_labels, dtype=np.int64)[idx]
    out[bad.cpu().numpy()] = -1
    return out
