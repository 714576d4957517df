"""Device and precision choices shared by every command that runs a model."""

from __future__ import annotations

import contextlib

from clipgen.errors import ConfigFieldError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: What ``--precision auto`` gives on a GPU for each model kind. The evaluation follows the published scripts:
#: CLIP models ran entirely in fp16 (``OpenCLIP.from_pretrained`` loads them in fp16, inputs ``.half()``), whose
#: nearest clipgen setting is fp16 autocast; the supervised classifiers ran in fp32 (loaded with
#: ``precision='fp32'``, no autocast). ``None``: every other command (bf16 autocast).
AUTO_GPU_PRECISION: dict[str | None, str] = {None: "bf16", "clip": "fp16", "supervised": "fp32"}


def resolve_device(spec: str = "auto", field: str = "device"):
    """``auto`` -> cuda if present else cpu; ``cuda[:N]`` where no GPU exists is an error, not a fallback."""
    import torch

    s = (spec or "auto").strip().lower()
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if s.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigFieldError(field, f"{spec!r} requested but no CUDA GPU is available (use --device cpu)")
        dev = torch.device(s)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigFieldError(field, f"{spec!r}: only {torch.cuda.device_count()} GPU(s) present")
        return dev
    if s == "cpu":
        return torch.device("cpu")
    if s == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigFieldError(field, "'mps' requested but not available")
        return torch.device("mps")
    raise ConfigFieldError(field, f"unknown device {spec!r} (auto, cpu, cuda, cuda:N)")


def resolve_precision(spec: str, device, field: str = "precision", kind: str | None = None) -> str:
    """``auto`` -> fp32 on CPU; on a GPU :data:`AUTO_GPU_PRECISION` of ``kind`` (the evaluation's ``clip``: fp16
    autocast, ``supervised``: fp32, as the published scripts ran them; otherwise bf16 autocast)."""
    if kind not in AUTO_GPU_PRECISION:
        raise ValueError(f"unknown model kind {kind!r} (one of {', '.join(map(str, AUTO_GPU_PRECISION))})")
    s = (spec or "auto").lower()
    if s not in PRECISIONS:
        raise ConfigFieldError(field, f"unknown precision {spec!r} (one of {', '.join(PRECISIONS)})")
    if s == "auto":
        return AUTO_GPU_PRECISION[kind] if getattr(device, "type", str(device)) == "cuda" else "fp32"
    if s in ("bf16", "fp16") and getattr(device, "type", str(device)) == "cpu" and s == "fp16":
        raise ConfigFieldError(field, "fp16 autocast is not supported on CPU (use fp32 or bf16)")
    return s


def autocast(device, precision: str):
    """An autocast context for ``precision`` (a no-op for fp32)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=getattr(device, "type", str(device)), dtype=dtype)


def available_ram(meminfo: str = "/proc/meminfo") -> int:
    """Bytes of RAM available to new allocations: ``MemAvailable`` (free memory plus reclaimable page cache), else
    the free pages, else 8 GiB."""
    import os

    try:
        with open(meminfo, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def default_memory_gb(device) -> float:
    """Memory that the models of one evaluation pass may take on ``device`` (GiB): half the free memory of a GPU,
    a quarter of the available RAM on CPU."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return free / 2 / 2**30
    return available_ram() / 4 / 2**30


def check_memory_gb(memory_gb: float | None, device, field: str = "memory_gb") -> float:
    """``memory_gb`` when given (must be positive), else :func:`default_memory_gb`."""
    if memory_gb is None:
        return default_memory_gb(device)
    if not memory_gb > 0:
        raise ConfigFieldError(field, f"must be a positive number of GiB, not {memory_gb}")
    return float(memory_gb)


def available_cpus() -> int:
    """CPU cores this process may use: its affinity mask (``os.sched_getaffinity``), capped by SLURM's
    ``SLURM_CPUS_PER_TASK`` when set."""
    import os

    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        n = min(n, int(slurm))
    return max(1, n)


#: Most data-loading processes chosen by default (more rarely pays off for one GPU).
MAX_DEFAULT_WORKERS = 16


def default_workers(cpus: int | None = None) -> int:
    """Data-loading processes by default: one less than ``cpus`` (default :func:`available_cpus`; the main process
    feeds the model), at most :data:`MAX_DEFAULT_WORKERS`; 0 (load in the main process) on a single core."""
    return max(0, min(MAX_DEFAULT_WORKERS, (available_cpus() if cpus is None else int(cpus)) - 1))


def resolve_workers(workers: int | None, field: str = "workers") -> int:
    """``workers`` when given (0 or more), else :func:`default_workers`."""
    if workers is None:
        return default_workers()
    if workers < 0:
        raise ConfigFieldError(field, f"must be 0 or more, not {workers}")
    return int(workers)
