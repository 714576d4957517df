import shutil

import numpy as np
import pytest

from clipgen import domainnet as dn
from clipgen.errors import ClipgenError
from clipgen.evaluation.protocol import build_eval_set, imagenet_val_records, resolve_held_out
from tests._fixtures_eval import derived_root


def test_eval_set_is_test_domain_then_real_with_present_label_space(synth_root):
    s = build_eval_set(synth_root, "q")  # letters work too
    assert s.test_domain == "quickdraw" and s.domains == ("quickdraw", "real")
    q = dn.read_split(synth_root, "quickdraw", "test")
    r = dn.read_split(synth_root, "real", "test")
    assert s.rel_paths == [x.path for x in q] + [x.path for x in r]
    assert s.labels.tolist() == [x.label for x in q + r]
    assert set(s.domain_ids.tolist()) == {dn.DOMAINS.index("quickdraw"), dn.DOMAINS.index("real")}
    # label space: the classes present, sorted by DomainNet label, names from the folders ('_' -> ' ')
    assert s.class_labels == sorted({x.label for x in q + r}) == [11, 13, 66, 67, 303, 308]
    assert s.class_names[s.class_labels.index(308)] == "The Eiffel Tower"
    assert s.class_names[s.class_labels.index(67)] == "cell phone"
    assert np.array_equal(np.array(s.class_labels)[s.class_index()], s.labels)
    assert len(s.fingerprint) == 64 and build_eval_set(synth_root, "quickdraw").fingerprint == s.fingerprint
    assert build_eval_set(synth_root, "sketch").fingerprint != s.fingerprint


def test_absent_test_domain_and_bad_names(synth_root, tmp_path):
    root = derived_root(synth_root, tmp_path / "dn", drop_splits=("quickdraw_test",))
    with pytest.raises(ClipgenError, match=r"test_domain: domain 'quickdraw' is absent from the data: .*"
                                           r"quickdraw_test.txt not found"):
        build_eval_set(root, "quickdraw")
    with pytest.raises(ClipgenError, match="test_domain: 'real' is not a test domain"):
        build_eval_set(root, "real")
    with pytest.raises(ClipgenError, match="data_root: .* is not a directory"):
        build_eval_set(tmp_path / "nope", "sketch")


def test_held_out_sources(synth_root):
    s = build_eval_set(synth_root, "sketch")
    h = resolve_held_out(s)  # the paper's 15, of which the synthetic data holds axe and banana
    assert (h.labels, h.names, h.source) == ([11, 13], ["axe", "banana"], "paper")
    assert "lion" in h.absent and len(h.absent) == 13
    h = resolve_held_out(s, manifest_labels=[13, 0])
    assert (h.labels, h.source, h.absent) == ([13], "manifest", ["aircraft carrier"])
    h = resolve_held_out(s, names=["Cell_Phone", "cello"])
    assert (h.labels, h.names, h.source) == ([66, 67], ["cello", "cell phone"], "option")
    with pytest.raises(ClipgenError, match="held_out: held-out class 'lion' has no test images"):
        resolve_held_out(s, names=["lion"])
    with pytest.raises(ClipgenError, match="held_out: no held-out class .manifest. has test images"):
        resolve_held_out(s, manifest_labels=[0, 174])
    with pytest.raises(ClipgenError, match="every evaluated class is held out"):
        resolve_held_out(s, names=["axe", "banana", "cello", "cell phone", "teddy-bear", "the eiffel tower"])


def test_no_paper_held_out_class_in_data(synth_root, tmp_path):
    root = derived_root(synth_root, tmp_path / "dn",
                        keep=lambda d, s, lines: [x for x in lines if int(x.split()[1]) not in (11, 13)])
    s = build_eval_set(root, "sketch")
    with pytest.raises(ClipgenError, match=r"held_out: no held-out class \(paper\) has test images"):
        resolve_held_out(s)


def test_imagenet_val_layout(synth_root, tmp_path):
    root = tmp_path / "val"
    imgs = sorted((synth_root / "real" / "axe").iterdir())[:3]
    for wnid, files in (("n01440764", imgs[:2]), ("n15075141", imgs[2:])):  # classes 0 and 999
        (root / wnid).mkdir(parents=True)
        for i, f in enumerate(files):
            shutil.copy(f, root / wnid / f"ILSVRC2012_val_{i:08d}.JPEG")
    recs = imagenet_val_records(root)
    assert [r.label for r in recs] == [0, 0, 999]
    assert recs[0].rel == "n01440764/ILSVRC2012_val_00000000.JPEG"
    (root / "not_a_wnid").mkdir()
    with pytest.raises(ClipgenError, match="imagenet: .*not_a_wnid is not an ImageNet class folder"):
        imagenet_val_records(root)
    with pytest.raises(ClipgenError, match="imagenet: no images under"):
        (tmp_path / "empty").mkdir()
        imagenet_val_records(tmp_path / "empty")


def test_paper_held_out_classes_are_found_by_folder_not_by_reference_label(synth_root, tmp_path):
    """The data's labels come from its split files: a paper class whose folder has no images is absent, even when
    the data uses the paper class's reference label for another folder (here axe's 11 for cello)."""
    def relabel(d, s, lines):
        out = []
        for x in lines:
            path, label = x.split()
            if "/axe/" in path:
                continue
            out.append(f"{path} 11" if "/cello/" in path else x)
        return out

    s = build_eval_set(derived_root(synth_root, tmp_path / "dn", keep=relabel), "sketch")
    assert s.class_folders[s.class_labels.index(11)] == "cello"
    h = resolve_held_out(s)
    assert (h.labels, h.names, h.source) == ([13], ["banana"], "paper")
    assert "axe" in h.absent and len(h.absent) == 14
