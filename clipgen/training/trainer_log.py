"""Reading open_clip_train's log as it is written: progress, loss per epoch, and which lines a person must see.

open_clip_train logs ``Train Epoch: E [n/N (p%)] ... Loss: last (running mean)`` every
``--log-every-n-steps`` steps and at the last step of each epoch, ``Eval Epoch: E ... clip_val_loss: x``
after each epoch with validation data, and ``=> resuming checkpoint '...' (epoch E)`` when it resumes.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

TRAIN_RE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) \((\d+)%\)\].* Loss: (\S+) \((\S+)\)\s*$")
EVAL_RE = re.compile(r"Eval Epoch: (\d+) .*clip_val_loss: (\S+)")
RESUME_RE = re.compile(r"=> resuming checkpoint '(.*)' \(epoch (\d+)\)")
LOG_PREFIX_RE = re.compile(r"^\d{4}-\d\d-\d\d,\d\d:\d\d:\d\d \| (\w+) \| ")
#: Messages that are expected in every clipgen run and carry no information (clipgen never loads weights).
NOISE = ("No pretrained weights loaded",)


def _float(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


@dataclass
class TrainLogMonitor:
    """Feed it log lines; it tracks progress (in epochs) and the loss of each completed epoch."""

    epochs: int
    start_epoch: int = 0
    progress: float = 0.0  # epochs done, fractional
    epoch: int | None = None  # 0-based epoch in progress
    last_loss: float | None = None
    train_loss: dict[int, float] = field(default_factory=dict)  # completed epoch -> mean loss over its log lines
    val_loss: dict[int, float] = field(default_factory=dict)  # completed epoch -> clip_val_loss
    resumed_from: int | None = None
    tail: deque = field(default_factory=lambda: deque(maxlen=60))
    _in_traceback: bool = False

    def __post_init__(self) -> None:
        self.progress = float(self.start_epoch)

    def feed(self, line: str) -> bool:
        """Digest one line; returns True when the line should be shown even in progress-bar mode."""
        self.tail.append(line)
        m = TRAIN_RE.search(line)
        if m:
            e, pct, avg = int(m.group(1)), int(m.group(4)), _float(m.group(6))
            self.epoch = e
            self.progress = min(float(self.epochs), e + pct / 100.0)
            self.last_loss = _float(m.group(5))
            if avg is not None:
                self.train_loss[e + 1] = avg
            return False
        m = EVAL_RE.search(line)
        if m:
            v = _float(m.group(2))
            if v is not None:
                self.val_loss[int(m.group(1))] = v
            return False
        m = RESUME_RE.search(line)
        if m:
            self.resumed_from = int(m.group(2))
            self.progress = float(self.resumed_from)
            return True
        return self._important(line)

    def _important(self, line: str) -> bool:
        if any(n in line for n in NOISE):
            return False
        prefix = LOG_PREFIX_RE.match(line)
        if prefix:
            self._in_traceback = False
            return prefix.group(1) in ("WARNING", "ERROR", "CRITICAL")
        s = line.lstrip()
        if s.startswith("Traceback") or s.startswith("[rank") and "Traceback" in s:
            self._in_traceback = True
        if self._in_traceback:
            return True
        return bool(re.search(r"\b(Error|Exception|Warning)\b|^error|^Error", s))
