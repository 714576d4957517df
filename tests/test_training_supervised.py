import json
import shutil

import pytest
import torch

from clipgen.errors import ClipgenError, ConfigFieldError
from clipgen.models.supervised import create_supervised
from clipgen.runs import list_checkpoints, load_state_dict, read_manifest
from clipgen.training.launch import LaunchPlan
from clipgen.training.supervised import (
    PRESETS,
    SupervisedTrainConfig,
    read_metrics,
    resolve_settings,
    run_train_supervised,
)
from tests._fixtures_train import mixture_file, train_mixtures

FIXTURES = (train_mixtures,)


def test_paper_preset_settings(tmp_path):
    s = resolve_settings(SupervisedTrainConfig(train=tmp_path / "t.tsv", preset="imagenet-captions"), tmp_path,
                         LaunchPlan("torchrun", "cuda", 4))
    # spec 2.2: RN50, SGD Nesterov 0.9, lr 0.01, wd 1e-4, x0.1 at 30/50/70, 90 epochs, global batch 256, 16-mixed
    assert (s.model, s.lr, s.momentum, s.nesterov, s.wd) == ("RN50", 0.01, 0.9, True, 1e-4)
    assert (s.milestones, s.gamma, s.epochs, s.batch_size, s.batch_per_process) == ([30, 50, 70], 0.1, 90, 256, 64)
    assert s.precision == "fp16" and s.save_every == 5 and s.num_classes == 1345
    assert PRESETS["imagenet-captions"].seeds == (0, 1, 2)
    cpu = resolve_settings(SupervisedTrainConfig(train=tmp_path / "t.tsv", preset="imagenet-captions"), tmp_path,
                           LaunchPlan("local", "cpu", 1))
    assert cpu.precision == "fp32" and cpu.batch_per_process == 256
    with pytest.raises(ConfigFieldError, match=r"^batch_size: global batch 256 is not divisible by 3 processes"):
        resolve_settings(SupervisedTrainConfig(train="t", preset="imagenet-captions"), tmp_path,
                         LaunchPlan("torchrun", "cuda", 3))
    with pytest.raises(ConfigFieldError, match=r"^precision: fp16 mixed precision needs a GPU"):
        resolve_settings(SupervisedTrainConfig(train="t", precision="fp16"), tmp_path, LaunchPlan("local", "cpu", 1))
    with pytest.raises(ConfigFieldError, match=r"^milestones: \[5, 3\]: must be increasing"):
        resolve_settings(SupervisedTrainConfig(train="t", milestones=[5, 3]), tmp_path, LaunchPlan("local", "cpu", 1))


def _cfg(mix, logs, name, epochs, **kw):
    return SupervisedTrainConfig(train=mix / mixture_file("cg-low", "sketch", "train"),
                                 val=mix / mixture_file("cg-low", "sketch", "val"), logs=logs, name=name,
                                 epochs=epochs, device="cpu", progress=False, save_every=2, batch_size=16, **kw)


def _accuracy_by_hand(run_dir, epoch, val_tsv):
    """DomainNet-head accuracy of a checkpoint, computed here from scratch."""
    from PIL import Image

    from clipgen.training.labels import label_of_path
    from clipgen.tsv import read_tsv

    m = read_manifest(run_dir)
    model, _, pre = create_supervised(m.model, model_config=m.model_config)
    model.load_state_dict(load_state_dict(run_dir / "checkpoints" / f"epoch_{epoch}.pt"))
    model.eval()
    rows = read_tsv(val_tsv)
    x = torch.stack([pre(Image.open(p).convert("RGB")) for p, _ in rows])
    y = torch.tensor([label_of_path(p) - 1000 for p, _ in rows])
    with torch.no_grad():
        pred = model(x)[:, 1000:].argmax(1)
    return int((pred == y).sum()) / len(rows), len(rows)


@pytest.mark.slow
def test_tiny_supervised_trains_evaluates_and_resumes(train_mixtures, tmp_path):
    logs = tmp_path / "logs"
    res = run_train_supervised(_cfg(train_mixtures, logs, "a", 3))
    run = logs / "a"
    assert res.run_dir == run and sorted(list_checkpoints(run)) == [0, 2, 3]  # step 0, every 2, and the last
    assert (run / "checkpoints" / "latest.pt").is_file()
    m = read_manifest(run)
    assert m.kind == "supervised" and m.model == "RN-tiny" and m.preset == "synthetic"
    assert m.hyperparameters["num_classes"] == 1345 and m.hyperparameters["lr"] == 0.01
    assert m.mixture["setup"] == "cg-low" and m.extra["status"] == "complete"
    ck = torch.load(run / "checkpoints" / "epoch_2.pt", weights_only=False)
    assert ck["epoch"] == 2 and ck["kind"] == "supervised" and "optimizer" not in ck
    e0 = torch.load(run / "checkpoints" / "epoch_0.pt", weights_only=False)
    assert e0["epoch"] == 0 and e0["step"] == 0
    metrics = read_metrics(run)
    assert [r["epoch"] for r in metrics] == [1, 2, 3] and metrics[-1]["step"] == 3 * (metrics[0]["step"])
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    # the loss curves beside the logs: every epoch's training and validation loss
    from clipgen.training.curves import training_loss_figure

    assert (run / "curves" / "training_loss.png").read_bytes()[:4] == b"\x89PNG"
    ax = training_loss_figure({r["epoch"]: r["train_loss"] for r in metrics},
                              {r["epoch"]: r["val_loss"] for r in metrics}).axes[0]
    assert [list(ln.get_xdata()) for ln in ax.get_lines()] == [[1, 2, 3], [1, 2, 3]]
    # evaluation: the trainer's DomainNet-head accuracy equals one computed by hand; every val row counts
    val_tsv = train_mixtures / mixture_file("cg-low", "sketch", "val")
    acc, n = _accuracy_by_hand(run, 3, val_tsv)
    assert metrics[-1]["val_rows"] == n and metrics[-1]["val_acc_domainnet"] == pytest.approx(acc, abs=1e-9)
    acc0, _ = _accuracy_by_hand(run, 0, val_tsv)
    assert acc > acc0 and acc > 1.5 / 8  # well above chance (8 classes in the val set)

    # resume: 2 epochs, then continue to 3 -> the same weights as the uninterrupted run
    run_train_supervised(_cfg(train_mixtures, logs, "b", 2))
    assert sorted(list_checkpoints(logs / "b")) == [0, 2]
    with open(logs / "b" / "metrics.jsonl", "a") as f:  # as if stopped after writing epoch 3's line, before saving
        f.write(json.dumps({"epoch": 3, "train_loss": -1.0}) + "\n")
    r = run_train_supervised(_cfg(train_mixtures, logs, "b", 3))  # the same command continues (no --resume needed)
    assert r.epochs == [0, 2, 3] and [x["epoch"] for x in r.metrics] == [1, 2, 3]
    assert r.metrics[-1]["train_loss"] > 0
    a3 = load_state_dict(run / "checkpoints" / "epoch_3.pt")
    b3 = load_state_dict(logs / "b" / "checkpoints" / "epoch_3.pt")
    assert all(torch.equal(a3[k], b3[k]) for k in a3)
    assert read_manifest(logs / "b").extra["history"][-1]["from_epoch"] == 2
    again = run_train_supervised(_cfg(train_mixtures, logs, "b", 3, resume=True))  # --resume: accepted, changes nothing
    assert again.skipped
    with pytest.raises(ConfigFieldError, match=r"^name: run .*/b was started with other settings \(lr 0\.01 -> 0\.5\); "
                                           r"rerun with its settings to continue it, pass --force to start it over"):
        run_train_supervised(_cfg(train_mixtures, logs, "b", 4, lr=0.5))
    # a corrupt latest.pt is a one-line error on resume
    shutil.copytree(logs / "b", logs / "c")
    (logs / "c" / "checkpoints" / "latest.pt").write_bytes(b"broken")
    with pytest.raises(ClipgenError, match=r"latest\.pt: corrupt or unreadable checkpoint"):
        run_train_supervised(_cfg(train_mixtures, logs, "c", 4, resume=True))
    assert json.loads((run / "train-settings.json").read_text())["batch_per_process"] == 16


def test_unlabeled_row_is_an_error_before_training(train_mixtures, tmp_path):
    from clipgen.tsv import read_tsv, write_tsv

    rows = read_tsv(train_mixtures / mixture_file("natural-only", None, "train"))
    bad = tmp_path / "cc" / "000"
    bad.mkdir(parents=True)
    shutil.copy(rows[0][0], bad / "1.jpg")
    rows.insert(3, (str(bad / "1.jpg"), "a caption from the web"))
    write_tsv(tmp_path / "t.tsv", rows)
    with pytest.raises(ClipgenError, match=r"t\.tsv:5: cannot determine the class of .*/cc/000/1\.jpg"):
        run_train_supervised(SupervisedTrainConfig(train=tmp_path / "t.tsv", logs=tmp_path / "logs", device="cpu"))
    assert not (tmp_path / "logs").exists()


def test_preset_is_chosen_from_the_data(train_mixtures, tmp_path):
    from clipgen.training.supervised import prepare_supervised_run

    train = train_mixtures / mixture_file("cg-low", "sketch", "train")
    prep = prepare_supervised_run(SupervisedTrainConfig(train=train, logs=tmp_path, device="cpu"))
    assert prep.cfg.preset == "synthetic" and prep.settings.model == "RN-tiny"
    assert prep.preset_note.startswith("note: preset synthetic chosen")
    prep = prepare_supervised_run(SupervisedTrainConfig(train=train, logs=tmp_path, device="cpu",
                                                        preset="imagenet-captions", model="RN-tiny", batch_size=8))
    assert prep.preset_note.startswith("warning: preset imagenet-captions does not match")


def test_full_disk_at_a_checkpoint_is_an_os_error_naming_it(train_mixtures, tmp_path):
    """A real full disk while the worker saves a checkpoint: an OSError naming the checkpoint (the CLI's one line),
    and no temporary file left behind (torch alone raises a RuntimeError without the cause)."""
    from clipgen.errors import os_error_message
    from tests.conftest import small_disk

    with small_disk(tmp_path, "1m") as mnt:
        with pytest.raises(OSError) as e:
            run_train_supervised(_cfg(train_mixtures, mnt / "logs", "full", 1))
        msg = os_error_message(e.value)
        assert msg is not None and msg.startswith(f"disk full: no space left on the device while writing "
                                                  f"{mnt}/logs/full/checkpoints/epoch_0.pt"), msg
        assert not [p for p in mnt.rglob("*") if p.name.endswith(".tmp")]
