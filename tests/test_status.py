"""``clipgen status``: the grid table and its JSON, on a real-layout study folder."""

import json

import pytest

from clipgen.status import epoch_ranges
from tests._fixtures_study import ACC, PLANNED_EPOCHS, build_study


def test_epoch_ranges():
    assert epoch_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert epoch_ranges([3]) == "3" and epoch_ranges([]) == "-"


def test_status_json(tmp_path, cli):
    from clipgen.artifacts import write_config
    from clipgen.evaluation.summary import SummaryConfig

    study = build_study(tmp_path / "study")
    write_config(study / "fig2", "eval summary", SummaryConfig(inputs=[study / "grid"], out=study / "fig2"))
    r = cli("status", study, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    rows = {row["run"]: row for row in doc["runs"]}
    assert len(rows) == 8 and doc["roots"] == [str(study)]
    assert doc["not_tied_to_a_run"] == [{"command": "eval summary", "path": str(study / "fig2")}]
    nat = rows["exp-natural-only-seed0"]
    assert nat["evaluated"] == {"sketch": [0, 1], "clipart": [0, 1]} or \
        nat["evaluated"] == {"clipart": [0, 1], "sketch": [0, 1]}
    assert nat["setup"] == "natural-only" and nat["test_domain"] is None and nat["seed"] == 0
    assert (nat["trained_epochs"], nat["planned_epochs"], nat["complete"]) == (PLANNED_EPOCHS, PLANNED_EPOCHS, True)
    # the unfinished run: 1 of 2 epochs trained
    short = rows["exp-cg-high-clipart-seed1"]
    assert (short["trained_epochs"], short["planned_epochs"], short["complete"]) == (1, 2, False)
    # the store and the CKA belong to the CG high-diversity sketch run of seed 0, found through their configs
    cg = rows["exp-cg-high-sketch-seed0"]
    assert cg["stores"] == [str((study / "h5" / "cg-test.h5").resolve())] and cg["analyses"] == ["cka"]
    assert cg["evaluated"] == {"sketch": [0, 1]}
    assert all(not row["stores"] and not row["analyses"] for name, row in rows.items() if name != cg["run"])
    evaluated = sum(len(row["evaluated"]) for row in rows.values())
    assert evaluated == sum(len(v) for v in ACC.values())


@pytest.mark.slow
def test_status_table_and_bad_input(tmp_path, cli):
    study = build_study(tmp_path / "study")
    r = cli("status", study)
    assert r.exit_code == 0, r.output
    assert "8 runs under" in r.stdout and "exp-cg-high-sketch-seed0" in r.stdout and "1/2" in r.stdout
    r = cli("status", tmp_path / "missing")
    assert r.exit_code == 2 and r.stderr.strip() == f"error: STUDY_DIR: {tmp_path / 'missing'} is not a directory"
    r = cli("status", study, "--stores", tmp_path / "nostores")
    assert r.exit_code == 2 and "--stores" in r.stderr
