"""``clipgen sae train``'s configuration (:class:`SAETrainConfig`), its checks, and the run's fixed settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from clipgen.errors import ConfigFieldError

#: The SAE variants by activation (:data:`clipgen.analysis.sae.model.SAE_CLASSES` implements each).
ACTIVATIONS = ("relu", "topk")
STEP_MODES = ("auto", "eager", "graph")
#: The published loss-estimation sample count of the resampler.
PUBLISHED_RESAMPLE_SAMPLES = 819_200

#: stream ids for np.random.default_rng([seed, epoch, stream, ...]) so every random choice is reproducible
RNG_PERMUTATION, RNG_BLOCKS, RNG_BUFFER, RNG_RESAMPLE, RNG_VAL, RNG_INIT, RNG_FINAL = 1, 2, 3, 4, 5, 6, 7


@dataclass
class SAETrainConfig:
    """``clipgen sae train``: every option, resolved; written as ``config.json`` next to the run."""

    stores: list[str] = field(default_factory=list)
    out: str = ""
    layer: str = "embedding"
    split: str | None = None  # keep only training-store rows of this split (None: all rows)
    val_store: str | None = None
    val_split: str | None = None
    val_fraction: float = 0.05  # held out from the training rows when there is no --val-store (0: no validation)
    val_max_rows: int = 65_536
    expansion: int = 4
    activation: str = "relu"
    k: int = 32
    scale_inputs: bool = False
    l1: float | None = None  # None: 1e-4 for relu (paper), 0 for topk
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    batch_size: int | None = None  # None: DEFAULT_BATCH_SIZE (the paper's), or every training row when fewer
    epochs: int = 200
    seed: int = 49
    resample_every: int = 10_000_000  # samples between resampling checks (0: never, the published behaviour)
    resample_max: int = 4  # resampling checks at most (0: unlimited)
    resample_window: int | None = None  # dead = no firing for this many samples (None: resample_every)
    resample_samples: int = PUBLISHED_RESAMPLE_SAMPLES
    dead_window: int = 1_000_000  # samples without firing after which a latent counts as dead in the logs
    log_every: int = 1_000_000
    val_every: int = 10_000_000
    checkpoint_every: int = 10_000_000
    keep_checkpoints: int = 2
    buffer_mb: float = 4096  # training rows up to this size (MiB) are held in memory; larger sets stream
    block_rows: int = 16_384
    device: str = "auto"
    precision: str = "auto"  # fp32 or bf16 (bf16: matrix products in bf16, fp32 master weights)
    step_mode: str = "auto"  # eager, graph (CUDA graph) or auto (graph on CUDA)
    paper: bool = False  # the published computation: projected decoder gradient, library init, total-loss resampling
    force: bool = False  # start over, replacing the run in out (needed when its settings differ)

    def resolved_l1(self) -> float:
        if self.l1 is not None:
            return float(self.l1)
        return 0.0 if self.activation == "topk" else 1e-4


#: The paper's SAE batch size (the default when the training set holds at least this many rows).
DEFAULT_BATCH_SIZE = 2048

#: Training rows the final model is evaluated on (a seeded sample; every row of a smaller set) for the final
#: statistics (``TrainResult.final``, ``metrics.json``'s ``final``, the log's ``final`` record).
FINAL_EVAL_ROWS = 65_536

#: Settings a resumed run must share with its checkpoint (they change the model or the data order).
FROZEN_ON_RESUME = ("layer", "split", "val_store", "val_split", "val_fraction", "val_max_rows", "expansion",
                    "activation", "k", "scale_inputs", "l1", "lr", "beta1", "beta2", "eps", "batch_size", "seed",
                    "resample_every", "resample_max", "resample_window", "resample_samples", "buffer_mb",
                    "block_rows", "paper")



def check_config(cfg: SAETrainConfig) -> None:
    """One-line errors for settings out of range, before anything is read or written."""
    for name in ("batch_size", "epochs", "expansion", "block_rows", "log_every", "keep_checkpoints"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise ConfigFieldError(name, f"must be at least 1, got {getattr(cfg, name)}")
    for name in ("resample_every", "resample_max", "resample_samples", "dead_window", "val_every",
                 "checkpoint_every", "val_max_rows"):
        if getattr(cfg, name) < 0:
            raise ConfigFieldError(name, f"must not be negative, got {getattr(cfg, name)}")
    if not cfg.buffer_mb > 0:
        raise ConfigFieldError("buffer_mb", f"must be positive, got {cfg.buffer_mb}")
    if cfg.resample_window is not None and cfg.resample_window < 1:
        raise ConfigFieldError("resample_window", f"must be at least 1, got {cfg.resample_window}")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ConfigFieldError("val_fraction", f"must be in [0, 1), got {cfg.val_fraction}")
    if cfg.resolved_l1() < 0 or cfg.lr <= 0:
        raise ConfigFieldError("l1" if cfg.resolved_l1() < 0 else "lr", "must be positive")
    if cfg.activation not in ACTIVATIONS:
        raise ConfigFieldError("activation", f"unknown activation {cfg.activation!r} (one of {', '.join(ACTIVATIONS)})")
    if cfg.step_mode not in STEP_MODES:
        raise ConfigFieldError("step_mode", f"unknown step mode {cfg.step_mode!r} (one of {', '.join(STEP_MODES)})")

