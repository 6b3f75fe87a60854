"""Benchmark: train the ResNet-18 baseline on a MedMNIST flag under a wall-clock budget; print a table, write JSON.

Example (30 CPU minutes on PneumoniaMNIST, data already on disk)::

    python benchmarks/baseline_resnet.py --flag pneumoniamnist --dataset-dir ../shared/data/medmnist \
        --budget-minutes 30 --output-dir runs/bench/resnet_pneumoniamnist

The run folder receives the baseline's own files (model.pt, metrics.json, predictions.csv,
val_predictions.csv) and results.json: the figures, the machine, the date and the exact command line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from medsymmflow.precision import AUTOCAST_CHOICES, cpu_has_native_bf16


def machine_info() -> dict[str, Any]:
    """CPU, load and library versions of this machine, so benchmark figures can be compared across runs."""
    import monai

    cpu_model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu_model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu_model)
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "load_average_1_5_15_min": load,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda_available": torch.cuda.is_available(),
        # decides what autocast "auto" does on this CPU, so figures from different CPUs are told apart
        "cpu_native_bf16": cpu_has_native_bf16(),
    }


def command_line() -> str:
    """The exact command that started this process, shell-quoted."""
    return shlex.join([Path(sys.executable).name, *sys.argv])


def now_iso() -> str:
    """The local date and time with its UTC offset, to the second."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train MONAI's ResNet-18 on a MedMNIST flag under a wall-clock budget (the MedSymmFlow baseline).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--flag", required=True, help="MedMNIST 2-D flag, e.g. pneumoniamnist")
    parser.add_argument("--dataset-dir", default=None, help="folder with <flag>.npz (default: medmnist's ~/.medmnist)")
    parser.add_argument("--download", action="store_true", help="let medmnist download a missing npz")
    parser.add_argument("--size", type=int, default=28, help="image size (28, 64, 128, 224)")
    parser.add_argument(
        "--budget-minutes", type=float, default=30.0,
        help="wall-clock training budget (medsymmflow's TrainingBudget, from the trainer's start); 0 = none",
    )
    parser.add_argument("--max-epochs", type=int, default=None, help="epoch cap (required with --budget-minutes 0)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--no-augment", action="store_true", help="disable random flips and shifts")
    parser.add_argument("--balanced", action="store_true", help="class-balanced sampling")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--output-dir", required=True, help="run folder (model, predictions, metrics, results.json)")
    parser.add_argument("--log-every", type=int, default=1, help="log an epoch line every N epochs")
    parser.add_argument(
        "--autocast", default="none", choices=AUTOCAST_CHOICES,
        help="mixed precision (auto = bf16 where the CPU/GPU runs it natively; default: none)",
    )
    args = parser.parse_args(argv)
    if args.budget_minutes == 0 and args.max_epochs is None:
        parser.error("--budget-minutes 0 (no budget) needs --max-epochs")
    return args


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of val/test ACC and AUC from torchmetrics and medmnist, and the training figures."""
    rows = [("split", "source", "ACC", "AUC")]
    for split in ("val", "test"):
        for source in ("torchmetrics", "medmnist"):
            if source in result[split]:
                m = result[split][source]
                rows.append((split, source, _fmt(m["acc"]), _fmt(m["auc"])))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    t = result["training"]
    lines.append(
        f"epochs {t['epochs_run']}/{t['epochs_planned']} (best {t['best_epoch']}), "
        f"{t['total_seconds'] / 60:.1f} min in total, {result['num_parameters'] / 1e6:.2f}M parameters"
    )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "nan" if value is None or value != value else f"{value:.4f}"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark from command-line arguments; returns what results.json holds."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from medsymmflow.baselines import train_resnet_baseline
    from medsymmflow.io import atomic_write

    started = now_iso()
    machine = machine_info()  # before training, so the load average describes the conditions at the start
    result = train_resnet_baseline(
        flag=args.flag,
        dataset_dir=args.dataset_dir,
        download=args.download,
        size=args.size,
        budget_minutes=None if args.budget_minutes == 0 else args.budget_minutes,
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        augment=not args.no_augment,
        balanced=args.balanced,
        autocast=args.autocast,
        seed=args.seed,
        device=args.device,
        output_dir=args.output_dir,
        log_every=args.log_every,
        threads=args.threads,
    )
    machine["torch_threads"] = result["config"]["threads"]
    report = {
        "benchmark": "baseline_resnet",
        "date": started,
        "finished": now_iso(),
        "command": command_line(),
        "machine": machine,
        "figures": {
            f"{split}_{source}_{name}": result[split][source][name]
            for split in ("val", "test")
            for source in ("torchmetrics", "medmnist")
            if source in result[split]
            for name in ("acc", "auc")
        }
        | {
            "epochs_run": result["training"]["epochs_run"],
            "best_epoch": result["training"]["best_epoch"],
            "total_minutes": result["training"]["total_seconds"] / 60.0,
        },
        "result": result,
    }
    path = Path(args.output_dir) / "results.json"
    atomic_write(path, json.dumps(report, indent=2, allow_nan=False) + "\n")
    print(format_table(result))
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
