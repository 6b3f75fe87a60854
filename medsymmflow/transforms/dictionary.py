"""Dictionary (MapTransform) twins of the code-mask transforms in :mod:`medsymmflow.transforms.array`."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import LoadImaged, MapTransform, RandomizableTransform
from monai.utils import convert_data_type, ensure_tuple

from medsymmflow.codes import ClassCodebook
from medsymmflow.transforms.array import (
    ClassToCodeMask,
    CocoStuffToClasses,
    CodeMaskToClass,
    EnsureSpatial2D,
    FlipSwap,
    LabelMapToCodeMask,
    LoadImageFile,
    LoadLabelMap,
    MatchChannels,
    RemapLabels,
    ResizeShortSide,
    StrictScaleIntensityRange,
    UniformDequantize,
    ValidPixelMask,
)

__all__ = [
    "CocoStuffToClassesd",
    "FlipSwapd",
    "LoadLabelMapd",
    "RandFlipSwapd",
    "RandLatentDrawd",
    "RemapLabelsd",
    "ResizeShortSided",
    "ValidPixelMaskd",
    "ClassToCodeMaskD",
    "ClassToCodeMaskDict",
    "ClassToCodeMaskd",
    "CodeMaskToClassD",
    "CodeMaskToClassDict",
    "CodeMaskToClassd",
    "EnsureSpatial2Dd",
    "LabelMapToCodeMaskD",
    "LabelMapToCodeMaskDict",
    "LabelMapToCodeMaskd",
    "LoadImageFiled",
    "MatchChannelsd",
    "StrictScaleIntensityRanged",
    "UniformDequantizeD",
    "UniformDequantizeDict",
    "UniformDequantized",
]


def _keys_like(
    keys: tuple[Hashable, ...], given: KeysCollection | None, default: Sequence[Hashable], name: str
) -> tuple[Hashable, ...]:
    """One output key per input key: ``given`` if set (checked for length), else ``default``."""
    if given is None:
        return tuple(default)
    out = ensure_tuple(given)
    if len(out) != len(keys):
        raise ValueError(f"{name} must name one key per input key: got {len(out)} for keys {keys}")
    return out


class ClassToCodeMaskd(MapTransform):
    """Dictionary version of :class:`ClassToCodeMask`: class index under ``keys`` -> code mask.

    Args:
        keys: keys holding one class index each (e.g. ``"label"``).
        codebook: a ``ClassCodebook`` or a kind name.
        spatial_size: fixed spatial shape of the mask; give this or ``spatial_size_from``.
        num_classes: number of classes when ``codebook`` is a kind name.
        spatial_size_from: key of a channel-first array (e.g. ``"image"``) whose spatial shape the mask takes.
        output_keys: where to write each mask; default overwrites ``keys`` (use e.g. ``"code"`` to keep the label).
        allow_missing_keys: skip missing keys instead of raising.
    """

    backend = ClassToCodeMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        codebook: ClassCodebook | str,
        spatial_size: Sequence[int] | None = None,
        num_classes: int | None = None,
        spatial_size_from: Hashable | None = None,
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if (spatial_size is None) == (spatial_size_from is None):
            raise ValueError("give exactly one of spatial_size (a fixed shape) or spatial_size_from (a key)")
        self.encoder = ClassToCodeMask(codebook, spatial_size=spatial_size, num_classes=num_classes)
        self.spatial_size_from = spatial_size_from
        self.output_keys = _keys_like(self.keys, output_keys, self.keys, "output_keys")

    def _spatial_size(self, d: Mapping[Hashable, Any]) -> tuple[int, ...] | None:
        """Spatial shape read from ``spatial_size_from`` (``None`` means the fixed size)."""
        if self.spatial_size_from is None:
            return None
        if self.spatial_size_from not in d:
            raise KeyError(f"spatial_size_from key {self.spatial_size_from!r} is missing from the data")
        ref = d[self.spatial_size_from]
        shape = getattr(ref, "shape", None)
        if shape is None or len(shape) < 2:
            raise ValueError(
                f"data[{self.spatial_size_from!r}] must be a channel-first array (C, *spatial) to give a spatial size, "
                f"got {type(ref).__name__} of shape {shape}"
            )
        return tuple(int(s) for s in shape[1:])

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Encode every key into its output key."""
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key] = self.encoder(d[key], spatial_size=self._spatial_size(d))
        return d


class LabelMapToCodeMaskd(MapTransform):
    """Dictionary version of :class:`LabelMapToCodeMask`: label map ``(1, H, W[, D])`` -> code mask.

    Args:
        keys: keys holding channel-first label maps (e.g. straight from ``LoadImaged(..., ensure_channel_first=True)``).
        codebook: a ``ClassCodebook`` or a kind name.
        num_classes: number of classes when ``codebook`` is a kind name.
        ignore_index: label value left out of the codebook; those pixels get ``ignore_value``.
        ignore_value: code value written at ``ignore_index`` pixels.
        output_keys: where to write each mask; default overwrites ``keys``.
        allow_missing_keys: skip missing keys instead of raising.
    """

    backend = LabelMapToCodeMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        codebook: ClassCodebook | str,
        num_classes: int | None = None,
        ignore_index: int | None = None,
        ignore_value: float = 0.0,
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.encoder = LabelMapToCodeMask(
            codebook, num_classes=num_classes, ignore_index=ignore_index, ignore_value=ignore_value
        )
        self.output_keys = _keys_like(self.keys, output_keys, self.keys, "output_keys")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Encode every key into its output key."""
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key] = self.encoder(d[key])
        return d


class UniformDequantized(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`UniformDequantize`; each key gets its own noise draw.

    The ``prob`` decision is taken once per call for all keys. ``set_random_state`` seeds this
    transform and the wrapped array transform, so a seeded run is reproducible.

    Args:
        keys: keys holding floating code masks.
        beta: noise width in 8-bit grey levels.
        codebook: optional ``ClassCodebook`` or kind name used to reject a too-large ``beta``.
        num_classes: number of classes when ``codebook`` is a kind name.
        prob: probability of adding the noise.
        allow_missing_keys: skip missing keys instead of raising.
    """

    backend = UniformDequantize.backend

    def __init__(
        self,
        keys: KeysCollection,
        beta: float,
        codebook: ClassCodebook | str | None = None,
        num_classes: int | None = None,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.dequantize = UniformDequantize(beta, codebook=codebook, num_classes=num_classes, prob=1.0)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> UniformDequantized:
        """Seed this transform and the wrapped :class:`UniformDequantize`."""
        super().set_random_state(seed, state)
        self.dequantize.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Add fresh noise to every key (or leave all keys untouched, with probability ``1 - prob``)."""
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            d[key] = self.dequantize(d[key], randomize=True)
        return d


class CodeMaskToClassd(MapTransform):
    """Dictionary version of :class:`CodeMaskToClass`: predicted code mask -> class (and distances).

    The input keys are left as they are; the class goes to ``output_keys`` (default ``f"{key}_class"``)
    and, with ``return_distance``, the distances to ``distance_keys`` (default ``f"{key}_distance"``).

    Args:
        keys: keys holding predicted code masks ``(C, *spatial)``.
        codebook: a ``ClassCodebook`` or a kind name.
        num_classes: number of classes when ``codebook`` is a kind name.
        decision: ``"mean"``, ``"mode"`` or ``"pixel"`` (see :class:`CodeMaskToClass`).
        return_distance: also write the distances.
        output_keys: keys for the decoded classes / label maps.
        distance_keys: keys for the distances (used only with ``return_distance``).
        allow_missing_keys: skip missing keys instead of raising.
    """

    backend = CodeMaskToClass.backend

    def __init__(
        self,
        keys: KeysCollection,
        codebook: ClassCodebook | str,
        num_classes: int | None = None,
        decision: str = "mean",
        return_distance: bool = False,
        output_keys: KeysCollection | None = None,
        distance_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.decoder = CodeMaskToClass(
            codebook, num_classes=num_classes, decision=decision, return_distance=return_distance
        )
        self.output_keys = _keys_like(self.keys, output_keys, [f"{k}_class" for k in self.keys], "output_keys")
        self.distance_keys = _keys_like(
            self.keys, distance_keys, [f"{k}_distance" for k in self.keys], "distance_keys"
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Decode every key into its output (and distance) key."""
        d = dict(data)
        for key, out_key, dist_key in self.key_iterator(d, self.output_keys, self.distance_keys):
            if self.decoder.return_distance:
                d[out_key], d[dist_key] = self.decoder(d[key])
            else:
                d[out_key] = self.decoder(d[key])
        return d


ClassToCodeMaskD = ClassToCodeMaskDict = ClassToCodeMaskd
LabelMapToCodeMaskD = LabelMapToCodeMaskDict = LabelMapToCodeMaskd
UniformDequantizeD = UniformDequantizeDict = UniformDequantized
CodeMaskToClassD = CodeMaskToClassDict = CodeMaskToClassd


class _PerKey(MapTransform):
    """Applies one array transform (``self.converter``) to every selected key."""

    converter: Callable[[NdarrayOrTensor], NdarrayOrTensor]

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Transform every key's array."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class MatchChannelsd(_PerKey):
    """Dictionary version of :class:`MatchChannels`."""

    backend = MatchChannels.backend

    def __init__(self, keys: KeysCollection, channels: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = MatchChannels(channels)


class EnsureSpatial2Dd(_PerKey):
    """Dictionary version of :class:`EnsureSpatial2D`."""

    backend = EnsureSpatial2D.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = EnsureSpatial2D()


class LoadImageFiled(LoadImaged):
    """Dictionary version of :class:`LoadImageFile`: raster files rows first and on the 8-bit grey scale, NIfTI as stored."""

    def __init__(
        self,
        keys: KeysCollection,
        image_only: bool = True,
        dtype: np.dtype | type | str | None = np.float32,
        ensure_channel_first: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(
            keys, image_only=image_only, dtype=dtype, ensure_channel_first=ensure_channel_first,
            allow_missing_keys=allow_missing_keys,
        )
        self._loader = LoadImageFile(image_only=image_only, dtype=dtype, ensure_channel_first=ensure_channel_first)


class StrictScaleIntensityRanged(_PerKey):
    """Dictionary version of :class:`StrictScaleIntensityRange`."""

    backend = StrictScaleIntensityRange.backend

    def __init__(
        self,
        keys: KeysCollection,
        a_min: float,
        a_max: float,
        b_min: float = -1.0,
        b_max: float = 1.0,
        tolerance: float = 1e-4,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = StrictScaleIntensityRange(a_min, a_max, b_min, b_max, tolerance)


# ---------------------------------------------------------------------------------------------------------
# Segmentation: the dictionary twins of the label-map transforms (image and label map keys together).


class LoadLabelMapd(LoadImaged):
    """Dictionary version of :class:`LoadLabelMap`: label-map files -> ``(1, rows, columns)`` class indices."""

    def __init__(
        self,
        keys: KeysCollection,
        image_only: bool = True,
        dtype: np.dtype | type | str | None = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, image_only=image_only, dtype=dtype, ensure_channel_first=True, allow_missing_keys=allow_missing_keys)
        self._loader = LoadLabelMap(image_only=image_only, dtype=dtype)


class RemapLabelsd(_PerKey):
    """Dictionary version of :class:`RemapLabels`."""

    backend = RemapLabels.backend

    def __init__(
        self,
        keys: KeysCollection,
        source_values: Sequence[int],
        ignore_index: int | None = None,
        what: str = "dataset",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = RemapLabels(source_values, ignore_index=ignore_index, what=what)


class CocoStuffToClassesd(_PerKey):
    """Dictionary version of :class:`CocoStuffToClasses`: raw COCO-Stuff label values -> classes 0..170, 255 kept."""

    backend = CocoStuffToClasses.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = CocoStuffToClasses()


class FlipSwapd(MapTransform):
    """Dictionary version of :class:`FlipSwap`: flips every key, and swaps ``swap``'s classes in ``label_keys``.

    Args:
        keys: every key to flip (e.g. ``["image", "label"]``).
        swap: class pairs ``{a: b}`` or the dataset's class names (their ``l_`` / ``r_`` pairs).
        label_keys: the keys holding label maps (default: every key but ``"image"``).
        spatial_axis: 1, the column axis of arrays read rows first (LoadImageFiled / LoadLabelMapd).
        allow_missing_keys: skip missing keys instead of raising.
    """

    backend = FlipSwap.backend

    def __init__(
        self,
        keys: KeysCollection,
        swap: Mapping[int, int] | Sequence[str],
        label_keys: KeysCollection | None = None,
        spatial_axis: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_keys = set(ensure_tuple(label_keys)) if label_keys is not None else {k for k in self.keys if k != "image"}
        unknown = self.label_keys - set(self.keys)
        if unknown:
            raise ValueError(f"label_keys {sorted(map(str, unknown))} are not among the keys {list(self.keys)}")
        self.flip_image = FlipSwap(spatial_axis)
        self.flip_label = FlipSwap(spatial_axis, swap=swap)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Flip every key (label keys with their classes swapped)."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = (self.flip_label if key in self.label_keys else self.flip_image)(d[key])
        return d


class RandFlipSwapd(RandomizableTransform, FlipSwapd):
    """:class:`FlipSwapd` with probability ``prob``: one draw per call flips image and label maps together.

    The horizontal flip for faces: a flipped face's left eye is where its right eye was, so the flip
    exchanges the left/right classes (``swap``) along with the pixels; a plain ``RandFlipd`` would teach the
    network that left and right eyes are one class. Reproducible through ``set_random_state(seed)``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        swap: Mapping[int, int] | Sequence[str],
        label_keys: KeysCollection | None = None,
        prob: float = 0.5,
        spatial_axis: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        FlipSwapd.__init__(self, keys, swap, label_keys=label_keys, spatial_axis=spatial_axis, allow_missing_keys=allow_missing_keys)
        RandomizableTransform.__init__(self, prob)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Flip-and-swap all keys with probability ``prob``, else return them unchanged."""
        self.randomize(None)
        if not self._do_transform:
            return dict(data)
        return FlipSwapd.__call__(self, data)


class ResizeShortSided(MapTransform):
    """Dictionary version of :class:`ResizeShortSide`, one ``mode`` per key (e.g. ``["area", "nearest-exact"]``).

    Every key gets the target size of the first key's array, so an image and its label map stay on one grid.
    """

    backend = ResizeShortSide.backend

    def __init__(
        self, keys: KeysCollection, size: int, mode: str | Sequence[str] = "area", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        modes = ensure_tuple(mode) if not isinstance(mode, str) else (mode,) * len(self.keys)
        if len(modes) != len(self.keys):
            raise ValueError(f"mode must be one mode or one per key: got {len(modes)} for keys {self.keys}")
        self.resizers = {k: ResizeShortSide(size, m) for k, m in zip(self.keys, modes)}

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Resize every key to the target size of the first one present."""
        d = dict(data)
        present = list(self.key_iterator(d))
        if not present:
            return d
        shapes = {k: tuple(d[k].shape[1:]) for k in present}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"the arrays to resize together differ in size: {shapes}")
        from monai.transforms import Resize

        target = self.resizers[present[0]].target_size(shapes[present[0]])
        for key in present:
            out = Resize(spatial_size=target, mode=self.resizers[key].mode)(d[key])
            d[key] = convert_data_type(out, output_type=np.ndarray)[0] if isinstance(d[key], np.ndarray) else out
        return d


class ValidPixelMaskd(MapTransform):
    """Dictionary version of :class:`ValidPixelMask`: writes ``output_keys`` (default ``"valid"``) from label maps."""

    backend = ValidPixelMask.backend

    def __init__(
        self,
        keys: KeysCollection,
        ignore_index: int = 255,
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.masker = ValidPixelMask(ignore_index)
        default = ["valid"] if len(self.keys) == 1 else [f"{k}_valid" for k in self.keys]
        self.output_keys = _keys_like(self.keys, output_keys, default, "output_keys")

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Add the valid-pixel mask of every key."""
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key] = self.masker(d[key])
        return d



class RandLatentDrawd(RandomizableTransform, MapTransform):
    """Pick one orientation and one mask draw of a latent-cache item (:class:`~medsymmflow.data.LatentCacheDataset`).

    A cached item holds ``(O, ...)`` tensors under ``keys`` (O = 1, or 2 with the flipped pair) and
    ``(O, D, ...)`` under ``draw_keys`` (D dequantized mask encodings); each call draws the orientation
    and the draw uniformly (a flip with probability 1/2 when both are cached), reproducibly through
    ``set_random_state``. Keys absent from the item are skipped.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image_latent", "image_latent_std", "valid_latent"),
        draw_keys: KeysCollection = ("code_latent",),
    ) -> None:
        MapTransform.__init__(self, tuple(ensure_tuple(keys)) + tuple(ensure_tuple(draw_keys)), allow_missing_keys=True)
        RandomizableTransform.__init__(self, prob=1.0)
        self.draw_keys = set(ensure_tuple(draw_keys))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """The item with every key reduced to the chosen orientation (and draw)."""
        d = dict(data)
        present = list(self.key_iterator(d))
        if not present:
            return d
        orientations = {int(d[k].shape[0]) for k in present}
        draws = {int(d[k].shape[1]) for k in present if k in self.draw_keys}
        if len(orientations) != 1 or len(draws) > 1:
            raise ValueError(f"the latent-cache keys disagree in orientations or draws: {({k: tuple(d[k].shape) for k in present})}")
        o = int(self.R.randint(orientations.pop()))
        j = int(self.R.randint(draws.pop())) if draws else 0
        for key in present:
            d[key] = d[key][o][j] if key in self.draw_keys else d[key][o]
        return d
