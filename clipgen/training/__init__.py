"""Training: CLIP through OpenCLIP's own trainer, the paper's supervised baseline, and the training grid.

- :mod:`clipgen.training.clip` - the CLIP run (``clipgen train clip``)
- :mod:`clipgen.training.clip_settings` - CLIP presets (and choosing one from the data), the config, the
  ``open_clip_train`` argument list
- :mod:`clipgen.training.curves` - the training-loss figure of a run (both trainers)
- :mod:`clipgen.training.open_clip_entry` - the module the training process runs (``python -m`` / ``torchrun -m``)
- :mod:`clipgen.training.supervised` - the supervised classifier trainer: settings and the run (``clipgen train
  supervised``)
- :mod:`clipgen.training.supervised_worker` - one training process of it (in-process, or ``torchrun -m``)
- :mod:`clipgen.training.grid` - the paper's grid of runs as a SLURM array job (``clipgen train grid``)
- :mod:`clipgen.training.launch` - single process, torchrun or srun; device checks
- :mod:`clipgen.training.checks` - TSV and run-directory checks done before any training starts
- :mod:`clipgen.training.labels` - the joint ImageNet + DomainNet label space of the supervised baseline
- :mod:`clipgen.training.trainer_log` - reading open_clip_train's log (progress bar, loss per epoch)
"""
