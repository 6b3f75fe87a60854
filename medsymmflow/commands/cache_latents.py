"""``medsymmflow cache-latents``: encode a latent segmentation bundle's training split once (see
:func:`medsymmflow.data.cache_latents`), so that training starts from the cache.

It reads the bundle's config files as ``monai.bundle run`` does (run it from the repository root) and
resolves the bundle's own ``train#latent_cache`` step, so the cache it writes is the one the training run
finds: the same pairs, preprocessing, VAE, size, beta, code kind and draws.
"""

from __future__ import annotations

import argparse
import ast
from typing import Any

__all__ = ["add_arguments", "run"]


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options on ``parser``."""
    parser.add_argument(
        "--config_file", nargs="+", required=True, metavar="FILE",
        help="the bundle's train.json and the files added after it, e.g. bundles/celebamask_hq/train.json "
        "configs/segmentation_latent.json",
    )
    parser.add_argument("--dataset_dir", default=None, metavar="DIR", help="the dataset folder (the bundle's --dataset_dir)")
    parser.add_argument("--vae", default=None, metavar="SOURCE", help="the VAE: Hugging Face name, diffusers folder or package vae.pt")
    parser.add_argument("--cache_dir", default=None, metavar="DIR", help="the cache folder (the bundle's --training#latent_cache)")
    parser.add_argument(
        "--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
        help="any other bundle setting, as on the bundle's command line without the dashes: --set size 512 --set beta 6",
    )


def run(args: argparse.Namespace) -> int:
    """Build or reuse the cache the bundle's training would use and print where it is; returns the exit code."""
    from monai.bundle import ConfigParser

    from medsymmflow.errors import package_cause, root_cause

    parser = ConfigParser()
    parser.read_config(list(args.config_file))
    overrides = {str(k): _value(v) for k, v in args.set}
    for key, value in (("dataset_dir", args.dataset_dir), ("vae", args.vae), ("training#latent_cache", args.cache_dir)):
        if value is not None:
            overrides[key] = value
    try:
        parser.update(overrides)
        parser.parse()
        if parser.get("train#latent_cache") is None:
            raise ValueError(f"{args.config_file[0]} has no train#latent_cache step: pass a segmentation bundle's train.json")
        if not parser.get("training#latent_cache"):
            raise ValueError("no cache folder: pass --cache_dir DIR or add configs/segmentation_latent.json after the bundle file")
        folder = parser.get_parsed_content("train#latent_cache")
        count = len(parser.get_parsed_content("train#dicts"))
    except (RuntimeError, KeyError) as e:  # MONAI wraps the failing expression's error
        cause = package_cause(e) or root_cause(e)
        raise ValueError(str(cause)) from None
    print(f"latent cache of {count} training pairs: {folder}")
    return 0
