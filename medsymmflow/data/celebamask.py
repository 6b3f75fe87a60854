"""CelebAMask-HQ: face images with 19-class label maps, as a folder of pairs or from the official release.

Two layouts:

* **pairs** (what :func:`celebamask_hq_dicts` reads): ``ROOT/images/<stem>.jpg`` and ``ROOT/masks/<stem>.png``
  matched by stem, each mask a map of class indices 0..18 (:data:`CELEBAMASK_HQ_CLASSES`), the same size as
  its image; optionally ``ROOT/splits.json``. ``../shared/data/celebamask_hq_sample`` has this layout.
* **official release**: ``CelebA-HQ-img/<id>.jpg`` (1024 px) and ``CelebAMask-HQ-mask-anno/<k>/<id:05d>_<part>.png``
  (512 px binary masks, one per part present, ``k = id // 2000``). :func:`prepare_celebamask_hq` (the
  ``medsymmflow prepare celebamask-hq`` command) combines them into the pairs layout.

Class indices follow the dataset authors' ``g_mask.py`` ("list2"): 0 is background and part ``i`` of
:data:`CELEBAMASK_HQ_PARTS` is class ``i + 1``; parts are painted in that order, so a later part overwrites
an earlier one where two masks overlap (hair over skin, cloth over neck), as the official script does.
``l_`` / ``r_`` are the subject's left and right (``l_eye`` lies on the image's right side).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medsymmflow.data.folders import (
    DEFAULT_FRACTIONS,
    SPLITS_FILE,
    check_label_values,
    check_pair_sizes,
    match_pairs,
    read_label_map,
    read_splits_file,
    require_folder,
    select_split,
    write_splits_file,
)

__all__ = [
    "CELEBAMASK_HQ_CLASSES",
    "CELEBAMASK_HQ_PARTS",
    "CELEBAMASK_HQ_SPLIT_BOUNDS",
    "celebamask_hq_dicts",
    "official_celebamask_hq_splits",
    "prepare_celebamask_hq",
]

logger = logging.getLogger(__name__)

CELEBAMASK_HQ_CLASSES = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)
# the official painting order of the part masks: part i becomes class i + 1
CELEBAMASK_HQ_PARTS = CELEBAMASK_HQ_CLASSES[1:]
# CelebA index (0-based ``orig_idx`` of CelebA-HQ-to-CelebA-mapping.txt) where val and test begin, as the
# dataset authors' g_partition.py splits CelebAMask-HQ
CELEBAMASK_HQ_SPLIT_BOUNDS = (162771, 182638)

_OFFICIAL_IMAGES = "CelebA-HQ-img"
_OFFICIAL_PARTS = "CelebAMask-HQ-mask-anno"
_MAPPING = "CelebA-HQ-to-CelebA-mapping.txt"
_PART_FILE = re.compile(r"^(\d+)_([a-z_]+)\.png$")


def celebamask_hq_dicts(
    root: str | os.PathLike,
    split: str = "train",
    fractions: Mapping[str, float] | Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    check_sizes: bool = True,
    check_values: bool = False,
) -> list[dict[str, str]]:
    """``[{"image", "label", "id"}, ...]`` of one split of a CelebAMask-HQ pairs folder (``split="all"``: every pair).

    The split comes from ``ROOT/splits.json`` when present (``prepare`` writes the official one), else from
    :func:`~medsymmflow.data.folders.split_ids` over the sorted stems with ``seed`` and ``fractions``.
    ``check_sizes`` compares image and mask sizes from the file headers; ``check_values`` also reads every
    mask of the split and refuses values outside 0..18.
    """
    base = Path(root)
    if not (base / "images").is_dir() and (base / _OFFICIAL_IMAGES).is_dir():
        raise ValueError(
            f"{base} has the official CelebAMask-HQ release layout ({_OFFICIAL_IMAGES}/, {_OFFICIAL_PARTS}/); combine "
            f"its part masks into label maps first: medsymmflow prepare celebamask-hq --source {base} --output DIR"
        )
    require_folder(base, "CelebAMask-HQ folder")
    pairs = match_pairs(base / "images", base / "masks", what="CelebAMask-HQ")
    chosen = select_split(pairs, split, read_splits_file(base), fractions, seed, where=str(base / SPLITS_FILE))
    if check_sizes:
        check_pair_sizes(chosen)
    if check_values:
        for pair in chosen:
            check_label_values(pair["label"], read_label_map(pair["label"]), len(CELEBAMASK_HQ_CLASSES), what="CelebAMask-HQ")
    return chosen


def _part_index(parts_dir: Path) -> dict[int, dict[str, Path]]:
    """id -> part name -> mask file for every part mask under ``parts_dir`` (searched one folder deep too)."""
    index: dict[int, dict[str, Path]] = {}
    for f in sorted(list(parts_dir.glob("*.png")) + list(parts_dir.glob("*/*.png"))):
        found = _PART_FILE.match(f.name)
        if not found or found.group(2) not in CELEBAMASK_HQ_PARTS:
            raise ValueError(
                f"{f} is not a CelebAMask-HQ part mask: names are <id:05d>_<part>.png with part one of "
                f"{', '.join(CELEBAMASK_HQ_PARTS)}"
            )
        index.setdefault(int(found.group(1)), {})[found.group(2)] = f
    return index


def _combine_parts(parts: Mapping[str, Path]) -> np.ndarray:
    """One (rows, columns) uint8 label map from the binary part masks of an image, painted in the official order."""
    from PIL import Image

    label: np.ndarray | None = None
    for cls, part in enumerate(CELEBAMASK_HQ_PARTS, start=1):
        if part not in parts:
            continue
        try:
            with Image.open(parts[part]) as img:
                on = np.asarray(img.convert("L")) != 0
        except OSError as exc:
            raise ValueError(f"part mask {parts[part]} is not a readable image ({exc})") from None
        if label is None:
            label = np.zeros(on.shape, dtype=np.uint8)
        elif on.shape != label.shape:
            first = next(iter(parts.values()))
            raise ValueError(f"part mask {parts[part]} is {on.shape[0]}x{on.shape[1]} but {first} is {label.shape[0]}x{label.shape[1]}")
        label[on] = cls
    assert label is not None  # every id in the index has at least one part
    return label


def _resize_label(label: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Nearest-neighbour resize; an integer upscale repeats every pixel exactly."""
    from PIL import Image

    h, w = label.shape
    if (rows, cols) == (h, w):
        return label
    if rows % h == 0 and cols % w == 0 and rows // h == cols // w:
        f = rows // h
        return np.repeat(np.repeat(label, f, axis=0), f, axis=1)
    return np.asarray(Image.fromarray(label, mode="L").resize((cols, rows), Image.Resampling.NEAREST))


def official_celebamask_hq_splits(mapping_file: str | os.PathLike, ids: Sequence[int] | None = None) -> dict[str, list[str]]:
    """train / val / test ids from ``CelebA-HQ-to-CelebA-mapping.txt`` by the CelebA index, as g_partition.py splits them.

    ``ids`` restricts the result to the ids present.
    """
    keep = None if ids is None else set(int(i) for i in ids)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    val_from, test_from = CELEBAMASK_HQ_SPLIT_BOUNDS
    lines = Path(mapping_file).read_text().split("\n")
    for n, line in enumerate(lines[1:], start=2):  # the first line is the header "idx orig_idx orig_file"
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2 or not fields[0].isdigit() or not fields[1].isdigit():
            raise ValueError(f"{mapping_file} line {n} is not '<idx> <orig_idx> <orig_file>': {line.strip()!r}")
        idx, orig = int(fields[0]), int(fields[1])
        if keep is not None and idx not in keep:
            continue
        name = "test" if orig >= test_from else "val" if orig >= val_from else "train"
        splits[name].append(str(idx))
    return splits


def prepare_celebamask_hq(
    source: str | os.PathLike, output: str | os.PathLike, size: int | None = None
) -> dict[str, Any]:
    """Combine the official release in ``source`` into the pairs layout in ``output`` (a new or empty folder).

    For each ``CelebA-HQ-img/<id>.jpg`` the part masks ``<id:05d>_<part>.png`` become one label map, parts
    painted in :data:`CELEBAMASK_HQ_PARTS` order (later parts overwrite earlier ones, as the official
    ``g_mask.py``). The official masks are 512 px and the images 1024 px; without ``size`` the images are
    copied byte for byte and each label map is upsampled to its image's size by repeating every pixel
    (nearest neighbour, lossless), so pairs agree in size. With ``size`` both become ``size x size``: the
    image by area averaging (bilinear when enlarging), written as PNG to avoid a second JPEG compression,
    the label map by nearest neighbour. With ``CelebA-HQ-to-CelebA-mapping.txt`` in ``source`` the official
    train / val / test partition is written to ``splits.json``.

    Everything is written to a temporary folder next to ``output`` and renamed into place at the end, so a
    failure leaves nothing behind. Returns a summary (counts, sizes, splits).
    """
    from PIL import Image

    src = require_folder(source, "CelebAMask-HQ release folder")
    images_dir = require_folder(src / _OFFICIAL_IMAGES, "CelebAMask-HQ image folder")
    parts_dir = require_folder(src / _OFFICIAL_PARTS, "CelebAMask-HQ part-mask folder")
    if size is not None and (isinstance(size, bool) or int(size) != size or size < 1):
        raise ValueError(f"size must be a positive integer, got {size!r}")
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"output {out} already exists and is not an empty folder; choose a new one")

    images: dict[int, Path] = {}
    for f in sorted(images_dir.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue
        if not (f.suffix.lower() in (".jpg", ".jpeg", ".png") and f.stem.isdigit()):
            raise ValueError(f"{f} is not a CelebA-HQ image: names are <id>.jpg")
        images[int(f.stem)] = f
    if not images:
        raise ValueError(f"no images (<id>.jpg) found in {images_dir}")
    index = _part_index(parts_dir)
    lacking = [images[i].name for i in sorted(images) if i not in index]
    if lacking:
        raise ValueError(
            f"image {images_dir / lacking[0]} has no part masks ({int(lacking[0].split('.')[0]):05d}_<part>.png) in "
            f"{parts_dir}; {len(lacking)} image(s) lack them"
        )
    orphans = sorted(set(index) - set(images))
    if orphans:
        logger.info("%d id(s) in %s have part masks but no image and are not used", len(orphans), parts_dir)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        mask_sizes, image_sizes = set(), set()
        for i in sorted(images):
            label = _combine_parts(index[i])
            mask_sizes.add(label.shape)
            with Image.open(images[i]) as img:
                cols, rows = img.size
                if size is None:
                    shutil.copyfile(images[i], tmp / "images" / f"{i}{images[i].suffix.lower()}")
                else:
                    rgb = img.convert("RGB")
                    method = Image.Resampling.BOX if size <= min(rows, cols) else Image.Resampling.BILINEAR
                    rgb.resize((size, size), method).save(tmp / "images" / f"{i}.png")
                    rows = cols = int(size)
            image_sizes.add((rows, cols))
            Image.fromarray(_resize_label(label, rows, cols), mode="L").save(tmp / "masks" / f"{i}.png")
        splits = None
        if (src / _MAPPING).is_file():
            splits = official_celebamask_hq_splits(src / _MAPPING, ids=list(images))
            write_splits_file(tmp, splits)
        os.chmod(tmp, 0o755)  # mkdtemp's folder is private
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "output": str(out),
        "pairs": len(images),
        "mask_sizes_read": sorted(mask_sizes),
        "sizes_written": sorted(image_sizes),
        "splits": None if splits is None else {k: len(v) for k, v in splits.items()},
    }
