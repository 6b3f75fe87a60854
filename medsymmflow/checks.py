"""Validators shared by the library objects and the bundle settings check: one definition of each rule.

Each takes the value and the name to report it under (a parameter name in the library, a setting
such as ``evaluation#runs`` in a bundle) and returns the value in its working type, or raises a
ValueError that names it, e.g. ``evaluation#runs must be an integer >= 1, got 0``.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "available_device",
    "boolean",
    "float_image_batch",
    "fraction",
    "nonnegative_float",
    "nonnegative_int",
    "one_of",
    "output_folder",
    "positive_float",
    "positive_int",
]


def _integer(value: Any, name: str, low: int) -> int:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok and isinstance(value, float) and value.is_integer():
        ok = True  # 2.0 from a YAML / JSON file means 2
    if not ok or int(value) < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def positive_int(value: Any, name: str) -> int:
    """``value`` as an int >= 1."""
    return _integer(value, name, 1)


def nonnegative_int(value: Any, name: str) -> int:
    """``value`` as an int >= 0."""
    return _integer(value, name, 0)


def _number(value: Any, name: str, positive: bool) -> float:
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}") from None
    if not math.isfinite(number) or not (number > 0 if positive else number >= 0):
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return number


def positive_float(value: Any, name: str) -> float:
    """``value`` as a finite float > 0 (NaN and infinity are refused)."""
    return _number(value, name, positive=True)


def nonnegative_float(value: Any, name: str) -> float:
    """``value`` as a finite float >= 0."""
    return _number(value, name, positive=False)


def fraction(value: Any, name: str) -> float:
    """``value`` as a float in [0, 1]; a bool, a string or anything outside the interval is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def boolean(value: Any, name: str) -> bool:
    """``value`` as a bool: True / False or the strings MONAI's ``str2bool`` reads (true, yes, 1, false, no, 0)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "t", "y", "1"):
        return True
    if text in ("false", "no", "f", "n", "0"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def float_image_batch(value: Any, name: str, what: str = "") -> torch.Tensor:
    """``value`` when it is a floating-point torch tensor of shape ``(B, C, H, W)``; ``what`` adds the expected range to the message."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(value.shape)}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be floating point{what}, got dtype {value.dtype}")
    return value


def one_of(value: Any, choices: Collection[Any], name: str) -> Any:
    """``value`` when it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(str, choices))}")
    return value


def available_device(device: Any, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` this machine has; ValueError when it does not (e.g. CUDA without a GPU)."""
    try:
        dev = device if isinstance(device, torch.device) else torch.device(str(device))
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"{name} {device!r} is not a torch device ({e})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} is {str(device)!r} but CUDA is not available on this machine; use cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"{name} is {str(device)!r} but this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name} is {str(device)!r} but MPS is not available on this machine; use cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{name} {str(device)!r} is not supported; use cpu or cuda")
    return dev


def output_folder(path: Any, name: str = "output_dir") -> Path:
    """``path`` when a folder can be created or written there: not a file, nor below one."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"{name} must be a folder path, got {path!r}")
    folder = Path(path)
    for part in (folder, *folder.parents):
        if part.exists():
            if not part.is_dir():
                where = "" if part == folder else f" ({part} is a file)"
                raise ValueError(f"{name} {str(folder)!r} is not a folder{where}; choose another folder")
            if not os.access(part, os.W_OK | os.X_OK):
                raise ValueError(f"{name} {str(folder)!r} cannot be written: no write permission on {part}")
            break
    return folder
