"""Merging circuits shard files: equal to a single run; gaps, overlaps, non-shards, unfinished shards and other
computations refused."""

import pytest

from clipgen.circuits import merge as M
from clipgen.circuits import store as S
from clipgen.circuits.compute import run_circuits
from clipgen.errors import ClipgenError
from tests._circuits_helpers import assert_same_entries, small_config

pytest_plugins = ["tests._fixtures_circuits"]  # circuits_run_dir, small_circuits

PLAN = [("clipart", 11), ("quickdraw", 11), ("clipart", 66), ("quickdraw", 66)]  # class-major, held-out first


@pytest.mark.slow
def test_shards_merge_equal_a_single_run(small_circuits, circuits_run_dir, synth_root, tmp_path, monkeypatch):
    out = tmp_path / "c.h5"
    r0 = run_circuits(small_config(out, circuits_run_dir, synth_root, shard="0/2"), progress=False)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    r1 = run_circuits(small_config(out, circuits_run_dir, synth_root, shard="auto"), progress=False)
    assert r0.path.name == "c.shard-0-of-2.h5" and r1.path.name == "c.shard-1-of-2.h5"
    with pytest.raises(ClipgenError, match=r"is shard 0/2 .* 'clipgen circuits merge'"):
        S.open_circuits(r0.path)
    with S.open_circuits(r1.path, allow_incomplete=True) as cf:
        assert cf.entries() == PLAN[2:] and cf.shard["total"] == 4
    merged = tmp_path / "merged.h5"
    res = M.run_merge(M.MergeConfig(shards=[r1.path, r0.path], out=merged))
    assert res.entries == 4 and res.shards == 2 and merged.with_name("merged.config.json").is_file()
    assert_same_entries(merged, small_circuits)
    with S.open_circuits(merged) as cf:
        assert cf.shard is None and cf.provenance["merged_from"] == [r0.path.name, r1.path.name]
    # refusals: output exists, gap, overlap, a non-shard, an unfinished shard, another computation
    with pytest.raises(ClipgenError, match="already exists"):
        M.run_merge(M.MergeConfig(shards=[r0.path, r1.path], out=merged))
    with pytest.raises(ClipgenError, match=r"gap: 2 \(domain, class\) entries are in no shard, first \(clipart, "
                                           r"cello\) \(shard\(s\) 1 of 2 not given\)"):
        M.run_merge(M.MergeConfig(shards=[r0.path], out=tmp_path / "m2.h5"))
    with pytest.raises(ClipgenError, match=r"overlap: \(clipart, axe\) is also in c.shard-0-of-2.h5"):
        M.run_merge(M.MergeConfig(shards=[r0.path, r0.path, r1.path], out=tmp_path / "m2.h5"))
    with pytest.raises(ClipgenError, match="is not a shard file"):
        M.run_merge(M.MergeConfig(shards=[r0.path, small_circuits], out=tmp_path / "m2.h5"))
    other = tmp_path / "other.h5"
    with pytest.raises(S.SimulatedCrash):
        run_circuits(small_config(other, circuits_run_dir, synth_root, shard="1/2", steps=3), progress=False,
                         crash_after=1)
    with pytest.raises(ClipgenError, match=r"shard 1/2 is unfinished \(1 of 2 entries\)"):
        M.run_merge(M.MergeConfig(shards=[r0.path, S.parts_dir(other).parent / "other.shard-1-of-2.h5"],
                                  out=tmp_path / "m2.h5"))
    run_circuits(small_config(other, circuits_run_dir, synth_root, shard="1/2", steps=3), progress=False)
    with pytest.raises(ClipgenError, match=r"fingerprint differs from c.shard-0-of-2.h5 \(in settings.steps\)"):
        M.run_merge(M.MergeConfig(shards=[r0.path, tmp_path / "other.shard-1-of-2.h5"], out=tmp_path / "m2.h5"))
    assert not (tmp_path / "m2.h5").exists()
