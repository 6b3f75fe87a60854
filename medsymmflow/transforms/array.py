"""Array transforms (MONAI style, numpy or torch): class labels <-> SymmFlow code masks, image files, label maps.

The code-mask transforms take a :class:`~medsymmflow.codes.ClassCodebook`, or a codebook kind name
(``"gray"``, ``"rgb"``, ``"palette"``, ``"onehot"``) together with ``num_classes``. Image files
(``LoadImageFile``, ``StrictScaleIntensityRange``) and segmentation label maps (``LoadLabelMap``,
``RemapLabels``, ``FlipSwap``, ``ResizeShortSide``) have their own transforms below. Outputs follow the input's
container: numpy in -> numpy out, torch in -> torch out on the same device, and a
:class:`monai.data.MetaTensor` keeps its metadata where the output lives on the same grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import LoadImage, RandomizableTransform, ScaleIntensityRange, Transform
from monai.utils import TransformBackends, convert_data_type, convert_to_dst_type

from medsymmflow.checks import nonnegative_float
from medsymmflow.codes import DECISIONS, ClassCodebook, dequantization_noise
from medsymmflow.data.cocostuff import COCOSTUFF_IGNORE_INDEX, COCOSTUFF_USED_VALUES
from medsymmflow.data.folders import remap_label_values
from medsymmflow.io import LabelMapReader, RasterReader

__all__ = [
    "ClassToCodeMask",
    "CocoStuffToClasses",
    "FlipSwap",
    "LoadLabelMap",
    "RemapLabels",
    "ResizeShortSide",
    "SwapLabels",
    "ValidPixelMask",
    "left_right_swap",
    "EnsureSpatial2D",
    "LoadImageFile",
    "MatchChannels",
    "StrictScaleIntensityRange",
    "CodeMaskToClass",
    "LabelMapToCodeMask",
    "UniformDequantize",
    "resolve_codebook",
]


def resolve_codebook(codebook: ClassCodebook | str, num_classes: int | None = None) -> ClassCodebook:
    """Return ``codebook`` itself, or build ``ClassCodebook.from_kind(codebook, num_classes)`` from a kind name."""
    if isinstance(codebook, ClassCodebook):
        if num_classes is not None and int(num_classes) != codebook.num_classes:
            raise ValueError(
                f"num_classes={num_classes} disagrees with the given codebook, which has {codebook.num_classes} classes"
            )
        return codebook
    if isinstance(codebook, str):
        if num_classes is None:
            raise ValueError(f"building a {codebook!r} codebook needs num_classes")
        return ClassCodebook.from_kind(codebook, num_classes)
    raise TypeError(
        f"codebook must be a ClassCodebook or a kind name ('gray', 'rgb', 'palette'), got {type(codebook).__name__}"
    )


def _as_plain_tensor(data: NdarrayOrTensor | int | float, what: str) -> torch.Tensor:
    """Torch view of numpy / torch / python-number input without MetaTensor metadata."""
    if isinstance(data, MetaTensor):
        return data.as_tensor()
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, (np.ndarray, np.generic, int, float)) and not isinstance(data, (bool, np.bool_)):
        return torch.as_tensor(np.asarray(data))
    raise TypeError(f"{what} must be a numpy array, a torch tensor or a number, got {type(data).__name__}")


def _restore_type(out: torch.Tensor, like: object, dtype: torch.dtype, keep_meta: bool) -> NdarrayOrTensor:
    """Give ``out`` the container type of ``like`` (numpy or torch); copy MetaTensor metadata only if ``keep_meta``."""
    if isinstance(like, (np.ndarray, np.generic)):
        return convert_data_type(out.detach(), output_type=np.ndarray, dtype=dtype)[0]
    if isinstance(like, torch.Tensor):
        dst = like if keep_meta or not isinstance(like, MetaTensor) else like.as_tensor()
        return convert_to_dst_type(out, dst, dtype=dtype)[0]
    return out.to(dtype)


def _check_spatial_size(spatial_size: Sequence[int]) -> tuple[int, ...]:
    """Validate a spatial size: a non-empty sequence of positive integers."""
    if isinstance(spatial_size, str) or not isinstance(spatial_size, (Sequence, np.ndarray)):
        raise TypeError(f"spatial_size must be a sequence of ints such as (28, 28), got {spatial_size!r}")
    values = list(spatial_size)
    if not values or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in values):
        raise ValueError(f"spatial_size must hold one or more positive integers, got {tuple(values)}")
    return tuple(int(s) for s in values)


class ClassToCodeMask(Transform):
    """One class index (int, 0-d or 1-element array) -> constant float32 code mask ``(C, *spatial_size)``.

    Args:
        codebook: a ``ClassCodebook`` or a kind name (``"gray"``, ``"rgb"``, ``"palette"``).
        spatial_size: spatial shape of the mask, e.g. ``(28, 28)``; may instead be given per call.
        num_classes: number of classes when ``codebook`` is a kind name.

    A python int or a torch label gives a plain torch mask (on the label's device); a numpy label
    (such as MedMNIST's shape-(1,) target) gives a numpy mask.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        codebook: ClassCodebook | str,
        spatial_size: Sequence[int] | None = None,
        num_classes: int | None = None,
    ) -> None:
        self.codebook = resolve_codebook(codebook, num_classes)
        self.spatial_size = None if spatial_size is None else _check_spatial_size(spatial_size)

    def __call__(self, label: NdarrayOrTensor | int, spatial_size: Sequence[int] | None = None) -> NdarrayOrTensor:
        """Encode ``label``; ``spatial_size`` overrides the one given at construction."""
        size = self.spatial_size if spatial_size is None else _check_spatial_size(spatial_size)
        if size is None:
            raise ValueError("ClassToCodeMask needs a spatial_size, at construction or in the call")
        lab = _as_plain_tensor(label, "label")
        if lab.numel() != 1:
            raise ValueError(
                f"ClassToCodeMask encodes one class per sample, got a label of shape {tuple(lab.shape)}; "
                "use LabelMapToCodeMask for label maps"
            )
        mask = self.codebook.code_mask(lab.reshape(1), size)[0]
        # A label's metadata does not describe the mask's grid, so none is carried over.
        return _restore_type(mask, label, torch.float32, keep_meta=False)


class LabelMapToCodeMask(Transform):
    """Channel-first label map ``(1, H, W[, D])`` -> float32 code mask ``(C, H, W[, D])``.

    Accepts integer maps and float maps holding whole values (``LoadImaged`` returns float
    MetaTensors); a MetaTensor keeps its affine and metadata.

    Args:
        codebook: a ``ClassCodebook`` or a kind name.
        num_classes: number of classes when ``codebook`` is a kind name.
        ignore_index: label value left out of the codebook (e.g. 255 = unlabeled); those pixels get ``ignore_value``.
        ignore_value: code value written at ``ignore_index`` pixels.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        codebook: ClassCodebook | str,
        num_classes: int | None = None,
        ignore_index: int | None = None,
        ignore_value: float = 0.0,
    ) -> None:
        self.codebook = resolve_codebook(codebook, num_classes)
        if ignore_index is not None and (isinstance(ignore_index, bool) or int(ignore_index) != ignore_index):
            raise ValueError(f"ignore_index must be an integer or None, got {ignore_index!r}")
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.ignore_value = float(ignore_value)

    def __call__(self, label_map: NdarrayOrTensor) -> NdarrayOrTensor:
        """Encode every pixel of ``label_map`` with its class code."""
        lm = _as_plain_tensor(label_map, "label_map")
        if lm.ndim not in (3, 4):
            raise ValueError(
                f"label map must be channel-first (1, H, W) or (1, H, W, D), got shape {tuple(lm.shape)}; "
                "add the channel axis first (e.g. LoadImaged(..., ensure_channel_first=True))"
            )
        if lm.shape[0] != 1:
            raise ValueError(
                f"label map must have a single channel, got {lm.shape[0]} channels (shape {tuple(lm.shape)}); "
                "an RGB/RGBA label image has to be converted to class indices first"
            )
        mask = self.codebook.label_map_to_code_mask(
            lm[0], ignore_index=self.ignore_index, ignore_value=self.ignore_value
        )
        return _restore_type(mask, label_map, torch.float32, keep_meta=True)


class UniformDequantize(RandomizableTransform):
    """Add ``beta * U(-1/2, 1/2) / 127.5`` to every element of a floating code mask (``beta`` in 8-bit grey levels).

    Args:
        beta: noise width in grey levels; the noise stays within ``+-beta / 255``.
        codebook: optional ``ClassCodebook`` or kind name; if given, a ``beta`` too large for its code
            spacing raises at construction.
        num_classes: number of classes when ``codebook`` is a kind name.
        prob: probability of adding the noise.

    Reproducible through ``set_random_state(seed)``.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        beta: float,
        codebook: ClassCodebook | str | None = None,
        num_classes: int | None = None,
        prob: float = 1.0,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        self.beta = nonnegative_float(beta, "beta")
        self.codebook = None if codebook is None else resolve_codebook(codebook, num_classes)
        if self.codebook is not None:
            self.codebook.check_beta(self.beta)
        self.noise: np.ndarray | None = None

    def randomize(self, img: NdarrayOrTensor) -> None:
        """Decide whether to apply (``prob``) and draw noise of ``img``'s shape from ``self.R``."""
        super().randomize(None)
        if not self._do_transform:
            return
        self.noise = dequantization_noise(self.R.random_sample(tuple(img.shape)), self.beta)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Return ``img`` plus the noise (``img`` unchanged when the draw against ``prob`` fails)."""
        if isinstance(img, torch.Tensor):
            floating = img.is_floating_point()
        elif isinstance(img, np.ndarray):
            floating = np.issubdtype(img.dtype, np.floating)
        else:
            raise TypeError(f"UniformDequantize expects a numpy array or torch tensor, got {type(img).__name__}")
        if not floating:
            # Integer storage would round the sub-grey-level noise away.
            raise TypeError(f"UniformDequantize expects a floating-point code mask, got dtype {img.dtype}")
        if randomize:
            self.randomize(img)
        if not self._do_transform:
            return img
        if self.noise is None:
            raise RuntimeError("call randomize() before UniformDequantize(..., randomize=False)")
        if tuple(self.noise.shape) != tuple(img.shape):
            raise ValueError(f"the drawn noise has shape {tuple(self.noise.shape)} but the input is {tuple(img.shape)}")
        noise, *_ = convert_to_dst_type(self.noise, img)
        return img + noise


class CodeMaskToClass(Transform):
    """Predicted code mask ``(C, *spatial)`` -> nearest class (``mean``/``mode``) or label map (``pixel``).

    Returns, for ``decision="mean"`` or ``"mode"``, an int64 class of shape ``(1,)`` (plus, with
    ``return_distance``, the ``(K,)`` distances to every code); for ``decision="pixel"`` an int64 label
    map ``(1, *spatial)`` (plus the ``(1, *spatial)`` distance to the chosen code). Classes and
    distances of ``mean``/``mode`` carry no MetaTensor metadata; ``pixel`` outputs keep it.

    Args:
        codebook: a ``ClassCodebook`` or a kind name.
        num_classes: number of classes when ``codebook`` is a kind name.
        decision: ``"mean"`` (nearest code to the spatial mean), ``"mode"`` (most common per-pixel
            class) or ``"pixel"`` (per-pixel class).
        return_distance: also return the distances described above, as a ``(labels, distances)`` tuple.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        codebook: ClassCodebook | str,
        num_classes: int | None = None,
        decision: str = "mean",
        return_distance: bool = False,
    ) -> None:
        self.codebook = resolve_codebook(codebook, num_classes)
        if decision not in DECISIONS:
            raise ValueError(f"unknown decision {decision!r}; choose one of {', '.join(DECISIONS)}")
        self.decision = decision
        self.return_distance = bool(return_distance)

    def __call__(self, code_mask: NdarrayOrTensor) -> NdarrayOrTensor | tuple[NdarrayOrTensor, NdarrayOrTensor]:
        """Decode one code mask."""
        y = _as_plain_tensor(code_mask, "code_mask")
        if y.ndim < 2:
            raise ValueError(f"code mask must be channel-first (C, *spatial), got shape {tuple(y.shape)}")
        if y.dtype in (torch.float16, torch.bfloat16):
            # torch.cdist has no half-precision CPU kernel; decode in float32.
            y = y.float()
        decoded = self.codebook.decode(y[None], self.decision)
        if self.decision == "pixel":
            labels = _restore_type(decoded.labels, code_mask, torch.int64, keep_meta=True)  # (1, *spatial)
            dist = decoded.uncertainty
            keep_meta = True
        else:
            labels = _restore_type(decoded.labels, code_mask, torch.int64, keep_meta=False)  # (1,)
            dist = decoded.distances[0]  # (K,)
            keep_meta = False
        if not self.return_distance:
            return labels
        return labels, _restore_type(dist, code_mask, dist.dtype, keep_meta=keep_meta)


class MatchChannels(Transform):
    """Channel-first image -> ``channels`` channels: gray is repeated to RGB, RGB(A) becomes luminance.

    Lets a model trained on gray (1) or RGB (3) MedMNIST images take any PNG / JPEG / NIfTI a user has.
    An alpha channel is dropped first.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    # ITU-R BT.601 luma weights, the same as PIL's "L" conversion.
    LUMA = (0.299, 0.587, 0.114)

    def __init__(self, channels: int) -> None:
        if int(channels) not in (1, 3):
            raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
        self.channels = int(channels)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Return ``img`` (C, *spatial) with ``self.channels`` channels."""
        x = _as_plain_tensor(img, "image")
        if x.ndim < 3:
            raise ValueError(f"image must be channel-first (C, H, W[, D]), got shape {tuple(x.shape)}; use ensure_channel_first")
        c = x.shape[0]
        if c == 4:
            x, c = x[:3], 3
        if c not in (1, 3):
            raise ValueError(f"cannot convert a {c}-channel image to {self.channels} channels (expected 1, 3 or 4)")
        if c != self.channels:
            if self.channels == 3:
                x = x.expand((3,) + tuple(x.shape[1:]))
            else:
                w = torch.tensor(self.LUMA, dtype=torch.float32, device=x.device).reshape((3,) + (1,) * (x.ndim - 1))
                x = (x.float() * w).sum(0, keepdim=True)
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return _restore_type(x.contiguous().to(dtype), img, dtype, keep_meta=True)


class EnsureSpatial2D(Transform):
    """Channel-first image -> (C, H, W): drops singleton spatial axes (a 2-D NIfTI is often H x W x 1).

    A real volume (more than two spatial axes longer than 1) raises a ValueError: the MedMNIST models
    classify 2-D images, so a slice has to be chosen first.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Return ``img`` with exactly two spatial axes."""
        from monai.transforms import SqueezeDim

        shape = tuple(img.shape)
        if len(shape) < 3:
            raise ValueError(f"image must be channel-first (C, H, W[, D]), got shape {shape}")
        spatial = [s for s in shape[1:] if s != 1]
        if len(spatial) != 2:
            raise ValueError(
                f"expected a 2-D image, got spatial shape {shape[1:]}"
                + ("; extract a 2-D slice first" if len(spatial) > 2 else "")
            )
        out = img
        # Squeeze from the last axis so earlier indices stay valid; SqueezeDim keeps MetaTensor affine and meta.
        for axis in range(len(shape) - 1, 0, -1):
            if out.ndim > 3 and out.shape[axis] == 1:
                out = SqueezeDim(dim=axis, update_meta=True)(out)
        if isinstance(img, np.ndarray):
            out = convert_data_type(out, output_type=np.ndarray)[0]
        return out


class LoadImageFile(LoadImage):
    """MONAI ``LoadImage`` that returns every supported file as ``(C, rows, columns[, ...])``, like the MedMNIST arrays.

    Raster files (PNG, JPEG, BMP, GIF, TIFF) go through :class:`~medsymmflow.io.RasterReader` (rows first,
    EXIF orientation applied, 16-bit scaled to the 8-bit grey scale, alpha dropped, palettes as RGB); NIfTI
    files through MONAI's ``NibabelReader``, whose voxel array is used as stored (first voxel axis = rows,
    no reorientation by the affine). Other readers are picked by MONAI from the file suffix as usual.
    """

    def __init__(
        self,
        image_only: bool = True,
        dtype: np.dtype | type | str | None = np.float32,
        ensure_channel_first: bool = True,
    ) -> None:
        super().__init__(reader=None, image_only=image_only, dtype=dtype, ensure_channel_first=ensure_channel_first)
        # registered last, so it is asked first for the suffixes it accepts (ahead of MONAI's PILReader)
        self.register(RasterReader())


class StrictScaleIntensityRange(ScaleIntensityRange):
    """``ScaleIntensityRange`` from ``[a_min, a_max]`` to ``[b_min, b_max]`` that refuses values outside ``[a_min, a_max]``.

    Clipping would silently flatten every value above ``a_max`` (a 16-bit image read on an 8-bit range
    turns white), so an image reaching past the range by more than ``tolerance * (a_max - a_min)`` raises
    a ValueError naming its actual range; values within the tolerance are clipped.
    """

    def __init__(
        self, a_min: float, a_max: float, b_min: float = -1.0, b_max: float = 1.0, tolerance: float = 1e-4
    ) -> None:
        if not (math.isfinite(a_min) and math.isfinite(a_max) and a_max > a_min):
            raise ValueError(f"the intensity range must be two finite numbers [a_min, a_max] with a_min < a_max, got [{a_min}, {a_max}]")
        super().__init__(a_min=a_min, a_max=a_max, b_min=b_min, b_max=b_max, clip=True, dtype=np.float32)
        self.tolerance = float(tolerance)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Check ``img``'s range, then scale (and clip) it."""
        x = _as_plain_tensor(img, "image")
        if x.numel():
            lo, hi = float(x.min()), float(x.max())
            slack = self.tolerance * (self.a_max - self.a_min)
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo < self.a_min - slack or hi > self.a_max + slack:
                raise ValueError(
                    f"its intensities span [{lo:g}, {hi:g}], outside the intensity range [{self.a_min:g}, {self.a_max:g}] "
                    "the model's inputs are scaled from; set intensity_range to the range these images use"
                )
        return super().__call__(img)


# ---------------------------------------------------------------------------------------------------------
# Segmentation: label maps loaded, checked, remapped, flipped with their left/right classes, resized.


def _source_name(data: object) -> str:
    """"label map <file>" for a MetaTensor loaded from a file, else "label map"."""
    name = getattr(data, "meta", {}).get("filename_or_obj") if isinstance(data, MetaTensor) else None
    return f"label map {name}" if name else "label map"


class LoadLabelMap(LoadImage):
    """MONAI ``LoadImage`` for label maps: class indices as stored, channel-first ``(1, rows, columns)``.

    Reads through :class:`~medsymmflow.io.LabelMapReader` (palette PNGs give their indices, not colours; rows
    first like :class:`LoadImageFile`, so images and label maps loaded by the two share one grid). ``dtype``
    float32 by default, as MONAI's spatial transforms expect; values stay whole numbers.
    """

    def __init__(self, image_only: bool = True, dtype: np.dtype | type | str | None = np.float32) -> None:
        super().__init__(reader=None, image_only=image_only, dtype=dtype, ensure_channel_first=True)
        self.register(LabelMapReader())


class RemapLabels(Transform):
    """Label map values -> contiguous classes: ``source_values[c]`` becomes class ``c``; ``ignore_index`` is kept.

    A value that is neither a source value nor ``ignore_index`` raises a ValueError naming the file (from
    MetaTensor metadata) and the values: it is never merged into a class. ``RemapLabels(range(K))`` is the
    identity that checks a map holds classes ``0..K-1`` only. The output keeps the input's container and dtype.

    Args:
        source_values: the label values in class order.
        ignore_index: a value passed through unchanged (e.g. 255 = unlabeled).
        what: the dataset named in the error message.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, source_values: Sequence[int], ignore_index: int | None = None, what: str = "dataset") -> None:
        self.source_values = tuple(int(v) for v in source_values)
        if not self.source_values:
            raise ValueError("source_values must name at least one label value")
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        if self.ignore_index is not None and (
            0 <= self.ignore_index < len(self.source_values) or self.ignore_index in self.source_values
        ):
            raise ValueError(f"ignore_index {self.ignore_index} is also a label value or a class index of the output")
        self.what = what

    def __call__(self, label_map: NdarrayOrTensor) -> NdarrayOrTensor:
        """Remap every pixel of ``label_map`` (any shape)."""
        lm = _as_plain_tensor(label_map, "label_map")
        out = remap_label_values(lm.detach().cpu().numpy(), self.source_values, self.ignore_index, _source_name(label_map), self.what)
        dtype = lm.dtype if lm.is_floating_point() or lm.dtype == torch.int64 else torch.int64
        return _restore_type(torch.from_numpy(out).to(lm.device), label_map, dtype, keep_meta=True)


class CocoStuffToClasses(RemapLabels):
    """COCO-Stuff label PNG values (id - 1, 255 = unlabeled) -> classes 0..170, 255 kept (see :mod:`medsymmflow.data.cocostuff`).

    The 11 unused COCO thing ids and values above 181 other than 255 raise, naming the file and the value.
    """

    def __init__(self) -> None:
        super().__init__(COCOSTUFF_USED_VALUES, ignore_index=COCOSTUFF_IGNORE_INDEX, what="COCO-Stuff")


def left_right_swap(class_names: Sequence[str]) -> dict[int, int]:
    """Class index pairs to swap under a horizontal flip: names ``l_X`` / ``r_X`` or ``left_X`` / ``right_X``, both ways.

    For CelebAMask-HQ: l_eye/r_eye, l_brow/r_brow, l_ear/r_ear (``l_lip`` is the lower lip, it has no ``r_lip``;
    ``ear_r`` and ``neck_l`` are an earring and a necklace).
    """
    index = {str(n): i for i, n in enumerate(class_names)}
    swap: dict[int, int] = {}
    for name, i in index.items():
        for left, right in (("l_", "r_"), ("left_", "right_")):
            if name.startswith(left) and right + name[len(left):] in index:
                j = index[right + name[len(left):]]
                swap[i], swap[j] = j, i
    return swap


def _swap_table(swap: Mapping[int, int] | Sequence[str] | None) -> dict[int, int]:
    """A symmetric class swap from a mapping (completed both ways) or from class names (:func:`left_right_swap`)."""
    if swap is None:
        return {}
    if isinstance(swap, Mapping):
        table: dict[int, int] = {}
        for a, b in swap.items():
            a, b = int(a), int(b)
            for x, y in ((a, b), (b, a)):
                if table.get(x, y) != y:
                    raise ValueError(f"swap maps class {x} to both {table[x]} and {y}; give each class one partner")
                table[x] = y
        return table
    if isinstance(swap, Sequence) and not isinstance(swap, str) and all(isinstance(n, str) for n in swap):
        return left_right_swap(swap)
    raise TypeError(f"swap must be a mapping of class pairs or a sequence of class names, got {swap!r}")


class SwapLabels(Transform):
    """Exchange class indices in a label map by a symmetric ``swap`` (e.g. left and right eye); its own inverse.

    Args:
        swap: a mapping ``{a: b}`` (completed to ``{a: b, b: a}``) or the dataset's class names, whose
            ``l_`` / ``r_`` pairs are swapped (:func:`left_right_swap`).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, swap: Mapping[int, int] | Sequence[str]) -> None:
        self.swap = _swap_table(swap)

    def __call__(self, label_map: NdarrayOrTensor) -> NdarrayOrTensor:
        """``label_map`` with the swapped classes exchanged; other values (ignore index too) unchanged."""
        if not self.swap:
            return label_map
        lm = _as_plain_tensor(label_map, "label_map")
        out = lm.clone()
        for a, b in self.swap.items():
            out[lm == a] = b
        return _restore_type(out, label_map, lm.dtype, keep_meta=True)


class FlipSwap(Transform):
    """Flip a channel-first array along ``spatial_axis`` (MONAI ``Flip``) and, for a label map, swap ``swap``'s classes.

    ``spatial_axis=1`` is the horizontal (column) axis of the ``(C, rows, columns)`` arrays
    :class:`LoadImageFile` and :class:`LoadLabelMap` return (MONAI's PIL reader gives ``(C, columns, rows)``,
    where it is axis 0). Without ``swap`` it is a plain flip (images). Applied twice it gives the input back.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, spatial_axis: int = 1, swap: Mapping[int, int] | Sequence[str] | None = None) -> None:
        from monai.transforms import Flip

        self.flip = Flip(spatial_axis=spatial_axis)
        self.swapper = SwapLabels(swap) if swap is not None else None

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """The flipped (and class-swapped) array."""
        out = self.flip(img)
        if isinstance(img, np.ndarray):
            out = convert_data_type(out, output_type=np.ndarray)[0]
        return self.swapper(out) if self.swapper is not None else out


class ResizeShortSide(Transform):
    """Resize a channel-first 2-D array so its shorter side is ``size`` (aspect ratio kept; MONAI ``Resize``).

    MONAI's ``Resize`` sizes all sides or the longest; COCO-Stuff's images are cropped square after the short
    side is scaled. ``mode``: ``"area"`` or ``"bilinear"`` for images, ``"nearest-exact"`` (the input pixel
    nearest each output pixel's centre) or ``"nearest"`` (at its top-left corner) for label maps.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, size: int, mode: str = "area") -> None:
        if isinstance(size, bool) or int(size) != size or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        self.size, self.mode = int(size), str(mode)

    def target_size(self, shape: Sequence[int]) -> tuple[int, int]:
        """(rows, columns) for an array of spatial ``shape``: the short side ``size``, the long one scaled alike."""
        rows, cols = int(shape[0]), int(shape[1])
        scale = self.size / min(rows, cols)
        return (self.size, max(self.size, round(cols * scale))) if rows <= cols else (max(self.size, round(rows * scale)), self.size)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """The resized array."""
        from monai.transforms import Resize

        if len(img.shape) != 3:
            raise ValueError(f"ResizeShortSide takes a channel-first 2-D array (C, rows, columns), got shape {tuple(img.shape)}")
        out = Resize(spatial_size=self.target_size(img.shape[1:]), mode=self.mode)(img)
        if isinstance(img, np.ndarray):
            out = convert_data_type(out, output_type=np.ndarray)[0]
        return out


class ValidPixelMask(Transform):
    """Label map -> float32 mask of the same shape: 1 where the pixel is labelled, 0 where it holds ``ignore_index``.

    The segmentation convention: ignored pixels get code 0 in the code mask (:class:`LabelMapToCodeMask`'s
    ``ignore_value``) and this mask, which the loss multiplies the label half with; metrics use
    ``ignore_index`` on the label map itself.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, ignore_index: int = 255) -> None:
        self.ignore_index = int(ignore_index)

    def __call__(self, label_map: NdarrayOrTensor) -> NdarrayOrTensor:
        """The valid-pixel mask of ``label_map``."""
        lm = _as_plain_tensor(label_map, "label_map")
        return _restore_type((lm != self.ignore_index).to(torch.float32), label_map, torch.float32, keep_meta=True)
