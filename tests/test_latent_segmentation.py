"""Latent segmentation and synthesis: valid masks on the latent grid, the latent segmenter, the latent cache
(hit, training without the encoder, flips, invalidation, damage) and the CelebAMask-HQ bundle switched to
latent space by configs/segmentation_latent.json (cache command -> train 2 steps -> segment -> synthesise).

Everything runs the package's "tiny" VAE (8 x downsampling: 32 px pairs -> 4 x 4 latents) and the "tiny" network.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, run_bundle
from monai.transforms import Compose, EnsureTyped
from PIL import Image
from torch.utils.data import DataLoader

from medsymmflow import ClassCodebook
from medsymmflow.codes import dequantize
from medsymmflow.data import LatentCacheDataset, cache_latents, celebamask_hq_dicts, write_synthetic_segmentation
from medsymmflow.engines import SymmFlowTrainer
from medsymmflow.flow import SymmFlowLoss, SymmFlowSolver
from medsymmflow.inferers import SymmFlowSegmenter
from medsymmflow.networks import LatentCodec, build_network, build_vae, load_vae, save_vae
from medsymmflow.synthesis import network_segmenter
from medsymmflow.transforms import (
    LoadImageFiled,
    LoadLabelMapd,
    RandLatentDrawd,
    ResizeShortSided,
    StrictScaleIntensityRanged,
)

SIZE = 32
CACHE_LOG = "medsymmflow.data.latent_cache"


def tiny_codec(seed: int = 0) -> LatentCodec:
    """The tiny package VAE with weights from ``seed`` (another seed: another VAE identity)."""
    torch.manual_seed(seed)
    return LatentCodec(build_vae("tiny"), scale_factor=0.5)


def counted(codec: LatentCodec) -> list[int]:
    """Count the calls of ``codec``'s VAE encoder from now on (the list's one entry)."""
    calls, encode = [0], codec.vae.encode

    def counting(x: torch.Tensor):  # noqa: ANN202 - the VAE's own return type
        calls[0] += 1
        return encode(x)

    codec.vae.encode = counting
    return calls


def pairs(size: int = SIZE) -> Compose:
    """The evaluation preprocessing of the segmentation bundles at ``size`` px (without the label check)."""
    return Compose([
        LoadImageFiled(keys="image"), LoadLabelMapd(keys="label"),
        ResizeShortSided(keys=["image", "label"], size=size, mode=["area", "nearest-exact"]),
        StrictScaleIntensityRanged(keys="image", a_min=0, a_max=255, b_min=-1.0, b_max=1.0),
        EnsureTyped(keys=["image", "label"], dtype=torch.float32, track_meta=False),
    ])


@pytest.fixture(scope="module", autouse=True)
def one_thread():  # noqa: ANN201 - a generator fixture
    """One torch thread: tiny convolutions only lose from a second thread on shared cores (as the bundle runs below)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 synthetic 32 px pairs: 32 train / 4 val / 4 test."""
    return write_synthetic_segmentation(tmp_path_factory.mktemp("latentseg") / "data", n=40, size=SIZE, num_classes=4, seed=0)


def cache_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    out = [r.getMessage() for r in caplog.records if r.name == CACHE_LOG]
    caplog.clear()
    return out


# ---------------------------------------------------------------------- valid masks, trainer, segmenter
def test_valid_masks_reach_the_latent_grid_as_the_minimum_of_each_block() -> None:
    codec = tiny_codec()
    valid = torch.ones(2, 1, SIZE, SIZE)
    valid[0, 0, 9, 17] = 0  # one ignored pixel in the 8 x 8 block (1, 2)
    valid[1, :, :8, :] = 0  # the whole first row of blocks
    latent = codec.encode_valid(valid)
    expected = torch.ones(2, 1, 4, 4)
    expected[0, 0, 1, 2] = 0
    expected[1, 0, 0, :] = 0
    assert torch.equal(latent, expected)
    with pytest.raises(ValueError, match="multiple of the VAE's downsampling factor 8"):
        codec.encode_valid(torch.ones(1, 1, 20, 20))


def test_the_latent_trainer_masks_ignored_pixels_on_the_latent_grid() -> None:
    codec, codebook = tiny_codec(), ClassCodebook.rgb(4)
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (4, 1, SIZE, SIZE)).float()
    labels[0, 0, :8, :8] = 255  # ignored: latent cell (0, 0) of image 0 drops out of the mask loss
    images = torch.rand(4, 3, SIZE, SIZE) * 2 - 1
    loader = DataLoader([{"image": images[i], "label": labels[i]} for i in range(4)], batch_size=2)
    masks, loss = [], SymmFlowLoss()

    def recording_loss(*args: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        masks.append(mask)
        return loss(*args, mask=mask)

    net = build_network("tiny", 4, 4)
    trainer = SymmFlowTrainer(
        device="cpu", max_epochs=1, train_data_loader=loader, network=net, optimizer=torch.optim.AdamW(net.parameters(), 1e-3),
        codebook=codebook, beta=4.0, loss_function=recording_loss, codec=codec, ignore_index=255,
    )
    trainer.run()
    assert trainer.state.iteration == 2 and len(masks) == 2
    assert tuple(masks[0].shape) == (2, 1, 4, 4)
    assert torch.equal(masks[0], codec.encode_valid((labels[:2] != 255).float()))
    assert masks[0][0, 0, 0, 0] == 0 and masks[0].sum() == 2 * 16 - 1 and torch.all(masks[1] == 1)


def test_the_latent_segmenter_decodes_the_mask_latent_before_the_pixel_decision() -> None:
    codec, codebook = tiny_codec(), ClassCodebook.rgb(4)
    torch.manual_seed(1)
    net = build_network("tiny", 4, 4).eval()
    images = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    segmenter = SymmFlowSegmenter(codebook, steps=2, codec=codec)
    assert segmenter.noise_shape(images) == (2, 4, 4, 4)
    noise = torch.randn(segmenter.noise_shape(images))
    with torch.no_grad():
        encoded = segmenter.encode(images, torch.Generator().manual_seed(3))
        labels, uncertainty = segmenter(images, net, noise=noise, encoded=encoded)
        # by hand: integrate the latents, decode the code latent to a 32 px RGB code mask, nearest code per pixel
        y = SymmFlowSolver(net).sample(encoded, noise, t_start=1.0, t_end=0.0, steps=2).y
        expected = codebook.decode(codec.decode_image(y, 3), "pixel")
    assert labels.shape == (2, SIZE, SIZE) and uncertainty.shape == (2, SIZE, SIZE)
    assert torch.equal(labels, expected.labels)
    torch.testing.assert_close(uncertainty, expected.uncertainty)
    # the synthesis metrics' own segmenter takes the codec the same way: pixel label maps
    assert network_segmenter(net, codebook, steps=1, codec=codec)(images).shape == (2, SIZE, SIZE)
    with pytest.raises(ValueError, match="code mask through the VAE"):
        SymmFlowSegmenter(ClassCodebook.from_kind("onehot", 4), codec=codec)


# ---------------------------------------------------------------------- the latent cache
def test_the_cache_is_built_once_and_training_from_it_never_runs_the_encoder(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=CACHE_LOG)
    codec, codebook = tiny_codec(), ClassCodebook.rgb(4)
    calls = counted(codec)
    train = celebamask_hq_dicts(data, "train")
    settings = {"size": SIZE, "mask_draws": 3, "seed": 7, "ignore_index": 255, "batch_size": 8, "progress": False}
    folder = cache_latents(train, pairs(), codec, codebook, 10.0, tmp_path / "cache", **settings)
    assert folder == tmp_path / "cache" / "train" and (folder / "manifest.json").is_file()
    built = calls[0]
    assert built == 4 * (1 + 3)  # 32 pairs in batches of 8: per batch one encoder call for the images, one per mask draw
    assert cache_messages(caplog) == [f"latent cache: building {folder} (32 pairs): no cache there yet"]
    assert cache_latents(train, pairs(), codec, codebook, 10.0, tmp_path / "cache", **settings) == folder
    assert calls[0] == built and cache_messages(caplog) == [f"latent cache: using {folder} (32 pairs)"]

    # what is stored: the image posterior, and the masks dequantized with seeded noise *before* encoding
    raw = LatentCacheDataset(folder, transform=lambda item: item)
    item = raw[0]
    assert tuple(item["image_latent"].shape) == (1, 4, 4, 4) and tuple(item["code_latent"].shape) == (1, 3, 4, 4, 4)
    first = [pairs()(p) for p in train[:8]]
    images, maps = torch.stack([f["image"] for f in first]), torch.stack([f["label"][0] for f in first]).long()
    with torch.no_grad():
        mean, std = codec.image_posterior(images)
        code = torch.stack([codebook.label_map_to_code_mask(m, ignore_index=255) for m in maps])
        generator = torch.Generator().manual_seed(7)
        draws = [codec.encode_mask(dequantize(code, 10.0, generator)) for _ in range(3)]
    torch.testing.assert_close(item["image_latent"][0].float(), mean[0], atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(item["image_latent_std"][0].float(), std[0], atol=2e-3, rtol=2e-3)
    for j in range(3):
        torch.testing.assert_close(item["code_latent"][0, j].float(), draws[j][0], atol=2e-3, rtol=2e-3)
    assert not torch.equal(item["code_latent"][0, 0], item["code_latent"][0, 1])  # three different dequantizations
    assert torch.all(item["valid_latent"] == 1)  # synthetic maps have no ignored pixels

    # training from the cache: latent batches, no encoder call
    before = calls[0]
    loader = DataLoader(LatentCacheDataset(folder), batch_size=8)
    net = build_network("tiny", 4, 4)
    trainer = SymmFlowTrainer(
        device="cpu", max_epochs=1, train_data_loader=loader, network=net, optimizer=torch.optim.AdamW(net.parameters(), 1e-3),
        codebook=codebook, beta=10.0, codec=codec, ignore_index=255,
    )
    trainer.run()
    assert trainer.state.iteration == 4 and torch.isfinite(trainer.state.output["loss"])
    assert calls[0] == before


def test_flipped_pairs_are_encoded_with_their_left_and_right_classes_swapped(data: Path, tmp_path: Path) -> None:
    codec, codebook = tiny_codec(), ClassCodebook.rgb(4)
    train = celebamask_hq_dicts(data, "train")[:4]
    folder = cache_latents(train, pairs(), codec, codebook, 0.0, tmp_path, size=SIZE, mask_draws=1, swap={1: 2},
                           ignore_index=None, progress=False)
    # a pair with class 1 or 2 in it, so that the swap has something to do
    index = next(i for i, p in enumerate(train) if np.isin(np.asarray(Image.open(p["label"])), [1, 2]).any())
    item = LatentCacheDataset(folder, transform=lambda item: item)[index]
    assert tuple(item["image_latent"].shape) == (2, 4, 4, 4) and "valid_latent" not in item
    pair = pairs()(train[index])
    flipped = pair["label"][0].long().flip(-1)
    swapped = torch.where(flipped == 1, 2, torch.where(flipped == 2, 1, flipped))
    with torch.no_grad():
        mean, _ = codec.image_posterior(pair["image"].flip(-1)[None])
        code = codec.encode_mask(codebook.label_map_to_code_mask(swapped)[None])
    torch.testing.assert_close(item["image_latent"][1].float(), mean[0], atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(item["code_latent"][1, 0].float(), code[0], atol=2e-3, rtol=2e-3)
    # an epoch picks either orientation: both come up, reproducibly from the seed
    picker = RandLatentDrawd()
    picker.set_random_state(seed=0)
    chosen = [picker(item)["image_latent"] for _ in range(20)]
    assert {torch.equal(c, item["image_latent"][1]) for c in chosen} == {False, True}
    picker.set_random_state(seed=0)
    assert all(torch.equal(picker(item)["image_latent"], c) for c in chosen)


def test_the_cache_is_rebuilt_when_the_vae_size_or_beta_changes_or_a_file_is_damaged(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=CACHE_LOG)
    codec, codebook = tiny_codec(), ClassCodebook.rgb(4)
    train = celebamask_hq_dicts(data, "train")[:8]
    settings = {"mask_draws": 1, "ignore_index": 255, "progress": False}
    folder = cache_latents(train, pairs(), codec, codebook, 10.0, tmp_path, size=SIZE, **settings)
    cache_messages(caplog)

    other = tiny_codec(seed=1)  # the same architecture, other weights
    calls = counted(other)
    assert other.identity != codec.identity
    cache_latents(train, pairs(), other, codebook, 10.0, tmp_path, size=SIZE, **settings)
    (message,) = cache_messages(caplog)
    assert message.startswith(f"latent cache: building {folder} (8 pairs): the VAE changed ('monai:4x/8:scale=0.5:")
    assert calls[0] > 0

    cache_latents(train, pairs(16), other, codebook, 10.0, tmp_path, size=16, **settings)
    assert cache_messages(caplog) == [f"latent cache: building {folder} (8 pairs): the image size changed ([32, 32] -> [16, 16])"]
    assert tuple(LatentCacheDataset(folder)[0]["image_latent"].shape) == (4, 2, 2)

    cache_latents(train, pairs(16), other, codebook, 6.0, tmp_path, size=16, **settings)
    assert cache_messages(caplog) == [f"latent cache: building {folder} (8 pairs): beta changed (10.0 -> 6.0)"]

    (folder / "shard_00000.pt").write_bytes(b"not a torch file")
    cache_latents(train, pairs(16), other, codebook, 6.0, tmp_path, size=16, **settings)
    (message,) = cache_messages(caplog)
    assert message.startswith(f"latent cache: building {folder} (8 pairs): its shard {folder / 'shard_00000.pt'} is unreadable")
    assert len(LatentCacheDataset(folder)) == 8  # rebuilt and readable again

    (folder / "manifest.json").write_text("{not json")
    cache_latents(train, pairs(16), other, codebook, 6.0, tmp_path, size=16, **settings)
    (message,) = cache_messages(caplog)
    assert message.startswith(f"latent cache: building {folder} (8 pairs): its manifest {folder / 'manifest.json'} is unreadable")
    assert not list(tmp_path.glob(".*"))  # no building or old folders left behind

    stranger = tmp_path / "elsewhere" / "train"
    stranger.mkdir(parents=True)
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is no latent cache"):
        cache_latents(train, pairs(16), other, codebook, 6.0, tmp_path / "elsewhere", size=16, **settings)
    assert (stranger / "notes.txt").read_text() == "mine"
    # in-memory pairs (no files): their content is the fingerprint, a changed array rebuilds
    memory = [pairs()(p) for p in train[:2]]
    cache_latents(memory, None, codec, codebook, 6.0, tmp_path / "memory", size=SIZE, **settings)
    memory[1] = {**memory[1], "image": memory[1]["image"].flip(-1)}
    cache_messages(caplog)
    cache_latents(memory, None, codec, codebook, 6.0, tmp_path / "memory", size=SIZE, **settings)
    assert cache_messages(caplog)[0].endswith("the dataset's pairs (file paths, sizes, modification times or in-memory arrays) changed")
    with pytest.raises(ValueError, match="the latent cache needs a VAE: set --vae"):
        cache_latents(train, pairs(), None, codebook, 6.0, tmp_path, size=SIZE)


# ---------------------------------------------------------------------- the bundle in latent space
@pytest.fixture(scope="module")
def latent_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """cache-latents, then bundles/celebamask_hq/train.json + configs/segmentation_latent.json with sd21_tiny: 2 training steps from
    the cache, the evaluation after training (1-step segmentation of the 4 test pairs) and the synthesis from their masks."""
    from medsymmflow.cli import main

    root = tmp_path_factory.mktemp("latent_bundle")
    vae = save_vae(root / "vae.pt", build_vae("tiny"), scale_factor=0.5)
    cache, run = root / "cache", root / "run"
    common = ["--dataset_dir", str(data), "--vae", str(vae)]
    # the diffusers UNet (Stable Diffusion 2.1's architecture, shrunk) through the whole latent path, as on GPUs
    settings = {"size": str(SIZE), "net_preset": "sd21_tiny", "device": "cpu"}
    with contextlib.chdir(REPO):  # the bundle's macros name configs/ from the repository root
        code = main(["cache-latents", "--config_file", "bundles/celebamask_hq/train.json", "configs/segmentation_latent.json",
                     *common, "--cache_dir", str(cache), *[a for k, v in settings.items() for a in ("--set", k, v)]])
    done = run_bundle(
        ["bundles/celebamask_hq/train.json", "configs/segmentation_latent.json"], *common, "--output_dir", str(run),
        "--training#latent_cache", str(cache), *[a for k, v in settings.items() for a in (f"--{k}", v)],
        "--epochs", "1", "--warmup_epochs", "0", "--batch_size", "16", "--training#val_interval", "1",
        "--evaluation#steps", "[1]", "--synthesis#steps", "[1]", "--synthesis#samples_per_mask", "2",
        "--synthesis#reference_split", "val", env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    return {"vae": vae, "cache": cache, "run": run, "command": code, "log": done.stdout + done.stderr}


@pytest.mark.slow
def test_the_cache_command_writes_the_cache_the_latent_bundle_trains_from(latent_run: dict) -> None:
    assert latent_run["command"] == 0
    manifest = json.loads((latent_run["cache"] / "train" / "manifest.json").read_text())
    assert manifest["key"]["vae"] == load_vae(latent_run["vae"]).identity and manifest["key"]["size"] == [SIZE, SIZE]
    assert manifest["key"]["beta"] == 10.0 and manifest["key"]["mask_draws"] == 4 and manifest["key"]["swap"]  # the bundle augments
    assert f"latent cache: using {latent_run['cache'] / 'train'} (32 pairs)" in latent_run["log"]
    assert "latent cache: building" not in latent_run["log"]
    last = torch.load(latent_run["run"] / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    assert last["trainer"]["iteration"] == 2  # 32 pairs in batches of 16
    info = last["run_info"]
    assert info["vae"] == load_vae(latent_run["vae"]).identity and info["vae_source"] == str(latent_run["vae"])
    assert info["net_preset"] == "sd21_tiny" and any(k.endswith("unet.conv_in.weight") for k in last["ema"])


@pytest.mark.slow
def test_the_latent_bundle_segments_and_synthesises_at_pixel_resolution(latent_run: dict) -> None:
    run = latent_run["run"]
    metrics = json.loads((run / "segmentation_metrics.json").read_text())
    m = metrics["by_steps"]["1"]
    # every pixel of the 4 test images is scored: decoded to 32 px, not 4 x 4 latent cells
    assert m["labelled_pixels"] == 4 * SIZE * SIZE and m["num_images"] == 4
    assert 0.0 <= m["miou_no_background"] <= 1.0
    montage = np.asarray(Image.open(run / "segmentation_montage.png"))
    assert montage.shape == (4 * SIZE + 5 * 2, 4 * SIZE + 5 * 2, 3)  # image | truth | 1 step | uncertainty
    syn = json.loads((run / "synthesis/synthesis_metrics.json").read_text())
    assert syn["run_info"]["vae"] == load_vae(latent_run["vae"]).identity
    (row,) = syn["results"]
    assert row["steps"] == 1 and np.isfinite(row["fid"])
    assert row["mask_consistency"]["medsymmflow_1step"]["num_images"] == 8  # the latent network segments its samples
    samples = sorted(Path(row["samples_dir"]).glob("*.png"))
    assert len(samples) == 8 and {Image.open(p).size for p in samples} == {(SIZE, SIZE)}
