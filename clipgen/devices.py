"""Device and precision choices shared by every command that runs a model."""

from __future__ import annotations

import contextlib

from clipgen.errors import option_error

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: What ``--precision auto`` gives on a GPU for each model kind. The evaluation follows the published scripts:
#: CLIP models ran entirely in fp16 (``OpenCLIP.from_pretrained`` loads them in fp16, inputs ``.half()``), whose
#: nearest clipgen setting is fp16 autocast; the supervised classifiers ran in fp32 (loaded with
#: ``precision='fp32'``, no autocast). ``None``: every other command (bf16 autocast).
AUTO_GPU_PRECISION: dict[str | None, str] = {None: "bf16", "clip": "fp16", "supervised": "fp32"}


def resolve_device(spec: str = "auto", option: str = "--device"):
    """``auto`` -> cuda if present else cpu; ``cuda[:N]`` where no GPU exists is an error, not a fallback."""
    import torch

    s = (spec or "auto").strip().lower()
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if s.startswith("cuda"):
        if not torch.cuda.is_available():
            raise option_error(option, f"{spec!r} requested but no CUDA GPU is available (use --device cpu)")
        dev = torch.device(s)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise option_error(option, f"{spec!r}: only {torch.cuda.device_count()} GPU(s) present")
        return dev
    if s == "cpu":
        return torch.device("cpu")
    if s == "mps":
        if not torch.backends.mps.is_available():
            raise option_error(option, "'mps' requested but not available")
        return torch.device("mps")
    raise option_error(option, f"unknown device {spec!r} (auto, cpu, cuda, cuda:N)")


def resolve_precision(spec: str, device, option: str = "--precision", kind: str | None = None) -> str:
    """``auto`` -> fp32 on CPU; on a GPU :data:`AUTO_GPU_PRECISION` of ``kind`` (the evaluation's ``clip``: fp16
    autocast, ``supervised``: fp32, as the published scripts ran them; otherwise bf16 autocast)."""
    if kind not in AUTO_GPU_PRECISION:
        raise ValueError(f"unknown model kind {kind!r} (one of {', '.join(map(str, AUTO_GPU_PRECISION))})")
    s = (spec or "auto").lower()
    if s not in PRECISIONS:
        raise option_error(option, f"unknown precision {spec!r} (one of {', '.join(PRECISIONS)})")
    if s == "auto":
        return AUTO_GPU_PRECISION[kind] if getattr(device, "type", str(device)) == "cuda" else "fp32"
    if s in ("bf16", "fp16") and getattr(device, "type", str(device)) == "cpu" and s == "fp16":
        raise option_error(option, "fp16 autocast is not supported on CPU (use fp32 or bf16)")
    return s


def autocast(device, precision: str):
    """An autocast context for ``precision`` (a no-op for fp32)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=getattr(device, "type", str(device)), dtype=dtype)
