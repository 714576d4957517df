"""Shared fixtures: a tiny synthetic DomainNet, a CLI runner, and cross-worker caching of expensive artifacts.

Expensive fixtures (datasets, trained models, stores) are built once per test session even under
pytest-xdist: :func:`shared_artifact` builds into a folder shared by all workers, under a file lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest_plugins = ["tests._fixtures_store", "tests._fixtures_train"]


def _shared_root(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp()
    # under xdist each worker has basetemp/<popen-gwN>; the parent is shared by the session
    root = base.parent if base.name.startswith("popen-gw") else base
    d = root / "shared-artifacts"
    d.mkdir(exist_ok=True)
    return d


def shared_artifact(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """Build ``name`` once per session (across xdist workers) with ``build(path)``, and return its path."""
    root = _shared_root(tmp_path_factory)
    target = root / name
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (target / ".complete").exists():
                if target.exists():
                    shutil.rmtree(target)
                target.mkdir(parents=True)
                build(target)
                (target / ".complete").touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


#: The tiny synthetic DomainNet the suite shares: 6 classes (2 of the paper's held-out classes), 6 domains.
TINY_SYNTH = dict(n_classes=6, n_held_out=2, train_per_class=8, test_per_class=4, base_per_class=8,
                  base_extra_classes=2, image_size=64, seed=0, workers=1)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A tiny synthetic DomainNet root (read-only for tests: copy it before modifying)."""
    from clipgen.data.synth import SynthConfig, run_synth

    def build(path: Path) -> None:
        run_synth(SynthConfig(out=path / "dn", **TINY_SYNTH), progress=False)

    return shared_artifact(tmp_path_factory, "synth-tiny", build) / "dn"


class CliResult:
    def __init__(self, exit_code: int, stdout: str, stderr: str, exception: BaseException | None):
        self.exit_code, self.stdout, self.stderr, self.exception = exit_code, stdout, stderr, exception

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __repr__(self) -> str:
        return f"CliResult(exit_code={self.exit_code}, stderr={self.stderr[-500:]!r})"


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    """Run ``clipgen ARGS...`` in-process and return exit code, stdout and stderr."""
    from typer.testing import CliRunner

    from clipgen.cli.main import app

    def run(*args: str | Path) -> CliResult:
        runner = CliRunner()
        r = runner.invoke(app, [str(a) for a in args], catch_exceptions=True)
        exc = r.exception if not isinstance(r.exception, SystemExit) else None
        return CliResult(r.exit_code, r.stdout, r.stderr, exc)

    return run


def pytest_collection_modifyitems(config, items):
    """Skip GPU-marked tests when CUDA is absent."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@contextlib.contextmanager
def small_disk(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. ``"64k"``) mounted at ``tmp_path/small-disk`` for the block: a real full disk. The
    test is skipped where mounting is not permitted; the unmount is lazy (a failed run may still hold a file)."""
    import subprocess

    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs is not permitted here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def h5_datasets(path: Path) -> dict:
    """Every dataset of an HDF5 file by name (virtual datasets read through), for exact comparisons."""
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[...]
        f.visititems(visit)
    return out


def make_random_run(path: Path, model: str = "RN-tiny", epochs: tuple[int, ...] = (0, 1, 2), seed: int = 0) -> Path:
    """A run directory with a manifest and randomly initialised checkpoints (one seed per epoch).

    Stands in for a trained run where a test checks computations, not learning.
    """
    import torch

    from clipgen.models.registry import create_model, model_config
    from clipgen.runs import RunManifest, write_manifest

    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    for e in epochs:
        torch.manual_seed(seed * 1000 + e)
        m, _, _ = create_model(model)
        ck = {"epoch": e, "name": path.name, "state_dict": m.state_dict()}
        torch.save(ck, path / "checkpoints" / f"epoch_{e}.pt")
    write_manifest(path, RunManifest(kind="clip", name=path.name, model=model, model_config=model_config(model),
                                     seed=seed))
    return path


@pytest.fixture(scope="session")
def random_run_dir(tmp_path_factory) -> Path:
    """An RN-tiny run directory with random-weight checkpoints for epochs 0, 1, 2 (read-only for tests)."""
    return shared_artifact(tmp_path_factory, "run-random-rn-tiny", lambda p: make_random_run(p / "run")) / "run"
