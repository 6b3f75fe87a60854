"""``medsymmflow export``: a bundle checkpoint -> a TorchScript classifier file (see :mod:`medsymmflow.deploy`)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``export`` options on ``parser``; the defaults are the MedMNIST bundles' ``evaluation`` settings."""
    from medsymmflow.codes import SCORES
    from medsymmflow.deploy import EXPORT_DECISIONS
    from medsymmflow.flow.solver import FIXED_STEP_METHODS
    from medsymmflow.inferers import TIME_COUPLINGS

    parser.add_argument("--ckpt", required=True, metavar="PATH", help="bundle checkpoint (runs/<flag>/checkpoints/best.pt)")
    parser.add_argument(
        "--output", metavar="FILE", default=None,
        help="TorchScript file to write (default: classifier.ts in the checkpoint's run folder)",
    )
    parser.add_argument("--steps", type=int, default=1, help="reverse ODE steps, the bundle's evaluation#steps (default: 1)")
    parser.add_argument("--method", default="euler", choices=tuple(FIXED_STEP_METHODS), help="evaluation#method (default: euler)")
    parser.add_argument("--draws", type=int, default=1, help="label-noise draws averaged, evaluation#draws (default: 1)")
    parser.add_argument("--decision", default="mean", choices=EXPORT_DECISIONS, help="evaluation#decision (default: mean)")
    parser.add_argument(
        "--score", default="softmax", choices=SCORES,
        help="per-class scores, evaluation#score (default: softmax; configs/cpu.json uses posterior)",
    )
    parser.add_argument(
        "--temperature", type=float, default=0.1, help="tau of the softmax(-d / tau) scores, evaluation#temperature (default: 0.1)"
    )
    parser.add_argument(
        "--time-coupling", default="auto", choices=TIME_COUPLINGS,
        help="evaluation#time_coupling (default: auto: decoupled for a checkpoint trained with decoupled times, "
        "which then classifies with the image held clean)",
    )
    parser.add_argument("--seed", type=int, default=0, help="label-noise seed, the bundle's seed (default: 0)")
    parser.add_argument("--device", default="cpu", help="device the file runs on (default: cpu)")


def run(args: argparse.Namespace) -> int:
    """Export ``args.ckpt`` and print what was written; returns the exit code."""
    from medsymmflow.deploy import export_classifier

    ckpt = Path(args.ckpt)
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    output = Path(args.output) if args.output else run_dir / "classifier.ts"
    meta = export_classifier(
        ckpt, output, steps=args.steps, method=args.method, draws=args.draws, decision=args.decision,
        score=args.score, temperature=args.temperature, seed=args.seed, device=args.device, time_coupling=args.time_coupling,
    )
    print(
        f"wrote {output}: {meta['run_info']['flag']} classifier, input {meta['input']}, outputs class / "
        f"{meta['score']} scores / uncertainty ({meta['steps']} {meta['method']} step(s), {meta['draws']} draw(s), "
        f"{meta['time_coupling']} times, seed {meta['seed']})"
    )
    return 0
