"""Image / label-map folders for segmentation: pairs matched by file stem, deterministic splits, input checks.

The datasets built on this (:mod:`medsymmflow.data.celebamask`, :mod:`medsymmflow.data.cocostuff`) are
MONAI-style lists of ``{"image": path, "label": path, "id": stem}`` dicts for ``monai.data.Dataset`` or
``CacheDataset`` with ``LoadImageFiled(keys="image")`` and ``LoadLabelMapd(keys="label")``.

Bad input raises one line naming the problem and the file: a missing folder (FileNotFoundError), an image
without a label map, two files with one stem, an image and a label map of different sizes, a label value
outside the dataset's classes (ValueError).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from medsymmflow.io import LABEL_MAP_SUFFIXES, RASTER_SUFFIXES, LabelMapReader, atomic_write

__all__ = [
    "DEFAULT_FRACTIONS",
    "SPLITS_FILE",
    "SPLIT_NAMES",
    "check_label_values",
    "check_pair_sizes",
    "match_pairs",
    "parse_fractions",
    "read_label_map",
    "read_splits_file",
    "remap_label_values",
    "require_folder",
    "select_split",
    "split_ids",
    "write_splits_file",
]

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
DEFAULT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
# A folder may carry its own split: {"train": [stems], "val": [...], "test": [...]} (``prepare`` writes one).
SPLITS_FILE = "splits.json"
_SHOWN = 5


def require_folder(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path; FileNotFoundError naming ``what`` (e.g. "CelebAMask-HQ images folder") when it is no folder."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{what} not found: {p}" + (" (it is a file)" if p.exists() else ""))
    return p


def _listing(folder: Path, suffixes: Sequence[str], what: str) -> dict[str, Path]:
    """Stem -> file for the files of ``folder`` with one of ``suffixes``; two files with one stem raise."""
    out: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or not f.is_file() or not f.name.lower().endswith(tuple(suffixes)):
            continue
        stem = f.name[: -len(next(s for s in suffixes if f.name.lower().endswith(s)))]
        if stem in out:
            raise ValueError(f"two {what} files share the name {stem!r} in {folder}: {out[stem].name} and {f.name}")
        out[stem] = f
    return out


def _names(items: Sequence[str]) -> str:
    return ", ".join(items[:_SHOWN]) + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def match_pairs(
    image_dir: str | os.PathLike,
    label_dir: str | os.PathLike,
    image_suffixes: Sequence[str] = RASTER_SUFFIXES,
    label_suffixes: Sequence[str] = LABEL_MAP_SUFFIXES,
    what: str = "dataset",
) -> list[dict[str, str]]:
    """``[{"image", "label", "id"}, ...]`` sorted by id: the images of ``image_dir`` and the label maps of ``label_dir``
    with the same file stem.

    An image without a label map raises a ValueError naming it; label maps without an image are skipped
    (and logged), so an images folder may hold a subset. ``what`` names the dataset in the messages.
    """
    images_at = require_folder(image_dir, f"{what} images folder")
    labels_at = require_folder(label_dir, f"{what} label-map folder")
    images = _listing(images_at, image_suffixes, "image")
    labels = _listing(labels_at, label_suffixes, "label-map")
    if not images:
        raise ValueError(f"no images ({', '.join(image_suffixes)}) found in {images_at}")
    lacking = [images[s].name for s in images if s not in labels]
    if lacking:
        raise ValueError(
            f"image {images_at / lacking[0]} has no label map of the same name in {labels_at}; "
            f"{len(lacking)} image(s) lack one: {_names(lacking)}"
        )
    orphans = sorted(set(labels) - set(images))
    if orphans:
        logger.info("%d label map(s) in %s have no image and are not used: %s", len(orphans), labels_at, _names(orphans))
    return [{"image": str(images[s]), "label": str(labels[s]), "id": s} for s in sorted(images)]


def _image_size(path: str, exif: bool) -> tuple[int, int]:
    """(rows, columns) from the file header; with ``exif`` after the EXIF orientation (as LoadImageFiled reads it)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            width, height = img.size
            if exif and img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # the orientations that swap the axes
                width, height = height, width
    except OSError as exc:
        raise ValueError(f"{path} is not a readable image ({exc})") from None
    return height, width


def check_pair_sizes(pairs: Iterable[Mapping[str, str]]) -> None:
    """Raise a ValueError naming the first pair whose image and label map differ in size (read from the headers)."""
    for pair in pairs:
        image, label = _image_size(pair["image"], exif=True), _image_size(pair["label"], exif=False)
        if image != label:
            rotated = " (its EXIF orientation tag rotates it; the label map follows the stored pixels)" if (
                _image_size(pair["image"], exif=False) == label
            ) else ""
            raise ValueError(
                f"image {pair['image']} is {image[0]}x{image[1]} (rows x columns) but its label map {pair['label']} is "
                f"{label[0]}x{label[1]}{rotated}; resize them to one size first"
            )


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """The class indices of a label-map file as a (rows, columns) integer array (see :class:`~medsymmflow.io.LabelMapReader`)."""
    reader = LabelMapReader()
    try:
        data, _ = reader.get_data(reader.read(str(path)))
    except ValueError as exc:
        raise ValueError(f"label map {path}: {exc}") from None
    return np.asarray(data)


def check_label_values(
    path: str | os.PathLike, values: np.ndarray, num_classes: int, ignore_index: int | None = None, what: str = "dataset"
) -> None:
    """Raise a ValueError naming ``path`` and the values of ``values`` outside classes ``0..num_classes-1`` (and ``ignore_index``)."""
    found = np.unique(np.asarray(values))
    bad = [int(v) for v in found if not (0 <= v < num_classes) and v != ignore_index]
    if bad:
        allowed = f"0..{num_classes - 1}" + ("" if ignore_index is None else f" and {ignore_index} (ignored)")
        raise ValueError(
            f"label map {path} holds value(s) {', '.join(map(str, bad[:10]))} outside the {what} classes ({allowed})"
        )


def remap_label_values(
    values: np.ndarray,
    source_values: Sequence[int],
    ignore_index: int | None = None,
    name: str = "label map",
    what: str = "dataset",
) -> np.ndarray:
    """Label values -> int64 classes: ``source_values[c]`` becomes ``c``, ``ignore_index`` stays; any other value
    raises a ValueError naming ``name`` and the values (never merged into a class)."""
    arr = np.asarray(values)
    if arr.dtype.kind == "f" and (not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr))):
        raise ValueError(f"{name} holds values that are not whole class indices")
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    ints = arr.astype(np.int64)
    found = np.unique(ints)
    source = np.asarray(list(source_values), dtype=np.int64)
    if len(np.unique(source)) != len(source):
        raise ValueError("source_values must not repeat a value")
    valid = np.isin(found, source) | (found == ignore_index if ignore_index is not None else False)
    if not valid.all():
        bad = found[~valid]
        used = f"{len(source)} classes" + ("" if ignore_index is None else f" and {ignore_index} (ignored)")
        raise ValueError(
            f"{name} holds value(s) {', '.join(map(str, bad[:10].tolist()))} outside the {what} label values ({used})"
        )
    # a lookup table over the values present keeps memory small whatever the values' range
    lookup = {int(v): c for c, v in enumerate(source.tolist())}
    if ignore_index is not None:
        lookup[int(ignore_index)] = int(ignore_index)
    targets = np.asarray([lookup[int(v)] for v in found], dtype=np.int64)
    return targets[np.searchsorted(found, ints)]


def parse_fractions(fractions: Mapping[str, float] | Sequence[float]) -> dict[str, float]:
    """``{"train", "val", "test"} -> fraction`` from a mapping or a (train, val, test) sequence; they must sum to 1."""
    if isinstance(fractions, Mapping):
        unknown = sorted(set(fractions) - set(SPLIT_NAMES))
        if unknown:
            raise ValueError(f"unknown split name(s) {', '.join(map(str, unknown))} in fractions; use {', '.join(SPLIT_NAMES)}")
        out = {s: fractions.get(s, 0.0) for s in SPLIT_NAMES}
    elif isinstance(fractions, Sequence) and not isinstance(fractions, str) and len(fractions) == len(SPLIT_NAMES):
        out = dict(zip(SPLIT_NAMES, fractions))
    else:
        raise ValueError(f"fractions must be a (train, val, test) triple or a mapping of split names, got {fractions!r}")
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in out.values())
    if not ok or not math.isclose(sum(out.values()), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions must be numbers >= 0 that sum to 1, got {out}")
    return {k: float(v) for k, v in out.items()}


def split_ids(
    ids: Iterable[str], fractions: Mapping[str, float] | Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0
) -> dict[str, list[str]]:
    """A deterministic split of ``ids``: the sorted ids permuted by ``numpy.random.default_rng(seed)``, cut by ``fractions``.

    Split ``s`` takes positions ``[round(n * F_{s-1}), round(n * F_s))`` of the permutation (``F``: cumulative
    fractions), so the splits are disjoint, cover every id, and depend only on the set of ids and the seed.
    Each split is returned sorted.
    """
    frac = parse_fractions(fractions)
    ordered = sorted(set(ids))
    n = len(ordered)
    perm = np.random.default_rng(int(seed)).permutation(n)
    bounds = np.round(np.cumsum([0.0] + [frac[s] for s in SPLIT_NAMES]) * n).astype(int)
    bounds[-1] = n
    return {s: sorted(ordered[i] for i in perm[bounds[k] : bounds[k + 1]]) for k, s in enumerate(SPLIT_NAMES)}


def read_splits_file(root: str | os.PathLike) -> dict[str, list[str]] | None:
    """The ``splits.json`` of a dataset folder (split name -> ids), or None when it has none."""
    path = Path(root) / SPLITS_FILE
    if not path.is_file():
        return None
    try:
        splits = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(splits, dict) or not all(isinstance(v, list) and all(isinstance(i, str) for i in v) for v in splits.values()):
        raise ValueError(f"{path} must map split names to lists of file stems")
    return splits


def write_splits_file(root: str | os.PathLike, splits: Mapping[str, Sequence[str]]) -> Path:
    """Write ``splits.json`` (split name -> sorted ids) into ``root`` atomically."""
    return atomic_write(Path(root) / SPLITS_FILE, json.dumps({k: sorted(v) for k, v in splits.items()}, indent=1) + "\n")


def select_split(
    pairs: Sequence[dict[str, str]],
    split: str,
    splits: Mapping[str, Sequence[str]] | None = None,
    fractions: Mapping[str, float] | Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    where: str = "",
) -> list[dict[str, str]]:
    """The pairs of ``split`` (``"all"`` for every pair): from ``splits`` (id lists) when given, else :func:`split_ids`.

    An id listed in ``splits`` without a pair raises a ValueError naming it (``where``: the split file).
    """
    if split == "all":
        return list(pairs)
    derived = splits is None
    if derived:
        if split not in SPLIT_NAMES:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_NAMES)} or 'all'")
        splits = split_ids((p["id"] for p in pairs), fractions, seed)
    if split not in splits:
        raise ValueError(f"unknown split {split!r}{' in ' + where if where else ''}; it has {', '.join(splits)} (or use 'all')")
    by_id = {p["id"]: p for p in pairs}
    missing = [i for i in splits[split] if i not in by_id]
    if missing:
        raise ValueError(f"split {split!r}{' of ' + where if where else ''} lists {len(missing)} id(s) without an image/label pair: {_names(missing)}")
    if not splits[split]:
        # an empty split would only fail later, inside a data loader or a metric, without naming the folder
        if derived:
            shares = " / ".join(f"{round(100 * v, 6):g}" for v in parse_fractions(fractions).values())
            raise ValueError(
                f"split {split!r} is empty: {len(by_id)} pairs split {shares} % into {' / '.join(SPLIT_NAMES)} leave it none; "
                f"add pairs or write a split file{' (' + where + ')' if where else ''}"
            )
        raise ValueError(f"split {split!r}{' of ' + where if where else ''} lists no ids")
    return [by_id[i] for i in sorted(splits[split])]
