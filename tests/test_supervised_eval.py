import numpy as np
import pytest
import torch

from clipgen import domainnet as dn
from clipgen.datasets import load_image
from clipgen.errors import ClipgenError
from clipgen.evaluation.protocol import build_eval_set
from clipgen.evaluation.results import read_predictions, read_results
from clipgen.evaluation.supervised_eval import SupervisedConfig, load_supervised, run_supervised
from clipgen.models.registry import model_config
from clipgen.models.supervised import create_supervised
from clipgen.runs import RunManifest, write_manifest
from tests._fixtures_eval import uneven_root

FIXTURES = (uneven_root,)


@pytest.fixture(scope="module")
def sup_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("sup") / "run"
    (run / "checkpoints").mkdir(parents=True)
    for e in (4, 9):
        torch.manual_seed(e)
        m, _, _ = create_supervised("RN-tiny")
        with torch.no_grad():  # make the DomainNet head decisive and different per epoch
            m.head.bias[1000:] = torch.randn(345) * 3
        torch.save({"epoch": e, "state_dict": m.state_dict()}, run / "checkpoints" / f"epoch_{e}.pt")
    write_manifest(run, RunManifest(kind="supervised", name="run", model="RN-tiny",
                                    model_config=model_config("RN-tiny"), seed=2,
                                    mixture={"setup": "cg-high", "test_domain": "sketch", "held_out_labels": [11, 13]}))
    return run


@pytest.mark.slow
def test_predictions_are_the_restricted_domainnet_argmax(sup_run, uneven_root, tmp_path):
    res = run_supervised(SupervisedConfig(data_root=uneven_root, model_dir=sup_run, progress=False))
    assert res.out_dir == sup_run / "eval" / "supervised" / "sketch" and res.evaluated == [4, 9]
    doc = read_results(res.out_dir)
    assert doc["kind"] == "supervised" and doc["run"]["setup"] == "cg-high" and doc["run"]["seed"] == 2
    assert doc["held_out"]["source"] == "manifest"
    pr = read_predictions(res.out_dir)
    s = build_eval_set(uneven_root, "sketch")
    model, pre = load_supervised(sup_run / "checkpoints" / "epoch_9.pt", "RN-tiny", None, "cpu")
    with torch.no_grad():
        logits = model(torch.stack([pre(load_image(r.path)) for r in s.records]))
    dn_logits = logits[:, 1000:]
    assert dn_logits.shape[1] == 345
    cols = np.array(s.class_labels)
    want = cols[dn_logits[:, cols].argmax(1).numpy()]
    assert pr["predictions"][1].tolist() == want.tolist()
    # the restriction matters: an unrestricted argmax can pick classes absent from the data
    assert set(dn_logits.argmax(1).tolist()) - set(s.class_labels)
    m = pr["domain_ids"] == dn.DOMAINS.index("sketch")
    y, p = pr["labels"][m], pr["predictions"][1][m]
    ood = np.isin(y, [11, 13])
    assert doc["metrics"]["sketch"]["ood_acc"][1] == pytest.approx(np.mean(y[ood] == p[ood]))
    assert doc["metrics"]["sketch"]["id_acc"][1] == pytest.approx(np.mean(y[~ood] == p[~ood]))
    assert pr["predictions"][0].tolist() != pr["predictions"][1].tolist()


@pytest.mark.slow
def test_supervised_precision_auto_is_resolved_for_the_supervised_kind(sup_run, uneven_root, tmp_path, monkeypatch):
    import clipgen.devices as devices

    kinds = []
    real = devices.resolve_precision
    monkeypatch.setattr(devices, "resolve_precision", lambda spec, dev, *a, kind=None, **k: kinds.append(kind)
                        or real(spec, dev, *a, kind=kind, **k))
    run_supervised(SupervisedConfig(data_root=uneven_root, model_dir=sup_run, epochs="4", out=tmp_path / "o",
                                    progress=False))
    assert kinds == ["supervised"]  # fp32 on a GPU too, as the published supervised evaluation ran
    assert read_results(tmp_path / "o")["precision"] == "fp32"


def test_supervised_refusals(sup_run, random_run_dir, uneven_root, tmp_path):
    with pytest.raises(ClipgenError, match="is a supervised run; evaluate it with 'clipgen eval supervised'"):
        from clipgen.evaluation.zeroshot_eval import ZeroShotConfig, run_zero_shot

        run_zero_shot(ZeroShotConfig(data_root=uneven_root, model_dir=sup_run, out=tmp_path / "x", progress=False))
    with pytest.raises(ClipgenError, match="is a clip run; evaluate it with 'clipgen eval zero-shot'"):
        run_supervised(SupervisedConfig(data_root=uneven_root, model_dir=random_run_dir, out=tmp_path / "x"))
    with pytest.raises(ClipgenError, match="weights do not fit supervised model RN-tiny"):
        run_supervised(SupervisedConfig(data_root=uneven_root, model="RN-tiny", test_domain="sketch",
                                        checkpoints=[random_run_dir / "checkpoints" / "epoch_0.pt"],
                                        out=tmp_path / "x", progress=False))


@pytest.mark.slow
def test_one_decode_pass_equals_the_per_checkpoint_loop(sup_run, uneven_root, tmp_path):
    from clipgen.datasets import DECODES

    n = len(build_eval_set(uneven_root, "sketch"))
    counts = {}
    for mode in (False, True):
        DECODES.reset()
        run_supervised(SupervisedConfig(data_root=uneven_root, model_dir=sup_run, out=tmp_path / str(mode),
                                        workers=0, per_checkpoint=mode, progress=False))
        counts[mode] = DECODES.reset()
    assert counts == {False: n, True: 2 * n}
    a, b = read_results(tmp_path / "False"), read_results(tmp_path / "True")
    assert a["epochs"] == b["epochs"] == [4, 9] and a["metrics"] == b["metrics"]
    pa, pb = read_predictions(tmp_path / "False"), read_predictions(tmp_path / "True")
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])
