"""Device, precision, memory and loader-worker choices (clipgen.devices)."""

import os

import pytest
import torch

from clipgen import devices
from clipgen.errors import ClipgenError


def test_available_cpus_follow_affinity_and_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    assert devices.available_cpus() == 6 and devices.default_workers() == 5
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert devices.available_cpus() == 3 and devices.default_workers() == 2
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "64")  # never more than the affinity allows
    assert devices.available_cpus() == 6
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "garbage")
    assert devices.available_cpus() == 6
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {7})
    assert devices.available_cpus() == 1 and devices.default_workers() == 0  # one core: load in the main process
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert devices.default_workers() == devices.MAX_DEFAULT_WORKERS == 16


def test_resolve_workers_and_memory():
    assert devices.resolve_workers(0) == 0 and devices.resolve_workers(3) == 3
    assert devices.resolve_workers(None) == devices.default_workers()
    with pytest.raises(ClipgenError, match="--workers: must be 0 or more, not -1"):
        devices.resolve_workers(-1)
    assert devices.check_memory_gb(1.5, torch.device("cpu")) == 1.5
    assert devices.check_memory_gb(None, torch.device("cpu")) > 0
    with pytest.raises(ClipgenError, match="--memory-gb: must be a positive number of GiB, not -2"):
        devices.check_memory_gb(-2, torch.device("cpu"))


def test_available_ram_counts_the_reclaimable_page_cache(tmp_path):
    """MemAvailable, not MemFree: on a busy machine the free pages alone can be a few hundred MB, which split an
    evaluation's checkpoints into needless chunks."""
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       24000000 kB\nMemFree:          200000 kB\nMemAvailable:   16000000 kB\n")
    assert devices.available_ram(str(info)) == 16000000 * 1024
    assert devices.available_ram(str(tmp_path / "none")) > 0
