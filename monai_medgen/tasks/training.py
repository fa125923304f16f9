"""What the restoration bundles' configs call: the blind training dataset, held-out validation items and the
validation inferer for MONAI's ``SupervisedEvaluator``."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import Dataset
from monai.inferers import Inferer
from monai.transforms import Compose

from monai_medgen.data import demo_slices
from monai_medgen.tasks.blind import BlindDegradationd, check_family
from monai_medgen.tasks.corpus import RandCorpusSliced, TrainingCorpus
from monai_medgen.tasks.operators import Noise, SuperResolution
from monai_medgen.tasks.sampling import ResidualRestorer
from monai_medgen.transforms import RandInpaintingMask

__all__ = ["ResidualValidationInferer", "residual_sample_fn", "training_dataset", "validation_items"]


def training_dataset(
    family: str,
    crop_size: int = 64,
    length: int = 1600,
    corpus: TrainingCorpus | None = None,
    dataset_dir: str = "",
    corpus_options: dict | None = None,
    **degradation,
) -> Dataset:
    """A MONAI ``Dataset`` of ``length`` fresh draws per pass: a randomised corpus image
    (:class:`~monai_medgen.tasks.RandCorpusSliced`) degraded by the family's blind degradation
    (:class:`~monai_medgen.tasks.BlindDegradationd`; ``degradation`` are its keyword arguments).
    Items: ``image`` = residual target, ``cond``, ``base``, ``truth``, all (C, crop, crop).  ``dataset_dir``: your
    own images (folder or datalist JSON) added to the corpus; ``corpus_options``: further
    :class:`~monai_medgen.tasks.TrainingCorpus` arguments (``zoom_range``, ``acquisition_noise``, ...).  The corpus
    is loaded here, once: DataLoader workers forked from this process share it instead of each loading it again at
    every epoch."""
    check_family(family)
    if corpus is None:
        corpus = TrainingCorpus(dataset_dir=dataset_dir or None, **(corpus_options or {}))
    transform = Compose(
        [
            RandCorpusSliced(crop_size, corpus),
            BlindDegradationd("image", family=family, **degradation),
        ]
    )
    return Dataset(data=[{} for _ in range(int(length))], transform=transform)


def validation_items(
    family: str, num_slices: int = 4, size: int = 128, seed: int = 1000, factor: float | tuple = 4.0
) -> list[dict]:
    """Held-out Colin27 axial slices with a fixed degradation for validation during training:
    ``{"image": measured (+ mask channel for inpainting), "label": truth}``, both in [0, 1] units; SR 4x, noise
    sigma 0.1 + 5% salt-and-pepper, a central box of a quarter of the side."""

    check_family(family)
    truth = torch.stack(
        [torch.as_tensor(np.asarray(it["image"])) for it in demo_slices("colin27", size=size, num_slices=num_slices)]
    )
    if family == "sr":
        op = SuperResolution(factor)
        measured = op.base(op.degrade(truth), truth.shape[2:])
    elif family == "denoise":
        measured = Noise(0.1, "gaussian", 0.05).degrade(truth, generator=torch.Generator().manual_seed(seed))
    else:
        box = RandInpaintingMask(center_box=size // 4)
        mask = torch.stack([torch.as_tensor(np.asarray(box(t))).float().reshape(1, size, size) for t in truth])
        measured = torch.cat([truth * (1 - mask), mask], 1)
    return [{"image": m, "label": t} for m, t in zip(measured, truth)]


class ResidualValidationInferer(Inferer):
    """``inferer(measured, network)`` -> restoration in [0, 1] units with a :class:`ResidualRestorer` from a fixed
    seed (validation PSNR comparable between epochs)."""

    def __init__(self, inferer, family: str, num_steps: int = 4, start_time: float = 0.5, seed: int = 0):
        super().__init__()
        self.inferer, self.family = inferer, check_family(family)
        self.num_steps, self.start_time, self.seed = int(num_steps), float(start_time), int(seed)

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:  # type: ignore[override]
        restorer = ResidualRestorer(self.inferer, network, self.family, self.num_steps, self.start_time)
        g = torch.Generator(device=inputs.device).manual_seed(self.seed)
        mask = inputs[:, 1:2] if self.family == "inpaint" else None
        measured = inputs[:, :1]
        mean, _ = restorer(measured, mask=mask, generator=g)  # (no projection: validation monitors the model)
        return mean.clamp(0, 1)


def residual_sample_fn(
    inferer, network, items: list[dict], family: str, num_steps: int = 4, start_time: float = 0.5, seed: int = 0
):
    """A no-argument callable for :class:`monai_medgen.handlers.SampleGridHandler`: restores the held-out ``items``
    of :func:`validation_items` and returns ``(grid images, frames)`` in [-1, 1]: per item the input, the restoration
    and the truth side by side; the frames show the restoration after 1, 2, ... ``num_steps`` network calls."""
    check_family(family)

    def draw():
        dev = next(network.parameters()).device
        measured = torch.stack([torch.as_tensor(it["image"]) for it in items]).to(dev)
        truth = torch.stack([torch.as_tensor(it["label"]) for it in items]).to(dev)
        mask = measured[:, 1:2] if family == "inpaint" else None
        frames = []
        for k in range(1, int(num_steps) + 1):
            restorer = ResidualRestorer(inferer, network, family, num_steps=k, start_time=start_time)
            out, _ = restorer(measured[:, :1], mask=mask, generator=torch.Generator(device=dev).manual_seed(int(seed)))
            frames.append(torch.stack([measured[:, :1], out.clamp(0, 1), truth], 1).flatten(0, 1) * 2 - 1)
        return frames[-1], frames

    return draw
