"""The bottom layer's file helpers: atomic writes, strict JSON, weights-only checkpoint loading, 8-bit image conversion, the raster reader.

Everything above (networks, generation, metrics, engines) reads checkpoints and converts images through
these functions, so this module imports nothing of medsymmflow but :mod:`medsymmflow.checks`.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import struct
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from monai.data import PILReader

from medsymmflow.checks import available_device

__all__ = [
    "LABEL_MAP_SUFFIXES",
    "LabelMapReader",
    "RASTER_SUFFIXES",
    "RasterReader",
    "RunInfo",
    "atomic_open",
    "atomic_write",
    "check_checkpoint",
    "check_uint8_images",
    "json_safe",
    "load_checkpoint",
    "to_float_images",
    "to_uint8_images",
]

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


def to_uint8_images(images: torch.Tensor) -> np.ndarray:
    """Float images ``(N, C, H, W)`` in [-1, 1] -> uint8 ``(N, H, W, C)``; values outside are clipped.

    The inverse of MedMNIST's ``v / 127.5 - 1``: ``round((x + 1) * 127.5)``, so real test images
    make the round trip exactly.
    """
    images = torch.as_tensor(images)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point in [-1, 1], got dtype {images.dtype}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values (the sampler diverged)")
    scaled = ((images.detach().float().cpu() + 1.0) * 127.5).round().clamp_(0, 255)
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def to_float_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images ``(N, H, W, C)`` -> float32 ``(N, C, H, W)`` in [-1, 1] (the package's convention)."""
    images = check_uint8_images(images)
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def check_uint8_images(images: np.ndarray | torch.Tensor, name: str = "images") -> np.ndarray:
    """``images`` as a uint8 numpy array ``(N, H, W, C)``; TypeError / ValueError naming the problem."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8 (N, H, W, C), got dtype {images.dtype}; see to_uint8_images")
    if images.ndim != 4:
        raise ValueError(f"{name} must have shape (N, H, W, C), got {images.shape}")
    return images


class RunInfo:
    """What a checkpoint was trained on; loading a checkpoint of another dataset, codebook or VAE fails clearly.

    ``vae`` is optional: ``"none"`` for a pixel-space run, the :attr:`LatentCodec.identity` of a latent
    one; checkpoints written before it existed count as ``"none"``. So is ``decoupled_time`` (whether the
    network has a second time input for the label, ``training#time_decoupled > 0``; older checkpoints count
    as False): a checkpoint loads only into a network of its own kind. Other extra keys are stored, not checked;
    one given as None is left out (a bundle's ``vae_source`` of a pixel-space run).
    """

    KEYS = ("flag", "num_classes", "code_kind", "image_channels", "code_channels", "size", "net_preset")
    OPTIONAL = {"vae": "none", "decoupled_time": False}

    def __init__(self, **info: Any) -> None:
        missing = [k for k in self.KEYS if k not in info]
        if missing:
            raise ValueError(f"RunInfo needs {', '.join(missing)}")
        info = self.OPTIONAL | {k: v for k, v in info.items() if not (k in self.OPTIONAL and v is None)}
        self.info = {k: info[k] for k in self.KEYS} | {k: v for k, v in info.items() if k not in self.KEYS and v is not None}

    def state_dict(self) -> dict[str, Any]:
        """The run identity as plain values (safe for ``torch.load(weights_only=True)``)."""
        return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in self.info.items()}

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Check that a checkpoint's run identity matches this run; raise ValueError naming the difference."""
        if not isinstance(state, Mapping) or not any(k in state for k in self.KEYS):
            raise ValueError(
                "the checkpoint's run identity (run_info) is empty or not a dict; it was not written by a medsymmflow bundle"
            )
        expected = {k: state.get(k) for k in self.KEYS} | {k: state.get(k, v) for k, v in self.OPTIONAL.items()}
        differing = [k for k, v in expected.items() if str(v) != str(self.info[k])]
        diffs = [f"{k}: checkpoint {expected[k]!r} vs this run {self.info[k]!r}" for k in differing]
        if diffs:
            raise ValueError(
                "the checkpoint was trained for a different dataset, codebook or VAE ("
                + "; ".join(diffs)
                + "). Point --ckpt_path at a checkpoint of this dataset or change the overrides to match it"
                + (" (decoupled_time is on when training#time_decoupled > 0)." if "decoupled_time" in differing else ".")
            )


def _unreadable(path: Path, exc: Exception) -> ValueError:
    """A ValueError saying why ``path`` is no weights-only torch checkpoint, never relaying torch's advice.

    torch's own message for a file it refuses suggests retrying with ``weights_only=False``, which would
    run whatever code the file holds: medsymmflow never does that, so the message is not passed on.
    """
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    if found:
        return ValueError(
            f"checkpoint {path} holds pickled Python objects ({found.group(1)}), not only tensors and plain values; "
            "medsymmflow loads weights only and never runs code from a file"
        )
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        reason = "it is empty"
    elif head.startswith(b"PK"):
        reason = "its zip archive is truncated or damaged"
    else:
        reason = "it is not a torch checkpoint (neither a zip archive nor a pickle of tensors)"
    return ValueError(f"checkpoint {path} could not be read: {reason}; use a .pt file a medsymmflow bundle wrote")


def check_checkpoint(checkpoint: Mapping[str, Any], load_dict: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Raise ValueError naming ``path`` when ``checkpoint`` lacks an entry of ``load_dict`` or a network's tensors differ in shape."""
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"checkpoint {path} holds a {type(checkpoint).__name__}, not the dict of states a medsymmflow bundle writes")
    missing = [k for k in load_dict if k not in checkpoint]
    if "run_info" in missing:
        raise ValueError(
            f"checkpoint {path} has no run identity (run_info: dataset, codebook, network preset); it was not written "
            "by a medsymmflow bundle, so it cannot be checked against this run"
        )
    if missing:
        raise ValueError(f"checkpoint {path} lacks {', '.join(map(repr, missing))} (it holds {', '.join(map(repr, checkpoint))})")
    identity = load_dict.get("run_info")
    if isinstance(identity, RunInfo):
        # another dataset, codebook or VAE explains misfitting tensors: name it first
        identity.load_state_dict(checkpoint["run_info"])
    for key, obj in load_dict.items():
        if not isinstance(obj, torch.nn.Module):
            continue
        stored = checkpoint[key]
        if not isinstance(stored, Mapping):
            raise ValueError(f"checkpoint {path}: {key!r} is a {type(stored).__name__}, not a state dict")
        expected = obj.state_dict()
        absent = [k for k in expected if k not in stored]
        extra = [k for k in stored if k not in expected]
        if absent or extra:
            raise ValueError(
                f"checkpoint {path}: {key!r} does not fit this network ({len(absent)} tensor(s) missing, e.g. "
                f"{(absent or ['-'])[0]}; {len(extra)} unexpected, e.g. {(extra or ['-'])[0]}); check --net_preset"
            )
        for name, tensor in expected.items():
            value = stored[name]
            if isinstance(value, torch.Tensor) and value.shape != tensor.shape:
                raise ValueError(
                    f"checkpoint {path}: {key}.{name} has shape {tuple(value.shape)} but this network's has "
                    f"{tuple(tensor.shape)}; check --net_preset and the dataset settings"
                )


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", load_dict: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with one clear error for a missing, corrupt or foreign file.

    The device is checked first (a CUDA map_location without a GPU is the machine's problem, not the
    file's); with ``load_dict`` the entries and network shapes are checked too (see :func:`check_checkpoint`).
    """
    path = Path(path)
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        available_device(map_location)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated / foreign files
        raise _unreadable(path, e) from None
    if load_dict is not None:
        check_checkpoint(checkpoint, load_dict, path)
    return checkpoint


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


# Lossless raster formats a label map may be stored in (a JPEG would blur class indices at every edge).
LABEL_MAP_SUFFIXES = (".png", ".bmp", ".gif", ".tif", ".tiff")


class LabelMapReader(RasterReader):
    """:class:`RasterReader` for label maps: every pixel value is a class index, read rows first as stored.

    Unlike images, palette PNGs (CelebAMask-HQ's 'P' masks) keep their palette *indices* (the class), 16-bit
    and 32-bit integer maps keep their values (no rescaling), and an RGB file whose three channels are equal
    (a gray map saved as RGB) gives one of them. A colour label image (RGB with differing channels: class
    colours, not indices), a floating-point map and a JPEG raise a ValueError saying so.
    """

    def read(self, data: Any, **kwargs: Any) -> Any:
        """RasterReader's ``read``, refusing JPEG files (lossy compression changes class indices)."""
        names = data if isinstance(data, (list, tuple)) else [data]
        lossy = [str(n) for n in names if not str(n).lower().endswith(LABEL_MAP_SUFFIXES)]
        if lossy:
            raise ValueError(
                f"label map {lossy[0]} is not in a lossless format ({', '.join(LABEL_MAP_SUFFIXES)}); "
                "JPEG compression changes class indices"
            )
        return super().read(data, **kwargs)

    @staticmethod
    def normalise(img: Any) -> Any:
        """``img`` as one frame of class indices (mode ``L`` or ``I``); colour or floating-point maps raise."""
        from PIL import Image

        frames = getattr(img, "n_frames", 1)
        if frames > 1:
            raise ValueError(f"it has {frames} frames; a label map is one 2-D image")
        img.load()
        mode = img.mode
        if mode in ("L", "P", "1"):
            return Image.fromarray(np.asarray(img, dtype=np.uint8), mode="L")  # 'P': the palette index is the class
        if mode.startswith("I"):
            return Image.fromarray(np.asarray(img, dtype=np.int32), mode="I")
        if mode in ("LA", "PA"):
            return Image.fromarray(np.asarray(img.getchannel(0), dtype=np.uint8), mode="L")
        if mode in ("RGB", "RGBA"):
            rgb = np.asarray(img.convert("RGB"))
            if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
                return Image.fromarray(np.ascontiguousarray(rgb[..., 0]), mode="L")
            raise ValueError(
                "it is a colour image (RGB channels differ), not a map of class indices; convert class colours "
                "to indices first"
            )
        raise ValueError(f"its pixel mode {mode!r} holds no class indices (expected an 8/16/32-bit integer or palette image)")
