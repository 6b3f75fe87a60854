"""Batch-level image augmentation in torch: random flips and small random translations.

Training loops here hold each split as one in-memory tensor and draw whole batches from it, so
augmentation runs on a ``(B, C, H, W)`` batch at once instead of through per-item Python
transforms. MONAI's and torchvision's random transforms draw one set of parameters per call, which
would move every image of a batch the same way; here every image gets its own flip and shift.
The same function serves the ResNet baseline and the SymmFlow trainer, so both see the same
augmentation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medsymmflow.checks import float_image_batch

__all__ = ["BatchAugment", "batch_augment"]

_PADDING_MODES = ("replicate", "reflect", "constant")


def _check_settings(max_shift: int, padding_mode: str) -> None:
    """Raise a clear error for a negative or non-int ``max_shift`` or an unknown ``padding_mode``."""
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift must be an int >= 0, got {max_shift!r}")
    if padding_mode not in _PADDING_MODES:
        raise ValueError(f"unknown padding_mode {padding_mode!r}; choose one of {', '.join(_PADDING_MODES)}")


def _random_shift(
    images: torch.Tensor, max_shift: int, padding_mode: str, fill: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Translate every image by its own integer offset in ``[-max_shift, max_shift]`` (pad, then crop)."""
    b, c, h, w = images.shape
    if padding_mode == "constant":
        padded = F.pad(images, (max_shift,) * 4, mode="constant", value=fill)
    else:
        padded = F.pad(images, (max_shift,) * 4, mode=padding_mode)
    offsets = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator, device=images.device)
    rows = torch.arange(h, device=images.device)[None, :, None] + offsets[0][:, None, None]  # (B, H, 1)
    cols = torch.arange(w, device=images.device)[None, None, :] + offsets[1][:, None, None]  # (B, 1, W)
    batch = torch.arange(b, device=images.device)[:, None, None]
    # advanced indexing on (B, H', W', C) gathers one crop window per image in a single op
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def batch_augment(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    hflip: bool = True,
    vflip: bool = False,
    max_shift: int = 2,
    padding_mode: str = "replicate",
    fill: float = -1.0,
) -> torch.Tensor:
    """Randomly flip and translate each image of a ``(B, C, H, W)`` batch; returns a new tensor.

    ``hflip`` / ``vflip``: flip each image left-right / up-down with probability 1/2. ``max_shift``:
    translate each image by a uniform integer offset in ``[-max_shift, max_shift]`` pixels per axis,
    filling the uncovered border by ``padding_mode`` (``"replicate"``, ``"reflect"`` or ``"constant"``
    with value ``fill``; -1 is black in [-1, 1] units). ``generator`` makes the draws reproducible; it
    must live on the images' device. The input is never modified.
    """
    float_image_batch(images, "images")
    _check_settings(max_shift, padding_mode)
    if padding_mode == "reflect" and max_shift >= min(images.shape[-2:]):
        raise ValueError(f"reflect padding needs max_shift < image size {tuple(images.shape[-2:])}, got {max_shift}")
    b = images.shape[0]
    out = images
    if hflip:
        mask = torch.rand(b, generator=generator, device=images.device) < 0.5
        out = torch.where(mask[:, None, None, None], out.flip(-1), out)
    if vflip:
        mask = torch.rand(b, generator=generator, device=images.device) < 0.5
        out = torch.where(mask[:, None, None, None], out.flip(-2), out)
    if max_shift > 0:
        out = _random_shift(out, max_shift, padding_mode, fill, generator)
    return out if out is not images else images.clone()


class BatchAugment:
    """:func:`batch_augment` with fixed settings, as a callable a config or bundle can build by name."""

    def __init__(
        self,
        hflip: bool = True,
        vflip: bool = False,
        max_shift: int = 2,
        padding_mode: str = "replicate",
        fill: float = -1.0,
    ) -> None:
        # validate once at construction so a bad bundle setting fails before training starts
        _check_settings(max_shift, padding_mode)
        self.hflip, self.vflip, self.max_shift = bool(hflip), bool(vflip), int(max_shift)
        self.padding_mode, self.fill = padding_mode, float(fill)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a ``(B, C, H, W)`` batch."""
        return batch_augment(
            images,
            generator=generator,
            hflip=self.hflip,
            vflip=self.vflip,
            max_shift=self.max_shift,
            padding_mode=self.padding_mode,
            fill=self.fill,
        )

    def __repr__(self) -> str:
        return (
            f"BatchAugment(hflip={self.hflip}, vflip={self.vflip}, max_shift={self.max_shift}, "
            f"padding_mode={self.padding_mode!r}, fill={self.fill})"
        )
