import json

import pytest
import torch

from clipgen.errors import ClipgenError
from clipgen.models.registry import create_model, model_config
from clipgen.runs import (
    RunManifest,
    list_checkpoints,
    load_clip,
    load_state_dict,
    parse_epochs,
    read_manifest,
    resolve_checkpoint,
    write_manifest,
)


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    (d / "checkpoints").mkdir(parents=True)
    model, _, _ = create_model("RN-tiny")
    for e in (0, 1, 2):
        torch.save({"epoch": e, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
                   d / "checkpoints" / f"epoch_{e}.pt")
    write_manifest(d, RunManifest(kind="clip", name="run", model="RN-tiny", model_config=model_config("RN-tiny")))
    return d, model


def test_manifest_roundtrip_and_load(run_dir):
    d, model = run_dir
    m = read_manifest(d)
    assert m.model == "RN-tiny" and m.format == "clipgen-run"
    assert list(list_checkpoints(d)) == [0, 1, 2]
    loaded = load_clip(d)
    assert loaded.epoch == 2 and loaded.model_name == "RN-tiny"
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encode_image(x), model.encode_image(x))


def test_epoch_parsing(run_dir):
    d, _ = run_dir
    avail = list(list_checkpoints(d))
    assert parse_epochs("all", avail) == [0, 1, 2]
    assert parse_epochs("last", avail) == [2]
    assert parse_epochs("0-1", avail) == [0, 1]
    with pytest.raises(ClipgenError, match="no checkpoint for epoch"):
        parse_epochs("5", avail)
    with pytest.raises(ClipgenError, match="epoch: no checkpoint for epoch 7"):
        resolve_checkpoint(d, 7)


def test_refusals(run_dir, tmp_path):
    d, _ = run_dir
    (d / "checkpoints" / "epoch_3.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ClipgenError, match="epoch_3.pt: corrupt"):
        load_state_dict(d / "checkpoints" / "epoch_3.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ClipgenError, match="no clipgen run manifest.*--model NAME"):
        read_manifest(empty)
    (empty / "clipgen-run.json").write_text(json.dumps({"format": "clipgen-run", "version": 99}))
    with pytest.raises(ClipgenError, match="newer"):
        read_manifest(empty)
    bad = model_config("RN-tiny")
    bad["embed_dim"] = 32
    write_manifest(d, RunManifest(kind="clip", name="run", model="RN-tiny", model_config=bad))
    with pytest.raises(ClipgenError, match="do not fit"):
        load_clip(d, epoch=1)


def _openai_layout(model) -> dict:
    """``model``'s weights as OpenAI's released CLIP state dicts store them: no prefix, half precision, the
    settings entries among the weights."""
    sd = {k: v.detach().clone().half() for k, v in model.state_dict().items()}
    sd["input_resolution"] = torch.tensor(64)
    sd["context_length"] = torch.tensor(model.context_length)
    sd["vocab_size"] = torch.tensor(49408)
    return sd


def _expected(model, name="RN-tiny"):
    """Image and text embeddings of ``model`` with its weights rounded to half precision, as an OpenAI file holds."""
    ref, _, _ = create_model(name)
    ref.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    ref.eval()
    torch.manual_seed(3)
    x, t = torch.randn(2, 3, 64, 64), torch.randint(1, 400, (2, ref.context_length))
    with torch.no_grad():
        return x, t, ref.encode_image(x), ref.encode_text(t)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["RN-tiny", "ViT-tiny"])  # the layouts of OpenAI's RN50 and ViT-B-32 files
def test_openai_format_state_dict_loads_by_path(tmp_path, name):
    torch.manual_seed(1)
    model, _, _ = create_model(name)
    path = tmp_path / f"openai-{name}.pt"
    torch.save(_openai_layout(model), path)
    sd = load_state_dict(path)
    assert not {"input_resolution", "context_length", "vocab_size"} & set(sd)
    loaded = load_clip(checkpoint=path, model_name=name)
    assert loaded.epoch is None and loaded.manifest is None and loaded.model_name == name
    x, t, img, txt = _expected(model, name)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encode_image(x), img)
        torch.testing.assert_close(loaded.model.encode_text(t), txt)
    assert loaded.checkpoint_sha256() == __import__("hashlib").sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_openai_torchscript_archive_loads_by_path(run_dir, tmp_path):
    _, model = run_dir
    half, _, _ = create_model("RN-tiny")
    half.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    half.eval()
    x, t, img, txt = _expected(model)
    path = tmp_path / "RN-tiny-jit.pt"
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(half, (x, t), check_trace=False), str(path))
    loaded = load_clip(checkpoint=path, model_name="RN-tiny")
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encode_image(x), img)
        torch.testing.assert_close(loaded.model.encode_text(t), txt)
