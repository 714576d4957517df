import shlex
import subprocess
import sys

import pytest

from clipgen.errors import ClipgenError
from clipgen.slurm import SlurmConfig, run_local, write_array_job


def test_array_script_selects_task_by_index(tmp_path):
    tasks = [["echo", "first task"], ["echo", "it's", "second"]]
    script = write_array_job(tmp_path, "grid", tasks, SlurmConfig(partition="gpu", max_parallel=2))
    text = script.read_text()
    assert "#SBATCH --array=0-1%2" in text and "#SBATCH --partition=gpu" in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    lines = (tmp_path / "grid.tasks").read_text().splitlines()
    assert [shlex.split(x) for x in lines] == tasks
    # run the script body for task 1 with scontrol/srun absent: stub scontrol
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "scontrol").write_text("#!/bin/sh\necho node1\n")
    (stub / "scontrol").chmod(0o755)
    env = {"PATH": f"{stub}:/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_NODELIST": "node1"}
    r = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("it's second")


def test_no_tasks_is_an_error(tmp_path):
    with pytest.raises(ClipgenError, match="no tasks"):
        write_array_job(tmp_path, "grid", [], SlurmConfig())


def test_run_local_stops_on_failure():
    run_local([[sys.executable, "-c", "pass"]])
    with pytest.raises(ClipgenError, match="exit code 3"):
        run_local([[sys.executable, "-c", "import sys; sys.exit(3)"], [sys.executable, "-c", "pass"]])
