"""Benchmark: classification throughput (images / second) of the ResNet-18 baseline and of MedSymmFlow.

Times, on random input, (a) the ResNet-18 forward pass plus softmax and (b) MedSymmFlow's
classification (``SymmFlowClassifier``: ``steps`` reverse Euler steps over ``draws`` label-noise
draws, decoded with the codebook) for a grid of network presets x steps x draws, under
``torch.inference_mode`` in eval mode. Each setting gets warm-up calls, then repeats that time
one ResNet-18 batch and one MedSymmFlow batch in turn (the CPU may be shared, so its speed
drifts; pairing makes each ratio compare like with like). Throughput does not depend on the
weights, so freshly initialised networks and random images are used. The ratio MedSymmFlow /
ResNet-18 (median of the per-repeat ratios) is reported per setting; the target is at least 1/3.

Example (the full grid at batch 256, 28 px, 2 threads)::

    python benchmarks/throughput.py --threads 2 --output runs/bench/throughput.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Sequence

import torch

from medsymmflow.precision import AUTOCAST_CHOICES

TARGET_RATIO = 1.0 / 3.0


def _check_timing_args(images: torch.Tensor, repeats: int, warmup: int) -> None:
    """Raise a clear ValueError for an empty batch or a non-positive repeat count."""
    if not isinstance(images, torch.Tensor) or images.ndim < 2 or images.shape[0] < 1:
        raise ValueError(f"images must be a non-empty (B, C, ...) tensor, got {getattr(images, 'shape', images)!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")


def _timed(fn: Callable[[torch.Tensor], Any], images: torch.Tensor) -> float:
    """Seconds one call of ``fn(images)`` takes."""
    start = time.perf_counter()
    fn(images)
    return time.perf_counter() - start


def _summary(seconds: list[float], batch_size: int) -> dict[str, Any]:
    """Per-call times, their median and the images per second it gives."""
    median = statistics.median(seconds)
    return {"seconds_per_batch": seconds, "median_seconds": median, "images_per_second": batch_size / median}


def measure_throughput(
    fn: Callable[[torch.Tensor], Any], images: torch.Tensor, repeats: int = 5, warmup: int = 1
) -> dict[str, Any]:
    """Images per second of ``fn`` on one batch: ``warmup`` untimed calls, then the median of ``repeats`` timed ones."""
    _check_timing_args(images, repeats, warmup)
    with torch.inference_mode():
        for _ in range(warmup):
            fn(images)
        seconds = [_timed(fn, images) for _ in range(repeats)]
    return {"batch_size": int(images.shape[0]), **_summary(seconds, images.shape[0])}


def compare_throughput(
    fn: Callable[[torch.Tensor], Any],
    reference: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    repeats: int = 5,
    warmup: int = 1,
) -> dict[str, Any]:
    """Throughput of ``fn`` relative to ``reference``, timed alternately so drifting CPU speed hits both alike.

    Each repeat times one ``reference`` call and then one ``fn`` call; ``ratio`` is the median over
    repeats of (fn images/s) / (reference images/s) of the same repeat.
    """
    _check_timing_args(images, repeats, warmup)
    b = int(images.shape[0])
    with torch.inference_mode():
        for _ in range(warmup):
            reference(images)
            fn(images)
        pairs = [(_timed(reference, images), _timed(fn, images)) for _ in range(repeats)]
    ref_seconds = [r for r, _ in pairs]
    fn_seconds = [f for _, f in pairs]
    return {
        "batch_size": b,
        **_summary(fn_seconds, b),
        "reference": _summary(ref_seconds, b),
        "ratio_per_repeat": [r / f for r, f in pairs],
        "ratio": statistics.median([r / f for r, f in pairs]),
    }


def resnet_classifier(
    channels: int, num_classes: int, size: int, autocast: str | None = None
) -> tuple[Callable[[torch.Tensor], Any], int]:
    """The baseline's ResNet-18 as ``images -> softmax probabilities`` (eval mode) and its parameter count."""
    from medsymmflow.baselines import build_resnet18, predict_probabilities
    from medsymmflow.precision import resolve_autocast

    model = build_resnet18(channels, num_classes, small_input=size <= 32).eval()
    dtype = resolve_autocast(autocast, "cpu")
    return (
        lambda x: predict_probabilities(model, x, batch_size=x.shape[0], autocast_dtype=dtype)
    ), sum(p.numel() for p in model.parameters())


def symmflow_classifier(
    preset: str, channels: int, num_classes: int, code: str, steps: int, draws: int, seed: int,
    autocast: str | None = None,
) -> tuple[Callable[[torch.Tensor], Any], int]:
    """MedSymmFlow classification as ``images -> ClassificationResult`` (eval mode) and the network's size."""
    from medsymmflow import ClassCodebook
    from medsymmflow.inferers import SymmFlowClassifier
    from medsymmflow.networks import build_network, count_parameters

    codebook = ClassCodebook.from_kind(code, num_classes)
    net = build_network(preset, x_channels=channels, y_channels=codebook.channels).eval()
    classifier = SymmFlowClassifier(codebook, steps=steps, num_draws=draws, autocast=autocast)
    generator = torch.Generator().manual_seed(seed)
    return (lambda x: classifier(x, net, generator=generator)), count_parameters(net)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Classification throughput of ResNet-18 vs MedSymmFlow (random input, CPU, inference mode).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--presets", nargs="+", default=["tiny", "cpu", "cpu_patch", "paper"], help="medsymmflow network presets")
    parser.add_argument("--steps", nargs="+", type=int, default=[1, 2], help="reverse Euler steps")
    parser.add_argument("--draws", nargs="+", type=int, default=[1, 4, 8], help="label-noise draws averaged per image")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--size", type=int, default=28, help="image side in pixels")
    parser.add_argument("--channels", type=int, default=1, help="image channels (1 gray, 3 RGB)")
    parser.add_argument("--num-classes", type=int, default=2)
    parser.add_argument("--code", default="rgb", help="codebook kind: rgb (MedSymmFlow), gray (SymmFlow), palette, onehot (CPU recipe)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per setting (the median is reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per setting before timing")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--autocast", default="none", choices=AUTOCAST_CHOICES,
        help="mixed precision for both models (auto = bf16 where the CPU runs it natively)",
    )
    parser.add_argument("--output", default="runs/bench/throughput.json", help="JSON file to write")
    return parser.parse_args(argv)


def _check_grid(args: argparse.Namespace) -> None:
    """Reject a grid that cannot run before any timing starts."""
    from medsymmflow.networks import NET_PRESETS

    unknown = [p for p in args.presets if p not in NET_PRESETS]
    if unknown:
        raise SystemExit(f"unknown preset(s) {unknown}; valid presets: {', '.join(sorted(NET_PRESETS))}")
    for name in ("steps", "draws"):
        bad = [v for v in getattr(args, name) if v < 1]
        if bad:
            raise SystemExit(f"--{name} values must be >= 1, got {bad}")
    for name in ("batch_size", "size", "channels", "repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.num_classes < 2:
        raise SystemExit(f"--num-classes must be >= 2, got {args.num_classes}")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")


def format_table(resnet: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Plain-text table: one line per setting with images/s and the ratio to the ResNet-18 forward."""
    header = ("model", "preset", "steps", "draws", "params", "img/s", "ratio", f">= {TARGET_RATIO:.2f}")
    resnet_cells = (f"{resnet['parameters'] / 1e6:.2f}M", f"{resnet['images_per_second']:.1f}", "1.00", "-")
    lines = [header, ("resnet18 (all runs)", "-", "-", "-", *resnet_cells)]
    for r in rows:
        lines.append(
            (
                "medsymmflow",
                r["preset"],
                str(r["steps"]),
                str(r["draws"]),
                f"{r['parameters'] / 1e6:.2f}M",
                f"{r['images_per_second']:.1f}",
                f"{r['ratio_to_resnet']:.2f}",
                "yes" if r["meets_target"] else "no",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the throughput grid from command-line arguments; returns what the JSON file holds."""
    args = _parse_args(argv)
    _check_grid(args)
    # the scripts folder is on sys.path when this file runs as a script, not when it is imported
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    from baseline_resnet import command_line, machine_info, now_iso

    from medsymmflow.io import atomic_write

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started = now_iso()
    machine = machine_info()
    torch.manual_seed(args.seed)
    images = torch.rand(args.batch_size, args.channels, args.size, args.size) * 2.0 - 1.0

    resnet_fn, params_resnet = resnet_classifier(args.channels, args.num_classes, args.size, args.autocast)
    rows = []
    reference_seconds: list[float] = []
    for preset, steps, draws in itertools.product(args.presets, args.steps, args.draws):
        torch.manual_seed(args.seed)
        fn, params = symmflow_classifier(
            preset, args.channels, args.num_classes, args.code, steps, draws, args.seed, args.autocast
        )
        # the CPU is shared, so its speed drifts: ResNet-18 is timed alongside every setting
        timing = compare_throughput(fn, resnet_fn, images, args.repeats, args.warmup)
        reference_seconds += timing["reference"]["seconds_per_batch"]
        ratio = timing.pop("ratio")
        rows.append(
            {
                "preset": preset,
                "steps": steps,
                "draws": draws,
                "parameters": params,
                **timing,
                "ratio_to_resnet": ratio,
                "meets_target": ratio >= TARGET_RATIO,
            }
        )
        print(
            f"medsymmflow {preset} steps={steps} draws={draws}: {timing['images_per_second']:.1f} images/s, "
            f"resnet18 {timing['reference']['images_per_second']:.1f} images/s alongside: ratio {ratio:.2f}",
            flush=True,
        )
    resnet = {
        "parameters": params_resnet,
        "batch_size": args.batch_size,
        **_summary(reference_seconds, args.batch_size),
    }

    note = (
        "random input images and freshly initialised networks: throughput does not depend on the weights; "
        "times are per batch under torch.inference_mode in eval mode, median over repeats after warm-up; "
        "ResNet-18 is timed alternately with every setting and each ratio is the median of per-repeat ratios"
    )
    report = {
        "benchmark": "throughput",
        "date": started,
        "finished": now_iso(),
        "command": command_line(),
        "machine": machine | {"torch_threads": torch.get_num_threads()},
        "note": note,
        "autocast": args.autocast,
        "settings": {
            "batch_size": args.batch_size,
            "size": args.size,
            "channels": args.channels,
            "num_classes": args.num_classes,
            "code": args.code,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "device": "cpu",
            "target_ratio": TARGET_RATIO,
        },
        "resnet18": resnet,
        "medsymmflow": rows,
    }
    atomic_write(args.output, json.dumps(report, indent=2) + "\n")
    print()
    print(format_table(resnet, rows))
    print(f"({note})")
    print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    main()
