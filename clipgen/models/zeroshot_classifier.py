"""The paper's zero-shot classifier: template-averaged, normalised class text embeddings of a CLIP model.

Templates: the 80 OpenAI ImageNet templates (taken from open_clip's own metadata, not retyped) plus the paper's
six domain templates, 86 in all. ``templates_named_domain`` is the paper's ``--domain_invariant`` option under
an honest name: it keeps only the templates that *name* a domain (painting, sketch, clipart, infograph,
quickdraw), 10 of the 86.

Model-level: evaluation, extraction (the store's text embeddings) and circuits (the class logit) build their
classifiers here; image encoding and top-k predictions stay in :mod:`clipgen.evaluation.zeroshot`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from clipgen.domainnet import TEMPLATE_DOMAIN_WORDS
from clipgen.errors import ClipgenError, ConfigFieldError

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


def templates(name: str = "paper", field: str = "templates") -> list[str]:
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
    raise ConfigFieldError(field, f"unknown template set {name!r} (one of {', '.join(TEMPLATE_SETS)})")


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
