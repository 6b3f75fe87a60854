"""Mixed precision: which autocast dtype a run uses, and a context manager that applies it.

``autocast`` settings accept ``None`` / ``"none"`` (full float32), ``"bfloat16"`` / ``"float16"`` (always,
on any device: the way to force bf16), or ``"auto"``: bfloat16 where the hardware runs it natively (a CUDA
GPU of compute capability 8.0 or newer, i.e. Ampere / Hopper and later, or a ROCm GPU; a CPU with AMX or
AVX512-BF16, where oneDNN's bf16 convolutions are about twice as fast as float32 ones, measured in
docs/results.md) and float32 everywhere else, since emulated bf16 (older GPUs such as the V100 or T4, which
``torch.cuda.is_bf16_supported()`` also accepts, and older CPUs) is slower than float32.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from collections.abc import Iterator

import torch

__all__ = ["AUTOCAST_CHOICES", "autocast_context", "cpu_has_native_bf16", "cuda_has_native_bf16", "resolve_autocast"]

AUTOCAST_CHOICES = ("none", "auto", "bfloat16", "float16")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU has bf16 matrix instructions (x86 AMX-BF16 or AVX512-BF16, read from /proc/cpuinfo)."""
    if platform.system() != "Linux":
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        return False
    return False


def cuda_has_native_bf16(device: str | torch.device = "cuda") -> bool:
    """True when ``device`` is a CUDA GPU with bf16 tensor cores (compute capability >= 8.0) or a ROCm GPU."""
    if not torch.cuda.is_available():
        return False
    if torch.version.hip:
        return True
    index = torch.device(device).index
    # torch.cuda.is_bf16_supported() also says yes where bf16 is only emulated (compute capability 7.x)
    major, _ = torch.cuda.get_device_capability(torch.cuda.current_device() if index is None else index)
    return major >= 8


def resolve_autocast(setting: str | torch.dtype | None, device: str | torch.device = "cpu") -> torch.dtype | None:
    """The autocast dtype ``setting`` means on ``device`` (None = float32); ValueError for an unknown setting."""
    if setting is None or isinstance(setting, torch.dtype):
        if setting is not None and setting not in (torch.bfloat16, torch.float16):
            raise ValueError(f"autocast dtype must be torch.bfloat16 or torch.float16, got {setting}")
        return setting
    name = str(setting).strip().lower()
    if name not in AUTOCAST_CHOICES:
        raise ValueError(f"unknown autocast setting {setting!r}; choose one of {', '.join(AUTOCAST_CHOICES)}")
    if name == "none":
        return None
    if name != "auto":
        return getattr(torch, name)
    device_type = torch.device(device).type
    if device_type == "cuda":
        return torch.bfloat16 if cuda_has_native_bf16(device) else None
    if device_type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return None


@contextlib.contextmanager
def autocast_context(device: str | torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` on ``device``'s type with ``dtype``, or nothing at all when ``dtype`` is None."""
    if dtype is None:
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=dtype):
        yield
