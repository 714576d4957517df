"""Shards: ``--shard`` specs, shard ranges and file names, and the helpers every merge shares."""

from pathlib import Path

import pytest

from clipgen.errors import ClipgenError
from clipgen.store.shards import missing_shards_hint, opened_shards, parse_shard, shard_path, shard_range


def test_shard_specs(monkeypatch):
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) is None
    for bad in ("4/4", "x", "1/0", "-1/3"):
        with pytest.raises(ClipgenError, match="^shard: "):
            parse_shard(bad)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    assert parse_shard("auto") == (2, 4)
    cuts = [shard_range(140, i, 3, 32) for i in range(3)]
    assert cuts[0][0] == 0 and cuts[-1][1] == 140 and all(a % 32 == 0 for a, _ in cuts)
    assert all(cuts[i][1] == cuts[i + 1][0] for i in range(2))
    assert [shard_range(5, i, 3, 32) for i in range(3)] == [(0, 1), (1, 3), (3, 5)]


def test_shard_paths_and_missing_shards_hint():
    assert shard_path(Path("/x/out.h5"), 1, 4) == Path("/x/out.shard-1-of-4.h5")
    assert shard_path(Path("/x/out"), 0, 2) == Path("/x/out.shard-0-of-2.h5")
    assert missing_shards_hint([0, 2], 4) == " (shard(s) 1, 3 of 4 not given)"
    assert missing_shards_hint([1, 0], 2) == ""


class _Opened:
    def __init__(self, path):
        self.path, self.closed = Path(path), False

    def close(self):
        self.closed = True


def test_opened_shards_refuses_an_existing_output_and_closes_every_shard(tmp_path):
    out = tmp_path / "m.h5"
    seen = []

    def opener(p):
        seen.append(_Opened(p))
        return seen[-1]

    with opened_shards([tmp_path / "a.h5", tmp_path / "b.h5"], out, opener) as opened:
        assert [o.path.name for o in opened] == ["a.h5", "b.h5"] and not any(o.closed for o in opened)
    assert all(o.closed for o in seen)
    with pytest.raises(ClipgenError, match=r"m\.h5: the output is one of the shards"), \
            opened_shards([tmp_path / "a.h5", out], out, opener):
        pass
    assert all(o.closed for o in seen)
    out.write_text("x")
    with pytest.raises(ClipgenError, match="already exists; pass --force"), opened_shards([tmp_path / "a.h5"], out,
                                                                                         opener):
        pass
    with opened_shards([tmp_path / "a.h5"], out, opener, force=True) as opened:
        assert len(opened) == 1
