import json
import shlex

import pytest

from clipgen.errors import ClipgenError
from clipgen.training.grid import TrainGridConfig, load_index, plan_grid, run_grid, run_name, write_grid
from tests._fixtures_train import mixture_file, train_mixtures

FIXTURES = (train_mixtures,)


def _opt(argv, flag):
    return argv[argv.index(flag) + 1]


def test_full_grid(train_mixtures, tmp_path):
    tasks = plan_grid(TrainGridConfig(index=train_mixtures, logs=tmp_path / "logs"))
    # natural-only + 3 setups x 5 test domains, x seeds 0, 1, 2 (the imagenet-captions preset)
    assert len(tasks) == (1 + 3 * 5) * 3 == 48
    assert len({t.name for t in tasks}) == 48 and not any(t.done for t in tasks)
    nat = [t for t in tasks if t.setup == "natural-only"]
    assert [t.seed for t in nat] == [0, 1, 2] and all(t.test_domain is None for t in nat)
    t = next(t for t in tasks if (t.setup, t.test_domain, t.seed) == ("leave-out-domain", "quickdraw", 2))
    assert t.name == "leave-out-domain-quickdraw-s2"
    assert t.train == str((train_mixtures / mixture_file("leave-out-domain", "quickdraw", "train")).absolute())
    assert t.val == str((train_mixtures / mixture_file("leave-out-domain", "quickdraw", "val")).absolute())
    assert t.argv[1:3] == ["train", "clip"] and "--resume" in t.argv
    assert _opt(t.argv, "--seed") == "2" and _opt(t.argv, "--preset") == "imagenet-captions"
    assert _opt(t.argv, "--name") == t.name and _opt(t.argv, "--logs") == str((tmp_path / "logs").resolve())
    assert t.run_dir == str((tmp_path / "logs" / t.name).resolve())


def test_selection_skip_and_overrides(train_mixtures, tmp_path):
    logs = tmp_path / "logs"
    done = logs / run_name("cg-high", "sketch", 0) / "checkpoints"
    done.mkdir(parents=True)
    (done / "epoch_3.pt").write_bytes(b"x")
    cfg = TrainGridConfig(index=train_mixtures / "mixtures.json", logs=logs, preset="synthetic",
                     setups=["cg-high", "cg-low"], test_domains=["s", "clipart"], seeds=[0], epochs=3,
                     model="RN-tiny", gpus=2, no_val=True,
                     name_prefix="x-", train_args=["--workers", "1", "--", "--grad-clip-norm", "1"])
    tasks = plan_grid(cfg)
    assert [t.name for t in tasks] == ["x-cg-low-clipart-s0", "x-cg-low-sketch-s0", "x-cg-high-clipart-s0",
                                       "x-cg-high-sketch-s0"]  # the paper's order, whatever the option order
    assert [t.done for t in tasks] == [False, False, False, False]  # the prefix changes the run names
    cfg.name_prefix = ""
    tasks = plan_grid(cfg)
    assert [t.done for t in tasks] == [False, False, False, True]  # epoch_3.pt of cg-high/sketch exists
    a = tasks[0].argv
    assert "--val" not in a and (_opt(a, "--epochs"), _opt(a, "--model"), _opt(a, "--gpus")) == ("3", "RN-tiny", "2")
    assert a[-5:] == ["--workers", "1", "--", "--grad-clip-norm", "1"]
    cfg.epochs = 4
    assert not any(t.done for t in plan_grid(cfg))  # the last checkpoint is epoch_4 now


def test_index_errors(train_mixtures, tmp_path):
    with pytest.raises(ClipgenError, match=r"^index: .*mixtures\.json not found"):
        plan_grid(TrainGridConfig(index=tmp_path))
    with pytest.raises(ClipgenError, match=r"^setups: unknown setup 'cg-mid'"):
        plan_grid(TrainGridConfig(index=train_mixtures, setups=["cg-mid"]))
    with pytest.raises(ClipgenError, match=r"^test_domains: 'real' is not a test domain"):
        plan_grid(TrainGridConfig(index=train_mixtures, test_domains=["real"]))
    # an index without one of the mixtures, and one with two candidates for the same slot
    folder, entries = load_index(train_mixtures)
    raw = json.loads((train_mixtures / "mixtures.json").read_text())
    d = tmp_path / "idx"
    d.mkdir()
    for f in folder.glob("*.tsv"):
        (d / f.name).symlink_to(f)
    part = {k: v for k, v in raw["mixtures"].items() if not (v["setup"] == "cg-low" and v["test_domain"] == "painting")}
    (d / "mixtures.json").write_text(json.dumps({**raw, "mixtures": part}))
    with pytest.raises(ClipgenError, match=r"mixtures\.json: no cg-low / painting \(train\) mixture in the index"):
        plan_grid(TrainGridConfig(index=d))
    assert len(plan_grid(TrainGridConfig(index=d, test_domains=["sketch"], seeds=[0]))) == 4
    dup = dict(raw["mixtures"])
    src = mixture_file("cg-low", "sketch", "train")
    dup["copy.tsv"] = {**dup[src], "file": "copy.tsv"}
    (d / "copy.tsv").symlink_to(folder / src)
    (d / "mixtures.json").write_text(json.dumps({**raw, "mixtures": dup}))
    with pytest.raises(ClipgenError, match=r"2 cg-low / sketch \(train\) mixtures \(copy\.tsv, synth-train"):
        plan_grid(TrainGridConfig(index=d))
    (d / "mixtures.json").write_text("{}")
    with pytest.raises(ClipgenError, match="not a clipgen mixture index"):
        plan_grid(TrainGridConfig(index=d))
    # an upper-bound grid needs pseudo mixtures, which this index does not have
    with pytest.raises(ClipgenError, match=r"no cg-low / clipart \(train\)"):
        plan_grid(TrainGridConfig(index=train_mixtures, pseudo=True, setups=["cg-low"]))


def test_write_array_job(train_mixtures, tmp_path):
    from clipgen.slurm import SlurmConfig

    tasks = plan_grid(TrainGridConfig(index=train_mixtures, logs=tmp_path / "logs", seeds=[0], gpus=4))
    tasks[0].done = True
    script = write_grid(tasks, tmp_path / "out", "job", SlurmConfig(job_name="job", gpus_per_node=4,
                                                                    ntasks_per_node=4, use_srun=True))
    text = script.read_text()
    assert "#SBATCH --array=0-14" in text and "#SBATCH --gres=gpu:4" in text and "#SBATCH --ntasks-per-node=4" in text
    assert "srun" in text and "MASTER_ADDR" in text and "MASTER_PORT" in text
    lines = (tmp_path / "out" / "job.tasks").read_text().splitlines()
    assert [shlex.split(x) for x in lines] == [t.argv for t in tasks[1:]]
    plan = json.loads((tmp_path / "out" / "job.grid.json").read_text())
    assert len(plan["tasks"]) == 16 and plan["array"] == [t.name for t in tasks[1:]]
    for t in tasks:
        t.done = True
    with pytest.raises(ClipgenError, match="every run of the grid is complete"):
        write_grid(tasks, tmp_path / "out2", "job", SlurmConfig())


def test_run_grid_modes(train_mixtures, tmp_path):
    """The mode dispatch of 'clipgen train grid' is the library's: dry-run writes nothing, write (the default)
    writes the array job with the preset's reference GPUs per task, and on_plan sees the grid before any run."""
    logs = tmp_path / "logs"
    dry = run_grid(TrainGridConfig(index=train_mixtures, logs=logs, seeds=[0], mode="dry-run"))
    assert dry.script is None and dry.job_id is None and not logs.exists()
    assert dry.summary == "16 runs, 0 complete, 16 to train" and len(dry.pending) == 16
    assert all(_opt(t.argv, "--gpus") == "4" and _opt(t.argv, "--log") == "live" for t in dry.tasks)
    seen = []
    res = run_grid(TrainGridConfig(index=train_mixtures, logs=logs, seeds=[0]), on_plan=lambda g: seen.append(g.script))
    assert res.script == logs / "grid" / "clipgen-train.sbatch" and seen == [res.script] and res.job_id is None
    assert "#SBATCH --gres=gpu:4" in res.script.read_text() and "srun" in res.script.read_text()
    with pytest.raises(ClipgenError, match="unknown mode 'later'"):
        run_grid(TrainGridConfig(index=train_mixtures, mode="later"))


def test_base_selection(train_mixtures, tmp_path):
    """Like 'clipgen data mixtures', the index also lists DomainNet-only TSVs (no base) and may list merged CC ones."""
    raw = json.loads((train_mixtures / "mixtures.json").read_text())
    d = tmp_path / "idx"
    d.mkdir()
    mixtures = dict(raw["mixtures"])
    for name, e in raw["mixtures"].items():
        (d / name).symlink_to(train_mixtures / name)
        for tag, base in (("dn", None), ("cc12m", "/data/cc12m-train.tsv")):
            (d / f"{tag}-{name}").symlink_to(train_mixtures / name)
            mixtures[f"{tag}-{name}"] = {**e, "file": f"{tag}-{name}", "base": base}
    (d / "mixtures.json").write_text(json.dumps({**raw, "mixtures": mixtures}))
    with pytest.raises(ClipgenError, match=r"2 natural-only \(train\) mixtures .*choose one with --base "
                                           r"\(base_train\.tsv, cc12m-train\.tsv\)"):
        plan_grid(TrainGridConfig(index=d, seeds=[0]))
    files = {b: {str(t.train).rsplit("/", 1)[1] for t in plan_grid(TrainGridConfig(index=d, seeds=[0], base=b))}
             for b in ("none", "cc12m", "base_train")}
    assert all(f.startswith("dn-") for f in files["none"]) and len(files["none"]) == 16
    assert all(f.startswith("cc12m-") for f in files["cc12m"])
    assert all(f.startswith("synth-") for f in files["base_train"])
    del mixtures[mixture_file("natural-only", None, "train")]
    for k in [k for k in mixtures if k.startswith("cc12m-")]:
        del mixtures[k]
    (d / "mixtures.json").write_text(json.dumps({**raw, "mixtures": mixtures}))
    # without a base-dataset candidate for natural-only, the DomainNet-only one is used ...
    nat = plan_grid(TrainGridConfig(index=d, seeds=[0], setups=["natural-only"]))
    assert nat[0].train.endswith("dn-" + mixture_file("natural-only", None, "train"))
    # ... and the others keep the mixtures that have a base
    assert plan_grid(TrainGridConfig(index=d, seeds=[0], setups=["cg-low"]))[0].train.endswith(
        "/" + mixture_file("cg-low", "clipart", "train"))
