"""Tiny synthetic MedMNIST files in the official npz format, and synthetic segmentation folders, for tests and smoke runs.

Segmentation (:func:`write_synthetic_segmentation`): ``images/<id>.png`` (RGB) and ``masks/<id>.png`` (class
indices), the pairs layout :func:`~medsymmflow.data.celebamask_hq_dicts` reads, or with ``layout="cocostuff"``
``images/<id>.jpg`` and ``labels/<id>.png`` holding COCO-Stuff label values (id - 1, 255 = unlabelled), the
pairs layout :func:`~medsymmflow.data.cocostuff_dicts` reads. Class 0 is a striped, noisy background; each
other class is a shape (disc, square or diamond, by class) in its own colour, placed at random, so a
pixel's class follows from its colour and its neighbourhood.

The file has medmnist's keys in medmnist's order (``train_images, val_images, test_images,
train_labels, val_labels, test_labels``), uint8 images ``N x H x W`` (gray) or ``N x H x W x 3`` (RGB,
following the flag's ``n_channels``) and uint8 labels ``(N, 1)`` over the flag's classes. Each class
has its own background brightness, a bright blob at its own angle around the centre and, for RGB, its
own tint; per-image noise on top keeps the task learnable but not trivial.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medsymmflow.data.cocostuff import COCOSTUFF_IGNORE_INDEX, COCOSTUFF_USED_VALUES
from medsymmflow.data.medmnist import MEDMNIST_SPLITS, medmnist_filename, medmnist_info

__all__ = [
    "SYNTHETIC_SEGMENTATION_LAYOUTS",
    "synthetic_class_templates",
    "synthetic_segmentation_colours",
    "write_synthetic_medmnist",
    "write_synthetic_segmentation",
]


def synthetic_class_templates(num_classes: int, size: int = 28, channels: int = 1) -> np.ndarray:
    """Noise-free class patterns, float ``(num_classes, size, size, channels)`` in grey levels [0, 255]."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    grid = np.arange(size, dtype=np.float64) + 0.5
    rows, cols = np.meshgrid(grid, grid, indexing="ij")
    centre, radius, sigma = size / 2.0, size / 4.0, size / 8.0
    templates = np.empty((num_classes, size, size, channels), dtype=np.float64)
    for k in range(num_classes):
        angle = 2.0 * math.pi * k / num_classes
        blob = np.exp(
            -((rows - centre - radius * math.sin(angle)) ** 2 + (cols - centre - radius * math.cos(angle)) ** 2)
            / (2.0 * sigma**2)
        )
        gray = 50.0 + 110.0 * k / (num_classes - 1) + 90.0 * blob
        for c in range(channels):
            # a class-specific tint keeps RGB classes apart in colour too (channel phases 120 degrees apart)
            tint = 1.0 if channels == 1 else 0.75 + 0.25 * math.cos(angle + 2.0 * math.pi * c / 3.0)
            templates[k, :, :, c] = gray * tint
    return templates


def _labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Labels cycling through all classes (each class present once n >= num_classes), shuffled."""
    return rng.permutation(np.arange(n) % num_classes).astype(np.uint8)


def write_synthetic_medmnist(
    directory: str | os.PathLike,
    flag: str = "pneumoniamnist",
    n_train: int = 64,
    n_val: int = 16,
    n_test: int = 16,
    size: int = 28,
    seed: int = 0,
    noise_std: float = 12.0,
) -> Path:
    """Write ``<directory>/<flag>[_<size>].npz`` with synthetic class-dependent images; return its path.

    The class count and channel count come from medmnist's INFO for ``flag``; the same ``seed`` gives
    the same bytes of data. ``noise_std`` is the per-pixel Gaussian noise in grey levels.
    """
    info = medmnist_info(flag)
    filename = medmnist_filename(flag, size)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for split, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"n_{split} must be an int, got {type(n).__name__}")
        if n < 1:
            raise ValueError(f"n_{split} must be >= 1, got {n}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    num_classes = len(info["label"])
    channels = int(info["n_channels"])
    templates = synthetic_class_templates(num_classes, size, channels)
    rng = np.random.default_rng(seed)

    arrays: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    for split in MEDMNIST_SPLITS:
        y = _labels(int(counts[split]), num_classes, rng)
        shift = rng.normal(0.0, 6.0, size=(len(y), 1, 1, 1))  # per-image brightness jitter
        noise = rng.normal(0.0, noise_std, size=(len(y), size, size, channels))
        x = np.clip(np.rint(templates[y] + shift + noise), 0, 255).astype(np.uint8)
        arrays[f"{split}_images"] = x[..., 0] if channels == 1 else x
        labels[f"{split}_labels"] = y.reshape(-1, 1)

    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    # np.savez_compressed writes keyword arrays in insertion order: images of every split, then labels
    np.savez_compressed(path, **arrays, **labels)
    return path


def synthetic_segmentation_colours(num_classes: int) -> np.ndarray:
    """The mean RGB colour (grey levels) of each foreground class 1..K-1, hues evenly spread; row 0 is the background's mean grey."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    colours = [(128.0, 128.0, 128.0)]
    for k in range(1, num_classes):
        hue = 2.0 * math.pi * (k - 1) / (num_classes - 1)
        colours.append(tuple(128.0 + 100.0 * math.cos(hue + 2.0 * math.pi * c / 3.0) for c in range(3)))
    return np.asarray(colours)


# layout -> (label-map folder, image suffix): the pairs layouts of the two segmentation datasets
SYNTHETIC_SEGMENTATION_LAYOUTS = {"celebamask": ("masks", ".png"), "cocostuff": ("labels", ".jpg")}


def _label_values(layout: str, num_classes: int, classes: Sequence[int] | None) -> list[int]:
    """The value each synthetic class ``k`` is written as in the label maps (see :func:`write_synthetic_segmentation`)."""
    if layout == "cocostuff":
        pool = len(COCOSTUFF_USED_VALUES)
        chosen = np.round(np.linspace(0, pool - 1, num_classes)).astype(int).tolist() if classes is None else list(classes)
    else:
        pool = COCOSTUFF_IGNORE_INDEX  # any 8-bit value but the unlabelled one
        chosen = list(range(num_classes)) if classes is None else list(classes)
    if len(chosen) != num_classes or len(set(chosen)) != num_classes or not all(
        isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < pool for c in chosen
    ):
        raise ValueError(f"classes must be {num_classes} distinct class indices in 0..{pool - 1}, got {classes!r}")
    return [int(COCOSTUFF_USED_VALUES[c]) for c in chosen] if layout == "cocostuff" else [int(c) for c in chosen]


def write_synthetic_segmentation(
    directory: str | os.PathLike,
    n: int = 8,
    size: int = 32,
    num_classes: int = 4,
    seed: int = 0,
    shapes_per_image: int = 2,
    noise_std: float = 10.0,
    layout: str = "celebamask",
    classes: Sequence[int] | None = None,
    unlabelled_border: int = 0,
) -> Path:
    """Write ``n`` image / label-map pairs of ``size`` px into ``directory`` in a dataset's pairs ``layout``; return ``directory``.

    Every image has the striped background (synthetic class 0, random stripe angle and phase) and
    ``shapes_per_image`` shapes of random foreground classes, sizes and places (a later shape covers an
    earlier one), plus per-pixel Gaussian noise of ``noise_std`` grey levels. The same ``seed`` gives the same
    files. ``layout``: ``"celebamask"`` writes ``images/<id>.png`` and ``masks/<id>.png`` holding class
    indices; ``"cocostuff"`` writes ``images/<id>.jpg`` and ``labels/<id>.png`` holding COCO-Stuff label
    values (class ``c`` as ``COCOSTUFF_USED_VALUES[c]``, the id minus one). ``classes``: the dataset class of
    each synthetic class (default ``0..num_classes-1``; for COCO-Stuff classes spread evenly over the 171, so
    the remap of the unused ids is exercised). ``unlabelled_border``: a frame of that many pixels marked 255
    (unlabelled) in the label maps.
    """
    from PIL import Image

    for name, value, low in (("n", n, 1), ("size", size, 8), ("num_classes", num_classes, 2), ("shapes_per_image", shapes_per_image, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    if layout not in SYNTHETIC_SEGMENTATION_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(SYNTHETIC_SEGMENTATION_LAYOUTS)}")
    if isinstance(unlabelled_border, bool) or not isinstance(unlabelled_border, (int, np.integer)) or not 0 <= unlabelled_border < size / 2:
        raise ValueError(f"unlabelled_border must be an int in 0..{math.ceil(size / 2) - 1}, got {unlabelled_border!r}")
    values = np.asarray(_label_values(layout, num_classes, classes), dtype=np.uint8)
    label_folder, image_suffix = SYNTHETIC_SEGMENTATION_LAYOUTS[layout]
    rng = np.random.default_rng(seed)
    colours = synthetic_segmentation_colours(num_classes)
    rows, cols = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    out = Path(directory)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / label_folder).mkdir(parents=True, exist_ok=True)
    width = len(str(n - 1))
    for i in range(n):
        angle, phase = rng.uniform(0, math.pi), rng.uniform(0, 2 * math.pi)
        stripes = np.sin((rows * math.cos(angle) + cols * math.sin(angle)) * (2 * math.pi / max(4.0, size / 4)) + phase)
        image = np.repeat((colours[0][0] + 40.0 * stripes)[..., None], 3, axis=2)
        label = np.zeros((size, size), dtype=np.uint8)
        for _ in range(shapes_per_image):
            k = int(rng.integers(1, num_classes))
            radius = rng.uniform(size / 8, size / 4)
            cy, cx = rng.uniform(radius, size - radius, size=2)
            dy, dx = rows - cy, cols - cx
            kind = (k - 1) % 3
            if kind == 0:
                inside = dy**2 + dx**2 <= radius**2
            elif kind == 1:
                inside = np.maximum(np.abs(dy), np.abs(dx)) <= radius * 0.85
            else:
                inside = np.abs(dy) + np.abs(dx) <= radius * 1.2
            label[inside] = k
            image[inside] = colours[k]
        image = np.clip(np.rint(image + rng.normal(0.0, noise_std, size=image.shape)), 0, 255).astype(np.uint8)
        label = values[label]
        if unlabelled_border:
            b = int(unlabelled_border)
            label[:b], label[-b:], label[:, :b], label[:, -b:] = 255, 255, 255, 255
        stem = f"synthetic_{i:0{width}d}"
        Image.fromarray(image, mode="RGB").save(out / "images" / f"{stem}{image_suffix}", **({"quality": 95} if image_suffix == ".jpg" else {}))
        Image.fromarray(label, mode="L").save(out / label_folder / f"{stem}.png")
    return out
