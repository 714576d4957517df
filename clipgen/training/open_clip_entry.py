"""The training process: ``python -m clipgen.training.open_clip_entry ARGS`` runs OpenCLIP's own trainer.

``ARGS`` are ``open_clip_train.main`` arguments, passed through unchanged. Before handing over, this module

1. registers clipgen's model configurations (RN-tiny, RN-small, ViT-tiny) in this process, because
   open_clip only knows configurations registered in the running process;
2. saves the untrained model as ``checkpoints/epoch_0.pt`` (``{"epoch": 0, "name", "state_dict"}``), as the
   paper does: the model open_clip_train creates is wrapped, so epoch 0 is exactly the initial weights the
   trainer starts from (written once, by global rank 0, and never overwritten on resume);
3. makes ``--resume latest`` pick the highest ``epoch_N.pt`` with N >= 1 (epoch 0 holds no optimizer
   state; open_clip's own lookup would pick it when it is the only file and fail);
4. on CPU with several processes (gloo), lets DistributedDataParallel wrap the model without
   ``device_ids`` (open_clip_train passes ``device_ids=[cpu]``, which DDP rejects for CPU modules);
5. under SLURM, when each task sees only its own GPU, keeps the device at ``cuda:0`` instead of
   ``cuda:LOCAL_RANK``;
6. turns open_clip_train's "experiment already exists" (``return -1``, exit status 0) into exit status 1;
7. makes every checkpoint appear atomically: the trainer's ``torch.save`` writes a temporary file beside the
   checkpoint and renames it, so a process killed while saving never leaves a truncated ``epoch_N.pt``;
8. stores the random states (torch, numpy, python, CUDA; one set per process) in each training checkpoint as
   ``rng_state``, and restores them on resume just before the first resumed epoch: they decide the data order
   (the loader's shuffling) and the augmentations, so a run resumed at an epoch boundary continues exactly as the
   uninterrupted run would have.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from clipgen.runs import checkpoint_files

EPOCH0_NAME = "epoch_0.pt"


def latest_resumable(checkpoint_dir: str | Path) -> str | None:
    """The ``epoch_N.pt`` with the highest N >= 1 in ``checkpoint_dir``, or None."""
    found = [p for epoch, p in checkpoint_files(checkpoint_dir).items() if epoch >= 1]
    return str(found[-1]) if found else None


def _global_rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    for v in ("RANK", "SLURM_PROCID"):
        if os.environ.get(v, "").isdigit():
            return int(os.environ[v])
    return 0


def save_initial(model, path: str | Path, name: str) -> bool:
    """Save ``model``'s weights as the epoch-0 checkpoint (atomically); returns False if it already exists."""
    import torch

    path = Path(path)
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"epoch": 0, "name": name, "state_dict": sd}, tmp)
    os.replace(tmp, path)
    return True


RNG_KEY = "rng_state"


def capture_rng_state() -> dict:
    """This process's random states, in types ``torch.load(weights_only=True)`` reads back."""
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": list(random.getstate()[1]), "python_version": random.getstate()[0],
             "python_gauss": random.getstate()[2]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict) -> None:
    """Set this process's random states to what :func:`capture_rng_state` recorded."""
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class _AtomicSaveTorch:
    """``torch`` as the trainer module sees it, except that ``save`` to a path is atomic (temporary file +
    rename) and adds the random states to training checkpoints (dicts with ``epoch`` and ``optimizer``)."""

    def __init__(self, torch_module, rng_of_ranks):
        self._torch = torch_module
        self._rng_of_ranks = rng_of_ranks  # () -> list of per-rank states or None (several processes)

    def __getattr__(self, attr):
        return getattr(self._torch, attr)

    def save(self, obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "epoch" in obj and "optimizer" in obj:
            obj[RNG_KEY] = capture_rng_state()
            ranks = self._rng_of_ranks()
            if ranks is not None:
                ranks[0] = obj[RNG_KEY]  # rank 0 (which saves) after its evaluation: its state now
                obj[RNG_KEY + "_ranks"] = ranks
        if not isinstance(f, (str, os.PathLike)):
            return self._torch.save(obj, f, *args, **kwargs)
        from clipgen.artifacts import atomic_path

        with atomic_path(f) as tmp:
            self._torch.save(obj, tmp, *args, **kwargs)
        return None


def _install_hooks(ocm, checkpoint_dir: Path, name: str) -> None:
    import torch

    create = ocm.create_model_and_transforms
    state = {"first": True}

    def create_and_save_initial(*args, **kwargs):
        from clipgen.models.registry import quiet_open_clip

        with quiet_open_clip():  # no "No pretrained weights loaded" in the trainer's log: clipgen never loads any
            out = create(*args, **kwargs)
        if state["first"]:  # the trained model; a later call would be a distillation teacher
            state["first"] = False
            if _global_rank() == 0:
                save_initial(out[0], checkpoint_dir / EPOCH0_NAME, name)
        return out

    ocm.create_model_and_transforms = create_and_save_initial

    original_latest = ocm.get_latest_checkpoint

    def get_latest_checkpoint(path: str, remote: bool):
        if remote:
            return original_latest(path, remote)
        return latest_resumable(path)

    ocm.get_latest_checkpoint = get_latest_checkpoint

    # random states: recorded with every training checkpoint, restored at the start of the first resumed epoch
    rng = {"resume": None, "ranks": None}
    original_load, original_epoch = ocm.pt_load, ocm.train_one_epoch

    def pt_load(file_path, *args, **kwargs):
        ck = original_load(file_path, *args, **kwargs)
        if isinstance(ck, dict) and "epoch" in ck:
            rng["resume"] = (int(ck["epoch"]), ck.get(RNG_KEY), ck.get(RNG_KEY + "_ranks"))
        return ck

    def train_one_epoch(model, data, loss, epoch, *args, **kwargs):
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if rng["resume"] is not None:
            ck_epoch, state, ranks = rng["resume"]
            rng["resume"] = None
            if ck_epoch == epoch:
                if distributed:
                    rank, world = dist.get_rank(), dist.get_world_size()
                    state = ranks[rank] if ranks is not None and len(ranks) == world else None
                if state is not None:
                    restore_rng_state(state)
                else:
                    logging.warning(f"the checkpoint of epoch {ck_epoch} holds no random states for this process; "
                                    f"the resumed run draws other data orders and augmentations than an "
                                    f"uninterrupted one")
        out = original_epoch(model, data, loss, epoch, *args, **kwargs)
        if distributed:  # every process's state after its epoch (the others do not evaluate: it stays until saved)
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, capture_rng_state())
            rng["ranks"] = gathered
        return out

    ocm.pt_load, ocm.train_one_epoch = pt_load, train_one_epoch
    ocm.torch = _AtomicSaveTorch(torch, lambda: list(rng["ranks"]) if rng["ranks"] is not None else None)

    ddp = torch.nn.parallel.DistributedDataParallel
    if not getattr(ddp, "_clipgen_cpu_friendly", False):
        class CpuFriendlyDDP(ddp):
            _clipgen_cpu_friendly = True

            def __init__(self, module, device_ids=None, *args, **kwargs):
                if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
                    device_ids = None
                super().__init__(module, device_ids, *args, **kwargs)

        torch.nn.parallel.DistributedDataParallel = CpuFriendlyDDP


def _single_gpu_per_task(argv: list[str]) -> list[str]:
    """Under SLURM GPU binding each task may see one GPU only: then use cuda:0, not cuda:LOCAL_RANK."""
    import torch

    local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")) or 0)
    if local > 0 and torch.cuda.is_available() and torch.cuda.device_count() <= local \
            and "--no-set-device-rank" not in argv:
        return [*argv, "--no-set-device-rank", "--device", "cuda:0"]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from clipgen.models.registry import register_configs

    register_configs()
    import open_clip_train.main as ocm
    from open_clip_train.params import parse_args

    args = parse_args(argv)
    if not args.name:
        print("clipgen.training.open_clip_entry: --name is required (the run directory is LOGS/NAME)", file=sys.stderr)
        return 2
    checkpoint_dir = Path(args.logs) / args.name / "checkpoints"
    _install_hooks(ocm, checkpoint_dir, args.name)
    if args.device.startswith("cuda"):
        argv = _single_gpu_per_task(argv)
    rc = ocm.main(argv)
    if rc == -1:
        print(f"error: open_clip_train refused to start run {Path(args.logs) / args.name} (see its message above)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through subprocesses
    sys.exit(main())
