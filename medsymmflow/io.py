"""Small file helpers shared by engines, reports and benchmarks, and the raster image reader of the inference bundle."""

from __future__ import annotations

import contextlib
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from monai.data import PILReader

__all__ = ["RASTER_SUFFIXES", "RasterReader", "atomic_open", "atomic_write", "json_safe"]

# The raster formats PIL decodes that RasterReader accepts (MONAI's own PILReader takes only the first four).
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """A file to write ``path`` through: a temporary file in the same folder, synced and renamed onto
    ``path`` (mode 0644) only when the block ends without error, removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_open`: readers see the old file or the new one, never part."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return Path(path)


def json_safe(value: Any) -> Any:
    """``value`` as strict-JSON-ready Python: numpy scalars / arrays -> int, float, list; NaN / inf -> None."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    return value


class RasterReader(PILReader):
    """MONAI ``PILReader`` that reads raster images (PNG, JPEG, BMP, GIF, TIFF) the way MedMNIST arrays are stored.

    * Orientation: arrays are rows x columns (height x width, ``reverse_indexing=False``), as in the
      MedMNIST npz files, after the EXIF / TIFF orientation tag is applied (the image as a viewer shows it).
      MONAI's default PIL reading gives width x height, which would transpose every image.
    * Bit depth: 1-bit images become 0 / 255, 16-bit gray images are scaled by their bit depth
      (0..65535 -> 0..255 as float32, no rounding), so every raster image arrives on the 8-bit grey scale.
      32-bit integer and floating-point images (TIFF modes ``I`` / ``F``) are passed on as stored.
    * Colour: palette images (GIF, palette PNG) become their RGB colours, CMYK / YCbCr / LAB / HSV become
      RGB; an alpha channel is dropped (gray+alpha -> gray, RGBA -> RGB): the stored values are used as
      they are, whatever their transparency.
    * An animation or a multi-page file is refused: the classifier takes one 2-D image.
    """

    _KEEP = ("L", "RGB", "F", "I")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(converter=self.normalise, reverse_indexing=False, **kwargs)

    def verify_suffix(self, filename: Any) -> bool:
        """True for file names ending in one of :data:`RASTER_SUFFIXES` (case-insensitive)."""
        names = filename if isinstance(filename, (list, tuple)) else [filename]
        return all(str(n).lower().endswith(RASTER_SUFFIXES) for n in names)

    def read(self, data: Any, **kwargs: Any) -> Any:
        """PILReader's ``read``; a file PIL cannot decode raises one ValueError saying so."""
        from PIL import UnidentifiedImageError

        try:
            return super().read(data, **kwargs)
        except UnidentifiedImageError as exc:
            raise ValueError("not a readable image (unknown format or damaged content)") from exc
        except (OSError, SyntaxError, EOFError, struct.error, zlib.error) as exc:
            # how PIL reports a cut-off or corrupted file (a missing file stays a FileNotFoundError)
            if isinstance(exc, FileNotFoundError):
                raise
            raise ValueError(f"damaged or truncated image data ({type(exc).__name__}: {exc})") from exc

    @staticmethod
    def normalise(img: Any) -> Any:
        """``img`` as one frame in mode ``L``, ``RGB``, ``F`` or ``I`` on the 8-bit grey scale (see the class notes)."""
        from PIL import Image, ImageOps

        frames = getattr(img, "n_frames", 1)
        if frames > 1:
            raise ValueError(f"it has {frames} frames (an animation or a multi-page file); give one 2-D image per file")
        mode, fmt = img.mode, img.format
        img.load()  # decode now, so that damaged data fails inside read()
        img = ImageOps.exif_transpose(img)
        if mode.startswith("I;16") or (mode == "I" and fmt == "PNG"):
            # PNG holds at most 16 bits, so an 'I' PNG (older Pillow) is a 16-bit one too
            scaled = np.asarray(img, dtype=np.float32) * np.float32(255.0 / 65535.0)
            return Image.fromarray(scaled, mode="F")
        if mode in RasterReader._KEEP:
            return img
        if mode in ("1", "LA", "La"):
            return img.convert("L")
        return img.convert("RGB")

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """PILReader's array and metadata, the array made writable (a float image is a read-only view of PIL's buffer)."""
        data, meta = super().get_data(img)
        return (data if data.flags.writeable else data.copy()), meta

    def _get_spatial_shape(self, img: Any) -> np.ndarray:
        # rows first, like the array this reader returns
        return np.asarray((img.height, img.width))
