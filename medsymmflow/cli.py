"""The ``medsymmflow`` console script: one subcommand per module in :mod:`medsymmflow.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

__all__ = ["COMMANDS", "main"]

# Subcommand name -> module with ``add_arguments(parser)`` and ``run(args) -> int``; modules are imported
# only when their command runs, so ``medsymmflow --help`` stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "selective": ("medsymmflow.commands.selective", "selective-prediction and calibration report from predictions.csv"),
    "sample": ("medsymmflow.commands.sample", "class-conditional sampling: PNGs per class and a montage"),
    "export": ("medsymmflow.commands.export", "TorchScript classifier (image -> class, scores, uncertainty) from a checkpoint"),
    "prepare": ("medsymmflow.commands.prepare", "turn a dataset's official release into image / label-map folders"),
    "cache-latents": ("medsymmflow.commands.cache_latents", "encode a latent segmentation bundle's training split once (the latent cache)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="medsymmflow", description="Symmetrical Flow Matching on MONAI.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module_name).add_arguments(p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except (FileNotFoundError, ValueError) as e:
        print(f"medsymmflow {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
