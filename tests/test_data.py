"""MedMNIST loading, synthetic MedMNIST files and samplers (medsymmflow.data)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from medsymmflow.data import (
    MedMNISTArrays,
    MedMNISTDataset,
    class_balanced_weights,
    load_medmnist,
    make_sampler,
    medmnist_url,
    read_medmnist_npz,
    supported_flags,
    write_synthetic_medmnist,
)

OFFICIAL_KEYS = ["train_images", "val_images", "test_images", "train_labels", "val_labels", "test_labels"]


@pytest.fixture(scope="module", autouse=True)
def _medmnist_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Import medmnist with HOME in a temp folder, so its import-time ~/.medmnist is made there, not in ~."""
    if "medmnist.info" in sys.modules:
        return
    patch = pytest.MonkeyPatch()
    patch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    try:
        import medmnist.info  # noqa: F401
    finally:
        patch.undo()


@pytest.fixture
def fail_downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the network part of medmnist's download fail (as offline) and record the URLs it tried."""
    import torchvision.datasets.utils

    tried: list[str] = []

    def _offline(url: str, *args: object, **kwargs: object) -> None:
        tried.append(url)
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", _offline)
    return tried


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


# ---------------------------------------------------------------- import hygiene


def test_importing_data_package_does_not_import_medmnist(tmp_path: Path) -> None:
    code = "import sys, medsymmflow.data; assert 'medmnist' not in sys.modules, 'medmnist imported'"
    env = dict(os.environ, HOME=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / ".medmnist").exists()


# ---------------------------------------------------------------- synthetic writer


@pytest.mark.parametrize(
    ("flag", "size", "channels", "classes", "name"),
    [
        ("pneumoniamnist", 28, 1, 2, "pneumoniamnist.npz"),
        ("bloodmnist", 28, 3, 8, "bloodmnist.npz"),
        ("retinamnist", 64, 3, 5, "retinamnist_64.npz"),
    ],
)
def test_synthetic_file_has_official_layout(
    tmp_path: Path, flag: str, size: int, channels: int, classes: int, name: str
) -> None:
    path = write_synthetic_medmnist(tmp_path, flag, n_train=24, n_val=10, n_test=12, size=size)
    assert path == tmp_path / name
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == [f"{key}.npy" for key in OFFICIAL_KEYS]
    data = _npz(path)
    for split, n in (("train", 24), ("val", 10), ("test", 12)):
        images, labels = data[f"{split}_images"], data[f"{split}_labels"]
        assert images.dtype == np.uint8 and labels.dtype == np.uint8
        assert images.shape == ((n, size, size) if channels == 1 else (n, size, size, 3))
        assert labels.shape == (n, 1)
        # labels cycle through the classes, so a split with n >= classes holds every class
        assert set(np.unique(labels).tolist()) == set(range(min(classes, n)))


def test_synthetic_is_seeded(tmp_path: Path) -> None:
    a = _npz(write_synthetic_medmnist(tmp_path / "a", "bloodmnist", 16, 4, 4, seed=3))
    b = _npz(write_synthetic_medmnist(tmp_path / "b", "bloodmnist", 16, 4, 4, seed=3))
    c = _npz(write_synthetic_medmnist(tmp_path / "c", "bloodmnist", 16, 4, 4, seed=4))
    assert all(np.array_equal(a[key], b[key]) for key in OFFICIAL_KEYS)
    assert not np.array_equal(a["train_images"], c["train_images"])


@pytest.mark.parametrize("flag", ["pneumoniamnist", "bloodmnist"])
def test_synthetic_classes_are_learnable(tmp_path: Path, flag: str) -> None:
    data = _npz(write_synthetic_medmnist(tmp_path, flag, n_train=160, n_val=8, n_test=80))
    x_train = data["train_images"].reshape(160, -1).astype(np.float64)
    y_train = data["train_labels"][:, 0]
    x_test = data["test_images"].reshape(80, -1).astype(np.float64)
    y_test = data["test_labels"][:, 0]
    means = np.stack([x_train[y_train == k].mean(0) for k in np.unique(y_train)])
    predicted = np.argmin(((x_test[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (predicted == y_test).mean() >= 0.95


def test_synthetic_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_val must be >= 1"):
        write_synthetic_medmnist(tmp_path, n_val=0)
    with pytest.raises(ValueError, match="unsupported MedMNIST size 32"):
        write_synthetic_medmnist(tmp_path, size=32)
    with pytest.raises(ValueError, match="3-D"):
        write_synthetic_medmnist(tmp_path, flag="organmnist3d")


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize(("flag", "channels", "classes"), [("pneumoniamnist", 1, 2), ("bloodmnist", 3, 8)])
def test_load_synthetic_split(tmp_path: Path, flag: str, channels: int, classes: int) -> None:
    path = write_synthetic_medmnist(tmp_path, flag, n_train=20, n_val=6, n_test=9)
    raw = _npz(path)
    arrays = load_medmnist(flag, "test", dataset_dir=tmp_path, download=False)
    assert isinstance(arrays, MedMNISTArrays)
    assert arrays.images.shape == (9, channels, 28, 28) and arrays.images.dtype == torch.float32
    assert arrays.labels.shape == (9,) and arrays.labels.dtype == torch.int64
    assert (arrays.flag, arrays.split, arrays.size, arrays.channels, arrays.num_classes) == (
        flag,
        "test",
        28,
        channels,
        classes,
    )
    assert len(arrays.class_names) == classes and arrays.path == path
    assert float(arrays.images.min()) >= -1.0 and float(arrays.images.max()) <= 1.0
    expected = raw["test_images"].astype(np.float32) / 127.5 - 1.0
    expected = expected[:, None] if channels == 1 else expected.transpose(0, 3, 1, 2)
    np.testing.assert_allclose(arrays.images.numpy(), expected, atol=1e-6)
    assert arrays.labels.tolist() == raw["test_labels"][:, 0].tolist()
    assert arrays.class_counts().tolist() == np.bincount(raw["test_labels"][:, 0], minlength=classes).tolist()


def test_load_larger_size_and_ordinal_task(tmp_path: Path) -> None:
    write_synthetic_medmnist(tmp_path, "retinamnist", n_train=10, n_val=5, n_test=5, size=64)
    arrays = load_medmnist("RetinaMNIST", "val", size=64, dataset_dir=tmp_path, download=False)
    assert arrays.images.shape == (5, 3, 64, 64)
    assert arrays.task == "ordinal-regression" and arrays.num_classes == 5
    with pytest.raises(FileNotFoundError, match="retinamnist.npz"):
        load_medmnist("retinamnist", "val", size=28, dataset_dir=tmp_path, download=False)


def test_existing_file_is_used_without_downloading(tmp_path: Path, fail_downloads: list[str]) -> None:
    write_synthetic_medmnist(tmp_path, "breastmnist", n_train=8, n_val=4, n_test=4)
    arrays = load_medmnist("breastmnist", "train", dataset_dir=tmp_path, download=True)
    assert len(arrays) == 8 and fail_downloads == []


def test_dataset_items_and_batches(tmp_path: Path) -> None:
    write_synthetic_medmnist(tmp_path, "bloodmnist", n_train=12, n_val=4, n_test=4)
    arrays = load_medmnist("bloodmnist", "train", dataset_dir=tmp_path, download=False)
    dataset = MedMNISTDataset(arrays)
    assert len(dataset) == 12
    item = dataset[-1]
    assert set(item) == {"image", "label", "index"} and item["index"] == 11
    assert item["image"].shape == (3, 28, 28) and item["image"].dtype == torch.float32
    assert item["label"].shape == (1,) and item["label"].dtype == torch.int64
    assert torch.equal(item["image"], arrays.images[11]) and int(item["label"]) == int(arrays.labels[11])
    with pytest.raises(IndexError, match="out of range"):
        dataset[12]
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=5)))
    assert batch["image"].shape == (5, 3, 28, 28) and batch["label"].shape == (5, 1)
    assert batch["index"].tolist() == [0, 1, 2, 3, 4]


def test_dataset_transform_runs_per_item_on_copies(tmp_path: Path) -> None:
    from monai.transforms import Lambdad

    write_synthetic_medmnist(tmp_path, "pneumoniamnist", n_train=6, n_val=2, n_test=2)
    arrays = load_medmnist("pneumoniamnist", "train", dataset_dir=tmp_path, download=False)
    before = arrays.images.clone()
    # an in-place transform must not write through to the split held in memory
    dataset = arrays.dataset(transform=Lambdad(keys="image", func=lambda x: x.mul_(0.0).add_(0.5)))
    assert torch.all(dataset[2]["image"] == 0.5)
    assert torch.equal(arrays.images, before)
    with pytest.raises(TypeError, match="transform must be callable"):
        MedMNISTDataset(arrays, transform="flip")


# ---------------------------------------------------------------- errors


def test_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown MedMNIST flag 'mnist'.*pneumoniamnist") as info:
        load_medmnist("mnist", "train", dataset_dir=tmp_path)
    assert "organmnist3d" not in str(info.value)
    with pytest.raises(ValueError, match="3-D dataset; only 2-D"):
        load_medmnist("organmnist3d", "train", dataset_dir=tmp_path)
    with pytest.raises(ValueError, match="multi-label"):
        load_medmnist("chestmnist", "train", dataset_dir=tmp_path)
    with pytest.raises(ValueError, match="unsupported MedMNIST size 32"):
        load_medmnist("pneumoniamnist", "train", size=32, dataset_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        load_medmnist("pneumoniamnist", "validation", dataset_dir=tmp_path)
    assert "retinamnist" in supported_flags() and "chestmnist" not in supported_flags()


def test_missing_file_without_download_names_file_folder_and_url(tmp_path: Path) -> None:
    folder = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        load_medmnist("dermamnist", "train", size=128, dataset_dir=folder, download=False)
    message = str(info.value)
    assert str(folder / "dermamnist_128.npz") in message and f"put it in {folder}" in message
    assert medmnist_url("dermamnist", 128) in message
    assert not folder.exists()


def test_default_dataset_dir_is_medmnist_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medmnist.info

    monkeypatch.setattr(medmnist.info, "DEFAULT_ROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "pneumoniamnist.npz")):
        load_medmnist("pneumoniamnist", "train", download=False)


def test_failed_download_names_file_folder_and_url(tmp_path: Path, fail_downloads: list[str]) -> None:
    folder = tmp_path / "cache"
    with pytest.raises(RuntimeError) as info:
        load_medmnist("pneumoniamnist", "train", size=64, dataset_dir=folder, download=True)
    message = str(info.value)
    url = medmnist_url("pneumoniamnist", 64)
    assert "pneumoniamnist_64.npz" in message and str(folder) in message and url in message
    assert "network is unreachable" in message and info.value.__cause__ is not None
    # the download went through medmnist's own code path to the official URL
    assert fail_downloads == [url]
    assert not (folder / "pneumoniamnist_64.npz").exists()


def _write(path: Path, **arrays: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:  # a handle keeps numpy from appending a second .npz suffix
        np.savez(handle, **arrays)
    return path


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a plain .npy payload behind an .npz name
        np.save(handle, array)


def _gray(n: int = 4, size: int = 28) -> np.ndarray:
    return np.zeros((n, size, size), np.uint8)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p.write_bytes(b"this is not a zip archive"), "not a zip archive"),
        (lambda p: p.write_bytes(b""), "it is empty"),
        (lambda p: _save_npy(p, _gray()), "single .npy array"),
        (lambda p: _write(p, train_images=_gray()), r"missing keys \['train_labels'\]"),
        (
            lambda p: _write(p, train_images=_gray().astype(np.float32), train_labels=np.zeros((4, 1), np.uint8)),
            "must be uint8",
        ),
        (
            lambda p: _write(p, train_images=np.zeros((4, 28, 28, 3), np.uint8), train_labels=np.zeros((4, 1))),
            r"must have shape \(N, 28, 28\)",
        ),
        (lambda p: _write(p, train_images=_gray(size=32), train_labels=np.zeros((4, 1), np.uint8)), "must have shape"),
        (lambda p: _write(p, train_images=_gray(), train_labels=np.zeros((4, 1), np.float32)), "must hold integers"),
        (lambda p: _write(p, train_images=_gray(), train_labels=np.zeros((3, 1), np.uint8)), r"shape \(4, 1\)"),
        (lambda p: _write(p, train_images=_gray(), train_labels=np.full((4, 1), 2, np.uint8)), r"outside \[0, 1\]"),
    ],
    ids=["not-zip", "empty", "npy", "missing-key", "float-images", "rgb-for-gray", "wrong-size", "float-labels",
         "count-mismatch", "label-range"],
)
def test_bad_files_raise_naming_the_file(tmp_path: Path, make, match: str) -> None:
    path = tmp_path / "pneumoniamnist.npz"
    make(path)
    with pytest.raises(ValueError, match=match) as info:
        load_medmnist("pneumoniamnist", "train", dataset_dir=tmp_path, download=False)
    assert str(path) in str(info.value)


def test_truncated_archive_raises_naming_the_file(tmp_path: Path) -> None:
    path = write_synthetic_medmnist(tmp_path, "pneumoniamnist", n_train=8, n_val=2, n_test=2)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="cannot be opened as an npz archive") as info:
        load_medmnist("pneumoniamnist", "train", dataset_dir=tmp_path, download=False)
    assert str(path) in str(info.value)


def test_damaged_member_raises_naming_the_file(tmp_path: Path) -> None:
    path = write_synthetic_medmnist(tmp_path, "pneumoniamnist", n_train=64, n_val=2, n_test=2)
    data = bytearray(path.read_bytes())
    data[200:400] = bytes(b ^ 0xFF for b in data[200:400])  # inside the compressed train_images member
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="cannot read train_images") as info:
        load_medmnist("pneumoniamnist", "train", dataset_dir=tmp_path, download=False)
    assert str(path) in str(info.value)


def test_wrong_flag_for_file_is_caught_by_channel_check(tmp_path: Path) -> None:
    gray = write_synthetic_medmnist(tmp_path, "pneumoniamnist", n_train=4, n_val=2, n_test=2)
    gray.rename(tmp_path / "bloodmnist.npz")
    with pytest.raises(ValueError, match=r"\(N, 28, 28, 3\) for bloodmnist"):
        read_medmnist_npz(tmp_path / "bloodmnist.npz", "bloodmnist", "train")


# ---------------------------------------------------------------- sampling

IMBALANCED = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)


def test_class_balanced_weights() -> None:
    weights = class_balanced_weights(IMBALANCED[:, None])
    assert weights.shape == (1000,) and weights.dtype == torch.float64
    assert torch.allclose(torch.stack([weights[IMBALANCED == k].sum() for k in range(3)]), torch.ones(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="integer class indices"):
        class_balanced_weights(torch.zeros(4))
    with pytest.raises(ValueError, match="empty"):
        class_balanced_weights([])
    with pytest.raises(ValueError, match=">= 0"):
        class_balanced_weights([0, -1])


def _fractions(indices: list[int]) -> list[float]:
    counts = Counter(IMBALANCED[indices].tolist())
    return [counts[k] / len(indices) for k in range(3)]


def test_balanced_sampler_draws_classes_equally_and_is_seeded() -> None:
    sampler = make_sampler(IMBALANCED, balanced=True, seed=1, num_samples=3000)
    drawn = list(sampler)
    assert len(drawn) == 3000
    assert all(abs(f - 1 / 3) < 0.04 for f in _fractions(drawn))
    assert drawn == list(make_sampler(IMBALANCED, balanced=True, seed=1, num_samples=3000))
    assert drawn != list(make_sampler(IMBALANCED, balanced=True, seed=2, num_samples=3000))


def test_unbalanced_sampler_is_a_seeded_permutation() -> None:
    drawn = list(make_sampler(IMBALANCED, balanced=False, seed=5))
    assert sorted(drawn) == list(range(1000)) and drawn != list(range(1000))
    assert drawn == list(make_sampler(IMBALANCED, balanced=False, seed=5))


def test_distributed_balanced_sampler_shards_and_balances() -> None:
    samplers = [
        make_sampler(IMBALANCED, balanced=True, seed=0, num_samples=3000, num_replicas=2, rank=r) for r in range(2)
    ]
    from monai.data import DistributedWeightedRandomSampler

    assert all(isinstance(s, DistributedWeightedRandomSampler) for s in samplers)
    shards = [list(s) for s in samplers]
    assert [len(s) for s in shards] == [1500, 1500]
    # each rank draws only from its own half of the data
    assert not set(shards[0]) & set(shards[1])
    assert all(abs(f - 1 / 3) < 0.05 for f in _fractions(shards[0] + shards[1]))
    plain = make_sampler(IMBALANCED, balanced=False, num_replicas=2, rank=1)
    assert len(list(plain)) == 500
    with pytest.raises(ValueError, match="initialised torch.distributed"):
        make_sampler(IMBALANCED, balanced=True, distributed=True)


# ---------------------------------------------------------------- real data (../shared/data)


@pytest.mark.parametrize(
    ("flag", "channels", "counts"),
    [
        ("pneumoniamnist", 1, {"train": [1214, 3494], "val": [135, 389], "test": [234, 390]}),
        (
            "retinamnist",
            3,
            {"train": [486, 128, 206, 194, 66], "val": [54, 12, 28, 20, 6], "test": [174, 46, 92, 68, 20]},
        ),
    ],
)
def test_real_medmnist_splits(shared_data: Path, flag: str, channels: int, counts: dict[str, list[int]]) -> None:
    folder = shared_data / "medmnist"
    if not (folder / f"{flag}.npz").is_file():
        pytest.skip(f"{folder / (flag + '.npz')} not present")
    import medmnist.info

    for split, expected in counts.items():
        arrays = load_medmnist(flag, split, dataset_dir=folder, download=False)
        assert len(arrays) == medmnist.info.INFO[flag]["n_samples"][split] == sum(expected)
        assert arrays.images.shape[1:] == (channels, 28, 28)
        assert arrays.class_counts().tolist() == expected
        assert -1.0 <= float(arrays.images.min()) < -0.5 and 0.5 < float(arrays.images.max()) <= 1.0
