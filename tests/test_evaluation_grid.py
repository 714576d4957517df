import os
import shlex
import subprocess
import sys

import pytest

from clipgen.errors import ClipgenError
from clipgen.evaluation.grid import EvalGridConfig, discover_runs, plan, run_grid
from clipgen.evaluation.results import read_results
from clipgen.runs import read_manifest, write_manifest
from tests._fixtures_eval import fake_results, uneven_root

FIXTURES = (uneven_root,)


def _run(random_run_dir, path, mixture):
    path.mkdir(parents=True)
    os.symlink(random_run_dir / "checkpoints", path / "checkpoints")
    m = read_manifest(random_run_dir)
    m.name, m.mixture = path.name, mixture
    write_manifest(path, m)
    return path


@pytest.fixture
def runs(random_run_dir, tmp_path):
    root = tmp_path / "logs"
    nat = _run(random_run_dir, root / "nat", {"setup": "natural-only", "test_domain": None})
    cgl = _run(random_run_dir, root / "group" / "cgl", {"setup": "cg-low", "test_domain": "sketch"})
    return root, nat, cgl


def test_plan_covers_runs_domains_and_skips_done_work(runs, uneven_root):
    root, nat, cgl = runs
    assert discover_runs([root]) == [cgl, nat]
    tasks, notes = plan(EvalGridConfig(runs=[root], data_root=uneven_root))
    assert sorted((t.run_dir.name, t.test_domain) for t in tasks) == sorted(
        [("cgl", "sketch")] + [("nat", d) for d in ("clipart", "infograph", "painting", "quickdraw", "sketch")])
    t = [t for t in tasks if t.run_dir == cgl][0]
    argv = t.argv[3:]
    assert argv[:3] == ["eval", "zero-shot", "--model-dir"] and "--no-progress" in argv
    assert argv[argv.index("--epochs") + 1] == "0,1,2"
    assert argv[argv.index("--out") + 1] == str((cgl / "eval" / "zero-shot" / "sketch").resolve())
    # finished and partly finished evaluations
    fake_results(cgl / "eval" / "zero-shot" / "sketch" / "results.json", setup="cg-low", test_domain="sketch",
                 seed=0, values=[0.1, 0.2, 0.3])
    fake_results(nat / "eval" / "zero-shot" / "clipart" / "results.json", setup="natural-only",
                 test_domain="clipart", seed=0, values=[0.1, 0.2], epochs=[0, 1])
    tasks, notes = plan(EvalGridConfig(runs=[root], data_root=uneven_root, test_domains="c,s"))
    assert [(t.run_dir.name, t.test_domain, t.epochs) for t in tasks] == [
        ("cgl", "clipart", [0, 1, 2]), ("nat", "clipart", [2]), ("nat", "sketch", [0, 1, 2])]
    assert any("cgl" in n and "done" in n for n in notes)
    tasks, _ = plan(EvalGridConfig(runs=[nat], data_root=uneven_root, test_domains="sketch", per_checkpoint=True,
                               out_root=root / "evals", templates="simple", extra_args=["--batch-size", "8"]))
    assert [t.epochs for t in tasks] == [[0], [1], [2]]
    assert tasks[0].out == root / "evals" / "nat" / "zero-shot" / "sketch"
    assert tasks[0].argv[-2:] == ["--batch-size", "8"] and "simple" in tasks[0].argv


def test_job_script_and_modes(runs, uneven_root, tmp_path):
    root, nat, cgl = runs
    cfg = EvalGridConfig(runs=[cgl], data_root=uneven_root, jobs_dir=tmp_path / "jobs")
    res = run_grid(cfg)
    assert res.script == tmp_path / "jobs" / "eval-grid.sbatch" and res.job_id is None
    assert subprocess.run(["bash", "-n", str(res.script)]).returncode == 0
    lines = (tmp_path / "jobs" / "eval-grid.tasks").read_text().splitlines()
    assert [shlex.split(x) for x in lines] == [t.argv for t in res.tasks]
    assert "#SBATCH --time=01:00:00" in res.script.read_text()
    assert (tmp_path / "jobs" / "eval-grid.config.json").exists()
    if not any(os.access(os.path.join(p, "sbatch"), os.X_OK) for p in os.environ["PATH"].split(os.pathsep)):
        with pytest.raises(ClipgenError, match="--submit: sbatch not found"):
            run_grid(EvalGridConfig(runs=[cgl], data_root=uneven_root, jobs_dir=tmp_path / "jobs", mode="submit"))
    dry = run_grid(EvalGridConfig(runs=[cgl], data_root=uneven_root, jobs_dir=tmp_path / "dry", mode="dry-run"))
    assert [t.argv for t in dry.tasks] == [t.argv for t in res.tasks] and dry.script is None
    assert not (tmp_path / "dry").exists()  # a dry run writes nothing
    with pytest.raises(ClipgenError, match="^mode: unknown mode"):
        plan(EvalGridConfig(runs=[cgl], data_root=uneven_root, mode="later"))
    with pytest.raises(ClipgenError, match="no clipgen run"):
        discover_runs([tmp_path / "jobs"])


@pytest.mark.slow
def test_local_mode_runs_the_tasks(runs, uneven_root, cli, monkeypatch):
    from clipgen.evaluation import grid

    def run_in_process(argvs, description):  # what slurm.run_local would run, without a new interpreter
        for argv in argvs:
            assert argv[:3] == [sys.executable, "-m", "clipgen.cli.main"]
            r = cli(*argv[3:])
            assert r.exit_code == 0, r.stderr

    monkeypatch.setattr(grid, "run_local", run_in_process)
    root, nat, cgl = runs
    cfg = EvalGridConfig(runs=[cgl], data_root=uneven_root, epochs="last", templates="simple", mode="local")
    res = run_grid(cfg)
    assert len(res.tasks) == 1
    doc = read_results(cgl / "eval" / "zero-shot" / "sketch")
    assert doc["epochs"] == [2] and doc["run"]["setup"] == "cg-low"
    assert run_grid(cfg).tasks == []  # done work is skipped


def test_every_task_gets_workers_and_the_image_cache(runs, uneven_root, tmp_path, monkeypatch):
    from clipgen import devices
    from clipgen.slurm import SlurmConfig

    root, nat, cgl = runs

    def argv_of(**kw):
        (t,) = plan(EvalGridConfig(runs=[cgl], data_root=uneven_root, **kw))[0]
        return t.argv

    a = argv_of()  # the default 8 CPUs per task: 7 loader processes
    assert a[a.index("--workers") + 1] == "7" and "--images" not in a
    a = argv_of(slurm=SlurmConfig(cpus_per_task=1), images=tmp_path / "caches")
    assert a[a.index("--workers") + 1] == "0" and a[a.index("--images") + 1] == str((tmp_path / "caches").resolve())
    a = argv_of(extra_args=["--workers", "3"])
    assert a.count("--workers") == 1 and a[-2:] == ["--workers", "3"]
    monkeypatch.setattr(devices, "available_cpus", lambda: 5)
    a = argv_of(mode="local")
    assert a[a.index("--workers") + 1] == "4"
