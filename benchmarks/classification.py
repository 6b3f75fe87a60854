"""Benchmark: medsymmflow (CPU recipe) against a ResNet-18 trained side by side under the same budget.

Both models train at the same time, one CPU thread each, for ``--budget-minutes`` of wall clock on
the same data, each keeping the checkpoint with the best validation AUC; both are then scored on
the test split with medmnist's Evaluator. Afterwards the classification throughput of the
medsymmflow setting (steps x noise draws) is timed against the ResNet-18 forward at batch 256.

    python benchmarks/classification.py --flag pneumoniamnist --dataset-dir ../shared/data/medmnist \
        --budget-minutes 30 --output-dir runs/bench/pneumoniamnist

Prints a table and writes ``results.json`` (figures, machine, date, exact command) in the output dir.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from baseline_resnet import command_line, machine_info  # noqa: E402
from side_by_side import last_override, run_jobs  # noqa: E402

from medsymmflow.io import atomic_write
from medsymmflow.precision import AUTOCAST_CHOICES


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the side-by-side training (shared with ``unified.py``)."""
    parser.add_argument("--flag", required=True, help="2-D MedMNIST flag")
    parser.add_argument("--dataset-dir", required=True, help="folder holding <flag>.npz")
    parser.add_argument("--budget-minutes", type=float, default=30.0, help="wall-clock training budget per model")
    parser.add_argument("--threads-each", type=int, default=1, help="CPU threads per model while both train")
    parser.add_argument("--sequential", action="store_true", help="train one model after the other instead of side by side")
    parser.add_argument("--steps", type=int, default=None, help="reverse Euler steps for medsymmflow classification (default: the recipe's)")
    parser.add_argument("--draws", type=int, default=None, help="label-noise draws averaged per image (default: the recipe's)")
    parser.add_argument(
        "--autocast", default=None, choices=AUTOCAST_CHOICES,
        help="mixed precision for both models, training and inference (default: the recipe's, configs/cpu.json)",
    )
    parser.add_argument(
        "--resnet-batch-size", type=int, default=None,
        help="ResNet-18 batch size (default: medsymmflow's, the recipe's unless an --override sets --batch_size)",
    )
    parser.add_argument("--report-only", action="store_true", help="skip training: report on the runs already in --output-dir")
    parser.add_argument("--override", action="append", default=[], help="extra bundle override, e.g. --override=--training#x_weight=0.5")


def resolve_training_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in the defaults that come from the recipe (precision, batch sizes)."""
    recipe = json.loads((REPO / "configs" / "cpu.json").read_text())
    if args.autocast is None:  # both models get the recipe's precision, so the comparison stays fair
        args.autocast = str(recipe.get("evaluation#autocast") or "none")
    args.batch_size = int(last_override(args.override, "--batch_size", recipe["batch_size"]))
    if args.resnet_batch_size is None:  # same number of updates per epoch on both sides
        args.resnet_batch_size = args.batch_size
    return args


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_training_arguments(parser)
    parser.add_argument("--output-dir", default=None, help="default: runs/bench/<flag>")
    return resolve_training_arguments(parser.parse_args(argv))


def _bundle_command(args: argparse.Namespace, out: Path) -> list[str]:
    bundle = REPO / "bundles" / args.flag
    train = (bundle if bundle.is_dir() else REPO / "bundles" / "pneumoniamnist") / "train.json"
    extra = [tok for o in args.override for tok in o.split("=", 1)]
    return [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", f"['{train.relative_to(REPO)}','configs/cpu.json']",
        "--flag", args.flag, "--dataset_dir", str(Path(args.dataset_dir).resolve()), "--download", "false",
        "--device", "cpu", "--output_dir", str(out), "--training#budget_minutes", str(args.budget_minutes),
        *(["--evaluation#steps", str(args.steps)] if args.steps is not None else []),
        *(["--evaluation#draws", str(args.draws)] if args.draws is not None else []),
        "--training#autocast", args.autocast, "--evaluation#autocast", args.autocast,
        *extra,
    ]


def _resnet_command(args: argparse.Namespace, out: Path) -> list[str]:
    return [
        sys.executable, str(REPO / "benchmarks" / "baseline_resnet.py"), "--flag", args.flag,
        "--dataset-dir", str(Path(args.dataset_dir).resolve()), "--budget-minutes", str(args.budget_minutes),
        "--threads", str(args.threads_each), "--output-dir", str(out), "--autocast", args.autocast,
        "--batch-size", str(args.resnet_batch_size),
    ]


def _throughput(
    channels: int, num_classes: int, code_kind: str, preset: str, steps: int, draws: int, autocast: str,
    batch_size: int = 256, repeats: int = 5,
) -> dict[str, Any]:
    """medsymmflow classification (``steps`` x ``draws``) against the ResNet-18 forward at ``batch_size``, freshly initialised networks."""
    import torch
    from throughput import compare_throughput, resnet_classifier, symmflow_classifier

    images = torch.randn(batch_size, channels, 28, 28)
    resnet, _ = resnet_classifier(channels, num_classes, 28, autocast)
    flow, _ = symmflow_classifier(preset, channels, num_classes, code_kind, steps, draws, 0, autocast)
    return compare_throughput(flow, resnet, images, repeats=repeats, warmup=1)


def train_side_by_side(args: argparse.Namespace, out: Path, name: str = "classification") -> tuple[dict[str, float], dict[str, Any], dict[str, Any]]:
    """Train both models into ``out/medsymmflow`` and ``out/resnet18`` (nothing with ``--report-only``); wall seconds and both metrics.json."""
    flow_out, resnet_out = out / "medsymmflow", out / "resnet18"
    jobs = [
        ("medsymmflow", _bundle_command(args, flow_out), out / "medsymmflow.log"),
        ("resnet18", _resnet_command(args, resnet_out), out / "resnet18.log"),
    ]
    wall = run_jobs(jobs, args.threads_each, sequential=args.sequential, report_only=args.report_only)
    missing = [str(p) for p in (flow_out / "metrics.json", resnet_out / "metrics.json") if not p.is_file()]
    if missing:
        raise SystemExit(
            f"{name} benchmark: no test metrics at {', '.join(missing)}; "
            + ("--report-only needs the --output-dir of a finished run" if args.report_only else "see the training logs in " + str(out))
        )
    return wall, json.loads((flow_out / "metrics.json").read_text()), json.loads((resnet_out / "metrics.json").read_text())


def classification_rows(flow: dict[str, Any], resnet: dict[str, Any], wall: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Test ACC / AUC (medmnist's Evaluator; medsymmflow: mean and 2 sigma over its inference runs) and training minutes of both models."""
    return {
        "medsymmflow": {
            "acc": flow["summary"]["medmnist"]["acc"]["mean"],
            "acc_2sigma": flow["summary"]["medmnist"]["acc"]["two_sigma"],
            "auc": flow["summary"]["medmnist"]["auc"]["mean"],
            "auc_2sigma": flow["summary"]["medmnist"]["auc"]["two_sigma"],
            "wall_minutes": wall["medsymmflow"] / 60,
        },
        "resnet18": {
            "acc": resnet["test"]["medmnist"]["acc"],
            "auc": resnet["test"]["medmnist"]["auc"],
            "wall_minutes": wall["resnet18"] / 60,
        },
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run both trainings, read their test metrics, time throughput, print a table and write results.json."""
    args = _parse_args(argv)
    out = Path(args.output_dir or REPO / "runs" / "bench" / args.flag).resolve()
    wall, flow, resnet = train_side_by_side(args, out)
    from medsymmflow.data import medmnist_info

    channels = int(medmnist_info(args.flag)["n_channels"])
    # the setting that produced the test figures, as recorded by the evaluation
    steps, draws = int(flow["steps"]), int(flow["draws"])
    speed = _throughput(channels, int(flow["num_classes"]), flow["code_kind"], flow["net_preset"], steps, draws, args.autocast)
    rows = classification_rows(flow, resnet, wall)
    results = {
        "flag": args.flag,
        "budget_minutes": args.budget_minutes,
        "side_by_side": not args.sequential,
        "threads_each": args.threads_each,
        "classification": {"steps": steps, "draws": draws, "code_kind": flow["code_kind"], "net_preset": flow["net_preset"], "autocast": args.autocast,
                           "batch_size": args.batch_size, "resnet_batch_size": args.resnet_batch_size},
        "results": rows,
        "throughput": speed,
        "medsymmflow_metrics": flow,
        "resnet18_metrics": resnet,
        "machine": machine_info(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command_line(),
    }
    atomic_write(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    mode = "side by side" if not args.sequential else "sequential"
    print(f"\n{args.flag}: {args.budget_minutes:g}-minute budget, {mode}, {args.threads_each} thread(s) each")
    print(f"{'model':<14}{'ACC':>10}{'AUC':>10}{'minutes':>10}")
    for name, r in rows.items():
        print(f"{name:<14}{100 * r['acc']:>10.1f}{100 * r['auc']:>10.1f}{r['wall_minutes']:>10.1f}")
    print(f"throughput ratio medsymmflow / resnet18 (batch 256, steps={steps}, draws={draws}): {speed.get('ratio', speed)}")
    print(f"results: {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
