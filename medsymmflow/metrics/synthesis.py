"""Semantic image synthesis quality: FID / KID against real images, MS-SSIM and LPIPS diversity, mask consistency.

Everything here scores images it is given (uint8 ``(N, H, W, C)``, the package's convention) and
calls the callables it is given; generating the images from label maps is
:mod:`medsymmflow.synthesis`'s job.

* :class:`SynthesisScores`: FID (torchmetrics ``FrechetInceptionDistance``) and KID (torchmetrics
  ``KernelInceptionDistance``, unbiased, the one meant for a few hundred images) of generated sets
  against one fixed real set, from one Inception pass per set (the offline Inception of
  :mod:`medsymmflow.metrics.fid`; any ``(N, C, H, W) -> (N, d)`` module in tests).
* :func:`real_vs_real`: the same scores for real images against real images (what a perfect generator
  would score at this sample count): a seeded draw of other real images (e.g. the training split)
  when given, else two disjoint seeded halves of the real set.
* :func:`ms_ssim_diversity`: ``1 - mean pairwise MS-SSIM`` between the samples of each mask.
  :func:`ms_ssim_settings` picks the scales: the standard 5 scales with an 11-px Gaussian need images
  over 160 px, so smaller images drop the coarsest scales (64 px: 3 scales) and renormalise the first
  betas of Wang et al. (2003) to sum 1; below 11 px the kernel shrinks.
* :func:`lpips_diversity`: mean pairwise LPIPS (torchmetrics) between the samples of each mask, only
  when the torchvision backbone weights are on disk (nothing is downloaded):
  :class:`LPIPSWeightsMissing` says which file to place where.
* :func:`mask_consistency`: segment the synthesised images with any segmenter callable and report the
  mIoU against the conditioning label maps (one confusion matrix over all images, ``ignore_index``
  pixels left out), with the IoU of :mod:`medsymmflow.metrics.segmentation`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medsymmflow.io import check_uint8_images, to_float_images
from medsymmflow.metrics.fid import checked_extractor
from medsymmflow.metrics.segmentation import iou_from_confusion, mean_iou, pixel_accuracy

__all__ = [
    "LPIPS_NETS",
    "LPIPSWeightsMissing",
    "MS_SSIM_BETAS",
    "Segmenter",
    "SynthesisScores",
    "fid_kid_of_features",
    "kid_subset_size_for",
    "lpips_diversity",
    "lpips_weights_file",
    "mask_consistency",
    "ms_ssim_diversity",
    "ms_ssim_settings",
    "real_vs_real",
]

Segmenter = Callable[[torch.Tensor], torch.Tensor]

# Wang, Simoncelli & Bovik (2003), finest scale first (torchmetrics' default betas)
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_KERNELS = (11, 7, 5, 3)
# torchmetrics' LPIPS backbone -> the torchvision weights enum whose file it loads
LPIPS_NETS = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}
KID_MAX_SUBSET = 1000  # torchmetrics' default subset size


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class _Passthrough(nn.Module):
    """Feature "extractor" for features already extracted: torchmetrics receives ``(N, d)`` and keeps it."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def kid_subset_size_for(num_real: int, num_fake: int, subset_size: int | None = None) -> int:
    """KID's subset size: ``subset_size`` or ``min(1000, num_real, num_fake)``; ValueError when a set is too small."""
    if min(num_real, num_fake) < 2:
        raise ValueError(
            f"KID needs at least 2 real and 2 generated images, got {num_real} real and {num_fake} generated"
        )
    if subset_size is None:
        return min(KID_MAX_SUBSET, num_real, num_fake)
    size = _positive(subset_size, "kid_subset_size")
    if size < 2 or size > min(num_real, num_fake):
        raise ValueError(
            f"kid_subset_size={size} needs 2 <= size <= the smaller set, but there are {num_real} real and "
            f"{num_fake} generated images; lower it or pass more images"
        )
    return size


def fid_kid_of_features(
    real_features: torch.Tensor,
    fake_features: torch.Tensor,
    kid_subsets: int = 100,
    kid_subset_size: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """FID (torchmetrics) and KID (torchmetrics, mean and std over ``kid_subsets`` subsets) of two feature sets ``(N, d)``.

    Returns ``{"fid", "kid", "kid_std", "kid_subset_size", "kid_subsets", "num_real", "num_generated"}``;
    the KID subsets are drawn from ``seed`` and the global RNG is left as it was.
    """
    import warnings

    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = torch.as_tensor(real_features).double(), torch.as_tensor(fake_features).double()
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, d) of one width, got {tuple(real.shape)} and {tuple(fake.shape)}")
    size = kid_subset_size_for(real.shape[0], fake.shape[0], kid_subset_size)
    # one process holds every sample (rank 0 alone under torchrun): compute must not wait for the other ranks,
    # as torchmetrics does by default whenever a process group exists
    fid = FrechetInceptionDistance(feature=_Passthrough(real.shape[1]), sync_on_compute=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "will save all extracted features": that is the point here
        kid = KernelInceptionDistance(
            feature=_Passthrough(real.shape[1]), subsets=_positive(kid_subsets, "kid_subsets"), subset_size=size,
            sync_on_compute=False,
        )
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    # KID's subsets come from torch.randperm: a private seed makes the score reproducible
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        kid_mean, kid_std = kid.compute()
    return {
        "fid": float(fid.compute()),
        "kid": float(kid_mean),
        "kid_std": float(kid_std),
        "kid_subset_size": size,
        "kid_subsets": int(kid_subsets),
        "num_real": int(real.shape[0]),
        "num_generated": int(fake.shape[0]),
    }


class SynthesisScores:
    """FID and KID of generated image sets against one fixed real set, whose features are extracted only once.

    Images are uint8 ``(N, H, W, C)``; ``feature_extractor`` maps float ``(B, C, H, W)`` in [-1, 1] to
    ``(B, d)`` (``None`` loads the offline Inception V3, :func:`~medsymmflow.metrics.fid.load_inception`).
    KID draws ``kid_subsets`` subsets of :func:`kid_subset_size_for` images from ``seed`` (the global RNG
    is left as it was), so a call is reproducible.
    """

    def __init__(
        self,
        real_images: np.ndarray | torch.Tensor,
        feature_extractor: nn.Module | None = None,
        batch_size: int = 50,
        device: str | torch.device = "cpu",
        kid_subsets: int = 100,
        kid_subset_size: int | None = None,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        real = check_uint8_images(real_images, "real_images")
        if real.shape[0] < 2:
            raise ValueError(f"FID / KID need at least 2 real images, got {real.shape[0]}")
        self.batch_size = _positive(batch_size, "batch_size")
        self.kid_subsets = _positive(kid_subsets, "kid_subsets")
        self.kid_subset_size = None if kid_subset_size is None else _positive(kid_subset_size, "kid_subset_size")
        self.seed = int(seed)
        self.progress = progress
        self.device = torch.device(device)
        self.extractor = checked_extractor(feature_extractor, real, self.device)
        self.num_features = self.extractor.num_features
        self.image_shape = tuple(real.shape[1:])
        self.real_features = self.features(real, "real")

    def features(self, images: np.ndarray | torch.Tensor, what: str = "generated") -> torch.Tensor:
        """Features ``(N, d)`` float64 on the CPU of uint8 images ``(N, H, W, C)`` of the real images' shape."""
        from tqdm.auto import tqdm

        images = check_uint8_images(images, f"{what} images")
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{what} images have shape (H, W, C) = {tuple(images.shape[1:])} but the real images {self.image_shape}"
            )
        parts = []
        with torch.no_grad():  # not inference_mode: torchmetrics updates its states with these outside it
            for i in tqdm(range(0, images.shape[0], self.batch_size), desc=f"Inception features ({what})",
                          unit="batch", disable=not self.progress):
                batch = to_float_images(images[i : i + self.batch_size]).to(self.device)
                parts.append(self.extractor(batch).double().cpu())
        return torch.cat(parts)

    def score_features(self, fake_features: torch.Tensor) -> dict[str, Any]:
        """FID / KID of extracted ``(N, d)`` features against the real set (see :func:`fid_kid_of_features`)."""
        return fid_kid_of_features(self.real_features, fake_features, self.kid_subsets, self.kid_subset_size, self.seed)

    def __call__(self, fake_images: np.ndarray | torch.Tensor) -> dict[str, Any]:
        """FID and KID of ``fake_images`` (uint8 ``(N, H, W, C)``) against the real set; see :meth:`score_features`."""
        return self.score_features(self.features(fake_images))


def real_vs_real(
    real_images: np.ndarray | torch.Tensor,
    reference_images: np.ndarray | torch.Tensor | None = None,
    feature_extractor: nn.Module | None = None,
    seed: int = 0,
    scores: SynthesisScores | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """FID / KID of real images against real images: the floor a generator is compared with.

    With ``reference_images`` (e.g. the training split), ``len(real_images)`` of them (all when fewer)
    are drawn from ``seed`` and scored against all of ``real_images``: the same real set and count that
    images generated from the real images' masks are scored against. Without them, ``real_images`` is
    split into two disjoint seeded halves scored against each other (half the count: FID, which is
    biased by the count, reads higher; KID does not). ``scores``: a :class:`SynthesisScores` built on
    ``real_images``, whose real features are reused (no second Inception pass); otherwise one is built
    with ``feature_extractor`` and ``kwargs``. Returns :func:`fid_kid_of_features`' entries plus ``"source"``.
    """
    real = check_uint8_images(real_images, "real_images")
    if scores is None:
        scores = SynthesisScores(real, feature_extractor, seed=seed, **kwargs)
    elif scores.real_features.shape[0] != real.shape[0]:
        raise ValueError(f"scores were built on {scores.real_features.shape[0]} real images, not these {real.shape[0]}")
    rng = np.random.default_rng(seed)
    if reference_images is None:
        if real.shape[0] < 4:
            raise ValueError(f"a real-vs-real split needs at least 4 real images (2 per half), got {real.shape[0]}")
        order = rng.permutation(real.shape[0])
        half = real.shape[0] // 2
        first, second = np.sort(order[:half]), np.sort(order[half : 2 * half])
        row = fid_kid_of_features(
            scores.real_features[first], scores.real_features[second], scores.kid_subsets, scores.kid_subset_size, scores.seed
        )
        return {"source": f"two disjoint halves of the {real.shape[0]} real images ({half} vs {half}, seed {seed})", **row}
    ref = check_uint8_images(reference_images, "reference_images")
    n = min(real.shape[0], ref.shape[0])
    draw = np.sort(rng.choice(ref.shape[0], size=n, replace=False))
    row = scores.score_features(scores.features(ref[draw], "reference"))
    return {"source": f"{n} of {ref.shape[0]} reference images (seed {seed}) vs the {real.shape[0]} real images", **row}


def _grouped_samples(samples: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """uint8 samples ``(M, S, H, W, C)``: ``S >= 2`` samples of each of ``M`` masks."""
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().numpy()
    samples = np.asarray(samples)
    if samples.dtype != np.uint8 or samples.ndim != 5:
        raise ValueError(f"{name} must be uint8 (masks, samples per mask, H, W, C), got {samples.dtype} {samples.shape}")
    if samples.shape[1] < 2:
        raise ValueError(f"diversity needs at least 2 samples per mask, got {samples.shape[1]}")
    return samples


def ms_ssim_settings(height: int, width: int | None = None) -> dict[str, Any]:
    """Kernel size and betas of the MS-SSIM :func:`ms_ssim_diversity` uses for images of this size.

    The most scales (up to 5) torchmetrics accepts with the 11-px Gaussian (sigma 1.5): its check is
    ``size // max(1, scales - 1)**2 > kernel - 1`` and ``size >= 2**scales``; images too small for one
    scale at 11 px take the largest smaller kernel that fits. Betas are the first ``scales`` of
    :data:`MS_SSIM_BETAS` renormalised to sum 1 (64 px: 3 scales, kernel 11).
    """
    size = min(int(height), int(height if width is None else width))
    for kernel in MS_SSIM_KERNELS:
        for scales in range(len(MS_SSIM_BETAS), 0, -1):
            if size >= 2**scales and size // max(1, scales - 1) ** 2 > kernel - 1:
                betas = np.asarray(MS_SSIM_BETAS[:scales], dtype=np.float64)
                return {"kernel_size": kernel, "sigma": 1.5, "betas": tuple(float(b) for b in betas / betas.sum()),
                        "scales": scales}
    raise ValueError(f"MS-SSIM needs images of at least 4 x 4 pixels, got {height} x {width or height}")


def _pairwise_mean(samples: np.ndarray, score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batch_size: int) -> float:
    """Mean of ``score(a, b)`` (per pair) over all pairs of samples of one mask, over all masks."""
    m, s = samples.shape[:2]
    pairs = list(itertools.combinations(range(s), 2))
    first = np.asarray([[i, a] for i in range(m) for a, _ in pairs])
    second = np.asarray([[i, b] for i in range(m) for _, b in pairs])
    values = []
    with torch.inference_mode():
        for k in range(0, len(first), batch_size):
            a = samples[first[k : k + batch_size, 0], first[k : k + batch_size, 1]]
            b = samples[second[k : k + batch_size, 0], second[k : k + batch_size, 1]]
            values.append(score(to_float_images(a), to_float_images(b)).reshape(-1).double())
    return float(torch.cat(values).mean())


def ms_ssim_diversity(samples: np.ndarray | torch.Tensor, batch_size: int = 64) -> dict[str, Any]:
    """``1 - mean MS-SSIM`` over all pairs of samples of the same mask (0: identical samples; higher: more diverse).

    ``samples``: uint8 ``(masks, samples per mask, H, W, C)``. Returns ``{"diversity", "ms_ssim", "pairs",
    "kernel_size", "betas"}``; the scales follow :func:`ms_ssim_settings`.
    """
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim

    samples = _grouped_samples(samples, "samples")
    settings = ms_ssim_settings(samples.shape[2], samples.shape[3])

    def score(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ms_ssim(
            (a + 1) / 2, (b + 1) / 2, data_range=1.0, kernel_size=settings["kernel_size"], sigma=settings["sigma"],
            betas=settings["betas"], reduction="none",
        )

    mean = _pairwise_mean(samples, score, _positive(batch_size, "batch_size"))
    s = samples.shape[1]
    return {"diversity": 1.0 - mean, "ms_ssim": mean, "pairs": samples.shape[0] * s * (s - 1) // 2, **settings}


class LPIPSWeightsMissing(FileNotFoundError):
    """The torchvision backbone weights LPIPS needs are not on disk (and are not downloaded)."""


def lpips_weights_file(net: str = "alex") -> Path:
    """Where torchvision looks for the ImageNet weights of LPIPS backbone ``net`` (``alex``, ``vgg``, ``squeeze``)."""
    import torchvision.models as models

    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS backbone {net!r}; choose one of {', '.join(LPIPS_NETS)}")
    url = getattr(models, LPIPS_NETS[net]).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _require_lpips_weights(net: str) -> Path:
    path = lpips_weights_file(net)
    if not path.is_file():
        raise LPIPSWeightsMissing(
            f"LPIPS needs the torchvision {net} weights at {path}; place them there (torchvision's "
            f"{LPIPS_NETS[net]}.IMAGENET1K_V1 file, or set TORCH_HOME) - they are never downloaded here"
        )
    return path


def lpips_diversity(samples: np.ndarray | torch.Tensor, net: str = "alex", batch_size: int = 32) -> dict[str, Any]:
    """Mean LPIPS over all pairs of samples of the same mask (higher: more diverse), with torchmetrics' LPIPS.

    ``samples``: uint8 ``(masks, samples per mask, H, W, C)``; gray images are repeated to 3 channels.
    Raises :class:`LPIPSWeightsMissing` naming the file when the backbone weights are not on disk.
    """
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    samples = _grouped_samples(samples, "samples")
    _require_lpips_weights(net)
    metric = LearnedPerceptualImagePatchSimilarity(net_type=net, reduction="none", sync_on_compute=False).eval()

    def score(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape[1] == 1:
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
        return metric.net(a.clamp(-1, 1), b.clamp(-1, 1))  # the per-pair distances, inputs in [-1, 1]

    s = samples.shape[1]
    return {"lpips": _pairwise_mean(samples, score, _positive(batch_size, "batch_size")), "net": net,
            "pairs": samples.shape[0] * s * (s - 1) // 2}


def _as_label_maps(label_maps: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """int64 label maps ``(N, H, W)`` from ``(N, H, W)`` or ``(N, 1, H, W)`` whole-valued arrays."""
    maps = torch.as_tensor(np.asarray(label_maps) if not isinstance(label_maps, torch.Tensor) else label_maps)
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim != 3:
        raise ValueError(f"{name} must be label maps (N, H, W) or (N, 1, H, W), got shape {tuple(maps.shape)}")
    if maps.is_floating_point() and not torch.equal(maps, maps.round()):
        raise ValueError(f"{name} must hold whole class indices, got fractional values")
    return maps.long().cpu()


def _segment(segmenter: Segmenter, images: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The segmenter's label maps ``(B, H, W)``: it may return labels ``(B, H, W)`` / ``(B, 1, H, W)`` or scores ``(B, K, H, W)``."""
    out = segmenter(images)
    if isinstance(out, (tuple, list)):  # SymmFlowSegmenter-like: (labels, uncertainty)
        out = out[0]
    out = torch.as_tensor(out).detach().cpu()
    b, h, w = images.shape[0], images.shape[2], images.shape[3]
    if out.ndim == 4 and out.shape[1] == num_classes and out.shape[1] > 1:
        out = out.argmax(1)
    elif out.ndim == 4 and out.shape[1] == 1:
        out = out[:, 0]
    if tuple(out.shape) != (b, h, w):
        raise ValueError(
            f"the segmenter must return label maps (B, H, W) or scores (B, {num_classes}, H, W), got "
            f"{tuple(out.shape)} for images {tuple(images.shape)}"
        )
    return out.round().long() if out.is_floating_point() else out.long()


def mask_consistency(
    images: np.ndarray | torch.Tensor,
    label_maps: np.ndarray | torch.Tensor,
    segmenter: Segmenter,
    num_classes: int,
    ignore_index: int | None = 255,
    batch_size: int = 32,
    background: int | None = 0,
) -> dict[str, Any]:
    """mIoU (a fraction) of ``segmenter``'s label maps of synthesised ``images`` against the masks they were made from.

    ``images``: uint8 ``(N, H, W, C)``, passed to the segmenter as float ``(B, C, H, W)`` in [-1, 1];
    ``label_maps``: ``(N, H, W)`` class indices, ``ignore_index`` pixels left out. One confusion matrix
    over all images (torchmetrics ``MulticlassConfusionMatrix``); mIoU over the classes present in the
    targets or the predictions, with and without the ``background`` class (``None``: the dataset has none, e.g.
    COCO-Stuff, and ``miou_no_background`` is None). Returns ``{"miou",
    "miou_no_background", "per_class_iou", "pixel_accuracy", "num_images"}``.
    """
    from torchmetrics.classification import MulticlassConfusionMatrix

    imgs = check_uint8_images(images, "images")
    maps = _as_label_maps(label_maps, "label_maps")
    k = _positive(num_classes, "num_classes")
    if maps.shape[0] != imgs.shape[0] or tuple(maps.shape[1:]) != tuple(imgs.shape[1:3]):
        raise ValueError(f"{imgs.shape[0]} images of {imgs.shape[1:3]} but label maps of shape {tuple(maps.shape)}")
    if not callable(segmenter):
        raise TypeError(f"segmenter must be callable images -> label maps, got {type(segmenter).__name__}")
    valid = maps if ignore_index is None else maps[maps != ignore_index]
    if valid.numel() and (valid.min() < 0 or valid.max() >= k):
        raise ValueError(f"label_maps hold values outside 0..{k - 1}" + (f" and {ignore_index}" if ignore_index is not None else ""))
    confusion = MulticlassConfusionMatrix(k, ignore_index=ignore_index, validate_args=False, sync_on_compute=False)
    step = _positive(batch_size, "batch_size")
    with torch.inference_mode():
        for i in range(0, imgs.shape[0], step):
            pred = _segment(segmenter, to_float_images(imgs[i : i + step]), k)
            target = maps[i : i + step]
            if pred.min() < 0 or pred.max() >= k:
                raise ValueError(f"the segmenter returned classes outside 0..{k - 1}: [{int(pred.min())}, {int(pred.max())}]")
            confusion.update(pred, target)
    matrix = confusion.compute()
    iou = iou_from_confusion(matrix)
    return {
        "miou": mean_iou(iou),
        "miou_no_background": mean_iou(iou, exclude=[int(background)]) if background is not None else None,
        "per_class_iou": [None if v != v else float(v) for v in iou.tolist()],
        "pixel_accuracy": pixel_accuracy(matrix),
        "num_images": int(imgs.shape[0]),
    }
