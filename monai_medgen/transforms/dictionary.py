"""Dictionary twins of :mod:`monai_medgen.transforms.degradation` (MONAI naming: ``d``, ``D`` and ``Dict``).

The degradation twins read ``d[key]`` and write the degraded copy to ``d[cond_key]`` (default ``"cond"``),
the condition of a restoration model; ``d[key]`` stays the clean target and is never modified, in place or
otherwise. Metadata scheme: the parameters actually used are recorded as one flat dict,

* ``d[f"{cond_key}_degradation"]``, always, and
* ``d[cond_key].meta["degradation"]``, the same dict, when the output is a MetaTensor,

with ``"transforms"`` (the array transforms applied, in order) and the values of each transform's ``params``:
``factor``, ``mode``, ``upsample_mode``, ``low_res_shape`` (low resolution); ``sigma``, ``salt_pepper``,
``rician``, ``pepper_value``, ``salt_value``, ``noise_seed`` (noise); ``mask_type``, ``mask_fraction``,
``mask_seed``, ``mask_bbox`` (``[[start, stop], ...]`` per axis), ``fill_value`` (inpainting). A transform
that is skipped (``prob``) records the identity: factor 1, zero noise, an empty mask. All values are plain
numbers, strings and fixed-length lists, so MONAI's ``list_data_collate`` batches them.

Degradations chain: with ``keys="cond", cond_key="cond"`` a second transform degrades the condition (a new
object replaces it) and adds its parameters to the record of the first.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable
from monai.utils import ensure_tuple_rep

from monai_medgen.transforms.degradation import (
    JoinComplex,
    RandInpaintingMask,
    RandLowResolution,
    RandMixedNoise,
    SimulateLowResolution,
    SplitComplex,
)

__all__ = [
    "JoinComplexD",
    "JoinComplexDict",
    "JoinComplexd",
    "RandInpaintingMaskD",
    "RandInpaintingMaskDict",
    "RandInpaintingMaskd",
    "RandMixedNoiseD",
    "RandMixedNoiseDict",
    "RandMixedNoised",
    "RandLowResolutionD",
    "RandLowResolutionDict",
    "RandLowResolutiond",
    "SimulateLowResolutionD",
    "SimulateLowResolutionDict",
    "SimulateLowResolutiond",
    "SplitComplexD",
    "SplitComplexDict",
    "SplitComplexd",
]


class _Degradationd(MapTransform):
    """Apply ``self.transform`` to each key and write the result and its record under the matching cond key."""

    def __init__(self, keys: KeysCollection, cond_key: str | Sequence[str], allow_missing_keys: bool, transform):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.cond_keys = ensure_tuple_rep(cond_key, len(self.keys))
        if len(set(self.cond_keys)) != len(self.cond_keys):
            raise ValueError(f"cond_key must give a distinct output key per key in {self.keys}, got {cond_key!r}.")
        self.transform = transform
        self.backend = transform.backend

    def _write(self, d: dict, key: Hashable, cond_key: Hashable, cond: NdarrayOrTensor) -> None:
        previous = d.get(f"{key}_degradation", {})
        record = {**previous, "transforms": [*previous.get("transforms", []), type(self.transform).__name__]}
        record.update(self.transform.params)
        d[f"{cond_key}_degradation"] = record
        if isinstance(cond, MetaTensor):
            cond.meta["degradation"] = dict(record)  # a new dict: the source's meta is never touched
        d[cond_key] = cond

    def _apply(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        return self.transform(img)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, cond_key in self.key_iterator(d, self.cond_keys):
            self._write(d, key, cond_key, self._apply(d[key]))
        return d


class _RandDegradationd(Randomizable, _Degradationd):
    """Draw the random parameters once per call (from the first key) and use them for every key."""

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        self.transform.randomize(data)

    def _apply(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        return self.transform(img, randomize=False)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        first = self.first_key(dict(data))
        if first == ():
            return dict(data)
        self.randomize(data[first])
        return super().__call__(data)


class SimulateLowResolutiond(_Degradationd):
    """Dictionary twin of :class:`~monai_medgen.transforms.degradation.SimulateLowResolution`.

    Args:
        keys: keys of the clean images ``(C, *spatial)``.
        factor, mode, upsample_mode, magnitude: as in ``SimulateLowResolution``.
        cond_key: output key (one per key); the source keys are left unchanged.
        allow_missing_keys: skip missing keys instead of raising a ``KeyError``.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        factor: float | Sequence[float] = 4.0,
        mode: str = "area",
        upsample_mode: str = "auto",
        magnitude: bool = True,
        cond_key: str | Sequence[str] = "cond",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(
            keys, cond_key, allow_missing_keys, SimulateLowResolution(factor, mode, upsample_mode, magnitude)
        )


class RandLowResolutiond(_RandDegradationd):
    """Dictionary twin of :class:`~monai_medgen.transforms.degradation.RandLowResolution`.

    One factor is drawn per call and used for every key. (Named so as not to clash with MONAI's
    unrelated ``RandSimulateLowResolutiond``, an nnU-Net zoom augmentation.)

    Args:
        keys: keys of the clean images ``(C, *spatial)``.
        factors, factor_range, prob, mode, upsample_mode, magnitude, seed: as in ``RandLowResolution``.
        cond_key: output key (one per key); the source keys are left unchanged.
        allow_missing_keys: skip missing keys instead of raising a ``KeyError``.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        factors: Sequence[float] | None = None,
        factor_range: tuple[float, float] | None = None,
        prob: float = 1.0,
        mode: str = "area",
        upsample_mode: str = "auto",
        magnitude: bool = True,
        cond_key: str | Sequence[str] = "cond",
        allow_missing_keys: bool = False,
        seed: int | None = None,
    ) -> None:
        transform = RandLowResolution(factors, factor_range, prob, mode, upsample_mode, magnitude, seed)
        super().__init__(keys, cond_key, allow_missing_keys, transform)


class RandMixedNoised(_RandDegradationd):
    """Dictionary twin of :class:`~monai_medgen.transforms.degradation.RandMixedNoise`.

    The same parameters and noise (one ``noise_seed``) are used for every key.

    Args:
        keys: keys of the clean images ``(C, *spatial)``.
        sigma, salt_pepper, rician, prob, low, high, seed: as in ``RandMixedNoise``.
        cond_key: output key (one per key); the source keys are left unchanged.
        allow_missing_keys: skip missing keys instead of raising a ``KeyError``.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        sigma: float | tuple[float, float] = 0.1,
        salt_pepper: float | tuple[float, float] = 0.05,
        rician: bool = False,
        prob: float = 1.0,
        low: float | None = None,
        high: float | None = None,
        cond_key: str | Sequence[str] = "cond",
        allow_missing_keys: bool = False,
        seed: int | None = None,
    ) -> None:
        transform = RandMixedNoise(sigma, salt_pepper, rician, prob, low, high, seed)
        super().__init__(keys, cond_key, allow_missing_keys, transform)


class RandInpaintingMaskd(_RandDegradationd):
    """Dictionary twin of :class:`~monai_medgen.transforms.degradation.RandInpaintingMask`.

    Writes the masked image (masked voxels set to ``fill_value``) to ``cond_key`` and the mask
    ``(1, *spatial)`` (1 = missing) to ``mask_key``; one mask per call, shared by all keys.

    Args:
        keys: keys of the clean images ``(C, *spatial)``.
        mask_type, min_fraction, max_fraction, num_boxes, stroke_width, center_box, fill_value, prob, seed:
            as in ``RandInpaintingMask``.
        cond_key: output key of the masked image (one per key); the source keys are left unchanged.
        mask_key: output key of the mask.
        allow_missing_keys: skip missing keys instead of raising a ``KeyError``.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        mask_type: str = "box",
        min_fraction: float = 0.1,
        max_fraction: float = 0.3,
        num_boxes: int | tuple[int, int] = (1, 3),
        stroke_width: tuple[float, float] = (0.03, 0.1),
        center_box: int | Sequence[int] | None = None,
        fill_value: float = 0.0,
        prob: float = 1.0,
        cond_key: str | Sequence[str] = "cond",
        mask_key: str = "mask",
        allow_missing_keys: bool = False,
        seed: int | None = None,
    ) -> None:
        transform = RandInpaintingMask(
            mask_type, min_fraction, max_fraction, num_boxes, stroke_width, center_box, True, fill_value, prob, seed
        )
        super().__init__(keys, cond_key, allow_missing_keys, transform)
        if mask_key in self.keys or mask_key in self.cond_keys:
            raise ValueError(f"mask_key must differ from keys and cond_key, got {mask_key!r}.")
        self.mask_key = mask_key

    def _write(self, d: dict, key: Hashable, cond_key: Hashable, cond: tuple) -> None:
        masked, d[self.mask_key] = cond
        super()._write(d, key, cond_key, masked)


class _ComplexMapd(MapTransform):
    """Replace ``d[key]`` (or write ``d[output_key]``) with ``transform(d[key])``; the input array is untouched."""

    def __init__(self, transform, keys: KeysCollection, output_key: str | Sequence[str] | None, allow_missing_keys):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.output_keys = self.keys if output_key is None else ensure_tuple_rep(output_key, len(self.keys))
        self.transform = transform
        self.backend = transform.backend

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, output_key in self.key_iterator(d, self.output_keys):
            d[output_key] = self.transform(d[key])
        return d


class SplitComplexd(_ComplexMapd):
    """Dictionary twin of :class:`~monai_medgen.transforms.degradation.SplitComplex`.

    A change of representation, not a degradation: by default the value under each key is replaced by a new
    ``(2C, *spatial)`` real array (the original array is not modified); give ``output_key`` to keep both.

    Args:
        keys: keys of complex images ``(C, *spatial)``.
        output_key: where to write the result (one per key); None replaces the value under the key.
        allow_missing_keys: skip missing keys instead of raising a ``KeyError``.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        output_key: str | Sequence[str] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(SplitComplex(), keys, output_key, allow_missing_keys)


class JoinComplexd(_ComplexMapd):
    """Dictionary twin of :class:`~monai_medgen.transforms.degradation.JoinComplex`.

    Args:
        keys: keys of real images ``(2C, *spatial)``, real parts then imaginary parts.
        output_key: where to write the complex ``(C, *spatial)`` result (one per key); None replaces the value.
        allow_missing_keys: skip missing keys instead of raising a ``KeyError``.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        output_key: str | Sequence[str] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(JoinComplex(), keys, output_key, allow_missing_keys)


SimulateLowResolutionD = SimulateLowResolutionDict = SimulateLowResolutiond
RandLowResolutionD = RandLowResolutionDict = RandLowResolutiond
RandMixedNoiseD = RandMixedNoiseDict = RandMixedNoised
RandInpaintingMaskD = RandInpaintingMaskDict = RandInpaintingMaskd
SplitComplexD = SplitComplexDict = SplitComplexd
JoinComplexD = JoinComplexDict = JoinComplexd
