"""Sparse autoencoders on stored activations: model, fused training step, data sources, resampling, checkpoints.

One module per part: :mod:`~clipgen.analysis.sae.model` (the SAE variants, :func:`create_sae`),
:mod:`~clipgen.analysis.sae.steps` (the fused and graph training steps), :mod:`~clipgen.analysis.sae.data`
(training rows), :mod:`~clipgen.analysis.sae.resample` (evaluation, dead-latent resampling),
:mod:`~clipgen.analysis.sae.config` (:class:`SAETrainConfig`), :mod:`~clipgen.analysis.sae.trainer`
(:func:`run_train_sae`, :class:`SAETrainer`), :mod:`~clipgen.analysis.sae.io` (SAE files, checkpoints, the log) and
:mod:`~clipgen.analysis.sae.curves`. Everything public is importable from this package.

The model follows the paper's SAE (adapted from Discover-then-Name / ``sparse_autoencoder`` 1.x):

* a tied bias ``b_pre`` (initialised to 0) is subtracted before encoding and added after decoding;
* encoder ``f = ReLU((x - b_pre) W_enc + b_enc)`` (Kaiming-uniform init), or the TopK variant that keeps the ``k``
  largest pre-activations per sample (then ReLU, so at most ``k`` latents are active);
* decoder ``x_hat = f W_dec + b_pre``; every dictionary vector (row ``W_dec[i]``, the paper's decoder *column* ``i``)
  is renormalised to unit norm after every optimisation step;
* loss = mean over the batch of ``[ mean_j (x - x_hat)_j^2 + l1 * sum_k |f_k| ]``, optimised with Adam.

``paper=True`` (``clipgen sae train --paper``) follows the published ``sparse_autoencoder`` computation where it
differs from the defaults: (a) before each Adam step the gradient of every dictionary vector loses its component
along that vector (the library's ``UnitNormDecoder`` backward hook), then the vectors are renormalised as usual;
(b) the initialisation of the library's 3-D weights (:data:`INITS`); (c) resampling weights proportional to the
squared *total* loss of each input (reconstruction + L1), not the reconstruction error alone.

Training does not use autograd: :class:`FusedStep` computes the analytic gradients with five large matrix products
(autograd needs six: the gradient of the tied bias through the encoder is a matrix-vector product here), keeps every
statistic on the device (no host synchronisation between log intervals), and on CUDA the whole step, Adam and the
decoder renormalisation included, is captured once in a CUDA graph and replayed.

Data come from a :class:`ArraySource` (rows resident in memory or on the GPU, a fresh permutation every epoch) or a
:class:`StreamingSource` (contiguous blocks in a random order per epoch, shuffled in a memory buffer, the next buffer
read by a background thread). Both derive every random choice from ``(seed, epoch, ...)``, so an interrupted run
resumes from its last checkpoint with exactly the batches it would have seen.

Dead-latent resampling is Anthropic's recipe ("Towards Monosemanticity", 2023): latents that have not fired for a
window are re-initialised from inputs drawn with probability proportional to their squared reconstruction loss, and
their Adam state is reset. The published configuration never resamples:
``resample_every=0`` reproduces that.
"""

import importlib
from typing import Any

#: submodule -> the public names it provides. The package imports them lazily (PEP 562), so that importing a
#: torch-free part (``clipgen.analysis.sae.config``: the CLI reads its defaults) does not import torch.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "config": ("ACTIVATIONS", "DEFAULT_BATCH_SIZE", "FINAL_EVAL_ROWS", "FROZEN_ON_RESUME", "PUBLISHED_RESAMPLE_SAMPLES",
               "STEP_MODES", "SAETrainConfig"),
    "curves": ("CURVES_FILE", "curves_figure", "plot_curves"),
    "data": ("ArraySource", "StreamingSource", "TrainingData", "open_training_data"),
    "io": ("CHECKPOINT_DIR", "CHECKPOINT_FORMAT", "LOG_FILE", "METRICS_FILE", "SAE_FILE", "SAE_FORMAT", "SAE_VERSION",
           "check_width", "list_checkpoints", "load_sae", "read_log", "save_sae"),
    "model": ("INITS", "SAE_CLASSES", "ReLUSAE", "SAEArch", "SparseAutoencoder", "TopKSAE",
              "create_sae", "sae_loss"),
    "resample": ("evaluate", "resample_dead_latents", "resample_probabilities"),
    "steps": ("FusedStep", "GraphStep", "make_optimizer"),
    "trainer": ("SAETrainer", "TrainResult", "run_train_sae"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "ACTIVATIONS", "CHECKPOINT_DIR", "CHECKPOINT_FORMAT", "CURVES_FILE", "DEFAULT_BATCH_SIZE", "FINAL_EVAL_ROWS",
    "FROZEN_ON_RESUME", "INITS", "LOG_FILE", "METRICS_FILE", "PUBLISHED_RESAMPLE_SAMPLES", "SAE_CLASSES", "SAE_FILE",
    "SAE_FORMAT", "SAE_VERSION", "STEP_MODES", "ArraySource", "FusedStep", "GraphStep", "ReLUSAE", "SAEArch",
    "SAETrainConfig", "SAETrainer", "SparseAutoencoder", "StreamingSource", "TopKSAE", "TrainResult", "TrainingData",
    "check_width", "create_sae", "curves_figure", "evaluate", "list_checkpoints", "load_sae", "make_optimizer",
    "open_training_data", "plot_curves", "read_log", "resample_dead_latents", "resample_probabilities", "run_train_sae",
    "sae_loss", "save_sae",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # the next access skips this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

