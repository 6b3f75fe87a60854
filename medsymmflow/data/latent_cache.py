"""The latent cache: a segmentation split's VAE latents, encoded once, so training epochs never run the VAE encoder.

What is stored for every pair (after the deterministic evaluation preprocessing, see below):

* the image's scaled posterior mean and standard deviation (:meth:`LatentCodec.image_posterior`), so each
  epoch still draws a fresh posterior sample, as the encoder's ``.sample()`` would;
* ``mask_draws`` encodings of its code mask, each dequantized with its own seeded noise *before* the VAE
  encoder (the authors' order: ``mask + beta * (U(0, 1) - 0.5) / 127.5``, then ``.mode()``); an epoch
  picks one of them per pair. The dequantization noise is random per epoch in pixel space; a few stored
  draws keep it random across epochs at a fixed cost in disk and none in encoder time;
* with an ignore value, the latent-grid valid mask (:meth:`LatentCodec.encode_valid`: a cell counts when
  every pixel under it is labelled; ignored pixels enter the encoder as the fixed code 0);
* with ``swap`` (the dataset's left/right classes, e.g. CelebAMask-HQ's eyes, brows and ears), all of
  the above also for the horizontally flipped pair with those classes exchanged: an epoch picks either
  orientation with probability 1/2. The flipped pair is encoded, not the latent flipped: Stable
  Diffusion's VAE is only roughly flip-equivariant, and the class swap has to happen in pixels.

Random crops cannot be cached, so the cache encodes the evaluation preprocessing (resize the short side,
centre crop): the authors' setting (square images resized, no crops) is what it reproduces.

Layout: ``<cache_dir>/<split>/manifest.json`` plus ``shard_00000.pt`` ... of up to :data:`SHARD_ITEMS`
pairs each (float16 tensors, read memory-mapped, so a large split is not loaded into memory at once).
The manifest holds the key, which decides hit or rebuild: the VAE's identity (its weights' fingerprint,
:attr:`LatentCodec.identity`), the image size, beta, the code kind, the draws and their seed, the flip
swap, the ignore value and a fingerprint of the split's files (paths, sizes, modification times). Any
difference rebuilds the cache, with one log line saying which; so does an unreadable manifest or shard
(a cache is derived data: a damaged one is rebuilt, not an error). A rebuild is written to a temporary
folder, manifest last, and then renamed into place, so a killed build never leaves a cache that reads
as complete.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from medsymmflow.codes import ClassCodebook, dequantize
from medsymmflow.io import atomic_write
from medsymmflow.networks.latent import LatentCodec

__all__ = [
    "LATENT_CACHE_FORMAT",
    "LatentCacheDataset",
    "SHARD_ITEMS",
    "cache_latents",
    "file_fingerprint",
    "latent_cache_key",
    "segmentation_training_dataset",
]

LATENT_CACHE_FORMAT = "medsymmflow-latent-cache"
_VERSION = 1
MANIFEST = "manifest.json"
SHARD_ITEMS = 1024
logger = logging.getLogger(__name__)

# key field -> how a mismatch is named in the rebuild message
_KEY_NAMES = {
    "format": "the cache format",
    "version": "the cache format version",
    "vae": "the VAE",
    "size": "the image size",
    "beta": "beta",
    "code": "the code kind",
    "mask_draws": "mask_draws",
    "seed": "the draws' seed",
    "swap": "the flip swap",
    "ignore_index": "the ignore value",
    "num_items": "the number of pairs",
    "files": "the dataset's pairs (file paths, sizes, modification times or in-memory arrays)",
}


def file_fingerprint(data: Sequence[Mapping[str, Any]], keys: Sequence[str] = ("image", "label")) -> str:
    """A SHA-1 of the path, size and modification time of every file under ``keys`` of every item of ``data``.

    An item that holds the array itself (in-memory data, e.g. a benchmark's synthetic pairs) adds its bytes instead.
    """
    digest = hashlib.sha1()
    for item in data:
        for key in keys:
            value = item.get(key)
            if isinstance(value, (str, os.PathLike)):
                path = Path(value).resolve()
                st = path.stat()
                digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            elif value is not None:
                array = torch.as_tensor(value).detach().cpu().contiguous()
                digest.update(f"{key}\0{tuple(array.shape)}\0{array.dtype}\n".encode())
                digest.update(array.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _size(size: int | Sequence[int]) -> list[int]:
    return [int(size)] * 2 if isinstance(size, (int, float)) else [int(s) for s in size]


def latent_cache_key(
    data: Sequence[Mapping[str, Any]],
    codec: LatentCodec,
    codebook: ClassCodebook,
    beta: float,
    size: int | Sequence[int],
    mask_draws: int = 4,
    seed: int = 0,
    swap: Mapping[int, int] | Sequence[str] | None = None,
    ignore_index: int | None = None,
) -> dict[str, Any]:
    """The key a cache of ``data`` must carry to be reused: every setting its latents depend on (plain JSON values)."""
    codes = hashlib.sha1(codebook.codes.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
    return {
        "format": LATENT_CACHE_FORMAT,
        "version": _VERSION,
        "vae": codec.identity,
        "size": _size(size),
        "beta": float(beta),
        "code": f"{codebook.kind}:{codebook.num_classes}:{codes}",
        "mask_draws": int(mask_draws),
        "seed": int(seed),
        "swap": sorted([int(a), int(b)] for a, b in _swap(swap).items()),
        "ignore_index": None if ignore_index is None else int(ignore_index),
        "num_items": len(data),
        "files": file_fingerprint(data),
    }


def _swap(swap: Mapping[int, int] | Sequence[str] | None) -> dict[int, int]:
    if swap is None:
        return {}
    from medsymmflow.transforms.array import SwapLabels  # noqa: PLC0415 - transforms import this package

    return SwapLabels(swap).swap


def _mismatch(stored: Mapping[str, Any], key: Mapping[str, Any]) -> str | None:
    """Why a cache with key ``stored`` cannot serve ``key`` (the first differing field), or None when it can."""
    for field, name in _KEY_NAMES.items():
        old, new = stored.get(field), key.get(field)
        if old != new:
            if field == "files":
                return f"{name} changed"
            return f"{name} changed ({old!r} -> {new!r})"
    return None


def _read_shard(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _check_cache(folder: Path, key: Mapping[str, Any]) -> str | None:
    """None when ``folder`` holds a complete cache for ``key``; else the reason it must be (re)built."""
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        if folder.is_dir() and any(folder.iterdir()):
            raise ValueError(
                f"{folder} exists and is no latent cache (it has no {MANIFEST}): choose another latent cache folder, "
                "this one is not replaced"
            )
        return "no cache there yet"
    try:
        manifest = json.loads(manifest_file.read_text())
        stored = manifest["key"]
        shards = [(str(name), int(n)) for name, n in manifest["shards"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its manifest {manifest_file} is unreadable ({type(e).__name__}: {e})"
    reason = _mismatch(stored, key)
    if reason:
        return reason
    if sum(n for _, n in shards) != key["num_items"]:
        return f"its manifest lists {sum(n for _, n in shards)} pairs, not {key['num_items']}"
    for name, n in shards:
        try:
            shard = _read_shard(folder / name)
            if int(shard["image_latent"].shape[0]) != n:
                raise ValueError(f"{shard['image_latent'].shape[0]} pairs instead of {n}")
        except Exception as e:  # torch raises many types for a damaged zip file
            return f"its shard {folder / name} is unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None


def _orientations(image: torch.Tensor, label: torch.Tensor, swap: Mapping[int, int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The pair as given and, with a swap table, flipped along the columns with the swapped classes exchanged."""
    pairs = [(image, label)]
    if swap:
        flipped = label.flip(-1)
        swapped = flipped.clone()
        for a, b in swap.items():
            swapped[flipped == a] = b
        pairs.append((image.flip(-1), swapped))
    return pairs


def _build(
    folder: Path,
    data: Sequence[Mapping[str, Any]],
    transform: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None,
    codec: LatentCodec,
    codebook: ClassCodebook,
    key: Mapping[str, Any],
    batch_size: int,
    dtype: torch.dtype,
    progress: bool,
) -> None:
    """Encode ``data`` into a fresh cache at ``folder`` (built next to it, then renamed into place)."""
    from tqdm.auto import tqdm

    device = next(codec.vae.parameters()).device
    swap = {int(a): int(b) for a, b in key["swap"]}
    ignore_index, beta, draws = key["ignore_index"], float(key["beta"]), int(key["mask_draws"])
    size = tuple(key["size"])
    generator = torch.Generator().manual_seed(int(key["seed"]))  # on the CPU: the same draws on any device
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}.building-", dir=folder.parent))
    try:
        shards: list[tuple[str, int]] = []
        parts: dict[str, list[torch.Tensor]] = {}
        pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        orientations = 2 if swap else 1

        def encode_pending() -> None:
            images = torch.stack([p[0] for p in pending]).to(device)
            labels = torch.stack([p[1] for p in pending])
            with torch.no_grad():
                mean, std = codec.image_posterior(images)
                code = torch.stack([codebook.label_map_to_code_mask(lab[0], ignore_index=ignore_index) for lab in labels])
                coded = torch.stack(
                    [codec.encode_mask(dequantize(code, beta, generator).to(device)) for _ in range(draws)], dim=1
                )
                n = len(pending) // orientations
                out = {
                    "image_latent": mean.reshape(n, orientations, *mean.shape[1:]),
                    "image_latent_std": std.reshape(n, orientations, *std.shape[1:]),
                    "code_latent": coded.reshape(n, orientations, *coded.shape[1:]),
                }
                if ignore_index is not None:
                    valid = codec.encode_valid((labels != ignore_index).float().to(device))
                    out["valid_latent"] = valid.reshape(n, orientations, *valid.shape[1:]).to(torch.uint8)
            for name, tensor in out.items():
                parts.setdefault(name, []).append(tensor.to("cpu", dtype=torch.uint8 if name == "valid_latent" else dtype))
            pending.clear()

        def write_shard() -> None:
            if not parts:
                return
            shard = {name: torch.cat(tensors) for name, tensors in parts.items()}
            name = f"shard_{len(shards):05d}.pt"
            buffer = io.BytesIO()
            torch.save(shard, buffer)
            atomic_write(building / name, buffer.getvalue())
            shards.append((name, int(shard["image_latent"].shape[0])))
            parts.clear()

        in_shard = 0
        with tqdm(total=len(data), desc=f"encoding {folder.name} latents", unit="pair", disable=not progress) as bar:
            for i, item in enumerate(data):
                d = transform(item) if transform is not None else item
                image = torch.as_tensor(d["image"]).float()
                label = torch.as_tensor(d["label"]).round().long()
                if tuple(image.shape[1:]) != size or tuple(label.shape) != (1, *size):
                    raise ValueError(
                        f"the latent cache encodes {size[0]} x {size[1]} pairs, but pair {i} ({item.get('image')}) "
                        f"comes out of the preprocessing with image {tuple(image.shape)} and label map {tuple(label.shape)}"
                    )
                pending.extend(_orientations(image, label, swap))
                in_shard += 1
                if len(pending) >= batch_size * orientations:
                    encode_pending()
                if in_shard == SHARD_ITEMS:
                    if pending:
                        encode_pending()
                    write_shard()
                    in_shard = 0
                bar.update(1)
            if pending:
                encode_pending()
            write_shard()
        atomic_write(building / MANIFEST, json.dumps({"key": dict(key), "shards": shards}, indent=1) + "\n")
        old = None
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            os.replace(folder, old / folder.name)
        os.replace(building, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def cache_latents(
    data: Sequence[Mapping[str, Any]],
    transform: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None,
    codec: LatentCodec | None,
    codebook: ClassCodebook,
    beta: float,
    cache_dir: str | os.PathLike,
    size: int | Sequence[int],
    split: str = "train",
    mask_draws: int = 4,
    seed: int = 0,
    swap: Mapping[int, int] | Sequence[str] | None = None,
    ignore_index: int | None = None,
    batch_size: int = 16,
    dtype: torch.dtype | str = torch.float16,
    progress: bool = True,
) -> Path:
    """The folder ``<cache_dir>/<split>`` holding the latents of ``data`` (image / label-map pairs through ``transform``).

    Reused when its key (:func:`latent_cache_key`) matches; built, or rebuilt with one log line naming the
    difference or the damage, otherwise. ``transform`` must be deterministic and give ``image`` (C, H, W) in
    [-1, 1] and ``label`` (1, H, W) of ``size`` (the evaluation preprocessing). ``swap``: the dataset's
    left/right classes (class names or index pairs) to also cache the flipped pairs; None caches one
    orientation. Read it with :class:`LatentCacheDataset`.
    """
    from medsymmflow.checks import positive_int

    if codec is None:
        raise ValueError("the latent cache needs a VAE: set --vae (a Hugging Face name, a diffusers folder or a vae.pt)")
    if not isinstance(codec, LatentCodec):
        raise TypeError(f"codec must be a LatentCodec (medsymmflow.networks.load_vae), got {type(codec).__name__}")
    codec.check_codebook(codebook)
    codebook.check_beta(beta)
    positive_int(mask_draws, "mask_draws")
    positive_int(batch_size, "batch_size")
    if not data:
        raise ValueError(f"the {split} split has no pairs to cache")
    codec.latent_shape(_size(size))
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    data = list(data)
    key = latent_cache_key(data, codec, codebook, beta, size, mask_draws, seed, swap, ignore_index)
    folder = Path(cache_dir) / str(split)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
    # under torchrun the first process builds and the others wait, then find the cache it wrote
    if not distributed or torch.distributed.get_rank() == 0:
        reason = _check_cache(folder, key)
        if reason is None:
            logger.info(f"latent cache: using {folder} ({len(data)} pairs)")
        else:
            logger.warning(f"latent cache: building {folder} ({len(data)} pairs): {reason}")
            _build(folder, data, transform, codec, codebook, key, int(batch_size), dtype, progress)
    if distributed:
        torch.distributed.barrier()
        if torch.distributed.get_rank() != 0 and (reason := _check_cache(folder, key)) is not None:
            raise ValueError(f"the latent cache {folder} that the first process built does not match this process's: {reason}")
    return folder


class LatentCacheDataset(Dataset):
    """The pairs of a latent cache (:func:`cache_latents`), one random orientation and mask draw per item.

    Items: ``image_latent`` / ``image_latent_std`` (C, h, w), ``code_latent`` (C, h, w) and, with an ignore
    value, ``valid_latent`` (1, h, w), the batch keys :class:`~medsymmflow.engines.SymmFlowTrainer` trains on
    without the encoder. ``transform`` (default :class:`~medsymmflow.transforms.RandLatentDrawd`) picks the
    orientation and the draw; the bundles' ``EpochSeedHandler`` re-seeds it every epoch. Shards are opened
    memory-mapped on first use in each process (DataLoader workers open their own).
    """

    def __init__(self, folder: str | os.PathLike, transform: Callable[[dict], dict] | None = None) -> None:
        self.folder = Path(folder)
        try:
            manifest = json.loads((self.folder / MANIFEST).read_text())
            self.shards = [(str(name), int(n)) for name, n in manifest["shards"]]
            self.key = dict(manifest["key"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{self.folder} is not a complete latent cache ({type(e).__name__}: {e}); build it with cache_latents") from None
        if transform is None:
            from medsymmflow.transforms.dictionary import RandLatentDrawd  # noqa: PLC0415 - transforms import this package

            transform = RandLatentDrawd()
        self.transform = transform
        self.offsets = []
        total = 0
        for _, n in self.shards:
            self.offsets.append(total)
            total += n
        self.length = total
        self._open: dict[int, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict[str, Any]:
        # workers reopen the memory-mapped shards instead of receiving copies of them
        return {**self.__dict__, "_open": {}}

    def _locate(self, index: int) -> tuple[int, int]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a latent cache of {self.length} pairs")
        index %= self.length
        shard = bisect.bisect_right(self.offsets, index) - 1
        return shard, index - self.offsets[shard]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        shard, row = self._locate(int(index))
        if shard not in self._open:
            self._open[shard] = _read_shard(self.folder / self.shards[shard][0])
        item = {name: tensor[row] for name, tensor in self._open[shard].items()}
        return self.transform(item) if self.transform is not None else item


def segmentation_training_dataset(
    data: Sequence[Mapping[str, Any]], transform: Callable[[Mapping[str, Any]], Mapping[str, Any]], latent_cache: str | os.PathLike | None = None
) -> Dataset:
    """The segmentation training set: MONAI's ``Dataset(data, transform)`` of pixels, or the :class:`LatentCacheDataset` at ``latent_cache``."""
    if latent_cache is not None:
        return LatentCacheDataset(latent_cache)
    from monai.data import Dataset as MonaiDataset

    return MonaiDataset(data, transform)
