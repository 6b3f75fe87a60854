"""Benchmark: train the BasicUNet segmentation baseline on a CelebAMask-HQ pairs folder under a wall-clock budget.

Example (30 CPU minutes on the 300-pair sample at 64 px)::

    python benchmarks/baseline_unet.py --dataset-dir ../shared/data/celebamask_hq_sample --size 64 \
        --budget-minutes 30 --output-dir runs/bench/celebamask_hq/basicunet

A thin wrapper over :func:`medsymmflow.baselines.train_segmentation_baseline`; the run folder receives
model.pt, segmentation_metrics.json (+ the per-class / per-image tables) and metrics.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from medsymmflow.baselines.segmentation import BASIC_UNET_FEATURES, KEY_METRICS, train_segmentation_baseline
from medsymmflow.precision import AUTOCAST_CHOICES


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset-dir", required=True, help="CelebAMask-HQ pairs folder (images/, masks/)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--budget-minutes", type=float, default=30.0, help="wall-clock training budget (0: none, --max-epochs only)")
    parser.add_argument("--max-epochs", type=int, default=None, help="cap on the epochs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--features", type=int, nargs=6, default=list(BASIC_UNET_FEATURES), help="BasicUNet's six feature widths")
    parser.add_argument("--key-metric", default="miou_no_background", choices=KEY_METRICS, help="validation metric picking model.pt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--autocast", default="none", choices=AUTOCAST_CHOICES, help="mixed precision for training and prediction")
    parser.add_argument("--output-dir", required=True)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train the baseline and print its test figures."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("medsymmflow").setLevel(logging.INFO)
    result = train_segmentation_baseline(
        args.dataset_dir, size=args.size, budget_minutes=args.budget_minutes or None, max_epochs=args.max_epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, features=args.features,
        key_metric=args.key_metric, seed=args.seed, device=args.device, output_dir=Path(args.output_dir),
        threads=args.threads, autocast=args.autocast,
    )
    test = result["test"]
    print(json.dumps({k: test[k] for k in ("miou", "miou_no_background", "pixel_accuracy")}, indent=2))
    return result


if __name__ == "__main__":
    main()
