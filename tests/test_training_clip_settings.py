"""clipgen.training.clip_settings: the presets, the resolved hyper-parameters and open_clip_train's argument list."""

import pytest

from clipgen.errors import ClipgenError, ConfigFieldError
from clipgen.training.clip_settings import (
    PRESETS,
    ClipTrainConfig,
    build_argv,
    default_run_name,
    get_preset,
    parse_open_clip_args,
    resolve_hyper,
)


def _argv(preset, world, device="cuda", **over):
    cfg = ClipTrainConfig(train="t.tsv", preset=preset, **over)
    hp = resolve_hyper(cfg, world, device, "torchrun" if world > 1 else "local")
    return hp, build_argv(hp, train="t.tsv", val="v.tsv", logs="logs", name="n", seed=1)


def _opt(argv, flag):
    return argv[argv.index(flag) + 1]


def test_imagenet_captions_preset_has_the_papers_values():
    hp, argv = _argv("imagenet-captions", 4)
    # spec 2.1: RN50, lr 1e-3, 500 warm-up steps, 32 epochs, 128/GPU x 4 GPUs x accum 2 = 1024, AMP
    assert _opt(argv, "--model") == "RN50"
    assert float(_opt(argv, "--lr")) == 1e-3
    assert _opt(argv, "--warmup") == "500" and _opt(argv, "--epochs") == "32"
    assert _opt(argv, "--batch-size") == "128" and _opt(argv, "--accum-freq") == "2"
    assert hp.effective_batch == 128 * 4 * 2 == 1024
    assert _opt(argv, "--precision") == "amp" and float(_opt(argv, "--wd")) == 0.2
    assert _opt(argv, "--workers") == "6" and _opt(argv, "--seed") == "1"
    for flag in ("--local-loss", "--gather-with-grad", "--grad-checkpointing"):
        assert flag in argv
    assert _opt(argv, "--dataset-type") == "csv" and _opt(argv, "--csv-separator") == "\t"
    assert _opt(argv, "--csv-img-key") == "filepath" and _opt(argv, "--csv-caption-key") == "title"
    assert _opt(argv, "--train-data") == "t.tsv" and _opt(argv, "--val-data") == "v.tsv"
    ns = parse_open_clip_args(argv)  # open_clip_train's own parser agrees
    assert (ns.lr, ns.warmup, ns.accum_freq, ns.batch_size, ns.epochs) == (1e-3, 500, 2, 128, 32)
    assert (ns.beta1, ns.beta2, ns.eps) == (0.9, 0.999, 1e-8) and ns.lr_scheduler == "cosine"
    assert ns.local_loss and ns.gather_with_grad and ns.grad_checkpointing and ns.save_frequency == 1
    # the effective batch stays 1024 on one GPU: gradient accumulation grows instead
    hp1, argv1 = _argv("imagenet-captions", 1)
    assert _opt(argv1, "--accum-freq") == "8" and hp1.effective_batch == 1024


def test_ccxm_preset():
    hp, argv = _argv("ccxm", 8)
    assert float(_opt(argv, "--lr")) == 5e-4 and _opt(argv, "--warmup") == "2000"
    assert _opt(argv, "--accum-freq") == "2" and hp.effective_batch == 2048 and _opt(argv, "--epochs") == "32"
    assert PRESETS["ccxm"].seeds == (0,) and PRESETS["imagenet-captions"].seeds == (0, 1, 2)


def test_synthetic_preset_on_cpu_and_overrides():
    hp, argv = _argv("synthetic", 1, device="cpu")
    assert _opt(argv, "--model") == "RN-tiny" and _opt(argv, "--precision") == "fp32"
    assert _opt(argv, "--device") == "cpu" and "--local-loss" not in argv and _opt(argv, "--accum-freq") == "1"
    hp, argv = _argv("imagenet-captions", 1, device="cpu", lr=2e-3, epochs=3, model="RN-tiny", warmup=7,
                     batch_size=16, accum_freq=1, wd=0.1, workers=0, precision="bf16")
    assert (float(_opt(argv, "--lr")), _opt(argv, "--epochs"), _opt(argv, "--model"), _opt(argv, "--warmup")) == (
        2e-3, "3", "RN-tiny", "7")
    assert (_opt(argv, "--batch-size"), _opt(argv, "--accum-freq"), float(_opt(argv, "--wd"))) == ("16", "1", 0.1)
    assert _opt(argv, "--precision") == "bf16" and _opt(argv, "--workers") == "0"
    # amp is the preset's GPU precision; CPU runs default to fp32
    assert _argv("imagenet-captions", 1, device="cpu")[0].precision == "fp32"


def test_extra_arguments_pass_through_last_and_untouched():
    _, argv = _argv("synthetic", 1, device="cpu", extra_args=["--grad-clip-norm", "1.0", "--lr", "0.5"])
    assert argv[-4:] == ["--grad-clip-norm", "1.0", "--lr", "0.5"]
    ns = parse_open_clip_args(argv)
    assert ns.grad_clip_norm == 1.0 and ns.lr == 0.5  # the extra value wins
    with pytest.raises(ClipgenError, match=r"^open_clip_train arguments: unrecognized arguments: --bogus"):
        parse_open_clip_args([*argv, "--bogus"])


@pytest.mark.slow
def test_parsing_from_many_threads_leaves_stderr_alone():
    """The demo prepares its runs side by side: concurrent parses must restore ``sys.stderr`` to what it was (a
    race here once left the test runner's stream replaced and closed, failing CLI invocations later)."""
    import sys
    import threading

    _, argv = _argv("synthetic", 1, device="cpu")
    before = sys.stderr
    errors = []

    def work():
        for i in range(30):
            try:
                parse_open_clip_args(argv + (["--bogus"] if i % 2 else []))
            except ClipgenError as e:
                errors.append(str(e))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sys.stderr is before
    assert len(errors) == 8 * 15 and all(e.endswith("unrecognized arguments: --bogus") for e in errors)


def test_effective_batch_must_divide():
    with pytest.raises(ConfigFieldError, match=r"^effective_batch: 1024 is not a multiple of batch 128 x 3"):
        _argv("imagenet-captions", 3)
    with pytest.raises(ConfigFieldError, match=r"^effective_batch: 100 != batch 32"):
        _argv("synthetic", 1, device="cpu", effective_batch=100, accum_freq=2)
    with pytest.raises(ConfigFieldError, match="^preset: unknown preset 'imagenet'"):
        get_preset("imagenet")
    assert default_run_name("/x/mix-train.tsv", "RN50", 2) == "mix-train-RN50-s2"
