"""Segmentation folders: pairing by stem, deterministic splits, COCO-Stuff's 171-class remap, the CelebAMask-HQ
prepare command on a synthetic official release, one-line errors, and the real samples when present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsymmflow.cli import main
from medsymmflow.data import (
    CELEBAMASK_HQ_CLASSES,
    CELEBAMASK_HQ_PARTS,
    COCOSTUFF_CLASSES,
    COCOSTUFF_IGNORE_INDEX,
    COCOSTUFF_LABELS,
    COCOSTUFF_UNUSED_IDS,
    COCOSTUFF_USED_VALUES,
    celebamask_hq_dicts,
    cocostuff_dicts,
    cocostuff_to_classes,
    match_pairs,
    prepare_celebamask_hq,
    read_label_map,
    split_ids,
    write_splits_file,
    write_synthetic_segmentation,
)


def _write_pair(root: Path, stem: str, label: np.ndarray, image_dir: str = "images", label_dir: str = "masks",
                image_size: tuple[int, int] | None = None) -> None:
    rows, cols = image_size or label.shape
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    (root / label_dir).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((rows, cols, 3), 100, np.uint8)).save(root / image_dir / f"{stem}.jpg")
    Image.fromarray(label.astype(np.uint8), mode="L").save(root / label_dir / f"{stem}.png")


def _pairs_folder(root: Path, n: int = 10, size: tuple[int, int] = (8, 12)) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        _write_pair(root, f"face{i:03d}", rng.integers(0, 19, size))
    return root


# ---------------------------------------------------------------- COCO-Stuff remap


def test_cocostuff_tables_hold_171_used_ids_and_the_11_unused_ones() -> None:
    assert len(COCOSTUFF_LABELS) == 182 and len(COCOSTUFF_CLASSES) == 171 and len(COCOSTUFF_USED_VALUES) == 171
    assert [COCOSTUFF_LABELS[i - 1] for i in COCOSTUFF_UNUSED_IDS] == [
        "street sign", "hat", "shoe", "eye glasses", "plate", "mirror", "window", "desk", "door", "blender", "hair brush",
    ]
    assert COCOSTUFF_CLASSES[0] == "person" and COCOSTUFF_CLASSES[79] == "toothbrush"  # the 80 things first
    assert COCOSTUFF_CLASSES[80] == "banner" and COCOSTUFF_CLASSES[-1] == "wood"  # then the 91 stuff classes


def test_cocostuff_remap_maps_every_used_id_in_order_and_keeps_255() -> None:
    values = np.asarray(list(COCOSTUFF_USED_VALUES) + [255], dtype=np.uint8).reshape(1, -1)
    classes = cocostuff_to_classes(values)
    assert classes.dtype == np.int64
    assert classes[0, :-1].tolist() == list(range(171)) and classes[0, -1] == COCOSTUFF_IGNORE_INDEX
    # each class keeps its name: value v (id v + 1) -> class c with COCOSTUFF_CLASSES[c] == its label
    for v, c in zip(values[0, :-1], classes[0, :-1]):
        assert COCOSTUFF_CLASSES[c] == COCOSTUFF_LABELS[v]
    # the 11 highest ids are not merged into other classes: wood (value 181) is the last class, 170
    assert cocostuff_to_classes(np.array([[181, 91, 92]])).tolist() == [[170, 80, 81]]


@pytest.mark.parametrize("unused_id", COCOSTUFF_UNUSED_IDS)
def test_cocostuff_remap_refuses_each_unused_id(unused_id: int) -> None:
    label = np.zeros((4, 4), np.uint8)
    label[2, 1] = unused_id - 1
    with pytest.raises(ValueError, match=rf"label map x\.png holds value\(s\) {unused_id - 1} outside the COCO-Stuff"):
        cocostuff_to_classes(label, name="label map x.png")


@pytest.mark.parametrize("value", [182, 200, 254, -1, 256])
def test_cocostuff_remap_refuses_values_that_are_no_id(value: int) -> None:
    with pytest.raises(ValueError, match=rf"value\(s\) {value} outside"):
        cocostuff_to_classes(np.array([[0, value]], dtype=np.int64))


def test_cocostuff_official_layout_pairs_by_split(tmp_path: Path) -> None:
    label = np.array([[0, 255], [181, 92]], np.uint8)
    for split, stems in (("train2017", ["000000000009", "000000000025"]), ("val2017", ["000000000139"])):
        for stem in stems:
            _write_pair(tmp_path, stem, label, image_dir=split, label_dir=f"stuffthingmaps_trainval2017/{split}")
    train = cocostuff_dicts(tmp_path, "train", check_values=True)
    assert [d["id"] for d in train] == ["000000000009", "000000000025"]
    assert [d["id"] for d in cocostuff_dicts(tmp_path, "val")] == ["000000000139"]
    assert len(cocostuff_dicts(tmp_path, "all")) == 3
    with pytest.raises(ValueError, match="has the splits train, val"):
        cocostuff_dicts(tmp_path, "test")
    # a label map with an unused id is named with its value
    bad = tmp_path / "stuffthingmaps_trainval2017/val2017/000000000139.png"
    Image.fromarray(np.full((2, 2), 11, np.uint8), mode="L").save(bad)
    with pytest.raises(ValueError, match=rf"label map {bad} holds value\(s\) 11 outside"):
        cocostuff_dicts(tmp_path, "val", check_values=True)


# ---------------------------------------------------------------- pairing and splitting


def test_match_pairs_by_stem_sorted_and_ignores_labels_without_images(tmp_path: Path) -> None:
    _pairs_folder(tmp_path, n=3)
    Image.fromarray(np.zeros((8, 12), np.uint8)).save(tmp_path / "masks" / "extra.png")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    pairs = match_pairs(tmp_path / "images", tmp_path / "masks")
    assert [p["id"] for p in pairs] == ["face000", "face001", "face002"]
    assert all(Path(p["image"]).stem == Path(p["label"]).stem == p["id"] for p in pairs)


def test_an_image_without_a_label_map_is_named(tmp_path: Path) -> None:
    _pairs_folder(tmp_path, n=3)
    (tmp_path / "masks" / "face001.png").unlink()
    with pytest.raises(ValueError, match=r"image .*images/face001\.jpg has no label map of the same name in .*masks"):
        celebamask_hq_dicts(tmp_path, "all")


def test_missing_folders_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"CelebAMask-HQ folder not found: .*nowhere"):
        celebamask_hq_dicts(tmp_path / "nowhere")
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match=r"CelebAMask-HQ label-map folder not found: .*masks"):
        celebamask_hq_dicts(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"COCO-Stuff images folder not found: .*images"):
        cocostuff_dicts(tmp_path / "images")


def test_two_files_with_one_stem_are_refused(tmp_path: Path) -> None:
    _pairs_folder(tmp_path, n=2)
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(tmp_path / "images" / "face000.png")
    with pytest.raises(ValueError, match="two image files share the name 'face000'"):
        celebamask_hq_dicts(tmp_path, "all")


def test_sizes_that_disagree_are_named(tmp_path: Path) -> None:
    _pairs_folder(tmp_path, n=2)
    _write_pair(tmp_path, "face001", np.zeros((8, 12)), image_size=(16, 24))
    with pytest.raises(ValueError, match=r"image .*face001\.jpg is 16x24 \(rows x columns\) but its label map .*face001\.png is 8x12"):
        celebamask_hq_dicts(tmp_path, "all")


def test_a_label_value_outside_the_classes_is_named(tmp_path: Path) -> None:
    _pairs_folder(tmp_path, n=3)
    label = np.zeros((8, 12), np.uint8)
    label[0, 0] = 19
    _write_pair(tmp_path, "face002", label)
    assert len(celebamask_hq_dicts(tmp_path, "all")) == 3  # values are read only when asked
    with pytest.raises(ValueError, match=r"label map .*face002\.png holds value\(s\) 19 outside the CelebAMask-HQ classes \(0\.\.18\)"):
        celebamask_hq_dicts(tmp_path, "all", check_values=True)


def test_split_ids_is_deterministic_disjoint_and_covering() -> None:
    ids = [f"{i:04d}" for i in range(100)]
    a = split_ids(ids, seed=3)
    assert a == split_ids(list(reversed(ids)), seed=3)  # the order the files were found in does not matter
    assert [len(a[s]) for s in ("train", "val", "test")] == [80, 10, 10]
    assert sorted(a["train"] + a["val"] + a["test"]) == ids
    assert all(v == sorted(v) for v in a.values())
    assert split_ids(ids, seed=4) != a and a["train"] != ids[:80]  # a seeded permutation, not a prefix
    assert [len(v) for v in split_ids(ids, (0.5, 0.25, 0.25)).values()] == [50, 25, 25]
    with pytest.raises(ValueError, match="sum to 1"):
        split_ids(ids, (0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="unknown split name"):
        split_ids(ids, {"train": 0.9, "holdout": 0.1})


def test_dataset_splits_by_seed_or_by_its_splits_file(tmp_path: Path) -> None:
    _pairs_folder(tmp_path, n=10)
    train, val, test = (celebamask_hq_dicts(tmp_path, s, seed=1) for s in ("train", "val", "test"))
    assert [len(train), len(val), len(test)] == [8, 1, 1]
    assert train == celebamask_hq_dicts(tmp_path, "train", seed=1)
    assert {d["id"] for d in train + val + test} == {f"face{i:03d}" for i in range(10)}
    write_splits_file(tmp_path, {"train": ["face003", "face001"], "val": ["face009"], "test": []})
    assert [d["id"] for d in celebamask_hq_dicts(tmp_path, "train")] == ["face001", "face003"]
    write_splits_file(tmp_path, {"train": ["face042"]})
    with pytest.raises(ValueError, match="lists 1 id\\(s\\) without an image/label pair: face042"):
        celebamask_hq_dicts(tmp_path, "train")


def test_a_split_the_fractions_leave_empty_is_refused_with_the_counts(tmp_path: Path) -> None:
    _pairs_folder(tmp_path, n=5)  # 80 / 10 / 10 % of 5 pairs: positions [0, 4), [4, 4), [4, 5)
    assert [len(celebamask_hq_dicts(tmp_path, s)) for s in ("train", "test")] == [4, 1]
    with pytest.raises(ValueError, match=r"split 'val' is empty: 5 pairs split 80 / 10 / 10 % into train / val / test leave it none; "
                                         r"add pairs or write a split file \(.*splits\.json\)"):
        celebamask_hq_dicts(tmp_path, "val")
    write_splits_file(tmp_path, {"train": ["face000"], "val": [], "test": ["face001"]})
    with pytest.raises(ValueError, match=r"split 'val' of .*splits\.json lists no ids"):
        celebamask_hq_dicts(tmp_path, "val")
    # 21 pairs, as in shared/data/cocostuff_sample: every split keeps some
    assert [len(v) for v in split_ids([f"{i:02d}" for i in range(21)]).values()] == [17, 2, 2]


def test_synthetic_cocostuff_folder_holds_cocostuff_label_values(tmp_path: Path) -> None:
    root = write_synthetic_segmentation(tmp_path, n=6, size=16, num_classes=4, layout="cocostuff", unlabelled_border=1)
    pairs = cocostuff_dicts(root, "all", check_values=True)
    assert [Path(p["image"]).suffix for p in pairs] == [".jpg"] * 6 and all("/labels/" in p["label"] for p in pairs)
    raw = np.stack([read_label_map(p["label"]) for p in pairs])
    # the synthetic classes 0..3 are COCO-Stuff classes spread over the 171: written as their ids - 1
    wanted = [0, 57, 113, 170]
    assert set(np.unique(raw).tolist()) <= {COCOSTUFF_USED_VALUES[c] for c in wanted} | {255}
    assert COCOSTUFF_USED_VALUES[170] == 181 != 170  # so the remap is exercised
    classes = cocostuff_to_classes(raw)
    assert set(np.unique(classes).tolist()) <= set(wanted) | {255} and 0 in classes
    assert (classes[:, 0] == 255).all() and (classes[:, :, -1] == 255).all() and (classes[:, 1:-1, 1:-1] != 255).all()
    with pytest.raises(ValueError, match="classes must be 4 distinct class indices in 0..170"):
        write_synthetic_segmentation(tmp_path / "x", num_classes=4, layout="cocostuff", classes=[0, 1, 2, 171])


# ---------------------------------------------------------------- the official CelebAMask-HQ release


def _official_release(root: Path, ids: tuple[int, ...] = (0, 1, 2001), image_px: int = 16, mask_px: int = 8) -> dict[int, np.ndarray]:
    """A tiny official-layout folder; returns the label map each id must combine to (at mask size)."""
    (root / "CelebA-HQ-img").mkdir(parents=True)
    expected = {}
    for i in ids:
        Image.fromarray(np.full((image_px, image_px, 3), 10 * i % 250, np.uint8)).save(root / "CelebA-HQ-img" / f"{i}.jpg")
        folder = root / "CelebAMask-HQ-mask-anno" / str(i // 2000)
        folder.mkdir(parents=True, exist_ok=True)
        parts = {
            "skin": np.s_[1:7, 1:7],  # under everything else
            "l_eye": np.s_[2:3, 4:6],  # the subject's left eye: the image's right side
            "r_eye": np.s_[2:3, 1:3],
            "hair": np.s_[0:3, 0:8],  # painted after skin and eyes: wins where they overlap
            "neck": np.s_[6:8, 3:5],
            "cloth": np.s_[7:8, 0:8],  # the last part: over the neck
        }
        if i == 1:
            parts.pop("l_eye")  # a part that is absent leaves no file
        label = np.zeros((mask_px, mask_px), np.uint8)
        for part in CELEBAMASK_HQ_PARTS:
            if part in parts:
                on = np.zeros((mask_px, mask_px), np.uint8)
                on[parts[part]] = 255
                Image.fromarray(np.stack([on] * 3, -1)).save(folder / f"{i:05d}_{part}.png")  # the release's masks are RGB
                label[parts[part]] = CELEBAMASK_HQ_CLASSES.index(part)
        expected[i] = label
    return expected


def test_prepare_combines_parts_in_the_official_order(tmp_path: Path) -> None:
    expected = _official_release(tmp_path / "release")
    # the order matters: hair (13) over skin (1) and both eyes, cloth (18) over neck (17)
    assert expected[0][2, 4] == 13 and expected[0][7, 4] == 18 and expected[0][3, 4] == 1
    summary = prepare_celebamask_hq(tmp_path / "release", tmp_path / "out")
    assert summary["pairs"] == 3 and summary["sizes_written"] == [(16, 16)] and summary["splits"] is None
    for i, label in expected.items():
        written = read_label_map(tmp_path / "out" / "masks" / f"{i}.png")
        # the 8 px masks are upsampled to the 16 px images by repeating each pixel 2 x 2
        assert np.array_equal(written, np.repeat(np.repeat(label, 2, 0), 2, 1))
        assert (tmp_path / "out/images" / f"{i}.jpg").read_bytes() == (tmp_path / "release/CelebA-HQ-img" / f"{i}.jpg").read_bytes()
    assert [d["id"] for d in celebamask_hq_dicts(tmp_path / "out", "all", check_values=True)] == ["0", "1", "2001"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_prepare_at_a_size_and_with_the_official_partition(tmp_path: Path) -> None:
    _official_release(tmp_path / "release", ids=(0, 1, 2, 3))
    (tmp_path / "release/CelebA-HQ-to-CelebA-mapping.txt").write_text(
        "idx         orig_idx    orig_file\n0 119613 119614.jpg\n1 162771 162772.jpg\n2 182637 182638.jpg\n3 182638 182639.jpg\n"
    )
    summary = prepare_celebamask_hq(tmp_path / "release", tmp_path / "out", size=4)
    assert summary["sizes_written"] == [(4, 4)] and summary["splits"] == {"train": 1, "val": 2, "test": 1}
    assert json.loads((tmp_path / "out/splits.json").read_text()) == {"train": ["0"], "val": ["1", "2"], "test": ["3"]}
    assert Image.open(tmp_path / "out/images/0.png").size == (4, 4)
    assert [d["id"] for d in celebamask_hq_dicts(tmp_path / "out", "val")] == ["1", "2"]


def test_prepare_command_and_its_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _official_release(tmp_path / "release")
    assert main(["prepare", "celebamask-hq", "--source", str(tmp_path / "release"), "--output", str(tmp_path / "out")]) == 0
    assert "wrote 3 image / label-map pairs (16x16)" in capsys.readouterr().out
    # the dataset tells a user holding the raw release what to run
    with pytest.raises(ValueError, match=r"official CelebAMask-HQ release layout .* medsymmflow prepare celebamask-hq --source"):
        celebamask_hq_dicts(tmp_path / "release")
    assert main(["prepare", "celebamask-hq", "--source", str(tmp_path / "release"), "--output", str(tmp_path / "out")]) == 1
    assert "already exists and is not an empty folder" in capsys.readouterr().err
    # an image without part masks: named, and nothing is left behind
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "release/CelebA-HQ-img/7.jpg")
    assert main(["prepare", "celebamask-hq", "--source", str(tmp_path / "release"), "--output", str(tmp_path / "out2")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CelebA-HQ-img/7.jpg has no part masks (00007_<part>.png)" in err[0]
    assert not (tmp_path / "out2").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (tmp_path / "release/CelebA-HQ-img/7.jpg").unlink()
    (tmp_path / "release/CelebAMask-HQ-mask-anno/0/00000_nose_tip.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"00000_nose_tip\.png is not a CelebAMask-HQ part mask"):
        prepare_celebamask_hq(tmp_path / "release", tmp_path / "out3")
    with pytest.raises(FileNotFoundError, match=r"CelebAMask-HQ image folder not found: .*out/CelebA-HQ-img"):
        prepare_celebamask_hq(tmp_path / "out", tmp_path / "out4")


def test_a_failure_midway_leaves_nothing_behind(tmp_path: Path) -> None:
    _official_release(tmp_path / "release", ids=(0, 1, 2))
    (tmp_path / "release/CelebAMask-HQ-mask-anno/0/00002_hair.png").write_bytes(b"not a png")  # read after 0 and 1
    with pytest.raises(ValueError, match=r"part mask .*00002_hair\.png is not a readable image"):
        prepare_celebamask_hq(tmp_path / "release", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]


# ---------------------------------------------------------------- the real samples in ../shared/data


def _sample(shared_data: Path, name: str) -> Path:
    folder = shared_data / name
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    return folder


def test_real_celebamask_hq_sample(shared_data: Path) -> None:
    root = _sample(shared_data, "celebamask_hq_sample")
    pairs = celebamask_hq_dicts(root, "all", check_values=True)
    assert len(pairs) == 300
    assert [len(celebamask_hq_dicts(root, s)) for s in ("train", "val", "test")] == [240, 30, 30]
    images_with = np.zeros(19, int)
    for pair in pairs:
        label = read_label_map(pair["label"])
        assert label.shape == (512, 512) and label.max() <= 18
        images_with[np.unique(label)] += 1
    # the per-class image counts of shared/data/README.md
    assert images_with.tolist() == [300, 300, 300, 16, 285, 287, 290, 289, 153, 146, 178, 300, 300, 294, 11, 70, 15, 289, 178]
    # the dataset authors' demo pairs have 1024 px images and 512 px masks: refused until resized
    with pytest.raises(ValueError, match=r"is 1024x1024 \(rows x columns\) but its label map .* is 512x512"):
        celebamask_hq_dicts(root / "maskgan_demo", "all")


def test_real_cocostuff_sample(shared_data: Path) -> None:
    root = _sample(shared_data, "cocostuff_sample")
    pairs = cocostuff_dicts(root, "all", check_values=True)
    assert len(pairs) == 21
    names = [line.split(": ", 1)[1] for line in (root / "labels.txt").read_text().splitlines() if line.strip()]
    assert tuple(names[1:]) == COCOSTUFF_LABELS  # the table in the package is the dataset's labels.txt
    raw_values, person_images = set(), 0
    for pair in pairs:
        raw = read_label_map(pair["label"])
        assert raw.shape == Image.open(pair["image"]).size[::-1]
        classes = cocostuff_to_classes(raw)
        assert (classes == 255).any() and ((classes < 171) | (classes == 255)).all()
        assert np.array_equal(classes == 255, raw == 255)
        raw_values |= set(np.unique(raw).tolist())
        person_images += int((classes == 0).any())
    assert len(raw_values) == 88 and 255 in raw_values and person_images == 13
    assert not raw_values & {i - 1 for i in COCOSTUFF_UNUSED_IDS}
