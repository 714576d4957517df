from clipgen.training.trainer_log import TrainLogMonitor

# lines in the exact format open_clip_train 3.x writes
T = "2026-11-22,14:01:35 | INFO | "
LINES = [
    T + "Start epoch 0",
    T + "Train Epoch: 0 [ 32/200 (17%)] Data (t): 0.033 Batch (t): 0.216, 147.995/s, 147.995/s/gpu LR: 0.000200 "
        "Logit Scale: 14.286 Contrastive_loss: 3.3614 (3.3614) Loss: 3.3614 (3.3614)",
    T + "Train Epoch: 0 [192/200 (100%)] Data (t): 0.025 Batch (t): 0.140, 229.048/s, 229.048/s/gpu LR: 0.001000 "
        "Logit Scale: 14.244 Contrastive_loss: 2.8145 (3.0770) Loss: 2.8145 (3.0770)",
    T + "Eval Epoch: 1 [32 / 56]\tClip Loss: 3.575690\t",
    T + "Eval Epoch: 1 image_to_text_mean_rank: 28.5000\tclip_val_loss: 3.4280\tepoch: 1.0000\tnum_samples: 56.0000",
    T + "Train Epoch: 1 [ 96/200 (50%)] Data (t): 0.027 Batch (t): 0.142, 225.749/s, 225.749/s/gpu LR: 0.000874 "
        "Logit Scale: 14.209 Contrastive_loss: 2.1594 (2.1652) Loss: 2.1594 (2.1652)",
]


def test_progress_and_losses():
    m = TrainLogMonitor(epochs=3)
    shown = [m.feed(x) for x in LINES]
    assert shown == [False] * len(LINES)
    assert m.train_loss == {1: 3.0770, 2: 2.1652}  # running mean of the last logged step of each epoch
    assert m.val_loss == {1: 3.4280}
    assert m.epoch == 1 and m.last_loss == 2.1594
    assert m.progress == 1.5


def test_resume_line_sets_progress():
    m = TrainLogMonitor(epochs=4, start_epoch=2)
    assert m.progress == 2.0
    assert m.feed(T + "=> resuming checkpoint 'logs/r/checkpoints/epoch_2.pt' (epoch 2)")
    assert m.resumed_from == 2 and m.progress == 2.0


def test_important_lines():
    m = TrainLogMonitor(epochs=1)
    assert m.feed("2026-11-22,14:07:42 | WARNING | Something odd")
    assert not m.feed("2026-11-22,14:07:42 | WARNING | No pretrained weights loaded for model 'RN-tiny'.")
    assert not m.feed(T + "  batch_size: 32")
    assert not m.feed("    (conv1): Conv2d(3, 8, kernel_size=(3, 3))")  # continuation of the model printout
    assert m.feed("Traceback (most recent call last):")
    assert m.feed('  File "x.py", line 1, in <module>')  # the whole traceback is shown
    assert m.feed("ValueError: boom")
    assert not m.feed(T + "Start epoch 0")  # a new log record ends the traceback
    assert m.feed("[rank0]: Traceback (most recent call last):")
    assert list(m.tail)[-1] == "[rank0]: Traceback (most recent call last):"
