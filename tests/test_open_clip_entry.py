import types

import pytest
import torch

from clipgen.training import open_clip_entry as entry
from tests._fixtures_train import train_mixtures, train_tiny_run

FIXTURES = (train_mixtures,)


def test_latest_resumable_skips_epoch_0(tmp_path):
    d = tmp_path / "checkpoints"
    assert entry.latest_resumable(d) is None
    d.mkdir()
    (d / "epoch_0.pt").write_bytes(b"x")
    assert entry.latest_resumable(d) is None  # epoch 0 has no optimizer state: start fresh
    for n in ("epoch_2.pt", "epoch_10.pt", "epoch_9.pt", "results.jsonl", "epoch_latest.pt", ".epoch_11.pt.tmp"):
        (d / n).write_bytes(b"x")
    assert entry.latest_resumable(d) == str(d / "epoch_10.pt")  # numeric, not lexical, order


def test_save_initial_once(tmp_path):
    m = torch.nn.Linear(3, 2)
    p = tmp_path / "ck" / "epoch_0.pt"
    assert entry.save_initial(m, p, "run")
    ck = torch.load(p, weights_only=False)
    assert ck["epoch"] == 0 and ck["name"] == "run"
    assert torch.equal(ck["state_dict"]["weight"], m.weight.detach())
    with torch.no_grad():
        m.weight.add_(1.0)
    assert not entry.save_initial(m, p, "run")  # never overwritten (resume)
    assert not torch.equal(torch.load(p, weights_only=False)["state_dict"]["weight"], m.weight.detach())
    assert not list(p.parent.glob(".*tmp"))


def test_hooks_save_exactly_the_created_model(tmp_path, monkeypatch):
    # keep the DDP patch local to this test
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", torch.nn.parallel.DistributedDataParallel)
    created = []

    def create(*args, **kwargs):
        torch.manual_seed(len(created))
        m = torch.nn.Linear(4, 4)
        created.append(m)
        return m, None, None

    fake = types.SimpleNamespace(create_model_and_transforms=create,
                                 get_latest_checkpoint=lambda path, remote: "remote:" + path,
                                 pt_load=lambda path, map_location=None: torch.load(path, weights_only=True),
                                 train_one_epoch=lambda *a, **k: None, torch=torch)
    ck_dir = tmp_path / "logs" / "r" / "checkpoints"
    entry._install_hooks(fake, ck_dir, "r")
    model, _, _ = fake.create_model_and_transforms("RN-tiny")
    fake.create_model_and_transforms("teacher")  # a second model (distillation) is not saved
    saved = torch.load(ck_dir / "epoch_0.pt", weights_only=False)["state_dict"]
    assert torch.equal(saved["weight"], model.weight) and torch.equal(saved["bias"], model.bias)
    assert not torch.equal(saved["weight"], created[1].weight)
    assert fake.get_latest_checkpoint(str(ck_dir), False) is None
    assert fake.get_latest_checkpoint("s3://b/x", True) == "remote:s3://b/x"
    # CPU modules are wrapped without device_ids (open_clip_train passes [cpu], which DDP rejects)
    ddp = torch.nn.parallel.DistributedDataParallel
    assert ddp._clipgen_cpu_friendly


def test_checkpoint_save_is_atomic(tmp_path):
    """The trainer's torch.save writes a temporary file and renames it: a save cut off midway (here: an error after
    part of the file was written, as a kill would leave it) never leaves a file under the checkpoint's name."""
    written = []

    def partial_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"\x00" * 1024)
        written.append(f)
        raise OSError("killed")

    dest = tmp_path / "epoch_3.pt"
    with pytest.raises(OSError, match="killed"):
        entry._AtomicSaveTorch(types.SimpleNamespace(save=partial_save), lambda: None).save({"x": 1}, str(dest))
    assert written and str(written[0]) != str(dest) and written[0].parent == tmp_path
    assert list(tmp_path.iterdir()) == []  # neither the checkpoint nor the temporary file
    proxy = entry._AtomicSaveTorch(torch, lambda: None)
    assert proxy.nn is torch.nn  # everything else is torch itself
    proxy.save({"epoch": 3, "optimizer": {}, "state_dict": {"w": torch.ones(2)}}, str(dest))
    ck = torch.load(dest, weights_only=True)  # what open_clip_train's loader uses: the random states must pass it
    assert ck["epoch"] == 3 and torch.equal(ck["state_dict"]["w"], torch.ones(2)) and "torch" in ck["rng_state"]
    proxy.save({"w": torch.zeros(1)}, str(tmp_path / "other.pt"))  # not a training checkpoint: no random states
    assert set(torch.load(tmp_path / "other.pt", weights_only=True)) == {"w"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_3.pt", "other.pt"]


def test_random_states_round_trip():
    import random

    import numpy as np

    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    state = entry.capture_rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random(), torch.randperm(10))
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    entry.restore_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random(), torch.randperm(10))
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
    assert torch.equal(first[3], again[3])


def test_main_requires_name(tmp_path, capsys):
    assert entry.main(["--train-data", str(tmp_path / "x.tsv"), "--logs", str(tmp_path)]) == 2
    assert "--name is required" in capsys.readouterr().err


@pytest.mark.slow
def test_two_cpu_processes_and_epoch0_is_the_initial_model(train_mixtures, tmp_path):
    """torchrun with 2 CPU processes (gloo) through the real command; with lr 0 every parameter after one epoch
    must still equal epoch 0's, which proves epoch_0.pt holds exactly the weights the trainer started from."""
    from clipgen.runs import list_checkpoints, load_clip, load_state_dict, read_manifest

    logs = tmp_path / "logs"
    run = train_tiny_run(train_mixtures, logs, "ddp", 1, "--nproc", "2", "--lr", "0", "--batch-size", "16")
    m = read_manifest(run)
    assert m.hyperparameters["launcher"] == "torchrun" and m.hyperparameters["world_size"] == 2
    assert m.hyperparameters["effective_batch"] == 32 and m.hyperparameters["lr"] == 0.0
    assert sorted(list_checkpoints(run)) == [0, 1]
    raw = torch.load(run / "checkpoints" / "epoch_1.pt", weights_only=False)["state_dict"]
    assert all(k.startswith("module.") for k in raw)  # saved from the DDP-wrapped model
    ranks = torch.load(run / "checkpoints" / "epoch_1.pt", weights_only=True)["rng_state_ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])  # one state per process
    e0, e1 = (load_state_dict(run / "checkpoints" / f"epoch_{e}.pt") for e in (0, 1))
    assert set(e0) == set(e1)
    model = load_clip(run, 1).model
    params = {n for n, _ in model.named_parameters()}
    assert params and all(torch.equal(e0[n], e1[n]) for n in params)
    # buffers (BatchNorm statistics) did move: the epoch really ran on both processes
    assert any(not torch.equal(e0[n], e1[n]) for n in e0 if n.endswith("running_mean"))
    assert "Running in distributed mode" in (run / "out.log").read_text()


def test_the_trainers_model_creation_logs_no_pretrained_weights_notice(tmp_path, monkeypatch, caplog):
    """open_clip warns "No pretrained weights loaded" for every model clipgen trains (it never loads any): the
    trainer's log (and so the progress-bar console) does not show it; other warnings still pass."""
    import logging

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", torch.nn.parallel.DistributedDataParallel)

    def create(*args, **kwargs):
        logging.warning("No pretrained weights loaded for model 'RN-tiny'. Model initialized randomly.")
        logging.warning("something else")
        return torch.nn.Linear(2, 2), None, None

    fake = types.SimpleNamespace(create_model_and_transforms=create, get_latest_checkpoint=lambda p, r: None,
                                 pt_load=lambda *a, **k: None, train_one_epoch=lambda *a, **k: None, torch=torch)
    entry._install_hooks(fake, tmp_path / "checkpoints", "r")
    with caplog.at_level(logging.WARNING):
        fake.create_model_and_transforms("RN-tiny")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["something else"]
