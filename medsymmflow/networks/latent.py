"""Latent MedSymmFlow (LatMSF): one codec over a VAE so the flow runs on latents instead of pixels.

Both the image ``x`` and its code mask ``y`` go through the VAE encoder; the flow network is trained
on ``(z_x, z_y)`` and the predicted ``z_y`` is decoded back to an RGB code mask before the codebook
decides the class (MedSymmFlow, section 3.2). As in Stable Diffusion, latents are multiplied by a
scale factor so that they have roughly unit variance (0.18215 for ``stabilityai/sd-vae-ft-mse``).
The image is encoded with a posterior sample, the mask with the posterior mode (its mean): the mask
is a target the decoder must return exactly, the image an input whose encoding noise acts as
augmentation.

Two VAE backends sit behind :class:`LatentCodec`:

* diffusers ``AutoencoderKL`` (Stable Diffusion's VAE, by Hugging Face name or a local folder);
* MONAI ``AutoencoderKL`` built from a preset of this package (:func:`build_vae`), trained with
  ``bundles/latent/vae_train.json`` and saved with :func:`save_vae`, so the latent path runs
  offline. Its scale factor is measured on training latents (:func:`measure_scale_factor`).

:func:`load_vae` takes any of these sources and fails with one message naming what was tried and
what to put where. diffusers is imported only when a diffusers VAE is loaded.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import AutoencoderKL
from torch import nn

from medsymmflow.checks import float_image_batch, positive_int
from medsymmflow.io import atomic_write, load_checkpoint

__all__ = [
    "SD_SCALE_FACTOR",
    "SD_VAE",
    "VAE_FORMAT",
    "VAE_PRESETS",
    "LatentCodec",
    "PresetAutoencoderKL",
    "VAELoadError",
    "build_vae",
    "check_codec",
    "flow_channels",
    "load_vae",
    "match_vae_channels",
    "measure_scale_factor",
    "save_vae",
]

SD_VAE = "stabilityai/sd-vae-ft-mse"
SD_SCALE_FACTOR = 0.18215
VAE_FORMAT = "medsymmflow-vae"
_VAE_FORMAT_VERSION = 1

# Four levels = three downsamplings: 224 px -> 28 px latents, where the 28-px SymmFlow presets apply.
VAE_PRESETS: dict[str, dict[str, Any]] = {
    # for tests: a few thousand parameters, milliseconds per 224-px image
    "tiny": {
        "channels": (8, 8, 8, 8),
        "num_res_blocks": 1,
        "attention_levels": (False, False, False, False),
        "norm_num_groups": 4,
        "with_encoder_nonlocal_attn": False,
        "with_decoder_nonlocal_attn": False,
    },
    # CPU-sized: narrow high-resolution levels (the 224-px convolutions dominate the cost), one
    # self-attention block at 28 px in the encoder and the decoder
    "small": {
        "channels": (16, 32, 64, 64),
        "num_res_blocks": 1,
        "attention_levels": (False, False, False, False),
        "norm_num_groups": 8,
        "with_encoder_nonlocal_attn": True,
        "with_decoder_nonlocal_attn": True,
    },
}

_VAE_ARGS = frozenset(inspect.signature(AutoencoderKL.__init__).parameters) - {
    "self", "spatial_dims", "in_channels", "out_channels", "latent_channels",
}


class VAELoadError(RuntimeError):
    """A VAE could not be loaded from the given source (offline hub name, missing folder, corrupt file)."""


def _how_to_get_a_vae() -> str:
    return (
        f"To use Stable Diffusion's VAE, run on a machine with internet `hf download {SD_VAE} --local-dir <dir>` "
        f"(older huggingface_hub: `huggingface-cli download {SD_VAE} --local-dir <dir>`), copy <dir> here and pass "
        "that folder (--vae <dir>). Offline, train the package's small VAE instead: `python -m monai.bundle run "
        "--config_file bundles/latent/vae_train.json --flag <flag> --size 224 --output_dir runs/vae` and pass "
        "--vae runs/vae/vae.pt."
    )


class PresetAutoencoderKL(AutoencoderKL):
    """MONAI's 2-D AutoencoderKL built from a :data:`VAE_PRESETS` entry; ``config`` rebuilds it from a checkpoint."""

    def __init__(self, preset: str = "small", in_channels: int = 3, latent_channels: int = 4, **overrides: Any) -> None:
        if preset not in VAE_PRESETS:
            raise ValueError(f"unknown VAE preset {preset!r}; valid presets: {', '.join(sorted(VAE_PRESETS))}")
        unknown = sorted(set(overrides) - _VAE_ARGS)
        if unknown:
            raise TypeError(f"unknown AutoencoderKL argument(s) {unknown}; valid overrides: {', '.join(sorted(_VAE_ARGS))}")
        in_channels, latent_channels = positive_int(in_channels, "in_channels"), positive_int(latent_channels, "latent_channels")
        kwargs = {**VAE_PRESETS[preset], **overrides}
        super().__init__(
            spatial_dims=2, in_channels=in_channels, out_channels=in_channels, latent_channels=latent_channels, **kwargs
        )
        # plain values only, so the checkpoint loads with torch.load(weights_only=True)
        self.config: dict[str, Any] = {
            "preset": preset,
            "in_channels": in_channels,
            "latent_channels": latent_channels,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()},
        }


def build_vae(preset: str = "small", in_channels: int = 3, latent_channels: int = 4, **overrides: Any) -> PresetAutoencoderKL:
    """A fresh (untrained) package VAE: MONAI AutoencoderKL from a named preset with keyword overrides."""
    return PresetAutoencoderKL(preset, in_channels=in_channels, latent_channels=latent_channels, **overrides)


def _backend(vae: nn.Module) -> str:
    if isinstance(vae, AutoencoderKL):
        return "monai"
    if type(vae).__module__.startswith("diffusers") and hasattr(vae, "config") and hasattr(vae, "encode"):
        return "diffusers"
    raise TypeError(
        "vae must be a MONAI monai.networks.nets.AutoencoderKL or a diffusers AutoencoderKL, "
        f"got {type(vae).__module__}.{type(vae).__name__}"
    )


class LatentCodec(nn.Module):
    """A frozen VAE behind one interface: images and code masks to scaled latents and back.

    ``encode_image`` draws a posterior sample and ``encode_mask`` takes the posterior mode, both
    multiplied by ``scale_factor``; ``decode`` divides by it and runs the decoder. Inputs with one
    channel (gray images, gray code masks) are repeated to the VAE's input channels, and
    ``decode_image(z, channels=1)`` averages the decoded channels back to one. Spatial sizes must be
    multiples of ``downsample``. ``scale_factor`` defaults to the diffusers config's
    ``scaling_factor`` (0.18215 for Stable Diffusion's VAE) and to 1.0 for a MONAI VAE.
    """

    def __init__(self, vae: nn.Module, scale_factor: float | None = None, source: str | None = None) -> None:
        super().__init__()
        self.backend = _backend(vae)
        if scale_factor is None:
            scale_factor = float(getattr(vae.config, "scaling_factor", SD_SCALE_FACTOR)) if self.backend == "diffusers" else 1.0
        scale_factor = float(scale_factor)
        if not math.isfinite(scale_factor) or scale_factor <= 0:
            raise ValueError(f"scale_factor must be a finite number > 0, got {scale_factor}")
        self.vae = vae.eval().requires_grad_(False)
        self.scale_factor = scale_factor
        self.source = str(source) if source is not None else type(vae).__name__
        self._identity: str | None = None

    # ------------------------------------------------------------------ properties
    @property
    def latent_channels(self) -> int:
        """Channels of the latent tensors."""
        if self.backend == "diffusers":
            return int(self.vae.config.latent_channels)
        return int(self.vae.latent_channels)

    @property
    def in_channels(self) -> int:
        """Channels the VAE encoder takes (3 for Stable Diffusion's VAE)."""
        if self.backend == "diffusers":
            return int(self.vae.config.in_channels)
        return int(self.vae.encoder.in_channels)

    @property
    def out_channels(self) -> int:
        """Channels the VAE decoder returns."""
        if self.backend == "diffusers":
            return int(self.vae.config.out_channels)
        return int(self.vae.decoder.out_channels)

    @property
    def downsample(self) -> int:
        """Spatial factor between an image and its latent (8 for Stable Diffusion's VAE)."""
        levels = len(self.vae.config.block_out_channels) if self.backend == "diffusers" else len(self.vae.encoder.channels)
        return 2 ** (levels - 1)

    @property
    def identity(self) -> str:
        """Backend, latent layout, scale factor and a fingerprint of the weights, for run identity checks.

        The same weights give the same identity whether they came by hub name, folder or file, so a
        checkpoint is accepted with any path to its VAE and refused with another VAE.
        """
        if self._identity is None:
            digest = hashlib.sha1()
            for name, tensor in sorted(self.vae.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            self._identity = (
                f"{self.backend}:{self.latent_channels}x/{self.downsample}:scale={self.scale_factor:.6g}:"
                f"{digest.hexdigest()[:16]}"
            )
        return self._identity

    def latent_shape(self, spatial_size: Iterable[int]) -> tuple[int, ...]:
        """Latent spatial shape of an image of ``spatial_size``."""
        size = tuple(int(s) for s in spatial_size)
        bad = [s for s in size if s % self.downsample]
        if bad:
            raise ValueError(
                f"image size {size} must be a multiple of the VAE's downsampling factor {self.downsample} "
                f"(e.g. 224 px -> {224 // self.downsample} px latents)"
            )
        return tuple(s // self.downsample for s in size)

    def train(self, mode: bool = True) -> "LatentCodec":
        """Switch the module's mode while the VAE stays in eval mode (the codec never trains it)."""
        super().train(mode)
        self.vae.eval()
        return self

    def extra_repr(self) -> str:
        """Backend, source and scale factor in the module's repr."""
        return f"backend={self.backend!r}, source={self.source!r}, scale_factor={self.scale_factor:g}"

    # ------------------------------------------------------------------ encoding / decoding
    def _to_vae_input(self, x: torch.Tensor, name: str) -> torch.Tensor:
        float_image_batch(x, name, " in [-1, 1]")
        self.latent_shape(x.shape[2:])
        return match_vae_channels(x, self.in_channels, name)

    def check_codebook(self, codebook: Any) -> None:
        """Raise a ValueError when ``codebook``'s code masks cannot pass through this VAE."""
        if codebook.channels not in (1, self.in_channels):
            raise ValueError(
                f"the latent variant passes the code mask through the VAE, which takes {self.in_channels} channels, "
                f"but the {codebook.kind} codebook has {codebook.channels}: use --code_kind rgb (or gray)"
            )

    def _posterior(self, x: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
        if self.backend == "diffusers":
            dist = self.vae.encode(x).latent_dist
            return dist, dist.mean, dist.std
        z_mu, z_sigma = self.vae.encode(x)
        return None, z_mu, z_sigma

    def encode_image(self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in [-1, 1] -> scaled posterior samples (the mode with ``sample=False``)."""
        dist, mean, std = self._posterior(self._to_vae_input(x, "image"))
        if not sample:
            z = mean
        elif dist is not None:
            z = dist.sample(generator=generator)
        else:
            z = mean + std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return z * self.scale_factor

    def image_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(B, C, H, W)`` -> the scaled posterior ``(mean, std)``: ``mean + std * N(0, 1)`` is an :meth:`encode_image` sample.

        The latent cache stores these two, so every epoch still draws a fresh posterior sample without the encoder.
        """
        _, mean, std = self._posterior(self._to_vae_input(x, "image"))
        return mean * self.scale_factor, std * self.scale_factor

    def encode_valid(self, valid: torch.Tensor) -> torch.Tensor:
        """Valid-pixel masks ``(B, 1, H, W)`` (1 = labelled) -> latent-grid masks ``(B, 1, H/f, W/f)``: the min over each ``f x f`` block.

        A latent cell counts only when every pixel it stands for is labelled: a cell over an ignored pixel
        encodes the fixed code those pixels get (0, see ``ClassCodebook.label_map_to_code_mask``), not a
        class, so its loss would teach the network that code.
        """
        if not isinstance(valid, torch.Tensor) or valid.ndim != 4 or valid.shape[1] != 1:
            shape = tuple(valid.shape) if isinstance(valid, torch.Tensor) else type(valid).__name__
            raise ValueError(f"valid-pixel masks must have shape (B, 1, H, W), got {shape}")
        self.latent_shape(valid.shape[2:])
        f = self.downsample
        return -torch.nn.functional.max_pool2d(-valid.float(), kernel_size=f, stride=f)

    def encode_mask(self, y: torch.Tensor) -> torch.Tensor:
        """Code masks ``(B, C, H, W)`` -> scaled posterior modes ``(B, latent_channels, H/f, W/f)``."""
        dist, mean, _ = self._posterior(self._to_vae_input(y, "code mask"))
        return (dist.mode() if dist is not None else mean) * self.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(B, latent_channels, h, w)`` -> decoder output ``(B, out_channels, h*f, w*f)``."""
        if not isinstance(z, torch.Tensor) or z.ndim != 4 or z.shape[1] != self.latent_channels:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"latents must have shape (B, {self.latent_channels}, h, w), got {shape}")
        z = z / self.scale_factor
        if self.backend == "diffusers":
            return self.vae.decode(z).sample
        return self.vae.decode(z)

    def decode_image(self, z: torch.Tensor, channels: int) -> torch.Tensor:
        """Decode latents to ``channels`` channels: as decoded, or averaged to one for gray data."""
        out = self.decode(z)
        if int(channels) == out.shape[1]:
            return out
        if int(channels) == 1:
            return out.mean(dim=1, keepdim=True)
        raise ValueError(f"cannot map the VAE's {out.shape[1]} output channels to {channels}; use 1 or {out.shape[1]}")


def check_codec(codec: Any, codebook: Any) -> LatentCodec | None:
    """``codec`` when it is ``None`` or a :class:`LatentCodec` that ``codebook``'s code masks can pass through.

    A TypeError names another type (the trainer, evaluator and sampler all take a codec), a ValueError
    a codebook of the wrong channels (:meth:`LatentCodec.check_codebook`).
    """
    if codec is None:
        return None
    if not isinstance(codec, LatentCodec):
        raise TypeError(f"codec must be a LatentCodec (see medsymmflow.networks.load_vae) or None, got {type(codec).__name__}")
    codec.check_codebook(codebook)
    return codec


def flow_channels(image_channels: int, code_channels: int, codec: LatentCodec | None = None) -> tuple[int, int]:
    """``(x_channels, y_channels)`` of the flow network: the image's and the code's, or the VAE's latent channels twice."""
    if codec is None:
        return int(image_channels), int(code_channels)
    return codec.latent_channels, codec.latent_channels


def match_vae_channels(x: torch.Tensor, channels: int, name: str) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``channels`` channels: 1-channel input is repeated, any other mismatch raises."""
    c = x.shape[1]
    if c == 1 and channels != 1:
        return x.repeat(1, channels, 1, 1)
    if c != channels:
        raise ValueError(f"{name} has {c} channels but the VAE takes {channels} (1-channel inputs are repeated)")
    return x


# ---------------------------------------------------------------------- scale factor
def measure_scale_factor(
    vae: nn.Module | LatentCodec,
    images: Iterable[Any],
    generator: torch.Generator | None = None,
    max_batches: int | None = None,
) -> float:
    """``1 / std`` of posterior-sampled latents of ``images``, Stable Diffusion's recipe for 0.18215.

    ``images`` yields image tensors ``(B, C, H, W)`` or batch dicts with an ``image`` key (a DataLoader).
    """
    codec = vae if isinstance(vae, LatentCodec) else LatentCodec(vae, scale_factor=1.0)
    device = next(codec.vae.parameters()).device
    total, total_sq, count = 0.0, 0.0, 0
    with torch.no_grad():
        for i, batch in enumerate(images):
            if max_batches is not None and i >= int(max_batches):
                break
            x = batch["image"] if isinstance(batch, dict) else batch
            z = codec.encode_image(torch.as_tensor(x).float().to(device), generator=generator).double() / codec.scale_factor
            total += float(z.sum())
            total_sq += float((z * z).sum())
            count += z.numel()
    if count < 2:
        raise ValueError("measure_scale_factor needs at least one batch of images")
    var = total_sq / count - (total / count) ** 2
    if not var > 0:
        raise ValueError(f"latents have variance {var}; cannot derive a scale factor")
    return 1.0 / math.sqrt(var)


# ---------------------------------------------------------------------- package VAE files
def save_vae(path: str | os.PathLike, vae: PresetAutoencoderKL | LatentCodec, scale_factor: float | None = None) -> Path:
    """Write a package VAE (config, weights, scale factor) atomically to ``path``; return the path."""
    if isinstance(vae, LatentCodec):
        scale_factor = vae.scale_factor if scale_factor is None else scale_factor
        vae = vae.vae
    if not isinstance(vae, PresetAutoencoderKL):
        raise TypeError(f"save_vae writes package VAEs (build_vae / PresetAutoencoderKL), got {type(vae).__name__}")
    scale = 1.0 if scale_factor is None else float(scale_factor)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale_factor must be a finite number > 0, got {scale_factor}")
    payload = {
        "format": VAE_FORMAT,
        "version": _VAE_FORMAT_VERSION,
        "config": dict(vae.config),
        "scale_factor": scale,
        "state_dict": {k: v.detach().cpu() for k, v in vae.state_dict().items()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write(path, buffer.getvalue())


def _load_package_vae(path: Path, scale_factor: float | None) -> LatentCodec:
    try:
        payload = load_checkpoint(path)
    except (FileNotFoundError, ValueError) as e:
        raise VAELoadError(f"cannot load the VAE file {path}: {e}. {_how_to_get_a_vae()}") from e
    if not isinstance(payload, dict) or payload.get("format") != VAE_FORMAT:
        keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise VAELoadError(
            f"{path} is not a medsymmflow VAE file (found {keys}); pass the vae.pt that "
            f"bundles/latent/vae_train.json writes to its output_dir. {_how_to_get_a_vae()}"
        )
    try:
        config = dict(payload["config"])
        vae = PresetAutoencoderKL(
            config.pop("preset"),
            in_channels=int(config.pop("in_channels")),
            latent_channels=int(config.pop("latent_channels")),
            **config,
        )
        vae.load_state_dict(payload["state_dict"])
        stored = float(payload["scale_factor"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise VAELoadError(f"the VAE file {path} does not rebuild its network ({type(e).__name__}: {e})") from e
    return LatentCodec(vae, scale_factor=stored if scale_factor is None else scale_factor, source=str(path))


# ---------------------------------------------------------------------- loader
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_FILE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


def _looks_like_repo_id(text: str) -> bool:
    return bool(_REPO_ID.match(text)) and not text.endswith(_FILE_SUFFIXES) and not text.startswith(".")


def _offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; honour it when it is set later too
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _load_diffusers(source: str, scale_factor: float | None, local_files_only: bool, subfolder: str | None, tried: str) -> LatentCodec:
    try:
        from diffusers import AutoencoderKL as DiffusersAutoencoderKL
    except ImportError as e:
        raise VAELoadError(f"loading {tried} needs diffusers (pip install diffusers): {e}") from e
    kwargs: dict[str, Any] = {"local_files_only": local_files_only}
    if subfolder:
        kwargs["subfolder"] = subfolder
    try:
        vae = DiffusersAutoencoderKL.from_pretrained(source, **kwargs)
    except Exception as e:  # hub, file-system and format errors come in many types
        reason = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        offline = " (offline: HF_HUB_OFFLINE is set or local_files_only=True)" if local_files_only else ""
        raise VAELoadError(
            f"cannot load a diffusers AutoencoderKL from {tried}{offline}: {type(e).__name__}: {reason}. "
            f"{_how_to_get_a_vae()}"
        ) from e
    return LatentCodec(vae, scale_factor=scale_factor, source=source)


def load_vae(
    source: str | os.PathLike | nn.Module,
    device: str | torch.device = "cpu",
    scale_factor: float | None = None,
    subfolder: str | None = None,
    local_files_only: bool | None = None,
) -> LatentCodec:
    """A frozen :class:`LatentCodec` on ``device`` from a VAE ``source``.

    ``source``: a Hugging Face name (``"stabilityai/sd-vae-ft-mse"``), a local diffusers folder (one
    holding ``config.json`` and weights, or a pipeline folder with a ``vae/`` subfolder), a package
    VAE file (``vae.pt`` from ``bundles/latent/vae_train.json``), or a VAE module. ``scale_factor``
    overrides the stored one. The hub is not contacted when ``local_files_only`` is true or
    ``HF_HUB_OFFLINE`` is set. Any failure raises :class:`VAELoadError` naming what was tried and how
    to get a VAE in place.
    """
    if isinstance(source, LatentCodec):
        codec = source
    elif isinstance(source, nn.Module):
        codec = LatentCodec(source, scale_factor=scale_factor)
    elif isinstance(source, (str, os.PathLike)):
        text = os.fspath(source).strip()
        if not text:
            raise VAELoadError(f"the VAE source is empty. {_how_to_get_a_vae()}")
        path = Path(text).expanduser()
        offline = _offline() if local_files_only is None else bool(local_files_only)
        if path.is_file():
            codec = _load_package_vae(path, scale_factor)
        elif path.is_dir():
            if subfolder is None and not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
                subfolder = "vae"
            where = path / subfolder if subfolder else path
            if not (where / "config.json").is_file():
                raise VAELoadError(
                    f"the folder {path} is not a diffusers VAE: {where / 'config.json'} is missing. {_how_to_get_a_vae()}"
                )
            codec = _load_diffusers(str(path), scale_factor, True, subfolder, f"the local folder {path}")
        elif _looks_like_repo_id(text):
            codec = _load_diffusers(
                text, scale_factor, offline, subfolder,
                f"the Hugging Face name {text!r} (no local file or folder of that name exists either)",
            )
        else:
            kind = "file" if text.endswith(_FILE_SUFFIXES) else "folder"
            raise VAELoadError(f"the VAE {kind} {path} does not exist. {_how_to_get_a_vae()}")
    else:
        raise TypeError(f"source must be a Hugging Face name, a path or a VAE module, got {type(source).__name__}")
    return codec.to(device)
