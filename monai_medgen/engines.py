"""Glue for MONAI's engines: a PrepareBatch, a loss that reads the inferer's result, the seed's
optimiser and learning-rate schedule, and EMA of weights.

Training a VDM with MONAI's stock ``SupervisedTrainer``::

    inferer = VDMInferer(LearnedLinearSchedule())
    optimizer, lr_lambda = vdm_optimizer(network, inferer, total_steps=10_000)
    trainer = SupervisedTrainer(
        device=device, max_epochs=E, train_data_loader=loader, network=network, optimizer=optimizer,
        loss_function=InfererLoss(), inferer=inferer, prepare_batch=DiffusionPrepareBatch(),
        train_handlers=[LrScheduleHandler(LambdaLR(optimizer, lr_lambda), epoch_level=False)],
    )
    attach_ema(trainer, network, momentum=1e-3)
    trainer.run()
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

import numpy as np
import torch
from ignite.engine import Events
from ignite.handlers import EMAHandler
from monai.data import DataLoader, Dataset
from monai.engines import PrepareBatch, SupervisedTrainer
from monai.handlers import LrScheduleHandler, StatsHandler, from_engine
from monai.transforms import Compose, EnsureTyped, RandFlipd, RandSpatialCropd, ScaleIntensityRanged
from monai.utils import set_determinism
from torch import nn

__all__ = [
    "DiffusionPrepareBatch",
    "InfererLoss",
    "TimeLimit",
    "attach_ema",
    "build_vdm_trainer",
    "evaluate_bpd",
    "slice_training_transforms",
    "unwrap_network",
    "vdm_optimizer",
    "warmup_cosine",
]


def unwrap_network(network):
    """The network inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper, else ``network`` itself.

    Under ``torchrun`` a trainer's network is such a wrapper: call the wrapper (its forward synchronises the
    gradients), but read the network's type and attributes (``spatial_dims``, ``null_class``, ...) from this.
    """
    while isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        network = network.module
    return network


class DiffusionPrepareBatch(PrepareBatch):
    """Turn a batch dict into ``(inputs, targets, args, kwargs)`` for a diffusion inferer.

    Args:
        image_key: key of the image, already in [-1, 1] (C, *spatial).
        label_key: key of an integer class label passed as ``class_labels=`` (None: unconditional).
        condition_key: key of an image passed as ``condition=`` (restoration models).
        label_dropout: probability of replacing a label by ``null_class`` (classifier-free guidance).
        null_class: index of the "no label" class (the network's ``num_classes``).
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str | None = None,
        condition_key: str | None = None,
        label_dropout: float = 0.0,
        null_class: int | None = None,
    ):
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout}.")
        if label_dropout > 0 and null_class is None:
            raise ValueError("label_dropout > 0 needs null_class (the network's num_classes).")
        self.image_key, self.label_key, self.condition_key = image_key, label_key, condition_key
        self.label_dropout, self.null_class = float(label_dropout), null_class

    def __call__(self, batchdata: Mapping, device=None, non_blocking: bool = False, **kwargs):
        if self.image_key not in batchdata:
            raise KeyError(f"batch has no {self.image_key!r} key (keys: {sorted(batchdata)}).")
        images = torch.as_tensor(batchdata[self.image_key]).to(device=device, non_blocking=non_blocking, **kwargs)
        call_kwargs = {}
        if self.label_key is not None:
            labels = torch.as_tensor(batchdata[self.label_key]).long().reshape(-1).to(device)
            if self.label_dropout > 0:
                drop = torch.rand(labels.shape, device=labels.device) < self.label_dropout
                labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
            call_kwargs["class_labels"] = labels
        if self.condition_key is not None:
            call_kwargs["condition"] = torch.as_tensor(batchdata[self.condition_key]).to(device=device, **kwargs)
        return images, images, (), call_kwargs


class InfererLoss(nn.Module):
    """``loss_function(pred, target)`` for ``SupervisedTrainer`` when the inferer returns its own loss
    (``VDMOutput`` or a mapping with ``"loss"``)."""

    def forward(self, pred, target=None) -> torch.Tensor:
        if isinstance(pred, torch.Tensor):
            raise TypeError("InfererLoss expects the inferer's result (with a 'loss' entry), got a plain tensor.")
        return pred["loss"]


def warmup_cosine(warmup_steps: int = 250, total_steps: int = 20_000, final_factor: float = 1e-5) -> Callable:
    """LR multiplier: linear warm-up from 0 to 1 over ``warmup_steps``, then cosine decay to ``final_factor``
    at ``total_steps`` (the Medical VDM seed's schedule).  For ``torch.optim.lr_scheduler.LambdaLR``."""
    if total_steps <= warmup_steps:
        raise ValueError(f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps}).")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        p = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * p))

    return factor


def vdm_optimizer(
    network: nn.Module,
    inferer=None,
    lr: float = 8e-4,
    betas: tuple[float, float] = (0.9, 0.99),
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    warmup_steps: int = 250,
    total_steps: int = 20_000,
    final_factor: float = 1e-5,
):
    """AdamW with the seed's defaults over the network and the inferer's learnable schedule, and the
    matching ``warmup_cosine`` LR multiplier.  Returns ``(optimizer, lr_lambda)``."""
    params = list(network.parameters())
    if inferer is not None and hasattr(inferer, "parameters"):
        params += [p for p in inferer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    return optimizer, warmup_cosine(warmup_steps, total_steps, final_factor)


def attach_ema(engine, network: nn.Module, momentum: float = 1e-3, warmup: int | None = 100):
    """Keep an exponential moving average of ``network``'s weights on a MONAI / ignite engine with
    ignite's ``EMAHandler``; returns the handler (``handler.ema_model`` is the averaged copy).

    Args:
        momentum: weight of the new parameters at each update (ignite's convention), in (0, 1].
        warmup: iterations over which the momentum decays from ``min(1, 10 * momentum)``; None: no warm-up.
    """
    if not 0.0 < momentum <= 1.0:
        raise ValueError(f"momentum must be in (0, 1], got {momentum}.")

    # during warm-up the average follows the fresh weights faster (up to 10x the final momentum)
    start = None if warmup is None else min(1.0, momentum * 10)
    handler = EMAHandler(network, momentum=momentum, momentum_warmup=start, warmup_iters=warmup)
    handler.attach(engine, name="ema_momentum", event=Events.ITERATION_COMPLETED)
    return handler


class TimeLimit:
    """Stop an ignite / MONAI engine once ``seconds`` of wall-clock time have passed (checked per iteration)."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.start = None

    def attach(self, engine) -> None:

        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _start(self, engine) -> None:

        self.start = time.perf_counter()

    def __call__(self, engine) -> None:

        if self.start is not None and time.perf_counter() - self.start >= self.seconds:
            engine.terminate()


def slice_training_transforms(crop_size: int | None = None, flip: bool = True, image_key: str = "image"):
    """MONAI transforms for [0, 1] demo / user slices or volumes: scale to [-1, 1], random crop, left-right
    flip (axis 0 of the RAS-ordered arrays from :mod:`monai_medgen.data`)."""

    chain = [
        EnsureTyped(keys=image_key, track_meta=False),
        ScaleIntensityRanged(image_key, 0.0, 1.0, -1.0, 1.0, clip=True),
    ]
    if crop_size:
        chain.append(RandSpatialCropd(image_key, roi_size=crop_size, random_size=False))
    if flip:
        chain.append(RandFlipd(image_key, prob=0.5, spatial_axis=0))
    return Compose(chain)


def build_vdm_trainer(
    items: list,
    network: nn.Module,
    inferer,
    batch_size: int = 16,
    max_seconds: float | None = None,
    max_epochs: int = 10_000,
    crop_size: int | None = None,
    lr: float = 8e-4,
    warmup_steps: int = 250,
    total_steps: int = 20_000,
    ema_momentum: float | None = 1e-3,
    label_key: str | None = None,
    label_dropout: float = 0.0,
    device: str | torch.device = "cpu",
    seed: int = 0,
    log_every: int = 50,
):
    """A MONAI ``SupervisedTrainer`` for a VDM on a list of ``{"image": (C, *spatial) in [0, 1]}`` items.

    Uses :class:`DiffusionPrepareBatch`, :class:`InfererLoss`, AdamW with warm-up + cosine decay
    (``LrScheduleHandler`` per iteration), ``StatsHandler`` logging, ignite's EMA and an optional wall-clock
    limit.  Returns ``(trainer, ema_handler_or_None)``; call ``trainer.run()``.
    """

    set_determinism(seed)
    loader = DataLoader(
        Dataset(items, transform=slice_training_transforms(crop_size)),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
    )
    optimizer, lr_lambda = vdm_optimizer(network, inferer, lr=lr, warmup_steps=warmup_steps, total_steps=total_steps)
    handlers = [
        LrScheduleHandler(torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda), epoch_level=False, print_lr=False),
        StatsHandler(
            name="monai_medgen.train",
            tag_name="loss",
            output_transform=from_engine(["loss"], first=True),
            iteration_log=lambda engine, _: engine.state.iteration % log_every == 0,
            epoch_log=False,
        ),
    ]
    trainer = SupervisedTrainer(
        device=torch.device(device),
        max_epochs=max_epochs,
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=InfererLoss(),
        inferer=inferer,
        prepare_batch=DiffusionPrepareBatch(
            label_key=label_key,
            label_dropout=label_dropout,
            null_class=getattr(unwrap_network(network), "null_class", None),
        ),
        train_handlers=handlers,
        amp=False,
    )
    if max_seconds is not None:
        TimeLimit(max_seconds).attach(trainer)
    ema = attach_ema(trainer, network, momentum=ema_momentum) if ema_momentum else None
    return trainer, ema


@torch.no_grad()
def evaluate_bpd(inferer, network, images01, num_time_samples: int = 16, batch_size: int = 16, seed: int = 0) -> dict:
    """Held-out bits/dim of a VDM on [0, 1] images, averaged over images.

    Args:
        inferer: a :class:`~monai_medgen.inferers.VDMInferer`.
        network: its score network.
        images01: (N, 1, *spatial) array or tensor with intensities in [0, 1].
        num_time_samples: stratified diffusion times per image.

    Returns:
        ``{"bpd", "diffusion", "prior", "reconstruction"}`` in bits/dim.
    """

    network.eval()
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.as_tensor(np.asarray(images01), dtype=torch.float32) * 2 - 1
    sums: dict = {}
    for i in range(0, len(x), int(batch_size)):
        out = inferer.bits_per_dim(
            x[i : i + int(batch_size)], network, num_time_samples=num_time_samples, generator=gen
        )
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v.sum())
    return {k: v / len(x) for k, v in sums.items()}
