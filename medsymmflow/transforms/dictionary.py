"""Dictionary (MapTransform) twins of the code-mask transforms in :mod:`medsymmflow.transforms.array`."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import LoadImaged, MapTransform, RandomizableTransform
from monai.utils import ensure_tuple

from medsymmflow.codes import ClassCodebook
from medsymmflow.transforms.array import (
    ClassToCodeMask,
    CodeMaskToClass,
    EnsureSpatial2D,
    LabelMapToCodeMask,
    LoadImageFile,
    MatchChannels,
    StrictScaleIntensityRange,
    UniformDequantize,
)

__all__ = [
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
