"""The paper's zero-shot classifier: template-averaged, normalised class text embeddings; cosine similarity.

Templates: the 80 OpenAI ImageNet templates (taken from open_clip's own metadata, not retyped) plus the paper's
six domain templates, 86 in all. ``templates_named_domain`` is the paper's ``--domain_invariant`` option under
an honest name: it keeps only the templates that *name* a domain (painting, sketch, clipart, infograph,
quickdraw), 10 of the 86.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from clipgen.domainnet import TEMPLATE_DOMAIN_WORDS
from clipgen.errors import ClipgenError, option_error

#: The paper's six additional domain templates.
DOMAIN_TEMPLATES: tuple[str, ...] = (
    "a clipart of the {}.", "a clipart of a {}.", "an infograph of the {}.", "an infograph of a {}.",
    "a quickdraw of the {}.", "a quickdraw of a {}.",
)
TEMPLATE_SETS = ("paper", "openai", "named-domain", "simple")


def openai_templates() -> list[str]:
    """The 80 OpenAI ImageNet templates as ``{}`` format strings, from open_clip's metadata."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


def templates(name: str = "paper", option: str = "--templates") -> list[str]:
    """A named template set: ``paper`` (80 + 6 = 86, the default), ``openai`` (80), ``named-domain``
    (the 10 of ``paper`` that name a domain: the published ``--domain_invariant``), ``simple`` (1)."""
    if name == "paper":
        return openai_templates() + list(DOMAIN_TEMPLATES)
    if name == "openai":
        return openai_templates()
    if name == "named-domain":
        return [t for t in templates("paper") if any(w in t for w in TEMPLATE_DOMAIN_WORDS)]
    if name == "simple":
        return ["a photo of a {}."]
    raise option_error(option, f"unknown template set {name!r} (one of {', '.join(TEMPLATE_SETS)})")


#: The four indices where the published scripts' ImageNet class names (OpenAI's list) differ from open_clip's
#: ``IMAGENET_CLASSNAMES``: index -> (published name, open_clip's name).
IMAGENET_NAME_DIFFERENCES: dict[int, tuple[str, str]] = {
    27: ("eft", "newt"), 638: ("maillot", "tights"), 744: ("projectile", "missile"), 836: ("sunglass", "sunglasses"),
}


def imagenet_classnames() -> list[str]:
    """The 1000 ImageNet class names the published scripts use (OpenAI's list), in class-index order.

    Shipped as ``clipgen/resources/imagenet_classnames.txt`` (one name per line). It equals open_clip's
    ``IMAGENET_CLASSNAMES`` except at the four indices of :data:`IMAGENET_NAME_DIFFERENCES` (e.g. 27 is "eft",
    where open_clip says "newt"). Used for the ImageNet-Sketch captions and the ImageNet zero-shot classifier.
    """
    from importlib import resources

    text = resources.files("clipgen.resources").joinpath("imagenet_classnames.txt").read_text(encoding="utf-8")
    return text.splitlines()


#: Tokenised prompts of recent (tokenizer, class names, templates), newest last: evaluating every epoch of a run
#: builds the same prompts once per checkpoint, and tokenising 345 classes x 86 templates costs seconds of CPU each
#: time (open_clip's tokenizer runs ftfy and BPE per string), as much as the text tower's forward on a small model.
_TOKEN_CACHE: OrderedDict[tuple, Any] = OrderedDict()
_TOKEN_CACHE_SIZE = 4


def prompt_tokens(tokenizer: Any, classnames: Sequence[str], template_list: Sequence[str]):
    """``(K * T, L)`` tokens of every template for every class (class-major), cached per tokenizer kind."""
    key = (type(tokenizer).__module__, type(tokenizer).__qualname__, getattr(tokenizer, "context_length", None),
           tuple(classnames), tuple(template_list))
    tokens = _TOKEN_CACHE.get(key)
    if tokens is None:
        tokens = tokenizer([t.format(c) for c in classnames for t in template_list])
        _TOKEN_CACHE[key] = tokens
        while len(_TOKEN_CACHE) > _TOKEN_CACHE_SIZE:
            _TOKEN_CACHE.popitem(last=False)
    else:
        _TOKEN_CACHE.move_to_end(key)
    return tokens


def build_classifier(model: Any, tokenizer: Any, classnames: Sequence[str], template_list: Sequence[str],
                     device: Any = "cpu", classes_per_batch: int = 10):
    """``(K, D)`` float32 class embeddings: embed every template, L2-normalise, average, re-normalise.

    The computation of open_clip's ``build_zero_shot_classifier`` (``classes_per_batch`` classes per text
    forward), on prompts tokenised once per (tokenizer, classes, templates) and reused (:func:`prompt_tokens`).
    """
    import torch

    if not classnames or not template_list:
        raise ClipgenError("zero-shot classifier: no class names or no templates")
    tokens = prompt_tokens(tokenizer, classnames, template_list)
    n_t = len(template_list)
    was_training = model.training
    model.eval()
    rows = []
    with torch.no_grad():
        for i in range(0, len(classnames), classes_per_batch):
            k = min(classes_per_batch, len(classnames) - i)
            e = model.encode_text(tokens[i * n_t:(i + k) * n_t].to(device), normalize=True)
            e = e.reshape(k, n_t, -1).mean(dim=1)
            rows.append(e / e.norm(dim=1, keepdim=True))
    model.train(was_training)
    return torch.cat(rows).float().contiguous()


def classnames_from_folders(folders: Sequence[str]) -> list[str]:
    """Prompt class names as the paper forms them: the class folder with ``_`` replaced by a space."""
    return [f.replace("_", " ") for f in folders]


def check_on_error(on_error: str, option: str = "--on-error") -> str:
    if on_error not in ("fail", "skip"):
        raise option_error(option, f"must be 'fail' or 'skip', not {on_error!r}")
    return on_error


def raise_unreadable(records: Sequence[Any], indices: Sequence[int]) -> None:
    """Raise the one-line error of the first unreadable image among ``indices`` (decoded again here, in the main
    process: an error raised inside a DataLoader worker would come back wrapped in the worker's traceback)."""
    from clipgen.datasets import load_image

    for i in indices:
        load_image(records[int(i)].path)  # raises a ClipgenError naming the file
    if len(indices):
        raise ClipgenError(f"{records[int(indices[0])].path}: unreadable image")


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
