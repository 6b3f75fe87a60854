"""Class-conditional generation: sample images per class, turn them into 8-bit images, write PNGs and a montage.

:func:`generate_per_class` runs :class:`~medsymmflow.inferers.SymmFlowSampler` batch by batch
(t: 0 -> 1 from ``(noise_x, code_mask)``) and returns uint8 images ``(N, H, W, C)`` with their labels,
class-major (all samples of class 0 first). :func:`save_samples` writes one PNG per sample in a folder
per class and a montage grid with one row per class. :func:`load_generator` rebuilds the EMA network
and codebook of a bundle checkpoint (``runs/<flag>/checkpoints/best.pt``); :func:`sample_checkpoint`
does all three from a checkpoint path (``medsymmflow sample`` and the inference bundle's ``sampling``).
Scoring the samples (FID / CAS) is left to :mod:`medsymmflow.generation_metrics`.

Every sampling function takes the sampler's ``time_coupling`` (``auto``: decoupled exactly when the
checkpoint's network was trained with decoupled times, i.e. the label held clean while the image is
integrated; ``coupled``: the paper's path) and ``guidance_scale`` (classifier-free guidance, decoupled
networks only; 1 = none, other values double the network evaluations per step), see
:class:`~medsymmflow.inferers.SymmFlowSampler`.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from medsymmflow.checks import positive_int
from medsymmflow.codes import ClassCodebook
from medsymmflow.flow.solver import METHODS
from medsymmflow.io import (
    RunInfo,
    atomic_write,
    check_uint8_images,
    load_checkpoint,
    to_uint8_images,
)

if TYPE_CHECKING:
    from medsymmflow.networks.latent import LatentCodec

__all__ = [
    "SAMPLING_METHODS",
    "LoadedGenerator",
    "SavedSamples",
    "check_sampling_settings",
    "class_folder_name",
    "generate_per_class",
    "load_generator",
    "make_montage",
    "sample_checkpoint",
    "sample_per_class",
    "save_samples",
    "write_png",
]

SAMPLING_METHODS = METHODS


def _per_class_counts(num_per_class: int | Sequence[int], num_classes: int) -> list[int]:
    if isinstance(num_per_class, (int, np.integer)) and not isinstance(num_per_class, bool):
        counts = [int(num_per_class)] * num_classes
    elif isinstance(num_per_class, Sequence) and not isinstance(num_per_class, str):
        counts = [int(c) for c in num_per_class]
        if len(counts) != num_classes:
            raise ValueError(f"num_per_class lists {len(counts)} counts but the codebook has {num_classes} classes")
    else:
        raise TypeError(f"num_per_class must be an int or a sequence of ints, got {type(num_per_class).__name__}")
    if any(c < 0 for c in counts) or sum(counts) == 0:
        raise ValueError(f"num_per_class must be >= 0 per class and > 0 in total, got {num_per_class!r}")
    return counts


def _check_sampling_args(steps: int, method: str, batch_size: int, spatial_size: Sequence[int]) -> None:
    positive_int(steps, "steps")
    if method not in SAMPLING_METHODS:
        raise ValueError(f"unknown ODE method {method!r}; choose one of {', '.join(SAMPLING_METHODS)}")
    positive_int(batch_size, "batch_size")
    if any(int(s) < 1 for s in spatial_size):
        raise ValueError(f"spatial_size must hold positive sizes, got {tuple(spatial_size)}")


def _network_device(network: Callable[..., Any]) -> torch.device:
    if isinstance(network, torch.nn.Module):
        for p in network.parameters():
            return p.device
    return torch.device("cpu")


def sample_per_class(
    network: Callable[..., Any],
    codebook: ClassCodebook,
    image_channels: int,
    num_per_class: int | Sequence[int],
    steps: int = 25,
    method: str = "euler",
    seed: int = 0,
    batch_size: int = 64,
    spatial_size: Sequence[int] = (28, 28),
    progress: bool = True,
    beta: float = 0.0,
    codec: LatentCodec | None = None,
    time_coupling: str = "auto",
    guidance_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated samples as float ``(N, C, *spatial)`` on the CPU (roughly [-1, 1]) with int64 labels ``(N,)``.

    The float counterpart of :func:`generate_per_class` (same arguments, same samples);
    ``spatial_size=()`` samples vectors ``(N, C)`` for vector-field networks such as SymmFlowMLP.
    With a ``codec`` (Latent MedSymmFlow) the flow runs on latents and ``spatial_size`` is the decoded image size.
    ``time_coupling`` / ``guidance_scale``: see :class:`~medsymmflow.inferers.SymmFlowSampler` (checked
    against ``network`` before the first batch).
    """
    from tqdm.auto import tqdm

    from medsymmflow.inferers import SymmFlowSampler

    if not isinstance(codebook, ClassCodebook):
        raise TypeError(f"codebook must be a ClassCodebook, got {type(codebook).__name__}")
    image_channels = positive_int(image_channels, "image_channels")
    _check_sampling_args(steps, method, batch_size, spatial_size)
    counts = _per_class_counts(num_per_class, codebook.num_classes)
    labels = torch.repeat_interleave(torch.arange(codebook.num_classes), torch.tensor(counts))
    sampler = SymmFlowSampler(
        codebook, int(image_channels), steps=int(steps), method=method, beta=beta, codec=codec,
        time_coupling=time_coupling, guidance_scale=guidance_scale,
    )
    sampler.resolve_time_coupling(network)
    device = _network_device(network)
    # one generator for the whole call: the global RNG stays untouched and the seed alone fixes the noise
    generator = torch.Generator(device=device).manual_seed(int(seed))
    spatial = tuple(int(s) for s in spatial_size)

    was_training = isinstance(network, torch.nn.Module) and network.training
    if was_training:
        network.eval()
    parts: list[torch.Tensor] = []
    try:
        with torch.inference_mode(), tqdm(
            total=labels.numel(), desc=f"sampling ({steps} {method} steps{_guidance_note(guidance_scale)})", unit="img",
            disable=not progress,
        ) as bar:
            for start in range(0, labels.numel(), int(batch_size)):
                batch = labels[start : start + int(batch_size)]
                parts.append(sampler(batch, network, spatial_size=spatial, generator=generator).float().cpu())
                bar.update(batch.numel())
    finally:
        if was_training:
            network.train()
    return torch.cat(parts), labels


def generate_per_class(
    network: Callable[..., Any],
    codebook: ClassCodebook,
    image_channels: int,
    num_per_class: int | Sequence[int],
    steps: int = 25,
    method: str = "euler",
    seed: int = 0,
    batch_size: int = 64,
    spatial_size: Sequence[int] = (28, 28),
    progress: bool = True,
    beta: float = 0.0,
    codec: LatentCodec | None = None,
    time_coupling: str = "auto",
    guidance_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``num_per_class`` images of every class; returns ``(uint8 (N, H, W, C), int64 labels (N,))``.

    ``num_per_class`` is one count for all classes or one count per class (e.g. the test split's class
    counts, so a class-matched FID can be computed). Samples come class-major: all of class 0, then 1, ...
    The same ``seed`` and ``batch_size`` give identical images: the noise comes from one generator seeded
    with ``seed`` on the network's device (the global RNG is left alone). ``beta`` (8-bit grey levels)
    dequantizes the start code as in training; 0 starts from the clean code. ``progress`` shows a tqdm bar.
    Images are mapped from [-1, 1] to 0..255 with clipping (:func:`medsymmflow.io.to_uint8_images`).
    ``time_coupling`` (``auto`` / ``coupled`` / ``decoupled``) and ``guidance_scale`` (1 = no guidance;
    decoupled networks only, twice the network evaluations per step): see :class:`~medsymmflow.inferers.SymmFlowSampler`.
    """
    if len(spatial_size) != 2:
        raise ValueError(f"generate_per_class makes 2-D images: spatial_size must be (H, W), got {tuple(spatial_size)}")
    images, labels = sample_per_class(
        network, codebook, image_channels, num_per_class, steps=steps, method=method, seed=seed,
        batch_size=batch_size, spatial_size=spatial_size, progress=progress, beta=beta, codec=codec,
        time_coupling=time_coupling, guidance_scale=guidance_scale,
    )
    return to_uint8_images(images), labels.numpy()


def _guidance_note(guidance_scale: float) -> str:
    return "" if float(guidance_scale) == 1.0 else f", guidance {float(guidance_scale):g}"


def class_folder_name(index: int, class_names: Sequence[str] | None = None) -> str:
    """``<k>_<name>`` with the name reduced to letters, digits, ``-`` and ``_`` (``<k>`` without names)."""
    if class_names is None:
        return str(int(index))
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", str(class_names[index])).strip("_")[:48]
    return f"{int(index)}_{name}" if name and name != str(index) else str(int(index))


def make_montage(
    images: np.ndarray, labels: np.ndarray, num_classes: int | None = None, columns: int | None = None, pad: int = 2
) -> np.ndarray:
    """Tile uint8 images ``(N, H, W, C)`` into one grid: row ``k`` = class ``k``, column ``j`` = its ``j``-th sample.

    Tiles sit ``pad`` white pixels apart; a class with fewer samples than ``columns`` leaves white cells.
    ``columns`` defaults to the largest class count.
    """
    images = check_uint8_images(images)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if labels.size == 0:
        raise ValueError("no images to tile")
    if labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got {labels.min()}")
    k = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if labels.max() >= k:
        raise ValueError(f"label {labels.max()} is outside the {k} classes of the montage")
    counts = np.bincount(labels, minlength=k)
    cols = int(counts.max()) if columns is None else int(columns)
    if cols < 1 or pad < 0:
        raise ValueError(f"columns must be >= 1 and pad >= 0, got {columns} and {pad}")
    _, h, w, c = images.shape
    grid = np.full((k * h + (k + 1) * pad, cols * w + (cols + 1) * pad, c), 255, dtype=np.uint8)
    for row in range(k):
        for col, i in enumerate(np.flatnonzero(labels == row)[:cols]):
            top, left = pad + row * (h + pad), pad + col * (w + pad)
            grid[top : top + h, left : left + w] = images[i]
    return grid


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write one uint8 image ``(H, W, 1)`` (gray) or ``(H, W, 3)`` (RGB) as a PNG, atomically."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"PNG export needs a uint8 (H, W, 1) or (H, W, 3) image, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG")
    return atomic_write(path, buf.getvalue())


@dataclass
class SavedSamples:
    """Files written by :func:`save_samples`."""

    montage: Path
    images: list[Path] = field(default_factory=list)
    class_dirs: list[Path] = field(default_factory=list)


def save_samples(
    images: np.ndarray,
    labels: np.ndarray,
    out_dir: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    montage_columns: int | None = None,
    montage_name: str = "montage.png",
) -> SavedSamples:
    """Write ``out_dir/<k>_<name>/<i>.png`` per sample and ``out_dir/montage.png`` (rows = classes), atomically.

    ``i`` counts the samples of each class from 0. ``class_names[k]`` names class ``k`` (folders are
    ``<k>`` without names). The montage shows up to ``montage_columns`` samples per class.
    """
    images = check_uint8_images(images)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    num_classes = len(class_names) if class_names is not None else int(labels.max()) + 1
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}] (one per class name), got [{labels.min()}, {labels.max()}]")
    out = Path(out_dir)
    saved = SavedSamples(montage=out / montage_name)
    for k in range(num_classes):
        members = np.flatnonzero(labels == k)
        if members.size == 0:
            continue
        folder = out / class_folder_name(k, class_names)
        saved.class_dirs.append(folder)
        for j, i in enumerate(members):
            saved.images.append(write_png(folder / f"{j}.png", images[i]))
    write_png(saved.montage, make_montage(images, labels, num_classes, montage_columns))
    return saved


@dataclass
class LoadedGenerator:
    """A checkpoint's EMA velocity network (eval mode), its codebook and its run identity."""

    network: torch.nn.Module
    codebook: ClassCodebook
    run_info: dict[str, Any]
    codec: LatentCodec | None = None  # the VAE of a Latent MedSymmFlow checkpoint

    @property
    def image_channels(self) -> int:
        """Channels of the generated images."""
        return int(self.run_info["image_channels"])

    @property
    def size(self) -> int:
        """Side length in pixels the network was trained on."""
        return int(self.run_info["size"])


def load_generator(
    path: str | os.PathLike, device: str | torch.device = "cpu", vae: str | os.PathLike | None = None
) -> LoadedGenerator:
    """Rebuild the EMA network and the codebook of a bundle checkpoint (``best.pt`` or ``last.pt``).

    A Latent MedSymmFlow checkpoint also loads its VAE: from ``vae`` when given (e.g. the same weights
    at another path), else from the source recorded in the checkpoint; its weights must be the ones the
    checkpoint was trained with. Raises FileNotFoundError for a missing file and ValueError naming the
    file for a corrupt one, one without ``run_info`` / weights, one whose weights do not fit the network
    its ``run_info`` describes, or a VAE other than the checkpoint's.
    """
    from medsymmflow.networks import build_network, create_ema, load_vae

    ckpt = load_checkpoint(path, map_location=device)
    if not isinstance(ckpt, dict) or "run_info" not in ckpt:
        raise ValueError(f"checkpoint {path} has no 'run_info': it was not written by a medsymmflow bundle")
    weights_key = "ema" if "ema" in ckpt else "network" if "network" in ckpt else None
    if weights_key is None:
        raise ValueError(f"checkpoint {path} holds neither 'ema' nor 'network' weights (keys: {sorted(ckpt)})")
    try:
        info = RunInfo(**ckpt["run_info"]).info
        codebook = ClassCodebook.from_kind(info["code_kind"], int(info["num_classes"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {path}: unusable run_info ({type(e).__name__}: {e})") from e
    codec = None
    if str(info["vae"]) != "none":
        # VAELoadError already names the source and how to get it in place
        codec = load_vae(vae if vae is not None else str(info.get("vae_source")), device=device)
        if codec.identity != str(info["vae"]):
            raise ValueError(
                f"checkpoint {path} was trained with the VAE {info['vae']} (from {info.get('vae_source')}), "
                f"not with {codec.source} ({codec.identity}); pass the VAE it was trained with"
            )
    # a network trained with decoupled times is rebuilt as one (checkpoints before the option are coupled)
    overrides = {"decoupled_time": True} if str(info.get("decoupled_time", False)).lower() == "true" else {}
    try:
        if codec is not None:
            net = build_network(str(info["net_preset"]), codec.latent_channels, codec.latent_channels, **overrides)
        else:
            net = build_network(str(info["net_preset"]), int(info["image_channels"]), int(info["code_channels"]), **overrides)
        if weights_key == "ema":
            model = create_ema(net)
            model.load_state_dict(ckpt["ema"])
            net = model.module
        else:
            net.load_state_dict(ckpt["network"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {path}: cannot rebuild its network ({type(e).__name__}: {e})") from e
    net = net.to(device).eval().requires_grad_(False)
    return LoadedGenerator(network=net, codebook=codebook, run_info=dict(info), codec=codec)


def default_samples_dir(ckpt: str | os.PathLike) -> Path:
    """``runs/<flag>/samples`` for ``runs/<flag>/checkpoints/best.pt``; ``<folder>/samples`` otherwise."""
    ckpt = Path(ckpt)
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return run_dir / "samples"


def check_sampling_settings(
    device: str | torch.device,
    num_per_class: int,
    steps: int,
    batch_size: int,
    time_coupling: str = "auto",
    guidance_scale: float = 1.0,
) -> None:
    """Refuse a device this machine lacks, counts below 1 and bad guidance settings before a checkpoint is read (``medsymmflow sample``)."""
    from medsymmflow.checks import available_device
    from medsymmflow.inferers import check_guidance

    # torch would blame the checkpoint file for a device this machine lacks
    available_device(device, "device")
    for name, value in (("num_per_class", num_per_class), ("steps", steps), ("batch_size", batch_size)):
        positive_int(value, name)
    check_guidance(time_coupling, guidance_scale)


def sample_checkpoint(
    ckpt: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    num_per_class: int = 16,
    steps: int = 25,
    method: str = "euler",
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    beta: float | None = None,
    vae: str | os.PathLike | None = None,
    progress: bool = True,
    generator: LoadedGenerator | None = None,
    time_coupling: str = "auto",
    guidance_scale: float = 1.0,
) -> SavedSamples:
    """Generate ``num_per_class`` images of every class from a bundle checkpoint and write them (:func:`save_samples`).

    ``output_dir`` defaults to ``samples/`` in the checkpoint's run folder (:func:`default_samples_dir`);
    ``beta=None`` takes the checkpoint's dequantization (0 = clean code when it has none). Folders are
    named after medmnist's class names when the checkpoint's flag is a MedMNIST dataset. This is what
    ``medsymmflow sample`` and the inference bundle's ``sampling`` section run. ``generator``: ``ckpt``
    already loaded with :func:`load_generator` (then ``device`` and ``vae`` are its own).
    ``time_coupling`` / ``guidance_scale``: see :func:`generate_per_class` (``auto`` follows the checkpoint).
    """
    from medsymmflow.data.medmnist import medmnist_class_names

    check_sampling_settings(device, num_per_class, steps, batch_size, time_coupling, guidance_scale)
    gen = load_generator(ckpt, device=device, vae=vae) if generator is None else generator
    beta = float(gen.run_info.get("beta", 0.0)) if beta is None else float(beta)
    images, labels = generate_per_class(
        gen.network, gen.codebook, gen.image_channels, int(num_per_class), steps=int(steps), method=method,
        seed=int(seed), batch_size=int(batch_size), spatial_size=(gen.size, gen.size), progress=progress, beta=beta,
        codec=gen.codec, time_coupling=time_coupling, guidance_scale=guidance_scale,
    )
    out_dir = Path(output_dir) if output_dir else default_samples_dir(ckpt)
    class_names = medmnist_class_names(str(gen.run_info["flag"]), gen.codebook.num_classes)
    return save_samples(images, labels, out_dir, class_names=class_names)
