"""clipgen.analysis.sae.trainer: training runs (recovery of planted atoms, resampling, the published
configuration, TopK, GPU), resume, refusals, the final statistics and the default batch size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clipgen.analysis.sae import (
    ArraySource,
    SAEArch,
    SparseAutoencoder,
    StreamingSource,
    TrainingData,
    evaluate,
    load_sae,
    run_train_sae,
)
from clipgen.errors import ConfigFieldError
from tests._fixtures_sae import (
    model_with_dead,
    planted_fixture,  # noqa: F401 (the `planted` fixture)
    run_log,
    sae_cfg,
)

# -- training ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_decoder_stays_unit_norm_every_step(tmp_path, planted):
    x, _ = planted
    norms = []

    def cb(step, info):
        norms.append(torch.linalg.vector_norm(info["model"].W_dec.detach(), dim=1))

    run_train_sae(sae_cfg(tmp_path / "run", epochs=1), TrainingData(ArraySource(x)), progress=False, callback=cb)
    assert len(norms) == 4096 // 128
    allnorms = torch.stack(norms)
    torch.testing.assert_close(allnorms, torch.ones_like(allnorms), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_training_recovers_planted_atoms(tmp_path, planted):
    x, atoms = planted
    cfg = sae_cfg(tmp_path / "run", epochs=20)
    res = run_train_sae(cfg, TrainingData(ArraySource(x, seed=0), val=torch.from_numpy(x[:512])), progress=False)
    log = [r for r in run_log(tmp_path / "run") if r["kind"] == "train"]
    assert log[-1]["loss"] < 0.25 * log[0]["loss"]
    assert res.final["fve"] > 0.75 and res.final["l0"] < 16
    model, info = load_sae(tmp_path / "run")
    best = (atoms @ model.W_dec.detach().numpy().T).max(axis=1)  # best-matching dictionary vector per atom
    assert np.median(best) > 0.93 and best.min() > 0.85, best
    assert info["layer"] == "embedding" and info["arch"]["d_sae"] == 64
    # files: config, metrics, final checkpoint, validation entry
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["command"] == "sae train" and meta["config"]["l1"] == 3e-2
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 20 * 32 and metrics["val"]["rows"] == 512
    assert metrics["val"] == pytest.approx(evaluate(model, torch.from_numpy(x[:512]), 3e-2))


# -- resampling ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("every", [0, 128 * 16])
def test_resampling_revives_dead_latents(tmp_path, planted, every):
    x, _ = planted
    cfg = sae_cfg(tmp_path / "run", epochs=2, resample_every=every, resample_max=1, resample_samples=2048)
    run_train_sae(cfg, TrainingData(ArraySource(x)), model=model_with_dead(8), progress=False)
    model, _ = load_sae(tmp_path / "run")
    with torch.no_grad():
        fires = (model.encode(torch.from_numpy(x)) > 0).float().mean(0)
    log = run_log(tmp_path / "run")
    events = [r for r in log if r["kind"] == "resample"]
    if every == 0:  # the published configuration: nothing is resampled, the dead stay dead
        assert events == [] and float(fires[:8].max()) == 0.0
    else:
        assert len(events) == 1 and events[0]["step"] == 16 and events[0]["resampled"] >= 8
        assert float(fires[:8].min()) > 0.01  # every planted dead latent fires again


# -- the published computation (paper=True) ----------------------------------------------------------------


@pytest.mark.slow
def test_paper_config_switches_on_the_published_computation(tmp_path, planted, monkeypatch):
    import clipgen.analysis.sae.resample as S

    x, _ = planted
    seen = {}
    real = S.resample_probabilities

    def spy(*a, l1=0.0, **k):
        seen["l1"] = l1
        return real(*a, l1=l1, **k)

    def first(step, info):
        if step == 1:
            seen["kernel"], seen["w_enc_max"] = info["step"], float(info["model"].W_enc.detach().abs().max())

    monkeypatch.setattr(S, "resample_probabilities", spy)
    for paper in (True, False):
        seen.clear()
        run_train_sae(sae_cfg(tmp_path / f"a{paper}", epochs=1, paper=paper), TrainingData(ArraySource(x)),
                      progress=False, callback=first)
        k = seen["kernel"]
        assert k.project_decoder_grad is paper and k.cdt == torch.float32
        # initialisation: bound sqrt(6 / (64 * 16)) = 0.077 with --paper, else 1/sqrt(16) = 0.25 (one step of lr
        # 1e-2 moves a weight by at most about 1e-2)
        assert (seen["w_enc_max"] < 0.09) is paper and (seen["w_enc_max"] > 0.2) is not paper
        assert json.loads((tmp_path / f"a{paper}" / "config.json").read_text())["config"]["paper"] is paper
        # resampling weights: the squared total loss with --paper, the squared reconstruction error otherwise
        run_train_sae(sae_cfg(tmp_path / f"b{paper}", epochs=1, paper=paper, resample_every=128 * 4, resample_max=1,
                       resample_samples=256), TrainingData(ArraySource(x)), model=model_with_dead(8),
                      progress=False)
        assert seen["l1"] == (3e-2 if paper else 0.0)


# -- runs: resume, errors, TopK, GPU -------------------------------------------------------------------------


def _strip(log):
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in log]


@pytest.mark.slow
@pytest.mark.parametrize("streaming", [False, True])
def test_resume_continues_exactly(tmp_path, planted, streaming):
    x, _ = planted

    def data():
        if streaming:
            blocks = [(a, a + 256) for a in range(0, 4096, 256)]
            src = StreamingSource(blocks, lambda a, b: x[a:b], 16, seed=5, buffer_rows=1024)
        else:
            src = ArraySource(x, seed=5)
        return TrainingData(src, val=torch.from_numpy(x[:256]))

    kw = dict(epochs=3, checkpoint_every=128 * 10, val_every=128 * 20, resample_every=128 * 25, resample_max=2)
    ref = run_train_sae(sae_cfg(tmp_path / "ref", **kw), data(), progress=False)

    class Crash(Exception):
        pass

    def crash(step, info):
        if step == 57:
            raise Crash

    with pytest.raises(Crash):
        run_train_sae(sae_cfg(tmp_path / "run", **kw), data(), progress=False, callback=crash)
    res = run_train_sae(sae_cfg(tmp_path / "run", **kw), data(), progress=False)  # the same call continues the run
    assert res.steps == ref.steps == 3 * 32 and res.revived == ref.revived
    a = torch.load(tmp_path / "ref" / "sae.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "run" / "sae.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _strip(run_log(tmp_path / "run")) == _strip(run_log(tmp_path / "ref"))
    # rerunning a finished run does nothing (resume=True is accepted and changes nothing); raising --epochs trains on
    for resume in (False, True):
        again = run_train_sae(sae_cfg(tmp_path / "run", **kw), data(), progress=False, resume=resume)
        assert again.already_complete and again.steps == 96
    more = run_train_sae(sae_cfg(tmp_path / "run", **{**kw, "epochs": 4}), data(), progress=False)
    assert more.steps == 128 and not more.already_complete


@pytest.mark.slow
def test_a_run_stopped_before_its_first_checkpoint_starts_over(tmp_path, planted):
    """Nothing to continue from: the same call clears the partial log and trains from the start, as a fresh run."""
    x, _ = planted
    ref = run_train_sae(sae_cfg(tmp_path / "ref"), TrainingData(ArraySource(x, seed=5)), progress=False)

    def crash(step, info):
        if step == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_train_sae(sae_cfg(tmp_path / "run"), TrainingData(ArraySource(x, seed=5)), progress=False, callback=crash)
    assert len(run_log(tmp_path / "run")) == 2 and not (tmp_path / "run" / "checkpoints").exists()
    res = run_train_sae(sae_cfg(tmp_path / "run"), TrainingData(ArraySource(x, seed=5)), progress=False)
    assert res.steps == ref.steps == 64 and _strip(run_log(tmp_path / "run")) == _strip(run_log(tmp_path / "ref"))


@pytest.mark.slow
def test_resume_refuses_changed_settings(tmp_path, planted):
    x, _ = planted
    run_train_sae(sae_cfg(tmp_path / "run", epochs=1), TrainingData(ArraySource(x)), progress=False)
    with pytest.raises(ConfigFieldError, match="^l1: .*0.03.*0.01.*pass --force to start over$"):
        run_train_sae(sae_cfg(tmp_path / "run", epochs=2, l1=1e-2), TrainingData(ArraySource(x)), progress=False)
    # --force starts over
    res = run_train_sae(sae_cfg(tmp_path / "run", epochs=1, l1=1e-2, force=True), TrainingData(ArraySource(x)),
                        progress=False)
    assert res.steps == 32
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["force"] is True


def test_bad_settings_are_one_line_errors(tmp_path, planted):
    x, _ = planted
    with pytest.raises(ConfigFieldError, match="^batch_size: 8192 is larger than the 4096 training rows"):
        run_train_sae(sae_cfg(tmp_path / "a", batch_size=8192), TrainingData(ArraySource(x)), progress=False)
    with pytest.raises(ConfigFieldError, match="^precision: "):
        run_train_sae(sae_cfg(tmp_path / "b", precision="fp16"), TrainingData(ArraySource(x)), progress=False)
    with pytest.raises(ConfigFieldError, match="^step_mode: "):
        run_train_sae(sae_cfg(tmp_path / "c", step_mode="graph"), TrainingData(ArraySource(x)), progress=False)
    with pytest.raises(ConfigFieldError, match="^k: "):
        SparseAutoencoder(SAEArch(d_in=4, d_sae=8, activation="topk", k=9))
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_topk_training_run(tmp_path, planted):
    x, _ = planted
    res = run_train_sae(sae_cfg(tmp_path / "run", activation="topk", k=4, l1=None, epochs=3),
                        TrainingData(ArraySource(x)), progress=False)
    assert res.final["l0"] == pytest.approx(4.0, abs=0.05) and res.final["l1_loss"] == 0.0
    assert res.final["fve"] > 0.6


@pytest.mark.gpu
def test_gpu_graph_bf16_training_recovers_atoms_and_resamples(tmp_path, planted):
    # the default GPU path (CUDA graph, bf16 products): resampling between graph replays must reach the graph
    x, atoms = planted
    cfg = sae_cfg(tmp_path / "run", epochs=20, device="cuda", precision="bf16", step_mode="graph",
               resample_every=128 * 16, resample_max=1, resample_samples=2048)
    res = run_train_sae(cfg, TrainingData(ArraySource(x, device="cuda")), model=model_with_dead(8), progress=False)
    events = [r for r in run_log(tmp_path / "run") if r["kind"] == "resample"]
    assert len(events) == 1 and events[0]["resampled"] >= 8
    model, _ = load_sae(tmp_path / "run")
    with torch.no_grad():
        fires = (model.encode(torch.from_numpy(x)) > 0).float().mean(0)
    assert float(fires[:8].min()) > 0.01
    best = (atoms @ model.W_dec.detach().numpy().T).max(axis=1)
    assert np.median(best) > 0.9 and res.final["fve"] > 0.7, best
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["step_mode"] == "graph" and metrics["precision"] == "bfloat16"


@pytest.mark.slow
def test_final_statistics_are_the_final_models_not_the_runs_average(tmp_path, planted):
    """With one log interval spanning the whole run, the interval mean includes the untrained model's first steps;
    the reported final statistics are a pass of the final model over the training rows."""
    x, _ = planted
    res = run_train_sae(sae_cfg(tmp_path / "run", epochs=6, log_every=10**9), TrainingData(ArraySource(x)),
                        progress=False)
    model, _ = load_sae(tmp_path / "run")
    by_hand = evaluate(model, torch.from_numpy(x), 3e-2)
    assert res.final["fve"] == pytest.approx(by_hand["fve"], abs=1e-6)
    assert res.final["l0"] == pytest.approx(by_hand["l0"], abs=1e-6)
    assert res.final["loss"] == pytest.approx(by_hand["loss"], rel=1e-6)
    assert res.final["dead"] == by_hand["dead"] and res.final["rows"] == 4096
    log = run_log(tmp_path / "run")
    interval = [r for r in log if r["kind"] == "train"]
    assert len(interval) == 1 and interval[0]["fve"] < res.final["fve"] - 0.05  # the run's average is worse
    assert log[-1]["kind"] == "final" and log[-1]["step"] == res.steps
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["final"]["fve"] == pytest.approx(res.final["fve"])


@pytest.mark.slow
def test_default_batch_size_fits_a_small_training_set(tmp_path, planted, capsys):
    x, _ = planted
    cfg = sae_cfg(tmp_path / "run", batch_size=None, epochs=3)
    res = run_train_sae(cfg, TrainingData(ArraySource(x[:1577])), progress=False)
    assert res.steps == 3  # one batch of all 1,577 rows per epoch
    assert "note: batch size 1577: all 1,577 training rows" in capsys.readouterr().err.replace("\n", " ")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["batch_size"] == 1577
    # the same command continues / skips it (the resolved batch size is the recorded one)
    again = run_train_sae(cfg, TrainingData(ArraySource(x[:1577])), progress=False)
    assert again.already_complete
    # the paper's 2048 when there are enough rows
    assert run_train_sae(sae_cfg(tmp_path / "big", batch_size=None, epochs=1), TrainingData(ArraySource(x)),
                         progress=False).steps == 2
    with pytest.raises(ConfigFieldError, match=r"^batch_size: 4096 is larger than the 1577 training rows; pass "
                                           r"--batch-size 1577 or less"):
        run_train_sae(sae_cfg(tmp_path / "c", batch_size=4096), TrainingData(ArraySource(x[:1577])), progress=False)
