"""Image files for inference: expand files, folders and glob patterns into a checked list."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Sequence

__all__ = ["IMAGE_SUFFIXES", "image_file_dicts", "list_image_files"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".nrrd", ".mha", ".dcm")


def _is_image(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and any(name.endswith(s) for s in IMAGE_SUFFIXES)


def list_image_files(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Sorted image files from files, folders (searched recursively) and glob patterns.

    Raises FileNotFoundError naming the first input that does not exist and ValueError when nothing
    with a supported suffix is found.
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not items:
        raise ValueError("no input images given")
    found: list[str] = []
    for item in items:
        text = str(item)
        if any(ch in text for ch in "*?["):
            matches = [Path(p) for p in sorted(glob.glob(text, recursive=True))]
            if not matches:
                raise FileNotFoundError(f"no file matches the pattern {text}")
        else:
            p = Path(text)
            if not p.exists():
                raise FileNotFoundError(f"input not found: {p}")
            matches = sorted(q for q in p.rglob("*")) if p.is_dir() else [p]
        for m in matches:
            if _is_image(m):
                found.append(str(m))
            elif m.is_file() and not m.is_dir() and m == Path(text):
                raise ValueError(f"{m} is not a supported image file (suffixes: {', '.join(IMAGE_SUFFIXES)})")
    if not found:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(map(str, items))}")
    return found


def image_file_dicts(inputs: str | os.PathLike | Sequence[str | os.PathLike], key: str = "image") -> list[dict[str, str]]:
    """``[{key: path}, ...]`` for :func:`list_image_files`, ready for a MONAI Dataset with LoadImaged."""
    return [{key: f} for f in list_image_files(inputs)]
