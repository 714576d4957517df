"""Device, precision, memory and loader-worker choices (clipgen.devices); GPUs faked by their device type."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from clipgen import devices
from clipgen.devices import resolve_precision
from clipgen.errors import ClipgenError

GPU, CPU = SimpleNamespace(type="cuda"), SimpleNamespace(type="cpu")


def test_auto_is_the_published_evaluation_precision_per_model_kind():
    # published: CLIP evaluated in fp16 (nearest: fp16 autocast), the supervised classifier in fp32
    assert resolve_precision("auto", GPU, kind="clip") == "fp16"
    assert resolve_precision("auto", GPU, kind="supervised") == "fp32"
    assert resolve_precision("auto", GPU) == "bf16"  # every other command
    for kind in (None, "clip", "supervised"):
        assert resolve_precision("auto", CPU, kind=kind) == "fp32"
        assert resolve_precision("AUTO", SimpleNamespace(type="mps"), kind=kind) == "fp32"
    with pytest.raises(ValueError, match="unknown model kind"):
        resolve_precision("auto", GPU, kind="vit")


@pytest.mark.parametrize("kind", [None, "clip", "supervised"])
def test_explicit_precisions_win_over_the_kind(kind):
    for p in ("fp32", "bf16", "fp16"):
        assert resolve_precision(p, GPU, kind=kind) == p
    assert resolve_precision("bf16", CPU, kind=kind) == "bf16"
    with pytest.raises(ClipgenError, match="precision: fp16 autocast is not supported on CPU"):
        resolve_precision("fp16", CPU, kind=kind)
    with pytest.raises(ClipgenError, match="precision: unknown precision 'fp8'"):
        resolve_precision("fp8", GPU, kind=kind)


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
    with pytest.raises(ClipgenError, match="workers: must be 0 or more, not -1"):
        devices.resolve_workers(-1)
    assert devices.check_memory_gb(1.5, torch.device("cpu")) == 1.5
    assert devices.check_memory_gb(None, torch.device("cpu")) > 0
    with pytest.raises(ClipgenError, match="memory_gb: must be a positive number of GiB, not -2"):
        devices.check_memory_gb(-2, torch.device("cpu"))


def test_available_ram_counts_the_reclaimable_page_cache(tmp_path):
    """MemAvailable, not MemFree: on a busy machine the free pages alone can be a few hundred MB, which split an
    evaluation's checkpoints into needless chunks."""
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       24000000 kB\nMemFree:          200000 kB\nMemAvailable:   16000000 kB\n")
    assert devices.available_ram(str(info)) == 16000000 * 1024
    assert devices.available_ram(str(tmp_path / "none")) > 0
