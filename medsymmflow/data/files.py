"""Image files for inference: expand files, folders and glob patterns into a checked list; a dataset that
reports each file that cannot be read by name instead of aborting the whole run."""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from monai.data import Dataset, list_data_collate
from monai.transforms import apply_transform

from medsymmflow.errors import package_cause, root_cause
from medsymmflow.io import RASTER_SUFFIXES

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFileDataset",
    "ImageFiles",
    "collate_image_files",
    "find_image_files",
    "image_file_dicts",
    "list_image_files",
]

logger = logging.getLogger(__name__)

# Every suffix has a reader that is installed with the package and a tested orientation (see LoadImageFile).
IMAGE_SUFFIXES = RASTER_SUFFIXES + (".nii", ".nii.gz")
_SHOWN = 10  # skipped files named in the log line; predictions.json lists them all


@dataclass
class ImageFiles:
    """The image files found in some inputs, and the files of searched folders that were skipped."""

    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def find_image_files(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> ImageFiles:
    """Sorted image files from files, folders (searched recursively) and glob patterns, and what was skipped.

    Raises FileNotFoundError naming the first input that does not exist, ValueError for a file named
    directly that has no supported suffix and ValueError when nothing with a supported suffix is found.
    Files inside folders or matched by patterns that are not images are listed in ``skipped`` (and logged).
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not items:
        raise ValueError("no input images given")
    out = ImageFiles()
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
            matches = sorted(p.rglob("*")) if p.is_dir() else [p]
        for m in matches:
            if _is_image(m):
                out.files.append(str(m))
            elif m.is_file() and m == Path(text):
                raise ValueError(f"{m} is not a supported image file (suffixes: {', '.join(IMAGE_SUFFIXES)})")
            elif m.is_file():
                out.skipped.append(str(m))
    if not out.files:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(map(str, items))}")
    if out.skipped:
        shown = ", ".join(out.skipped[:_SHOWN]) + (f" and {len(out.skipped) - _SHOWN} more" if len(out.skipped) > _SHOWN else "")
        logger.warning(
            "skipped %d file(s) without an image suffix (%s): %s", len(out.skipped), ", ".join(IMAGE_SUFFIXES), shown
        )
    return out


def list_image_files(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Sorted image files from files, folders (searched recursively) and glob patterns (see :func:`find_image_files`)."""
    return find_image_files(inputs).files


def image_file_dicts(
    inputs: str | os.PathLike | Sequence[str | os.PathLike] | ImageFiles, key: str = "image"
) -> list[dict[str, str]]:
    """``[{key: path}, ...]`` for the found image files, ready for :class:`ImageFileDataset` with LoadImageFiled."""
    found = inputs if isinstance(inputs, ImageFiles) else find_image_files(inputs)
    return [{key: f} for f in found.files]


def _reason(exc: BaseException) -> str:
    """One line saying why a file failed: medsymmflow's own message if it raised one, else the innermost error."""
    cause = package_cause(exc) or root_cause(exc)
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


class ImageFileDataset(Dataset):
    """MONAI ``Dataset`` over ``{key: path}`` dicts whose items that fail to load or transform become failure records.

    A failing item is returned as ``{"failed": {"file": path, "error": reason}}`` (reason: one line, the
    innermost error) so one unreadable file does not abort the others; :func:`collate_image_files`
    separates such records from the images of a batch.
    """

    def __init__(self, data: Sequence[dict], transform: Callable | None = None, key: str = "image") -> None:
        super().__init__(data=data, transform=transform)
        self.key = key

    def _transform(self, index: int) -> Any:
        item = self.data[index]
        try:
            return apply_transform(self.transform, item) if self.transform is not None else item
        except Exception as exc:  # noqa: BLE001 - any failure of one file is reported with that file, the rest go on
            return {"failed": {"file": str(item.get(self.key, index)), "error": _reason(exc)}}


def collate_image_files(batch: Sequence[dict]) -> dict[str, Any]:
    """MONAI's ``list_data_collate`` of the readable items, plus ``"failed"``: the failure records, in order."""
    failed = [item["failed"] for item in batch if "failed" in item]
    good = [item for item in batch if "failed" not in item]
    out: dict[str, Any] = dict(list_data_collate(good)) if good else {}
    out["failed"] = failed
    return out
