"""clipgen.models.zeroshot_classifier: template sets and the class text embeddings (against open_clip's builder)."""

import pytest
import torch

from clipgen.errors import ClipgenError
from clipgen.models.zeroshot_classifier import build_classifier, classnames_from_folders, templates
from clipgen.runs import load_clip


def test_template_sets():
    paper = templates("paper")
    assert len(paper) == 86 and len(templates("openai")) == 80 and paper[:80] == templates("openai")
    named = templates("named-domain")
    assert len(named) == 10
    assert all(any(w in t for w in ("clipart", "infograph", "painting", "quickdraw", "sketch")) for t in named)
    assert "a quickdraw of a {}." in paper and "a photo of a {}." in paper
    with pytest.raises(ClipgenError, match="templates: unknown template set 'nope'"):
        templates("nope")
    assert classnames_from_folders(["The_Eiffel_Tower", "axe"]) == ["The Eiffel Tower", "axe"]


@pytest.mark.slow
def test_classifier_equals_hand_built(random_run_dir):
    m = load_clip(random_run_dir, 1)
    names = ["axe", "The Eiffel Tower", "cell phone"]
    ts = templates("paper")
    w = build_classifier(m.model, m.tokenizer, names, ts, classes_per_batch=2)
    assert w.shape == (3, m.model_config["embed_dim"]) and w.dtype == torch.float32
    with torch.no_grad():
        rows = []
        for n in names:
            e = torch.stack([m.model.encode_text(m.tokenizer([t.format(n)]))[0] for t in ts])
            e = e / e.norm(dim=-1, keepdim=True)
            mean = e.mean(0)
            rows.append(mean / mean.norm())
    torch.testing.assert_close(w, torch.stack(rows), atol=1e-5, rtol=1e-5)
    # different template sets give different classifiers
    w1 = build_classifier(m.model, m.tokenizer, names, templates("simple"))
    assert not torch.allclose(w, w1)


@pytest.mark.slow
def test_classifier_tokenises_the_prompts_once_across_checkpoints(random_run_dir):
    """Every epoch of a run builds the same prompts: they are tokenised once, and the classifier equals open_clip's
    ``build_zero_shot_classifier`` on every call."""
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    m = load_clip(random_run_dir, 1)
    calls = []

    class Counting(type(m.tokenizer)):
        def __call__(self, texts, *a, **k):
            calls.append(len(texts))
            return super().__call__(texts, *a, **k)

    tok = Counting.__new__(Counting)
    tok.__dict__.update(m.tokenizer.__dict__)
    names = ["axe", "banana", "The Eiffel Tower", "cell phone", "lion"]
    ts = templates("paper")
    w1 = build_classifier(m.model, tok, names, ts, classes_per_batch=2)
    w2 = build_classifier(m.model, tok, names, ts, classes_per_batch=3)
    assert calls == [len(names) * len(ts)]
    with torch.no_grad():
        ref = build_zero_shot_classifier(m.model, m.tokenizer, names, ts, num_classes_per_batch=2).T
    torch.testing.assert_close(w1, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w2, ref, atol=1e-6, rtol=1e-5)
    build_classifier(m.model, tok, names[:2], ts)  # other classes: tokenised anew
    assert calls == [len(names) * len(ts), 2 * len(ts)]
