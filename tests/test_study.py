"""Finding a study's runs, results, stores and analyses by their marker files, and tying them to their runs."""

import json

import pytest

from clipgen.errors import ClipgenError
from clipgen.study import discover
from tests._fixtures_study import build_study


@pytest.fixture
def study(tmp_path):
    return build_study(tmp_path / "study")


def test_everything_is_found_by_its_marker(study):
    s = discover([study])
    assert len(s.runs) == 8 and len(s.results) == 10 and [a.command for a in s.analyses] == ["cka"]
    assert [st.path for st in s.stores] == [study / "h5" / "cg-test.h5"]
    cg = next(r for r in s.runs if r.name == "exp-cg-high-sketch-seed0")
    assert (cg.setup, cg.test_domain, cg.seed, cg.planned_epochs, cg.trained_epochs) == ("cg-high", "sketch", 0, 2,
                                                                                         [1, 2])
    # the CKA names its store, the store names its run directory
    assert s.analyses[0].run == str(cg.path) and s.run_of(s.analyses[0]) is cg and cg.stores == s.stores
    assert [(e.test_domain, e.epochs) for e in cg.evals] == [("sketch", [0, 1])]
    nat = next(r for r in s.runs if r.name == "exp-natural-only-seed1")
    assert sorted(e.test_domain for e in nat.evals) == ["clipart", "sketch"] and nat.test_domain is None


def test_foreign_files_are_ignored_and_unreadable_markers_are_errors(study):
    (study / "other").mkdir()
    (study / "other" / "results.json").write_text(json.dumps({"format": "someone-else", "acc": 1}))
    (study / "other" / "config.json").write_text(json.dumps({"lr": 0.1}))
    s = discover([study])
    assert len(s.results) == 10 and len(s.analyses) == 1
    (study / "other" / "config.json").write_text("{")
    with pytest.raises(ClipgenError, match=r"other/config.json: unreadable JSON"):
        discover([study])


def test_moved_store_is_tied_by_run_name_and_extra_folders(study, tmp_path):
    from clipgen.artifacts import write_config
    from clipgen.extraction import ExtractConfig

    elsewhere = tmp_path / "scratch-stores"
    elsewhere.mkdir()
    (elsewhere / "lod.h5").write_bytes(b"")
    moved = tmp_path / "gone" / "exp-leave-out-domain-sketch-seed1"  # the run directory as it was when extracted
    write_config(elsewhere / "lod.h5", "extract", ExtractConfig(out=elsewhere / "lod.h5", model_dir=moved))
    s = discover([study], stores=[elsewhere])
    lod = next(r for r in s.runs if r.name == "exp-leave-out-domain-sketch-seed1")
    assert [st.path for st in lod.stores] == [elsewhere / "lod.h5"]
    with pytest.raises(ClipgenError, match="stores: .* is not a directory"):
        discover([study], stores=[tmp_path / "nowhere"])
