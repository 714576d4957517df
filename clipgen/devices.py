"""Device and precision choices shared by every command that runs a model."""

from __future__ import annotations

import contextlib

from clipgen.errors import option_error

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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


def resolve_precision(spec: str, device, option: str = "--precision") -> str:
    """``auto`` -> fp32 on CPU, bf16 autocast on GPU."""
    s = (spec or "auto").lower()
    if s not in PRECISIONS:
        raise option_error(option, f"unknown precision {spec!r} (one of {', '.join(PRECISIONS)})")
    if s == "auto":
        return "bf16" if getattr(device, "type", str(device)) == "cuda" else "fp32"
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
