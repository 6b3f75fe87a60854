"""The inference bundle's preprocessing against the training arrays: orientation, bit depth, alpha, palettes, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _preprocessing(bundle: str, monkeypatch: pytest.MonkeyPatch):
    """The ``infer#preprocessing`` Compose of a shipped inference bundle, as the bundle builds it."""
    from monai.bundle import ConfigParser

    monkeypatch.chdir(REPO)  # the bundles name configs/ relative to the repository root
    parser = ConfigParser()
    parser.read_config(f"bundles/{bundle}/inference.json")
    return parser.get_parsed_content("infer#preprocessing")


def _asymmetric(size: int = 28, channels: int = 1) -> np.ndarray:
    """A smooth uint8 image that differs from its transpose and its flips: a ramp down the rows, a bump top-left."""
    r, c = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    gray = 30 + 6 * r + 90 * np.exp(-((r - 6) ** 2 + (c - 9) ** 2) / 18.0)
    img = np.stack([gray * (0.7 + 0.1 * k) for k in range(channels)], -1)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def npz_tensor(tmp_path: Path):
    """Writes an npz holding the asymmetric images; returns (uint8 arrays by flag, the training tensors by flag)."""
    from medsymmflow.data import read_medmnist_npz

    out = {}
    for flag, channels in (("pneumoniamnist", 1), ("bloodmnist", 3)):
        img = _asymmetric(channels=channels)
        arr = img[..., 0] if channels == 1 else img
        stack = np.stack([arr, arr[::-1]])
        names = [f"{s}_{k}" for k in ("images", "labels") for s in ("train", "val", "test")]
        data = {n: stack if n.endswith("images") else np.zeros((2, 1), np.uint8) for n in names}
        path = tmp_path / f"{flag}.npz"
        np.savez(path, **{n: data[n] for n in names})
        out[flag] = (arr, read_medmnist_npz(path, flag, "test").images[0])
    return out


@pytest.mark.parametrize("bundle", ["pneumoniamnist", "bloodmnist"])
def test_png_jpeg_nifti_reach_the_network_as_the_training_arrays_do(
    bundle: str, npz_tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nibabel as nib
    from PIL import Image

    arr, expected = npz_tensor[bundle]
    assert not torch.allclose(expected, expected.transpose(1, 2), atol=0.5)  # a transposed image would show
    Image.fromarray(arr).save(tmp_path / "case.png")
    Image.fromarray(arr).save(tmp_path / "case.jpg", quality=95)
    Image.fromarray(arr).save(tmp_path / "case.bmp")
    Image.fromarray(arr).save(tmp_path / "case.tif")
    nifti = arr[:, :, None] if arr.ndim == 2 else arr[:, :, None, :]  # a 2-D slice (rows, columns, 1[, RGB])
    nib.save(nib.Nifti1Image(nifti.astype(np.float32), np.eye(4)), tmp_path / "case.nii.gz")
    pre = _preprocessing(bundle, monkeypatch)
    for name in ("case.png", "case.bmp", "case.tif", "case.nii.gz"):
        if name == "case.nii.gz" and arr.ndim == 3:
            continue  # a NIfTI of an RGB slice has its colour on the 5th axis: not a layout the bundle claims to read
        out = pre({"image": str(tmp_path / name)})["image"]
        assert out.shape == expected.shape and out.dtype == torch.float32, name
        torch.testing.assert_close(torch.as_tensor(out), expected, atol=1e-6, rtol=0, msg=name)
    jpeg = torch.as_tensor(pre({"image": str(tmp_path / "case.jpg")})["image"])
    assert (jpeg - expected).abs().max() < 0.05  # lossy, but within a few grey levels
    assert (jpeg - expected.transpose(1, 2)).abs().max() > 0.5


def test_bit_depth_alpha_palette_and_exif_orientation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    arr = _asymmetric()[..., 0]
    Image.fromarray(arr).save(tmp_path / "gray.png")
    Image.fromarray(arr.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 16-bit: 0..65535
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    Image.fromarray(np.stack([arr, np.full_like(arr, 7)], -1), "LA").save(tmp_path / "la.png")
    Image.fromarray(np.stack([arr, arr, arr, np.full_like(arr, 7)], -1), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(arr).save(tmp_path / "palette.gif")
    assert Image.open(tmp_path / "palette.gif").mode == "P"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the stored pixels are turned the other way
    Image.fromarray(arr).transpose(Image.Transpose.ROTATE_90).save(tmp_path / "exif.png", exif=exif)
    binary = (arr > 100).astype(np.uint8) * 255
    Image.fromarray(binary).convert("1").save(tmp_path / "bw.png")

    pre = _preprocessing("pneumoniamnist", monkeypatch)
    gray = torch.as_tensor(pre({"image": str(tmp_path / "gray.png")})["image"])
    torch.testing.assert_close(gray, torch.from_numpy(arr)[None].float() / 127.5 - 1)
    for name in ("deep.png", "la.png", "rgba.png", "palette.gif", "exif.png"):
        out = torch.as_tensor(pre({"image": str(tmp_path / name)})["image"])
        torch.testing.assert_close(out, gray, atol=1e-5, rtol=0, msg=name)
    bw = torch.as_tensor(pre({"image": str(tmp_path / "bw.png")})["image"])
    torch.testing.assert_close(bw, torch.from_numpy(binary)[None].float() / 127.5 - 1)


def test_values_outside_the_intensity_range_are_refused_not_clipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nibabel as nib

    from medsymmflow.data import ImageFileDataset
    from medsymmflow.transforms import StrictScaleIntensityRange

    scale = StrictScaleIntensityRange(0, 255)
    torch.testing.assert_close(torch.as_tensor(scale(torch.tensor([0.0, 127.5, 255.0]))), torch.tensor([-1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match=r"span \[0, 4095\], outside the intensity range \[0, 255\]"):
        scale(torch.tensor([0.0, 4095.0]))
    nib.save(nib.Nifti1Image(np.linspace(0, 4095, 28 * 28).reshape(28, 28).astype(np.uint16), np.eye(4)), tmp_path / "ct.nii.gz")
    ds = ImageFileDataset([{"image": str(tmp_path / "ct.nii.gz")}], _preprocessing("pneumoniamnist", monkeypatch))
    failure = ds[0]["failed"]
    assert failure["file"] == str(tmp_path / "ct.nii.gz") and "outside the intensity range [0, 255]" in failure["error"]


def test_unreadable_files_become_named_failure_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from medsymmflow.data import ImageFileDataset, collate_image_files

    arr = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "good.png")
    (tmp_path / "text.png").write_text("not an image")
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    frames = [Image.fromarray(arr), Image.fromarray(255 - arr)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    names = ["anim.gif", "good.png", "text.png", "truncated.png"]
    ds = ImageFileDataset([{"image": str(tmp_path / n)} for n in names], _preprocessing("pneumoniamnist", monkeypatch))
    items = [ds[i] for i in range(len(ds))]
    assert [("failed" in it) for it in items] == [True, False, True, True]
    assert "2 frames" in items[0]["failed"]["error"]
    assert items[2]["failed"] == {"file": str(tmp_path / "text.png"), "error": "not a readable image (unknown format or damaged content)"}
    assert "truncated" in items[3]["failed"]["error"]
    batch = collate_image_files(items)
    assert batch["image"].shape == (1, 1, 28, 28) and batch["file"] == [str(tmp_path / "good.png")]
    assert [f["file"] for f in batch["failed"]] == [str(tmp_path / n) for n in ("anim.gif", "text.png", "truncated.png")]
    assert collate_image_files([items[0]]) == {"failed": [items[0]["failed"]]}


def test_find_image_files_reads_gif_and_lists_what_it_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from medsymmflow.data import find_image_files, image_file_dicts

    for name in ("a.gif", "b.PNG", "c.tiff", "d.nii", "notes.txt", "scan.dcm"):
        (tmp_path / name).write_bytes(b"0")
    with caplog.at_level("WARNING"):
        found = find_image_files(tmp_path)
    assert [Path(f).name for f in found.files] == ["a.gif", "b.PNG", "c.tiff", "d.nii"]
    assert [Path(f).name for f in found.skipped] == ["notes.txt", "scan.dcm"]
    assert "skipped 2 file(s)" in caplog.text and "notes.txt" in caplog.text
    assert image_file_dicts(found) == [{"image": f} for f in found.files]
