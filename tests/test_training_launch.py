import os
import signal
import sys
import time

import pytest

from clipgen.errors import ClipgenError
from clipgen.training.launch import (
    Interrupted,
    LaunchPlan,
    child_env,
    module_command,
    resolve_launch,
    slurm_step_tasks,
    stream_process,
)

NO_SLURM: dict[str, str] = {}


def test_cpu_defaults_and_cpu_processes():
    assert resolve_launch(env=NO_SLURM, cuda_count=0) == LaunchPlan("local", "cpu", 1)
    assert resolve_launch("cpu", nproc=2, env=NO_SLURM, cuda_count=4) == LaunchPlan("torchrun", "cpu", 2)
    assert resolve_launch("auto", env=NO_SLURM, cuda_count=2) == LaunchPlan("local", "cuda", 1)
    assert resolve_launch(gpus=0, env=NO_SLURM, cuda_count=2) == LaunchPlan("local", "cpu", 1)


def test_gpus():
    assert resolve_launch(gpus=4, env=NO_SLURM, cuda_count=4) == LaunchPlan("torchrun", "cuda", 4)
    assert resolve_launch(gpus=1, env=NO_SLURM, cuda_count=4) == LaunchPlan("local", "cuda", 1)
    with pytest.raises(ClipgenError, match=r"^gpus: 8 GPUs requested but only 4 visible"):
        resolve_launch(gpus=8, env=NO_SLURM, cuda_count=4)


def test_gpu_requested_where_none_exists():
    with pytest.raises(ClipgenError, match=r"^gpus: a GPU was requested but no CUDA GPU is available"):
        resolve_launch(gpus=1, env=NO_SLURM, cuda_count=0)
    with pytest.raises(ClipgenError, match=r"^device: a GPU was requested"):
        resolve_launch("cuda", env=NO_SLURM, cuda_count=0)


def test_bad_combinations():
    with pytest.raises(ClipgenError, match=r"^gpus: cannot be combined with --device cpu"):
        resolve_launch("cpu", gpus=2, env=NO_SLURM, cuda_count=2)
    with pytest.raises(ClipgenError, match=r"^nproc: 3 differs from --gpus 2"):
        resolve_launch(gpus=2, nproc=3, env=NO_SLURM, cuda_count=2)
    with pytest.raises(ClipgenError, match=r"^launcher: unknown launcher 'mpi'"):
        resolve_launch(launcher="mpi", env=NO_SLURM, cuda_count=0)
    with pytest.raises(ClipgenError, match=r"^device: unknown device 'tpu'"):
        resolve_launch("tpu", env=NO_SLURM, cuda_count=0)
    with pytest.raises(ClipgenError, match=r"^launcher: local runs one process"):
        resolve_launch("cpu", nproc=2, launcher="local", env=NO_SLURM, cuda_count=0)


SRUN_ENV = {"SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "4", "MASTER_ADDR": "node1",
            "MASTER_PORT": "12345"}


def test_srun_task():
    assert slurm_step_tasks(SRUN_ENV) == 4 and slurm_step_tasks({}) == 0
    plan = resolve_launch(gpus=4, env=SRUN_ENV, cuda_count=1)
    assert plan == LaunchPlan("srun", "cuda", 4, rank=2) and not plan.is_rank0
    with pytest.raises(ClipgenError, match=r"^gpus: 2 processes requested but this SLURM step has 4 tasks"):
        resolve_launch(gpus=2, env=SRUN_ENV, cuda_count=1)
    env = {k: v for k, v in SRUN_ENV.items() if k != "MASTER_PORT"}
    with pytest.raises(ClipgenError, match=r"^launcher: srun: MASTER_PORT not set"):
        resolve_launch(env=env, cuda_count=1)
    # a single-task batch step is not an srun launch
    assert resolve_launch(env={"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, cuda_count=1).launcher == "local"
    with pytest.raises(ClipgenError, match="not a SLURM job step"):
        resolve_launch(launcher="srun", env={}, cuda_count=1)


def test_module_commands():
    local = module_command("pkg.mod", ["--logs", "x"], LaunchPlan("local", "cpu", 1), python="py")
    assert local == ["py", "-u", "-m", "pkg.mod", "--logs", "x"]
    tr = module_command("pkg.mod", ["--logs", "x"], LaunchPlan("torchrun", "cuda", 4), python="py")
    assert tr[:4] == ["py", "-u", "-m", "torch.distributed.run"]
    assert "--standalone" in tr and "--nproc-per-node=4" in tr
    # the trainer's arguments come after "--module --", out of torchrun's parser's reach
    i = tr.index("--module")
    assert tr[i + 1:] == ["--", "pkg.mod", "--logs", "x"]
    assert module_command("m", [], LaunchPlan("srun", "cuda", 4, 1), python="py") == ["py", "-u", "-m", "m"]


def test_stream_process_lines_and_exit_code():
    lines = []
    env = child_env({"CLIPGEN_TEST_VAR": "7"})
    assert env["PYTHONUNBUFFERED"] == "1"
    code = "import os, sys; print('a'); print('b', file=sys.stderr); print(os.environ['CLIPGEN_TEST_VAR']); sys.exit(3)"
    rc = stream_process([sys.executable, "-c", code], lines.append, env=env)
    assert rc == 3
    assert sorted(lines) == ["7", "a", "b"]


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_stream_process_forwards_a_signal_this_process_ignored():
    """clipgen started with SIGINT and SIGHUP ignored (a background job of a script, nohup): the child must not
    inherit that, or the forwarded signal would not stop it."""
    code = "print('ready', flush=True)\nimport time\ntime.sleep(60)\n"

    def on_line(line):
        if line == "ready":
            os.kill(os.getpid(), signal.SIGINT)

    before = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGHUP)}
    try:
        t0 = time.monotonic()
        with pytest.raises(Interrupted) as e:
            stream_process([sys.executable, "-c", code], on_line, env=child_env())
        assert time.monotonic() - t0 < 30 and e.value.signum == signal.SIGINT
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # restored
    finally:
        for s, h in before.items():
            signal.signal(s, h)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stream_process_forwards_a_signal_to_the_childs_whole_group(signum):
    """SIGTERM (or Ctrl-C's SIGINT) sent to clipgen reaches the child and its own children (as torchrun's workers):
    all of them stop, the handlers are restored, and Interrupted carries the signal and exit status 128 + signal."""
    code = ("import subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print(p.pid, flush=True)\nprint('ready', flush=True)\ntime.sleep(60)\n")
    lines = []

    def on_line(line):
        lines.append(line)
        if line == "ready":
            os.kill(os.getpid(), signum)  # as `kill -TERM <clipgen>` would

    before = signal.getsignal(signum)
    t0 = time.monotonic()
    with pytest.raises(Interrupted) as e:
        stream_process([sys.executable, "-c", code], on_line, env=child_env())
    assert time.monotonic() - t0 < 30  # not the child's 60 s sleep
    assert e.value.signum == signum and e.value.exit_code == 128 + signum
    assert str(e.value) == f"interrupted by {signal.Signals(signum).name}"
    grandchild = int(lines[0])
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)
    assert signal.getsignal(signum) is before
