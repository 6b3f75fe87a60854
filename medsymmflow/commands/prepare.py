"""``medsymmflow prepare celebamask-hq``: the official CelebAMask-HQ release -> image / label-map pairs (see
:func:`medsymmflow.data.prepare_celebamask_hq`)."""

from __future__ import annotations

import argparse

__all__ = ["DATASETS", "add_arguments", "run"]

DATASETS = {"celebamask-hq": "combine CelebAMask-HQ's per-part masks into label maps (classes 0-18) next to the images"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``prepare <dataset>`` and its options on ``parser``."""
    sub = parser.add_subparsers(dest="dataset", metavar="dataset", required=True)
    p = sub.add_parser("celebamask-hq", help=DATASETS["celebamask-hq"], description=DATASETS["celebamask-hq"])
    p.add_argument(
        "--source", required=True, metavar="DIR",
        help="the unpacked release: DIR/CelebA-HQ-img/<id>.jpg and DIR/CelebAMask-HQ-mask-anno/<k>/<id:05d>_<part>.png",
    )
    p.add_argument(
        "--output", required=True, metavar="DIR",
        help="new or empty folder for images/<id>.jpg, masks/<id>.png and, with the mapping file, splits.json",
    )
    p.add_argument(
        "--size", type=int, default=None, metavar="N",
        help="write N x N pairs (images area-resized, as PNG; masks nearest); default: images copied unchanged, "
        "the 512 px masks upsampled to the 1024 px images by repeating pixels",
    )


def run(args: argparse.Namespace) -> int:
    """Prepare the dataset named by ``args.dataset`` and print what was written; returns the exit code."""
    from medsymmflow.data import prepare_celebamask_hq

    summary = prepare_celebamask_hq(args.source, args.output, size=args.size)
    sizes = ", ".join(f"{r}x{c}" for r, c in summary["sizes_written"])
    splits = summary["splits"]
    split_text = (
        "splits.json: " + ", ".join(f"{k} {v}" for k, v in splits.items()) if splits
        else "no CelebA-HQ-to-CelebA-mapping.txt, so no splits.json (the dataset splits by seed)"
    )
    print(f"wrote {summary['pairs']} image / label-map pairs ({sizes}) to {summary['output']}; {split_text}")
    return 0
