import hashlib
import json

import pytest

from clipgen.data.imagenet_captions import (
    MISSING_NAME,
    ImageNetCaptionsConfig,
    make_caption,
    run_imagenet_captions,
)
from clipgen.errors import ClipgenError
from clipgen.tsv import read_tsv

from ._fixtures_data import make_imagenet_captions

W1, W2 = "n01440764", "n02129165"


@pytest.mark.parametrize("entry, caption", [
    ({"title": "A fish", "tags": ["river", "trout"], "description": "Caught today."},
     "A fish; river trout; Caught today."),
    ({"title": "A fish", "tags": [], "description": ""}, "A fish"),
    ({"title": "", "tags": ["a", "b"], "description": "d"}, "a b; d"),
    ({"title": "  two\n\nlines\t here ", "tags": ["x\ny"], "description": "end\u200b "}, "two lines here; x y; end"),
    ({"title": " ", "tags": [" "], "description": "only this"}, "only this"),
])
def test_caption_composition(entry, caption):
    assert make_caption(entry) == caption


def test_split_rows_and_missing(tmp_path):
    js, train = make_imagenet_captions(tmp_path / "in", {W1: 20, W2: 11}, missing=3)
    res = run_imagenet_captions(ImageNetCaptionsConfig(js, train, tmp_path / "out", val_fraction=0.2, seed=5),
                                progress=False)
    tr, va = read_tsv(res.train), read_tsv(res.val)
    # stratified: round(0.2 * n) validation images per class
    assert sum(W1 in p for p, _ in va) == 4 and sum(W2 in p for p, _ in va) == 2
    assert len(tr) + len(va) == 31 and res.n_train == 25 and res.n_val == 6
    assert not {p for p, _ in tr} & {p for p, _ in va}
    # the validation images are the first round(f * n) by sha256(f"{seed}:{filename}"), computed here independently
    for w, n, k in ((W1, 20, 4), (W2, 11, 2)):
        names = sorted((f"{w}_{i}.JPEG" for i in range(n)),
                       key=lambda f: hashlib.sha256(f"5:{f}".encode()).hexdigest())
        assert {p.rsplit("/", 1)[1] for p, _ in va if w in p} == set(names[:k])
    # missing images: reported, listed, no rows
    assert len(res.missing) == 3 and all("missing" in m for m in res.missing)
    assert (tmp_path / "out" / MISSING_NAME).read_text().splitlines() == res.missing
    assert not any("_missing" in p.rsplit("/", 1)[1] for p, _ in tr + va)
    # absolute paths into the train folder, captions as composed
    by_path = dict(tr + va)
    assert by_path[str((train / W1 / f"{W1}_1.JPEG").resolve())] == "title 1; t1 x"
    assert by_path[str((train / W1 / f"{W1}_3.JPEG").resolve())] == "title 3; t3 x; a description 3"


def test_split_is_seeded_and_order_independent(tmp_path):
    js, train = make_imagenet_captions(tmp_path / "in", {W1: 30, W2: 30})

    def val(seed, path, out):
        return {p for p, _ in read_tsv(run_imagenet_captions(
          ImageNetCaptionsConfig(path, train, tmp_path / out, val_fraction=0.1, seed=seed), progress=False).val)}

    a, b, c = val(0, js, "a"), val(0, js, "b"), val(1, js, "c")
    shuffled = tmp_path / "shuffled.json"
    shuffled.write_text(json.dumps(list(reversed(json.loads(js.read_text())))))
    assert a == b == val(0, shuffled, "d")
    assert a != c and len(a) == len(c) == 6


def test_existing_outputs_and_bad_input(tmp_path):
    js, train = make_imagenet_captions(tmp_path / "in", {W1: 5})
    out = tmp_path / "out"
    run_imagenet_captions(ImageNetCaptionsConfig(js, train, out), progress=False)
    with pytest.raises(ClipgenError, match="in-captions-train.tsv: already exists .*--force"):
        run_imagenet_captions(ImageNetCaptionsConfig(js, train, out), progress=False)
    run_imagenet_captions(ImageNetCaptionsConfig(js, train, out, force=True), progress=False)

    def fails(path, message, train_dir=train, **kw):
        with pytest.raises(ClipgenError, match=message):
            run_imagenet_captions(ImageNetCaptionsConfig(path, train_dir, tmp_path / "bad", **kw), progress=False)
        assert not (tmp_path / "bad").exists()

    bad = tmp_path / "bad.json"
    bad.write_text('[{"filename": "a.JPEG", "wnid": "n1"},\n {"filename": 3}]')
    fails(bad, r"bad.json: entry 1: missing or empty 'filename'")
    bad.write_text('[{"filename": "a.JPEG", "wnid": "n1",\n')
    fails(bad, r"bad.json:2: invalid JSON")
    bad.write_text('{"train": []}')
    fails(bad, r"bad.json: expected a JSON list")
    bad.write_text('[{"filename": "a.JPEG", "wnid": "n1", "tags": "x"}]')
    fails(bad, r"bad.json: entry 0: 'tags' must be a list")
    fails(tmp_path / "nope.json", r"^captions_json: .*nope.json: file not found")
    fails(js, r"^imagenet_train: .* is not a folder", train_dir=tmp_path / "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(js, r"^imagenet_train: none of the 5 images", train_dir=empty)
    fails(js, r"^val_fraction: 1.0 is not in \[0, 1\)", val_fraction=1.0)
