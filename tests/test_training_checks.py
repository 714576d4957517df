import pytest
import torch

from clipgen.artifacts import sha256_file
from clipgen.errors import ClipgenError, ConfigFieldError
from clipgen.training.checks import (
    check_run_dir,
    check_tsv,
    line_of_row,
    load_checkpoint,
    refuse_other_settings,
    run_state,
    sample_indices,
)
from clipgen.tsv import read_tsv, write_tsv


def _tsv(tmp_path, synth_root, n=20, name="t.tsv"):
    rows = read_tsv(synth_root / "base_train.tsv")[:n]
    p = tmp_path / name
    write_tsv(p, rows)
    return p, rows


def test_check_tsv_summary(tmp_path, synth_root):
    p, rows = _tsv(tmp_path, synth_root)
    s = check_tsv(p)
    assert s.rows == len(rows) == 20
    assert s.sha256 == sha256_file(p)
    assert s.path == str(p.resolve())
    assert s.checked_images == 20  # small files: every row is in the sample
    assert s.manifest_entry() == {"path": s.path, "sha256": s.sha256, "rows": 20}


def test_sample_indices_cover_ends_and_are_seeded():
    idx = sample_indices(1000, 50)
    assert idx[:8] == list(range(8)) and idx[-8:] == list(range(992, 1000))
    assert len(idx) <= 66 and idx == sorted(set(idx))
    assert idx == sample_indices(1000, 50)
    assert sample_indices(5, 50) == [0, 1, 2, 3, 4]
    assert sample_indices(0, 5) == []


def test_missing_image_names_file_and_line(tmp_path, synth_root):
    rows = read_tsv(synth_root / "base_train.tsv")[:10]
    rows[6] = (str(tmp_path / "nope.jpg"), "a caption")
    p = tmp_path / "t.tsv"
    write_tsv(p, rows)
    with pytest.raises(ClipgenError) as e:
        check_tsv(p)
    assert str(e.value).startswith(f"{p}:8: image {tmp_path / 'nope.jpg'} does not exist")
    assert line_of_row(p, 6) == 8


def test_corrupt_image_is_found_by_decoding(tmp_path, synth_root):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    rows = [(str(bad), "x")] + read_tsv(synth_root / "base_train.tsv")[:3]
    p = tmp_path / "t.tsv"
    write_tsv(p, rows)
    with pytest.raises(ClipgenError, match=r"t\.tsv:2: .*corrupt or unreadable image"):
        check_tsv(p)


def test_malformed_and_missing_tsv(tmp_path):
    p = tmp_path / "m.tsv"
    p.write_text("filepath\ttitle\na.jpg\tx\tsurplus\n")
    with pytest.raises(ClipgenError, match=r"m\.tsv:2: expected 2 tab-separated fields, found 3"):
        check_tsv(p)
    with pytest.raises(ConfigFieldError, match=r"^val: .*nothere\.tsv: TSV file not found"):
        check_tsv(tmp_path / "nothere.tsv", "val")
    (tmp_path / "h.tsv").write_text("filepath\ttitle\n")
    with pytest.raises(ClipgenError, match="has 0 data rows"):
        check_tsv(tmp_path / "h.tsv")


def test_run_state_and_reuse(tmp_path):
    d = tmp_path / "logs" / "r"
    st = run_state(d)
    assert not st.exists and not st.started and st.last_epoch is None
    check_run_dir(st)  # a new name is fine
    (d / "checkpoints").mkdir(parents=True)
    for e in (0, 1, 3):
        (d / "checkpoints" / f"epoch_{e}.pt").write_bytes(b"x")
    (d / "checkpoints" / "results.jsonl").write_text("{}\n")
    st = run_state(d)
    assert st.started and st.last_epoch == 3 and sorted(st.checkpoints) == [0, 1, 3]
    check_run_dir(st)  # an existing run is continued by the same command
    (tmp_path / "logs" / "f").write_text("x")
    with pytest.raises(ClipgenError, match=r"/f: exists and is not a directory$"):
        check_run_dir(run_state(tmp_path / "logs" / "f"))
    refuse_other_settings(d, [])
    with pytest.raises(ConfigFieldError, match=r"^name: run .*/r was started with other settings \(lr 1 -> 2; seed 0 "
                                           r"-> 1\); rerun with its settings to continue it, pass --force to start "
                                           r"it over, or choose another --name$"):
        refuse_other_settings(d, ["lr 1 -> 2", "seed 0 -> 1"])


def test_load_checkpoint(tmp_path):
    good = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {"w": torch.ones(2)}, "optimizer": {}}, good)
    assert load_checkpoint(good, ("epoch", "state_dict", "optimizer"))["epoch"] == 1
    with pytest.raises(ClipgenError, match=r"epoch_1\.pt: checkpoint lacks scaler"):
        load_checkpoint(good, ("epoch", "scaler"))
    bad = tmp_path / "epoch_2.pt"
    bad.write_bytes(b"\x80\x02garbage")
    with pytest.raises(ClipgenError, match=r"epoch_2\.pt: corrupt or unreadable checkpoint"):
        load_checkpoint(bad)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ClipgenError, match="not a training checkpoint"):
        load_checkpoint(tmp_path / "list.pt")
