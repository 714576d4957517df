import json
import math
import shutil

import pytest
import torch

from clipgen.artifacts import sha256_file
from clipgen.data.mixture_info import read_info
from clipgen.errors import ClipgenError, ConfigFieldError
from clipgen.models.registry import model_config
from clipgen.runs import list_checkpoints, load_clip, load_state_dict, read_manifest
from clipgen.training.clip import (
    ClipTrainConfig,
    describe_checkpoints,
    prepare_clip_run,
)
from tests._fixtures_train import (
    TRAINED_RUN_EPOCHS,
    TRAINED_RUN_MIXTURE,
    mixture_file,
    train_mixtures,
    train_tiny_run,
    trained_run_dir,
)

FIXTURES = (train_mixtures, trained_run_dir)


def test_prepare_errors(train_mixtures, tmp_path):
    train = train_mixtures / mixture_file("cg-low", "sketch", "train")
    base = dict(train=train, logs=tmp_path, device="cpu")
    with pytest.raises(ClipgenError, match=r"^model: unknown model 'RN51'"):
        prepare_clip_run(ClipTrainConfig(**base, model="RN51"))
    with pytest.raises(ConfigFieldError, match=r"^name: '\.\./x' is not a usable run name"):
        prepare_clip_run(ClipTrainConfig(**base, name="../x"))
    with pytest.raises(ClipgenError, match=r"fewer than one optimizer step \(effective batch 4096\)"):
        prepare_clip_run(ClipTrainConfig(**base, batch_size=4096))
    with pytest.raises(ClipgenError, match=r"^--seed: is set by clipgen"):
        prepare_clip_run(ClipTrainConfig(**base, name="ok", extra_args=["--seed", "3"]))
    prep = prepare_clip_run(ClipTrainConfig(**base, name="ok", extra_args=["--grad-clip-norm", "2"]))
    assert prep.command[-2:] == ["--grad-clip-norm", "2"] and prep.command[3] == "clipgen.training.open_clip_entry"
    assert prep.mixture["setup"] == "cg-low" and prep.mixture["test_domain"] == "sketch"
    assert not (tmp_path / "ok").exists()  # preparing writes nothing


@pytest.mark.slow
def test_trained_run_manifest_and_files(trained_run_dir, train_mixtures):
    m = read_manifest(trained_run_dir)
    train = train_mixtures / mixture_file("cg-low", "sketch", "train")
    val = train_mixtures / mixture_file("cg-low", "sketch", "val")
    assert m.kind == "clip" and m.model == "RN-tiny" and m.model_config == model_config("RN-tiny")
    assert m.preset == "synthetic" and m.seed == 0
    assert m.data["train"] == {"path": str(train.resolve()), "sha256": sha256_file(train),
                               "rows": len(train.read_text().splitlines()) - 1}
    assert m.data["val"]["sha256"] == sha256_file(val)
    info = read_info(train)
    assert m.mixture["file"] == info.file and m.mixture["setup"] == "cg-low" and m.mixture["test_domain"] == "sketch"
    hp = m.hyperparameters
    assert (hp["epochs"], hp["precision"], hp["device"], hp["world_size"]) == (TRAINED_RUN_EPOCHS, "fp32", "cpu", 1)
    assert m.extra["status"] == "complete" and m.extra["epochs_saved"] == [0, 1, 2]
    assert m.command and m.clipgen_version
    assert sorted(list_checkpoints(trained_run_dir)) == [0, 1, 2]
    assert (trained_run_dir / "params.txt").is_file() and (trained_run_dir / "out.log").is_file()
    assert "model: RN-tiny" in (trained_run_dir / "params.txt").read_text()
    cfg = json.loads((trained_run_dir / "config.json").read_text())
    assert cfg["command"] == "train clip" and cfg["config"]["preset"] == "synthetic"
    for e in (0, 1, 2):
        ck = torch.load(trained_run_dir / "checkpoints" / f"epoch_{e}.pt", weights_only=False)
        assert ck["epoch"] == e and isinstance(ck["state_dict"], dict)
        assert ("optimizer" in ck) == (e > 0)
    assert len((trained_run_dir / "checkpoints" / "results.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_trained_run_loads_and_learned(trained_run_dir, train_mixtures):
    from clipgen.tsv import read_tsv

    m = read_manifest(trained_run_dir)
    loss = {int(k): v for k, v in m.extra["train_loss"].items()}
    assert set(loss) == {1, 2} and loss[2] < loss[1]  # the trainer's own per-epoch loss went down
    # independently: the contrastive loss of a fixed training batch, by hand, epoch 0 vs the last epoch (with batch
    # statistics in the norm layers, as in training: 8 steps are too few for BatchNorm's running averages)
    rows = read_tsv(train_mixtures / mixture_file("cg-low", "sketch", "train"))[::4][:32]
    by_epoch = {}
    for e in (0, TRAINED_RUN_EPOCHS):
        lm = load_clip(trained_run_dir, e)
        assert lm.epoch == e and lm.model_name == "RN-tiny"
        from PIL import Image

        imgs = torch.stack([lm.preprocess(Image.open(p).convert("RGB")) for p, _ in rows])
        lm.model.train()
        with torch.no_grad():
            f_i = torch.nn.functional.normalize(lm.model.encode_image(imgs), dim=-1)
            f_t = torch.nn.functional.normalize(lm.model.encode_text(lm.tokenizer([t for _, t in rows])), dim=-1)
            logits = lm.model.logit_scale.exp() * f_i @ f_t.T
        target = torch.arange(len(rows))
        by_epoch[e] = float((torch.nn.functional.cross_entropy(logits, target)
                             + torch.nn.functional.cross_entropy(logits.T, target)) / 2)
    assert math.isfinite(by_epoch[0]) and by_epoch[TRAINED_RUN_EPOCHS] < by_epoch[0] - 0.5
    # the state dict of epoch 0 is the untrained model, and every checkpoint fits the architecture
    assert not torch.equal(load_state_dict(trained_run_dir / "checkpoints" / "epoch_0.pt")["visual.conv1.weight"],
                           load_state_dict(trained_run_dir / "checkpoints" / "epoch_2.pt")["visual.conv1.weight"])


def _assert_same_training_state(a, b):
    """Bit-identical weights, BatchNorm statistics and optimizer state of two open_clip checkpoints."""
    ca, cb = (torch.load(p, map_location="cpu", weights_only=False) for p in (a, b))
    assert ca["epoch"] == cb["epoch"] and list(ca["state_dict"]) == list(cb["state_dict"])
    diff = {k: float((v.double() - cb["state_dict"][k].double()).abs().max()) for k, v in ca["state_dict"].items()
            if not torch.equal(v, cb["state_dict"][k])}
    assert not diff, f"{len(diff)} tensors differ, e.g. {sorted(diff.items(), key=lambda x: -x[1])[:3]}"
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])


@pytest.mark.slow
def test_resume_continues_from_the_right_epoch(trained_run_dir, tmp_path, train_mixtures):
    """Stopped during the last epoch, the same command continues from epoch 1 and ends with exactly the weights of
    the uninterrupted run (random states of the data order and augmentations restored with the checkpoint)."""
    logs = tmp_path / "logs"
    run = logs / "run"
    shutil.copytree(trained_run_dir, run)
    e0 = (run / "checkpoints" / "epoch_0.pt").read_bytes()
    e1 = (run / "checkpoints" / "epoch_1.pt").read_bytes()
    (run / "checkpoints" / "epoch_2.pt").unlink()  # as if stopped during epoch 2
    train_tiny_run(train_mixtures, logs, "run", TRAINED_RUN_EPOCHS)  # the same command continues it
    _assert_same_training_state(run / "checkpoints" / "epoch_2.pt", trained_run_dir / "checkpoints" / "epoch_2.pt")
    assert sorted(list_checkpoints(run)) == [0, 1, 2]
    assert (run / "checkpoints" / "epoch_0.pt").read_bytes() == e0  # untouched
    assert (run / "checkpoints" / "epoch_1.pt").read_bytes() == e1
    ck2 = torch.load(run / "checkpoints" / "epoch_2.pt", weights_only=False)
    assert ck2["epoch"] == 2
    log = (run / "out.log").read_text()
    assert "resuming checkpoint" in log and "(epoch 1)" in log
    assert log.count("Start epoch 1") == 2 and log.count("Start epoch 0") == 1  # epoch 0 not trained again
    m = read_manifest(run)
    assert m.extra["history"][-1]["from_epoch"] == 1 and m.extra["status"] == "complete"
    assert set(m.extra["train_loss"]) == {"1", "2"}
    assert load_clip(run).epoch == 2
    # a complete run is left alone (--resume is accepted and changes nothing)
    train_tiny_run(train_mixtures, logs, "run", TRAINED_RUN_EPOCHS)
    train_tiny_run(train_mixtures, logs, "run", TRAINED_RUN_EPOCHS, "--resume")
    assert (run / "out.log").read_text() == log


@pytest.mark.slow
def test_resume_sets_a_truncated_last_checkpoint_aside(trained_run_dir, tmp_path, train_mixtures, cli):
    """A kill during the save of epoch 2 left a truncated epoch_2.pt under its final name: the same command notes it,
    sets it aside and continues from epoch 1, ending with exactly the uninterrupted run's epoch 2."""
    logs = tmp_path / "logs"
    run = logs / "run"
    shutil.copytree(trained_run_dir, run)
    ck2 = run / "checkpoints" / "epoch_2.pt"
    data = ck2.read_bytes()
    ck2.write_bytes(data[: len(data) // 9])
    (run / "checkpoints" / ".epoch_2.pt.x1y2.tmp").write_bytes(data[:100])  # a temporary save cut off by a kill
    prep = prepare_clip_run(ClipTrainConfig(train=train_mixtures / mixture_file("cg-low", "sketch", "train"),
                                            logs=logs, name="run", model="RN-tiny", epochs=TRAINED_RUN_EPOCHS,
                                            device="cpu", precision="fp32", resume=True))
    assert (prep.start_epoch, prep.complete, prep.discard) == (1, False, [ck2])
    setup, x = TRAINED_RUN_MIXTURE
    r = cli("train", "clip", "--train", train_mixtures / mixture_file(setup, x, "train"), "--val",
            train_mixtures / mixture_file(setup, x, "val"), "--logs", logs, "--name", "run", "--model", "RN-tiny",
            "--epochs", TRAINED_RUN_EPOCHS, "--device", "cpu", "--precision", "fp32", "--log", "quiet")
    assert r.exit_code == 0, r.stderr
    assert f"note: {ck2} is unreadable" in " ".join(r.stderr.split()) and "resuming from epoch 1" in r.stderr
    assert (run / "checkpoints" / "epoch_2.pt.unreadable").stat().st_size == len(data) // 9
    assert not list((run / "checkpoints").glob(".*.tmp"))
    assert sorted(list_checkpoints(run)) == [0, 1, 2]
    _assert_same_training_state(ck2, trained_run_dir / "checkpoints" / "epoch_2.pt")
    assert read_manifest(run).extra["history"][-1]["from_epoch"] == 1


@pytest.mark.slow
def test_a_complete_run_with_a_stale_manifest_is_finalised(trained_run_dir, tmp_path, train_mixtures, cli):
    """clipgen stopped while the trainer finished (status still 'running', no losses): the same command finds every
    epoch, marks the run complete and reads the losses back from out.log."""
    from clipgen.runs import write_manifest

    logs = tmp_path / "logs"
    run = logs / "run"
    shutil.copytree(trained_run_dir, run)
    m = read_manifest(run)
    want = (m.extra.pop("train_loss"), m.extra.pop("val_loss"))
    m.extra["status"] = "running"
    write_manifest(run, m)
    train_tiny_run(train_mixtures, logs, "run", TRAINED_RUN_EPOCHS)
    m = read_manifest(run)
    assert m.extra["status"] == "complete" and m.extra["epochs_saved"] == [0, 1, 2]
    assert (m.extra["train_loss"], m.extra["val_loss"]) == want and set(want[0]) == {"1", "2"}


@pytest.mark.slow
def test_sigterm_stops_the_trainer_and_the_same_command_continues(train_mixtures, tmp_path):
    """`kill -TERM` of clipgen reaches the trainer (no process of the run is left), the manifest records the
    interruption, the exit status is 143 with one line; the same command then finishes the run."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from clipgen.training.launch import child_env

    logs = tmp_path / "logs"
    setup, x = TRAINED_RUN_MIXTURE
    cmd = [sys.executable, "-m", "clipgen.cli.main", "train", "clip",
           "--train", str(train_mixtures / mixture_file(setup, x, "train")),
           "--val", str(train_mixtures / mixture_file(setup, x, "val")), "--logs", str(logs), "--name", "run",
           "--model", "RN-tiny", "--epochs", "2", "--device", "cpu", "--precision", "fp32", "--log", "quiet"]
    proc = subprocess.Popen(cmd, env=child_env({"OMP_NUM_THREADS": "1"}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out_log = logs / "run" / "out.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out_log.is_file() and "Start epoch 0" in out_log.read_text():
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert err.count("\n") == 1 and err.startswith(f"error: training of {logs / 'run'} interrupted by SIGTERM")
    assert err.rstrip().endswith("rerun the same command to continue it")
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if str(logs).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                left.append(pid)
        except OSError:
            pass
    assert not left  # the trainer stopped with clipgen
    m = read_manifest(logs / "run")
    assert m.extra["status"] == "interrupted" and m.extra["signal"] == "SIGTERM"
    train_tiny_run(train_mixtures, logs, "run", 2)
    m = read_manifest(logs / "run")
    assert m.extra["status"] == "complete" and sorted(list_checkpoints(logs / "run")) == [0, 1, 2]


@pytest.mark.slow
def test_describe_checkpoints(trained_run_dir):
    from clipgen.training.clip import ClipRunResult

    r = ClipRunResult(trained_run_dir, trained_run_dir / "checkpoints", [0, 1, 2], {}, {})
    assert describe_checkpoints(r) == f"checkpoints: {trained_run_dir / 'checkpoints'} (epoch_0..epoch_2.pt)"


def test_resume_of_a_run_stopped_in_its_first_epoch(train_mixtures, tmp_path):
    """Only epoch_0.pt and out.log exist: resuming asks open_clip_train for 'latest' (which then starts afresh,
    as the entry module's pick ignores epoch 0), never a fresh start that open_clip_train would refuse."""
    train = train_mixtures / mixture_file("cg-low", "sketch", "train")
    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "epoch_0.pt").write_bytes(b"x")
    (run / "out.log").write_text("started\n")
    for resume in (False, True):  # the same command resumes; --resume changes nothing
        prep = prepare_clip_run(ClipTrainConfig(train=train, logs=tmp_path, name="r", device="cpu", resume=resume))
        assert prep.start_epoch == 0 and not prep.complete and prep.resuming
        assert prep.argv[prep.argv.index("--resume") + 1] == "latest"
    cfg = ClipTrainConfig(train=train, logs=tmp_path, name="r", device="cpu", force=True)
    assert "--resume" not in prepare_clip_run(cfg).argv


def test_threads_reach_the_training_process(train_mixtures, tmp_path, monkeypatch):
    """--threads sets OMP_NUM_THREADS of the trainer process only (the launcher is stubbed out here)."""
    import clipgen.training.launch as launch
    from clipgen.training.clip import TrainingFailed, run_train_clip

    seen = []

    def fake_stream(cmd, on_line, env=None, cwd=None):
        seen.append(dict(env))
        return 3

    monkeypatch.setattr(launch, "stream_process", fake_stream)
    train = train_mixtures / mixture_file("cg-low", "sketch", "train")
    for threads, want in ((2, "2"), (None, None)):
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        with pytest.raises(TrainingFailed, match="exit code 3"):
            run_train_clip(ClipTrainConfig(train=train, logs=tmp_path, name=f"t{threads}", device="cpu",
                                           threads=threads, log="quiet"))
        assert seen[-1].get("OMP_NUM_THREADS") == want


def test_preset_is_chosen_from_the_data_and_a_mismatch_is_warned(train_mixtures, tmp_path):
    from types import SimpleNamespace

    from clipgen.training.clip_settings import choose_preset

    train = train_mixtures / mixture_file("cg-low", "sketch", "train")
    # no --preset: the small synthetic mixture gets the synthetic preset, with a note saying why
    prep = prepare_clip_run(ClipTrainConfig(train=train, logs=tmp_path, device="cpu"))
    assert prep.cfg.preset == "synthetic" and prep.hyper.model == "RN-tiny"
    assert prep.preset_note.startswith("note: preset synthetic chosen")
    # a preset for a million rows on a few hundred: kept, with a warning
    prep = prepare_clip_run(ClipTrainConfig(train=train, logs=tmp_path, device="cpu", preset="imagenet-captions",
                                            model="RN-tiny", batch_size=8, effective_batch=8))
    assert prep.cfg.preset == "imagenet-captions"
    assert prep.preset_note.startswith("warning: preset imagenet-captions does not match")
    assert "preset synthetic fits it" in prep.preset_note
    assert prepare_clip_run(ClipTrainConfig(train=train, logs=tmp_path, device="cpu",
                                            preset="synthetic")).preset_note is None
    # large data: ImageNet-Captions, or ccxm on a CC12M base; the synthetic preset there is warned about
    ic = SimpleNamespace(base="/data/in-captions-train.tsv")
    cc = SimpleNamespace(base="/data/cc12m-train.tsv")
    assert choose_preset(None, "t.tsv", 450_000, ic)[0] == "imagenet-captions"
    assert choose_preset(None, "t.tsv", 450_000, None)[0] == "imagenet-captions"
    assert choose_preset(None, "t.tsv", 10_000_000, cc)[0] == "ccxm"
    name, msg = choose_preset("synthetic", "t.tsv", 450_000, ic)
    assert name == "synthetic" and msg.startswith("warning: preset synthetic does not match t.tsv")
    # supervised training has no ccxm preset: imagenet-captions
    from clipgen.training.supervised import PRESETS as SUP

    assert choose_preset(None, "t.tsv", 10_000_000, cc, SUP)[0] == "imagenet-captions"


@pytest.mark.slow
def test_more_epochs_extend_a_complete_run(trained_run_dir, tmp_path, train_mixtures):
    """--epochs 3 on a complete 2-epoch run trains epoch 3 from epoch_2.pt on the cosine schedule of 3 epochs; fewer
    epochs, or more epochs with another setting, stay refused."""
    logs = tmp_path / "logs"
    run = logs / "run"
    shutil.copytree(trained_run_dir, run)
    before = {e: (run / "checkpoints" / f"epoch_{e}.pt").read_bytes() for e in (0, 1, 2)}
    with pytest.raises(RuntimeError, match=r"other settings \(epochs 2 -> 1\)"):
        train_tiny_run(train_mixtures, logs, "run", 1)
    with pytest.raises(RuntimeError, match=r"other settings \(lr 0.001 -> 0.002\)"):
        train_tiny_run(train_mixtures, logs, "run", 3, "--lr", "0.002")
    train_tiny_run(train_mixtures, logs, "run", 3)
    assert sorted(list_checkpoints(run)) == [0, 1, 2, 3]
    assert all((run / "checkpoints" / f"epoch_{e}.pt").read_bytes() == b for e, b in before.items())
    m = read_manifest(run)
    assert m.hyperparameters["epochs"] == 3 and m.extra["status"] == "complete"
    assert m.extra["history"][-1]["extended_from_epochs"] == 2 and m.extra["history"][-1]["extended_to_epochs"] == 3
    assert m.extra["history"][-1]["from_epoch"] == 2 and set(m.extra["train_loss"]) == {"1", "2", "3"}
    # the resumed steps follow open_clip_train's cosine over the new total: lr at the first step of epoch 3
    import re

    log = (run / "out.log").read_text()
    assert "(epoch 2)" in log
    rows = m.data["train"]["rows"]
    spe = rows // m.hyperparameters["batch_size"]
    warmup, lr = m.hyperparameters["warmup"], m.hyperparameters["lr"]
    logged = [float(x) for x in re.findall(r"Train Epoch: 2 \[.*? LR: (\S+)", log)]
    assert len(logged) == spe  # logged every step

    def cosine(step, total):  # open_clip_train's cosine_lr
        if step < warmup:
            return lr * (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) * lr

    assert 3 * spe > warmup  # the last step of epoch 3 is past the warm-up
    assert logged == pytest.approx([cosine(2 * spe + i, 3 * spe) for i in range(spe)], abs=1e-6)
    assert (run / "curves" / "training_loss.png").is_file()
    # the extended run is complete: the same command has nothing to do
    train_tiny_run(train_mixtures, logs, "run", 3)
    assert (run / "out.log").read_text() == log


def test_force_names_the_evaluation_results_it_deletes(tmp_path):
    from clipgen.training.clip import force_note

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    assert force_note(run) is None
    for kind, td in (("zero-shot", "sketch"), ("supervised", "clipart")):
        (run / "eval" / kind / td).mkdir(parents=True)
        (run / "eval" / kind / td / "results.json").write_text("{}")
    assert force_note(run) == (f"note: --force deletes {run} with its evaluation results: eval/supervised/clipart, "
                               f"eval/zero-shot/sketch")
