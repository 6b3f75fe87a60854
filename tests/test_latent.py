"""Latent MedSymmFlow: the VAE codec (MONAI and diffusers backends), VAE files and errors, the VAE
trainer, the latent trainer / evaluator / sampler, and the latent bundles end to end on synthetic data."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import run_bundle as run_conftest_bundle
from ignite.engine import Events
from torch.utils.data import DataLoader

from medsymmflow import ClassCodebook
from medsymmflow.data import synthetic_class_templates
from medsymmflow.engines import AutoencoderTrainer, SymmFlowEvaluator, SymmFlowTrainer, VAEExport
from medsymmflow.flow import SymmetricPath, SymmFlowLoss, TimeSampler
from medsymmflow.inferers import SymmFlowClassifier, SymmFlowSampler
from medsymmflow.io import RunInfo
from medsymmflow.networks import (
    SD_SCALE_FACTOR,
    LatentCodec,
    VAELoadError,
    build_network,
    build_vae,
    load_vae,
    measure_scale_factor,
    save_vae,
)

REPO = Path(__file__).resolve().parents[1]


def tiny_codec(scale: float = 0.5, **overrides: object) -> LatentCodec:
    return LatentCodec(build_vae("tiny", **overrides), scale_factor=scale)


def tiny_diffusers_vae() -> torch.nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4, sample_size=32,
    )


def class_batches(n: int = 16, size: int = 32, batch: int = 8, channels: int = 3, num_classes: int = 5) -> DataLoader:
    """Synthetic class images in [-1, 1] as a DataLoader of {'image', 'label'} dicts."""
    templates = torch.from_numpy(synthetic_class_templates(num_classes, size, channels)).float().permute(0, 3, 1, 2)
    labels = torch.arange(n) % num_classes
    images = (templates[labels] / 127.5 - 1.0 + 0.05 * torch.randn(n, channels, size, size)).clamp(-1, 1)
    items = [{"image": images[i], "label": labels[i : i + 1]} for i in range(n)]
    return DataLoader(items, batch_size=batch, shuffle=False)


# ---------------------------------------------------------------------- codec
def test_codec_round_trip_shapes_and_scale_factor() -> None:
    codec = tiny_codec(scale=0.25)
    assert (codec.latent_channels, codec.in_channels, codec.downsample, codec.backend) == (4, 3, 8, "monai")
    assert codec.latent_shape((224, 224)) == (28, 28)
    y = ClassCodebook.rgb(5).code_mask(torch.tensor([0, 3]), (32, 32))
    z = codec.encode_mask(y)
    assert z.shape == (2, 4, 4, 4)
    with torch.no_grad():
        z_mu, _ = codec.vae.encode(y)
        torch.testing.assert_close(z, z_mu * 0.25)
        # decode divides the scale back out: decode(encode_mask(y)) is the VAE's decode of the posterior mode
        torch.testing.assert_close(codec.decode(z), codec.vae.decode(z_mu), rtol=1e-5, atol=1e-6)
    gray = torch.rand(2, 1, 32, 32) * 2 - 1
    zg = codec.encode_image(gray, sample=False)
    torch.testing.assert_close(zg, codec.encode_image(gray.repeat(1, 3, 1, 1), sample=False))
    out = codec.decode_image(zg, 1)
    assert out.shape == (2, 1, 32, 32)
    torch.testing.assert_close(out, codec.decode(zg).mean(1, keepdim=True))
    assert codec.decode_image(zg, 3).shape == (2, 3, 32, 32)
    assert not any(p.requires_grad for p in codec.parameters()) and not codec.train().vae.training


def test_image_encoding_is_a_seeded_posterior_sample() -> None:
    codec = tiny_codec(scale=1.0)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    a = codec.encode_image(x, generator=torch.Generator().manual_seed(3))
    b = codec.encode_image(x, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    with torch.no_grad():
        mu, sigma = codec.vae.encode(x)
    noise = (a - mu) / sigma
    assert 0.7 < float(noise.std()) < 1.3 and abs(float(noise.mean())) < 0.3


def test_codec_rejects_bad_inputs() -> None:
    codec = tiny_codec()
    with pytest.raises(ValueError, match="multiple of the VAE's downsampling factor 8"):
        codec.encode_image(torch.zeros(1, 3, 30, 30))
    with pytest.raises(ValueError, match="has 2 channels but the VAE takes 3"):
        codec.encode_mask(torch.zeros(1, 2, 32, 32))
    with pytest.raises(ValueError, match=r"latents must have shape \(B, 4, h, w\)"):
        codec.decode(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="cannot map the VAE's 3 output channels to 2"):
        codec.decode_image(torch.zeros(1, 4, 4, 4), 2)
    with pytest.raises(TypeError, match="AutoencoderKL"):
        LatentCodec(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="scale_factor"):
        LatentCodec(build_vae("tiny"), scale_factor=0.0)
    with pytest.raises(ValueError, match="unknown VAE preset 'huge'"):
        build_vae("huge")


def test_diffusers_backend_through_the_codec(tmp_path: Path) -> None:
    vae = tiny_diffusers_vae()
    codec = LatentCodec(vae)
    assert codec.backend == "diffusers" and codec.scale_factor == SD_SCALE_FACTOR
    assert (codec.latent_channels, codec.downsample) == (4, 2)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        dist = vae.encode(x.repeat(1, 3, 1, 1)).latent_dist
        torch.testing.assert_close(codec.encode_mask(x), dist.mode() * SD_SCALE_FACTOR)
        expected = dist.sample(generator=torch.Generator().manual_seed(1)) * SD_SCALE_FACTOR
        torch.testing.assert_close(codec.encode_image(x, generator=torch.Generator().manual_seed(1)), expected)
        z = codec.encode_mask(x)
        torch.testing.assert_close(codec.decode(z), vae.decode(z / SD_SCALE_FACTOR).sample)
    assert codec.decode_image(z, 1).shape == (2, 1, 16, 16)
    # a local folder (as `hf download ... --local-dir` leaves it) and a pipeline folder with vae/
    vae.save_pretrained(tmp_path / "sd-vae")
    vae.save_pretrained(tmp_path / "pipeline" / "vae")
    for folder in (tmp_path / "sd-vae", tmp_path / "pipeline"):
        loaded = load_vae(folder)
        assert loaded.backend == "diffusers" and loaded.identity == codec.identity
        with torch.no_grad():
            torch.testing.assert_close(loaded.encode_mask(x), codec.encode_mask(x))


def test_load_vae_errors_name_what_was_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(VAELoadError, match=r"the VAE folder .*missing_vae does not exist.*hf download stabilityai/sd-vae-ft-mse"):
        load_vae(tmp_path / "missing_vae")
    with pytest.raises(VAELoadError, match=r"the VAE file .*nothing.pt does not exist.*vae_train.json"):
        load_vae(str(tmp_path / "nothing.pt"))
    (tmp_path / "torn.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(VAELoadError, match=r"cannot load the VAE file .*torn.pt.*could not be read"):
        load_vae(tmp_path / "torn.pt")
    torch.save({"network": {}}, tmp_path / "other.pt")
    with pytest.raises(VAELoadError, match=r"other.pt is not a medsymmflow VAE file \(found \['network'\]\)"):
        load_vae(tmp_path / "other.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VAELoadError, match=r"the folder .*empty is not a diffusers VAE: .*config.json is missing"):
        load_vae(tmp_path / "empty")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VAELoadError, match=r"Hugging Face name 'stabilityai/sd-vae-ft-mse'.*offline.*--local-dir <dir>"):
        load_vae("stabilityai/sd-vae-ft-mse")


def test_package_vae_file_round_trip(tmp_path: Path) -> None:
    vae = build_vae("tiny", latent_channels=3, channels=(8, 8, 16, 16))
    path = save_vae(tmp_path / "vae.pt", vae, scale_factor=0.37)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["config"] == {"preset": "tiny", "in_channels": 3, "latent_channels": 3, "channels": [8, 8, 16, 16]}
    assert [p.name for p in tmp_path.iterdir()] == ["vae.pt"]
    codec, loaded = LatentCodec(vae, scale_factor=0.37), load_vae(path)
    assert loaded.scale_factor == 0.37 and loaded.latent_channels == 3 and loaded.source == str(path)
    assert loaded.identity == codec.identity
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(loaded.encode_mask(y)), codec.decode(codec.encode_mask(y)))
    assert load_vae(path, scale_factor=0.5).identity != codec.identity
    with pytest.raises(TypeError, match="save_vae writes package VAEs"):
        save_vae(tmp_path / "x.pt", torch.nn.Linear(1, 1))


def test_measured_scale_factor_gives_unit_variance_latents() -> None:
    vae = build_vae("tiny")
    loader = class_batches()
    scale = measure_scale_factor(vae, loader, generator=torch.Generator().manual_seed(0))
    codec = LatentCodec(vae, scale_factor=scale)
    z = torch.cat([codec.encode_image(b["image"], generator=torch.Generator().manual_seed(0)) for b in loader])
    assert float(z.std()) == pytest.approx(1.0, abs=0.05)


# ---------------------------------------------------------------------- VAE training
def test_autoencoder_trainer_learns_images_and_code_masks(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vae = build_vae("tiny")
    codebook = ClassCodebook.rgb(5)
    loader = class_batches(n=16, batch=8)
    probe = torch.cat([b["image"] for b in loader] + [codebook.code_mask(torch.arange(5), (32, 32))])

    def recon_error() -> float:
        with torch.no_grad():
            return float((vae.reconstruct(probe) - probe).abs().mean())

    before = recon_error()
    trainer = AutoencoderTrainer(
        device="cpu", max_epochs=25, train_data_loader=loader, network=vae,
        optimizer=torch.optim.Adam(vae.parameters(), lr=3e-3), codebook=codebook, mask_fraction=0.5,
    )
    losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    trainer.run()
    assert trainer.state.output["image"].shape[0] == 8 + 4  # the batch plus the masks of half its labels
    assert recon_error() < 0.5 * before
    assert sum(losses[-4:]) < 0.5 * sum(losses[:4])

    export = VAEExport(vae, tmp_path / "vae.pt", loader, codebook=codebook, val_loader=loader,
                       metrics_path=tmp_path / "vae_metrics.json")
    results = export(trainer)
    saved = json.loads((tmp_path / "vae_metrics.json").read_text())
    assert saved["scale_factor"] == pytest.approx(results["scale_factor"]) and results["scale_factor"] > 0
    assert {"val_image_l1", "val_image_psnr", "mask_round_trip_accuracy"} <= set(saved)
    assert load_vae(tmp_path / "vae.pt").scale_factor == pytest.approx(results["scale_factor"])
    assert all(p.requires_grad for p in vae.parameters()), "export must leave the VAE trainable"
    with pytest.raises(ValueError, match="recon_loss"):
        AutoencoderTrainer("cpu", 1, loader, vae, torch.optim.Adam(vae.parameters()), recon_loss="l2")


# ---------------------------------------------------------------------- latent SymmFlow engines
def _symmflow_trainer(network: torch.nn.Module, loader: DataLoader, codec: LatentCodec | None) -> SymmFlowTrainer:
    return SymmFlowTrainer(
        device="cpu", max_epochs=1, train_data_loader=loader, network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.0), codebook=ClassCodebook.rgb(5), beta=4.0,
        loss_function=SymmFlowLoss(x_weight=0.8), codec=codec,
    )


def test_trainer_without_codec_computes_the_pixel_loss_exactly() -> None:
    loader = class_batches(n=4, size=28, batch=4)
    net = build_network("tiny", 3, 3)
    trainer = _symmflow_trainer(net, loader, codec=None)
    batch = next(iter(loader))
    torch.manual_seed(5)
    out = trainer._iteration(trainer, batch)
    torch.manual_seed(5)
    code = trainer.code_targets(batch["label"], (28, 28), torch.device("cpu"))
    s = SymmetricPath().sample(batch["image"], code, TimeSampler()(4))
    with torch.no_grad():
        v_x, v_y = net(s.x_t, s.y_t, s.t)
    assert torch.equal(out["loss"], SymmFlowLoss(x_weight=0.8)(v_x, v_y, s.dx_t, s.dy_t))


def test_trainer_with_codec_flows_between_latents() -> None:
    codec = tiny_codec()
    net = build_network("tiny", 4, 4)
    seen: list[tuple[int, ...]] = []
    net.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape) + tuple(args[1].shape)))
    frozen = {k: v.clone() for k, v in codec.state_dict().items()}
    trainer = _symmflow_trainer(net, class_batches(n=8, batch=4), codec=codec)
    trainer.optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    trainer.run()
    assert seen == [(4, 4, 4, 4, 4, 4, 4, 4)] * 2
    assert torch.isfinite(trainer.state.output["loss"])
    assert all(torch.equal(v, codec.state_dict()[k]) for k, v in frozen.items())
    with pytest.raises(TypeError, match="codec must be a LatentCodec"):
        _symmflow_trainer(net, class_batches(), codec="vae.pt")  # type: ignore[arg-type]
    # one-hot codes (the pixel CPU recipe) have one channel per class: a 3-channel VAE cannot take them
    with pytest.raises(ValueError, match="code_kind rgb"):
        SymmFlowTrainer(
            device="cpu", max_epochs=1, train_data_loader=class_batches(), network=net,
            optimizer=torch.optim.SGD(net.parameters(), lr=0.0), codebook=ClassCodebook.onehot(5), codec=codec,
        )


@pytest.mark.parametrize("kind", ["rgb", "gray"])
def test_evaluator_with_codec_decodes_to_the_codebook_channels(kind: str) -> None:
    codec = tiny_codec()
    codebook = ClassCodebook.from_kind(kind, 5)
    net = build_network("tiny", 4, 4).eval()
    loader = class_batches(n=6, batch=3, channels=1 if kind == "gray" else 3)

    def run() -> dict:
        inferer = SymmFlowClassifier(codebook, code_channels=4, num_draws=2)
        evaluator = SymmFlowEvaluator("cpu", loader, net, inferer, num_runs=2, seed=3, codec=codec)
        evaluator.run()
        return evaluator.state.output

    out = run()
    assert out["code_mean"].shape == (3, codebook.channels)
    assert out["distances"].shape == (2, 3, 5) and out["draw_distances"].shape == (2, 2, 3, 5)
    assert torch.equal(out["distances"], run()["distances"])  # the seeded generator drives encoding and noise
    with pytest.raises(ValueError, match="build it with code_channels=4"):
        SymmFlowEvaluator("cpu", loader, net, SymmFlowClassifier(codebook), codec=codec)
    with pytest.raises(TypeError, match="codec must be a LatentCodec"):  # the one check_codec the trainer and sampler use too
        SymmFlowEvaluator("cpu", loader, net, SymmFlowClassifier(codebook, code_channels=4), codec="vae.pt")


def test_sampler_with_codec_generates_images() -> None:
    codec = tiny_codec()
    sampler = SymmFlowSampler(ClassCodebook.rgb(5), image_channels=1, steps=2, beta=4.0, codec=codec)
    out = sampler(torch.tensor([0, 4]), build_network("tiny", 4, 4), spatial_size=(32, 32),
                  generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 32, 32) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="code_kind rgb"):  # 5 one-hot channels cannot enter a 3-channel VAE
        SymmFlowSampler(ClassCodebook.onehot(5), image_channels=1, codec=codec)
    with pytest.raises(TypeError, match="codec must be a LatentCodec"):
        SymmFlowSampler(ClassCodebook.rgb(5), image_channels=1, codec="vae.pt")


def test_run_info_tells_pixel_and_latent_checkpoints_apart() -> None:
    info = dict(flag="retinamnist", num_classes=5, code_kind="rgb", image_channels=3, code_channels=3, size=224, net_preset="tiny")
    vae = tiny_codec().identity
    pixel, latent = RunInfo(**info), RunInfo(**info, vae=vae, vae_source="runs/vae/vae.pt")
    old = {k: v for k, v in pixel.state_dict().items() if k != "vae"}  # written before the vae key existed
    pixel.load_state_dict(old)
    latent.load_state_dict(RunInfo(**info, vae=vae, vae_source="/elsewhere/vae.pt").state_dict())  # same weights, other path
    with pytest.raises(ValueError, match="vae: checkpoint 'monai:4x/8:scale=0.5:[0-9a-f]+' vs this run 'monai"):
        latent.load_state_dict(RunInfo(**info, vae=tiny_codec().identity).state_dict())  # another VAE
    with pytest.raises(ValueError, match="vae: checkpoint 'none' vs this run 'monai:4x/8"):
        latent.load_state_dict(old)
    with pytest.raises(ValueError, match="vae: checkpoint 'monai:4x/8.*vs this run 'none'"):
        pixel.load_state_dict(latent.state_dict())


# ---------------------------------------------------------------------- bundles
def run_bundle(config: str, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """A latent bundle run, offline: no VAE download is ever attempted."""
    return run_conftest_bundle(config, *overrides, env={"HF_HUB_OFFLINE": "1"}, check=check)


@pytest.fixture(scope="module")
def data_dir(synthetic_medmnist) -> Path:
    return synthetic_medmnist(("retinamnist", 10, 5, 6, 0), size=224)


def data_args(data_dir: Path, output_dir: Path) -> list[str]:
    return ["--size", "224", "--dataset_dir", str(data_dir), "--download", "false", "--device", "cpu", "--output_dir", str(output_dir)]


@pytest.fixture(scope="module")
def vae_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vae")
    run_bundle("bundles/latent/vae_train.json", *data_args(data_dir, out), "--vae_preset", "tiny", "--epochs", "1", "--batch_size", "5")
    return out


@pytest.fixture(scope="module")
def latent_run(data_dir: Path, vae_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("latent")
    run_bundle(
        "bundles/latent/train.json", *data_args(data_dir, out), "--vae", str(vae_run / "vae.pt"), "--net_preset", "tiny",
        "--epochs", "1", "--batch_size", "5", "--warmup_epochs", "0", "--training#val_interval", "1",
        "--evaluation#runs", "2", "--evaluation#selective", "false",
    )
    return out


@pytest.mark.slow
def test_vae_train_bundle_writes_the_vae_and_its_metrics(vae_run: Path) -> None:
    metrics = json.loads((vae_run / "vae_metrics.json").read_text())
    assert metrics["scale_factor"] > 0 and metrics["vae_config"]["preset"] == "tiny"
    assert 0.0 <= metrics["mask_round_trip_accuracy"] <= 1.0
    codec = load_vae(vae_run / "vae.pt")
    assert codec.latent_shape((224, 224)) == (28, 28) and codec.scale_factor == pytest.approx(metrics["scale_factor"])
    assert (vae_run / "checkpoints" / "last.pt").is_file() and not list(vae_run.glob("**/*.tmp"))


@pytest.mark.slow
def test_latent_bundle_trains_and_evaluates_on_decoded_masks(latent_run: Path, vae_run: Path) -> None:
    metrics = json.loads((latent_run / "metrics.json").read_text())
    assert metrics["num_samples"] == 6 and metrics["num_runs"] == 2
    for run in metrics["runs"]:
        for source in ("torchmetrics", "medmnist"):
            assert 0.0 <= run[source]["acc"] <= 1.0 and 0.0 <= run[source]["auc"] <= 1.0
    info = torch.load(latent_run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)["run_info"]
    assert info["vae"] == load_vae(vae_run / "vae.pt").identity and info["vae_source"] == str(vae_run / "vae.pt")
    assert info["size"] == 224 and info["code_channels"] == 3


@pytest.mark.slow
def test_a_pixel_bundle_refuses_a_latent_checkpoint(latent_run: Path, data_dir: Path, tmp_path: Path) -> None:
    out = run_bundle(
        "bundles/retinamnist/evaluate.json", *data_args(data_dir, tmp_path), "--net_preset", "tiny",
        "--ckpt_path", str(latent_run / "checkpoints" / "best.pt"), check=False,
    )
    assert out.returncode != 0
    assert "medsymmflow: error: the checkpoint was trained for a different dataset, codebook or VAE (vae: checkpoint 'monai:" in out.stderr


def test_latent_bundle_metadata_verifies_against_the_schema() -> None:
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(REPO / "bundles/latent/metadata.json"), filepath=str(REPO / "configs/metadata_schema.json"))
    for name in ("train.json", "evaluate.json", "vae_train.json", "metadata.json", "logging.conf", "README.md"):
        assert (REPO / "bundles/latent" / name).is_file(), name


@pytest.mark.slow
def test_latent_evaluate_bundle_reproduces_the_evaluation_after_training(latent_run: Path, vae_run: Path, data_dir: Path, tmp_path: Path) -> None:
    run_bundle(
        "bundles/latent/evaluate.json", *data_args(data_dir, tmp_path), "--vae", str(vae_run / "vae.pt"), "--net_preset", "tiny",
        "--ckpt_path", str(latent_run / "checkpoints" / "best.pt"), "--evaluation#runs", "1", "--evaluation#selective", "false",
    )
    alone = json.loads((tmp_path / "metrics.json").read_text())
    after_training = json.loads((latent_run / "metrics.json").read_text())
    assert alone["runs"][0] == after_training["runs"][0]


@pytest.mark.slow
def test_sample_command_generates_from_a_latent_checkpoint(latent_run: Path, vae_run: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from medsymmflow.cli import main
    from medsymmflow.generation import load_generator

    ckpt = latent_run / "checkpoints" / "best.pt"
    gen = load_generator(ckpt)
    assert gen.codec is not None and gen.codec.source == str(vae_run / "vae.pt") and gen.network.x_channels == 4
    assert main(["sample", "--ckpt", str(ckpt), "--num-per-class", "1", "--steps", "2", "--output-dir", str(tmp_path),
                 "--no-progress"]) == 0
    from PIL import Image

    assert Image.open(next(tmp_path.glob("0*/0.png"))).size == (224, 224)
    save_vae(tmp_path / "other.pt", build_vae("tiny"), scale_factor=1.0)
    with pytest.raises(ValueError, match="pass the VAE it was trained with"):
        load_generator(ckpt, vae=tmp_path / "other.pt")
