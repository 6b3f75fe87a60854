"""COCO-Stuff: COCO 2017 images with the 171-class stuff+thing label maps, remapped to contiguous classes.

Layouts read by :func:`cocostuff_dicts`:

* **official**: ``ROOT/train2017/*.jpg``, ``ROOT/val2017/*.jpg`` and
  ``ROOT/stuffthingmaps_trainval2017/{train2017,val2017}/*.png``; the split is COCO's (``train`` / ``val``).
* **pairs**: ``ROOT/images/*.jpg`` and ``ROOT/labels/*.png`` matched by stem (``../shared/data/cocostuff_sample``),
  split by ``ROOT/splits.json`` or deterministically (:func:`~medsymmflow.data.folders.split_ids`).

The label PNGs hold the COCO-Stuff id minus one (0 = person ... 181 = wood) and 255 = unlabeled. Of the 182
ids 171 are used: the 11 COCO thing ids that were never annotated (:data:`COCOSTUFF_UNUSED_IDS`: street sign,
hat, shoe, eye glasses, plate, mirror, window, desk, door, blender, hair brush) never appear. Training on
the raw values (as the SymmFlow authors' code does) leaves 11 empty classes among 182 and, with a
171-colour codebook, puts the 11 highest ids onto wrong classes; :func:`cocostuff_to_classes` maps the 171
used values in order to classes 0..170 (:data:`COCOSTUFF_CLASSES`), keeps 255 as the ignore index, and
refuses an unused or out-of-range value instead of merging it into a class.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from medsymmflow.data.folders import (
    DEFAULT_FRACTIONS,
    SPLITS_FILE,
    check_pair_sizes,
    match_pairs,
    read_label_map,
    read_splits_file,
    remap_label_values,
    require_folder,
    select_split,
)

__all__ = [
    "COCOSTUFF_CLASSES",
    "COCOSTUFF_IGNORE_INDEX",
    "COCOSTUFF_LABELS",
    "COCOSTUFF_UNUSED_IDS",
    "COCOSTUFF_USED_VALUES",
    "cocostuff_dicts",
    "cocostuff_lookup_table",
    "cocostuff_to_classes",
]

# COCO-Stuff id -> name for ids 1..182 (entry i is id i + 1, i.e. pixel value i), from the dataset's labels.txt
COCOSTUFF_LABELS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "hat", "backpack", "umbrella", "shoe",
    "eye glasses", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "plate",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror",
    "dining table", "window", "desk", "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "blender", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush", "hair brush", "banner", "blanket", "branch", "bridge",
    "building-other", "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile",
    "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence",
    "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other",
    "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat",
    "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow",
    "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock",
    "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs",
    "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood",
    "water-other", "waterdrops", "window-blind", "window-other", "wood",
)
COCOSTUFF_UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
COCOSTUFF_IGNORE_INDEX = 255
# the pixel values (id - 1) in use, in order: value COCOSTUFF_USED_VALUES[c] becomes class c
COCOSTUFF_USED_VALUES = tuple(v for v in range(len(COCOSTUFF_LABELS)) if v + 1 not in COCOSTUFF_UNUSED_IDS)
COCOSTUFF_CLASSES = tuple(COCOSTUFF_LABELS[v] for v in COCOSTUFF_USED_VALUES)

_OFFICIAL_LABELS = "stuffthingmaps_trainval2017"
_OFFICIAL_SPLITS = {"train": "train2017", "val": "val2017"}


def cocostuff_lookup_table() -> np.ndarray:
    """int64 table of 256 entries: pixel value -> class 0..170, 255 -> 255, every other value -> -1 (invalid)."""
    table = np.full(256, -1, dtype=np.int64)
    table[list(COCOSTUFF_USED_VALUES)] = np.arange(len(COCOSTUFF_USED_VALUES))
    table[COCOSTUFF_IGNORE_INDEX] = COCOSTUFF_IGNORE_INDEX
    return table


def cocostuff_to_classes(label_map: np.ndarray, name: str = "label map") -> np.ndarray:
    """Raw COCO-Stuff label values (id - 1, 255) -> int64 classes 0..170 with 255 kept; unused ids and values
    above 181 (but 255) raise a ValueError naming ``name`` and the values."""
    return remap_label_values(label_map, COCOSTUFF_USED_VALUES, COCOSTUFF_IGNORE_INDEX, name=name, what="COCO-Stuff")


def cocostuff_dicts(
    root: str | os.PathLike,
    split: str = "train",
    fractions: Mapping[str, float] | Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    check_sizes: bool = True,
    check_values: bool = False,
) -> list[dict[str, str]]:
    """``[{"image", "label", "id"}, ...]`` of one split of a COCO-Stuff folder (official or pairs layout; ``"all"``: every pair).

    ``check_sizes`` compares image and label sizes from the file headers; ``check_values`` also reads every
    label map of the split and refuses values outside the 171 used ids and 255.
    """
    base = require_folder(root, "COCO-Stuff folder")
    if (base / _OFFICIAL_LABELS).is_dir():
        names = list(_OFFICIAL_SPLITS) if split == "all" else [split]
        if any(n not in _OFFICIAL_SPLITS for n in names):
            raise ValueError(
                f"the official COCO-Stuff layout in {base} has the splits {', '.join(_OFFICIAL_SPLITS)} (or 'all'), "
                f"not {split!r}"
            )
        chosen = []
        for n in names:
            coco = _OFFICIAL_SPLITS[n]
            chosen += match_pairs(base / coco, base / _OFFICIAL_LABELS / coco, what=f"COCO-Stuff {coco}")
    else:
        pairs = match_pairs(base / "images", base / "labels", what="COCO-Stuff")
        chosen = select_split(pairs, split, read_splits_file(base), fractions, seed, where=str(base / SPLITS_FILE))
    if check_sizes:
        check_pair_sizes(chosen)
    if check_values:
        for pair in chosen:
            cocostuff_to_classes(read_label_map(pair["label"]), name=f"label map {pair['label']}")
    return chosen
