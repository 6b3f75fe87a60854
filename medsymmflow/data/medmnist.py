"""MedMNIST 2-D datasets, loaded through the ``medmnist`` package and held in memory as tensors.

``load_medmnist(flag, split)`` finds ``<dataset_dir>/<flag>[_<size>].npz`` (the file name and folder
layout of ``medmnist``), lets ``medmnist`` download it when it is missing, then reads the one split
with numpy. Reading the npz ourselves (instead of through ``medmnist``'s dataset class) lets small
files with the official layout but fewer samples load too: ``medmnist`` asserts the official sample
count in ``len()``. Images become float32 ``(N, C, H, W)`` in ``[-1, 1]`` (gray stays one channel),
labels int64 ``(N,)``.

``medmnist`` is imported lazily: importing it creates ``~/.medmnist`` and hides import errors behind
a print, so nothing here touches it until a flag is looked up.
"""

from __future__ import annotations

import operator
import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medsymmflow.checks import one_of

__all__ = [
    "MEDMNIST_SIZES",
    "MEDMNIST_SPLITS",
    "MedMNISTArrays",
    "MedMNISTDataset",
    "canonical_flag",
    "load_medmnist",
    "medmnist_class_names",
    "medmnist_filename",
    "medmnist_info",
    "medmnist_url",
    "read_medmnist_npz",
    "supported_flags",
]

MEDMNIST_SIZES = (28, 64, 128, 224)
MEDMNIST_SPLITS = ("train", "val", "test")
# Ordinal regression (RetinaMNIST) is scored by medmnist like multi-class, so it is treated as such;
# multi-label (ChestMNIST) has no single class per image and cannot map to one code.
_SUPPORTED_TASKS = ("multi-class", "binary-class", "ordinal-regression")


def _info_table() -> dict[str, dict[str, Any]]:
    """medmnist's INFO table (imports medmnist, which creates ~/.medmnist as a side effect)."""
    from medmnist.info import INFO

    return INFO


def _is_3d(flag: str, info: dict[str, Any]) -> bool:
    """Whether a medmnist flag names a 3-D (volume) dataset."""
    return flag.endswith("3d") or str(info.get("python_class", "")).endswith("3D")


def supported_flags() -> tuple[str, ...]:
    """The 2-D single-label MedMNIST flags this package can load (multi-class, binary, ordinal)."""
    return tuple(
        flag for flag, info in _info_table().items() if not _is_3d(flag, info) and info["task"] in _SUPPORTED_TASKS
    )


def canonical_flag(flag: str) -> str:
    """The lower-case medmnist flag ``flag`` names (``PneumoniaMNIST`` -> ``pneumoniamnist``), checked as supported.

    Everything downstream (file names, checkpoints' run identity, reports, medmnist's Evaluator) uses
    this form, so a flag typed in another case is normalised here, once.
    """
    medmnist_info(flag)
    return flag.strip().lower()


def medmnist_info(flag: str) -> dict[str, Any]:
    """medmnist's INFO entry for a supported 2-D flag (any case); ValueError naming the valid flags otherwise."""
    if not isinstance(flag, str):
        raise TypeError(f"flag must be a str such as 'pneumoniamnist', got {type(flag).__name__}")
    table = _info_table()
    key = flag.strip().lower()
    valid = ", ".join(supported_flags())
    if key not in table:
        raise ValueError(f"unknown MedMNIST flag {flag!r}; valid 2-D flags are: {valid}")
    info = table[key]
    if _is_3d(key, info):
        raise ValueError(f"MedMNIST flag {flag!r} is a 3-D dataset; only 2-D datasets are supported: {valid}")
    if info["task"] not in _SUPPORTED_TASKS:
        raise ValueError(
            f"MedMNIST flag {flag!r} has task {info['task']!r}; only multi-class, binary and ordinal "
            f"single-label tasks are supported (one class per image): {valid}"
        )
    return info


def medmnist_class_names(flag: str, num_classes: int) -> list[str] | None:
    """medmnist's class names of ``flag``, or None when it is no MedMNIST flag or has another class count."""
    try:
        labels = medmnist_info(flag)["label"]
    except (ValueError, TypeError):
        return None
    return [str(labels[str(k)]) for k in range(num_classes)] if len(labels) == num_classes else None


def _check_size(size: int) -> int:
    """Validate an image size against the sizes MedMNIST+ publishes."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"size must be an int in {MEDMNIST_SIZES}, got {type(size).__name__}")
    if int(size) not in MEDMNIST_SIZES:
        raise ValueError(f"unsupported MedMNIST size {size}; choose one of {MEDMNIST_SIZES}")
    return int(size)


def _check_split(split: str) -> str:
    """Validate a split name."""
    return one_of(split, MEDMNIST_SPLITS, "split")


def _size_suffix(size: int) -> str:
    """medmnist's file suffix: empty for 28 px, ``_<size>`` otherwise."""
    return "" if size == 28 else f"_{size}"


def medmnist_filename(flag: str, size: int = 28) -> str:
    """The npz file name medmnist uses for a flag and size, e.g. ``bloodmnist_64.npz``."""
    return f"{canonical_flag(flag)}{_size_suffix(_check_size(size))}.npz"


def medmnist_url(flag: str, size: int = 28) -> str:
    """The official download URL (from medmnist's INFO) of a flag's npz file at a size."""
    return medmnist_info(flag)[f"url{_size_suffix(_check_size(size))}"]


@dataclass
class MedMNISTArrays:
    """One MedMNIST split held in memory.

    ``images``: float32 ``(N, C, H, W)`` in ``[-1, 1]`` (C = 1 gray, 3 RGB); ``labels``: int64 ``(N,)``
    in ``[0, num_classes)``. ``task`` is medmnist's task string (pass it on to ``medmnist.Evaluator``);
    ``class_names[k]`` is medmnist's meaning of label ``k``. Memory is ``4 * N * C * H * W`` bytes.
    """

    images: torch.Tensor
    labels: torch.Tensor
    flag: str
    split: str
    size: int
    task: str
    num_classes: int
    channels: int
    class_names: tuple[str, ...]
    path: Path | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1] != self.channels:
            raise ValueError(f"images must be (N, {self.channels}, H, W), got {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be ({self.images.shape[0]},), got {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self) -> torch.Tensor:
        """Number of samples per class, int64 ``(num_classes,)``."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def require_every_class(self, purpose: str) -> MedMNISTArrays:
        """These arrays when every class occurs in them; ValueError naming the file and the missing classes.

        A per-class AUC needs images of the class and of other classes: on a split without some class
        it is NaN (a NaN validation AUC would be taken as the best, and the test report would fail).
        """
        counts = self.class_counts().tolist()
        missing = [k for k, c in enumerate(counts) if c == 0]
        if missing:
            where = f"{self.path} ({self.split} split)" if self.path is not None else f"the {self.split} split"
            raise ValueError(
                f"{where} is too small for {purpose}: it has {len(self)} image(s) and no image of class(es) "
                f"{', '.join(map(str, missing))} of {self.flag}'s {self.num_classes}; the AUC needs every class"
            )
        return self

    def dataset(self, transform: Callable | None = None) -> MedMNISTDataset:
        """A map-style dataset over these arrays (see MedMNISTDataset)."""
        return MedMNISTDataset(self, transform=transform)


class MedMNISTDataset(Dataset):
    """Map-style dataset over MedMNISTArrays yielding ``{"image", "label", "index"}`` dicts.

    ``image``: float32 ``(C, H, W)``; ``label``: int64 ``(1,)``; ``index``: position in the split.
    ``transform`` (e.g. a MONAI dictionary transform) is applied per item when given; with the
    default ``None`` an item is two tensor views, so the training loop runs no per-item Python transforms.
    """

    def __init__(self, arrays: MedMNISTArrays, transform: Callable | None = None) -> None:
        if not isinstance(arrays, MedMNISTArrays):
            raise TypeError(f"arrays must be MedMNISTArrays (see load_medmnist), got {type(arrays).__name__}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None, got {type(transform).__name__}")
        self.arrays = arrays
        self.transform = transform

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.arrays)
        i = operator.index(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        item = {"image": self.arrays.images[i], "label": self.arrays.labels[i : i + 1], "index": i}
        if self.transform is None:
            return item
        from monai.transforms import apply_transform

        # the views share memory with the whole split: give transforms copies so in-place ops cannot corrupt it
        item["image"] = item["image"].clone()
        item["label"] = item["label"].clone()
        return apply_transform(self.transform, item)


def _corrupt(path: Path, url: str, problem: str) -> ValueError:
    """A ValueError saying the npz at ``path`` is unusable and where to fetch a good copy."""
    return ValueError(
        f"{path} is not a valid MedMNIST npz file: {problem}. Delete it and download it again from {url} "
        f"(or call load_medmnist with download=True after deleting it)"
    )


def read_medmnist_npz(path: str | os.PathLike, flag: str, split: str, size: int = 28) -> MedMNISTArrays:
    """Read one split of a MedMNIST-format npz file and check it against the flag's INFO entry.

    Any sample count is accepted (only medmnist's dataset class insists on the official one), so small
    files from ``write_synthetic_medmnist`` load like real ones.
    """
    info = medmnist_info(flag)
    flag = canonical_flag(flag)
    size = _check_size(size)
    split = _check_split(split)
    path = Path(path)
    url = info[f"url{_size_suffix(size)}"]
    if not path.is_file():
        raise FileNotFoundError(f"MedMNIST file {path} not found; download it from {url} into {path.parent}")
    num_classes = len(info["label"])
    channels = int(info["n_channels"])
    image_key, label_key = f"{split}_images", f"{split}_labels"

    # np.load guesses the format from the first bytes and reports anything unknown as pickled data,
    # which would mislead; name the real problem first
    with open(path, "rb") as handle:
        magic = handle.read(6)
    if magic.startswith(b"\x93NUMPY"):
        raise _corrupt(path, url, "it holds a single .npy array, not an npz archive of splits")
    if not magic.startswith(b"PK"):
        raise _corrupt(path, url, "it is empty" if not magic else "it is not a zip archive")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise _corrupt(path, url, f"cannot be opened as an npz archive ({exc})") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # defensive: the magic check above should catch this
        raise _corrupt(path, url, "it holds a single array, not an npz archive of splits")
    with loaded:
        missing = [key for key in (image_key, label_key) if key not in loaded.files]
        if missing:
            raise _corrupt(path, url, f"missing keys {missing} (found {loaded.files})")
        try:
            images = loaded[image_key]
            labels = loaded[label_key]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise _corrupt(path, url, f"cannot read {image_key}/{label_key} ({exc})") from exc

    if images.dtype != np.uint8:
        raise _corrupt(path, url, f"{image_key} must be uint8, got {images.dtype}")
    if images.ndim == 3 and channels == 1:
        images = images[..., None]
    expected = f"(N, {size}, {size})" if channels == 1 else f"(N, {size}, {size}, {channels})"
    if images.ndim != 4 or images.shape[1:] != (size, size, channels):
        raise _corrupt(path, url, f"{image_key} must have shape {expected} for {flag}, got {images.shape}")
    n = images.shape[0]
    if n == 0:
        raise _corrupt(path, url, f"split {split!r} has no samples")
    if not np.issubdtype(labels.dtype, np.integer):
        raise _corrupt(path, url, f"{label_key} must hold integers, got {labels.dtype}")
    if labels.shape not in ((n, 1), (n,)):
        raise _corrupt(path, url, f"{label_key} must have shape ({n}, 1) to match {n} images, got {labels.shape}")
    labels = labels.reshape(n).astype(np.int64)
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"{path}: {label_key} range [{low}, {high}] is outside [0, {num_classes - 1}] for {flag} "
            f"({num_classes} classes); the file does not belong to this flag"
        )

    # uint8 -> [-1, 1] exactly: 0 -> -1, 255 -> 1
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.float32).div_(127.5).sub_(1.0).contiguous()
    return MedMNISTArrays(
        images=tensor,
        labels=torch.from_numpy(labels),
        flag=flag,
        split=split,
        size=size,
        task=str(info["task"]),
        num_classes=num_classes,
        channels=channels,
        class_names=tuple(str(info["label"][str(k)]) for k in range(num_classes)),
        path=path,
    )


def _default_root() -> Path:
    """medmnist's own default folder (``~/.medmnist``); error when medmnist could not create it."""
    import medmnist.info

    if medmnist.info.DEFAULT_ROOT is None:
        raise FileNotFoundError("medmnist could not create its default folder ~/.medmnist; pass dataset_dir")
    return Path(medmnist.info.DEFAULT_ROOT)


def _root_cause(exc: BaseException) -> str:
    """One line naming the innermost exception (medmnist re-raises network errors as a long RuntimeError)."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else exc!r}"


def _download_with_medmnist(flag: str, size: int, folder: Path) -> None:
    """Fetch ``<flag>[_<size>].npz`` into ``folder`` with medmnist's own download (URL + MD5 check)."""
    # `import medmnist` swallows import errors; importing the submodule surfaces the real one
    from medmnist import dataset as medmnist_dataset

    info = medmnist_info(flag)
    base = getattr(medmnist_dataset, info["python_class"])

    class _DownloadOnly(base):
        # medmnist's __init__ also loads a whole split; only its download() is wanted, which reads these
        # four attributes (medmnist 3.0.x)
        def __init__(self) -> None:
            self.info = info
            self.size = size
            self.size_flag = _size_suffix(size)
            self.root = str(folder)

    _DownloadOnly().download()


def load_medmnist(
    flag: str,
    split: str,
    size: int = 28,
    dataset_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> MedMNISTArrays:
    """Load one split of a 2-D MedMNIST dataset into memory.

    The file is ``<dataset_dir>/<flag>.npz`` (``<flag>_<size>.npz`` for 64/128/224 px), as medmnist
    names it; ``dataset_dir=None`` means medmnist's default ``~/.medmnist``. A missing file is downloaded
    through medmnist when ``download`` is true; an existing file is used as is (never re-downloaded).
    """
    from monai.utils import str2bool

    download = str2bool(download)  # bundle overrides arrive as strings ("false")
    info = medmnist_info(flag)
    flag = canonical_flag(flag)
    size = _check_size(size)
    split = _check_split(split)
    folder = _default_root() if dataset_dir is None else Path(dataset_dir).expanduser()
    filename = f"{flag}{_size_suffix(size)}.npz"
    path = folder / filename
    url = info[f"url{_size_suffix(size)}"]

    if not path.is_file():
        if not download:
            raise FileNotFoundError(
                f"MedMNIST file {path} not found. Download {filename} from {url} and put it in {folder}, "
                f"or call load_medmnist with download=True"
            )
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _download_with_medmnist(flag, size, folder)
        except Exception as exc:  # medmnist turns every failure into a bare RuntimeError; keep the cause chained
            raise RuntimeError(
                f"could not download {filename} from {url} into {folder} ({_root_cause(exc)}). Without internet access, "
                f"fetch {filename} from {url} on another machine (MD5 {info.get('MD5' + _size_suffix(size))}), "
                f"put it in {folder} and call load_medmnist with download=False"
            ) from exc
        if not path.is_file():
            raise RuntimeError(f"medmnist reported a download of {filename} from {url} but {path} does not exist")
    return read_medmnist_npz(path, flag, split, size)
