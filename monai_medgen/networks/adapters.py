"""Run networks trained on MONAI's integer timesteps under the gamma interface of this package."""

from __future__ import annotations

import torch
from torch import nn

from monai_medgen.schedules import DiscreteSchedule

__all__ = ["TimestepAdapter"]


class TimestepAdapter(nn.Module):
    """``eps = adapter(z, gamma, **kw)`` for a network called as ``network(x, timesteps, **kw)`` (MONAI's
    ``DiffusionModelUNet`` trained with ``DDPMScheduler``/``DiffusionInferer``).

    gamma is mapped to the nearest training step of ``schedule`` (``alphas_cumprod[k - 1]`` for t = k / T),
    so samplers and the bits/dim bound of this package run on MONAI-trained DDPMs unchanged.

    Args:
        network: the MONAI network.
        schedule: the ``DiscreteSchedule`` it was trained with (``DiscreteSchedule.from_scheduler(sched)``).
    """

    def __init__(self, network: nn.Module, schedule: DiscreteSchedule):
        super().__init__()
        if not isinstance(schedule, DiscreteSchedule):
            raise ValueError(f"schedule must be a DiscreteSchedule, got {type(schedule).__name__}.")
        self.network, self.schedule = network, schedule

    def forward(self, z: torch.Tensor, gamma: torch.Tensor, **kwargs) -> torch.Tensor:
        gamma = torch.as_tensor(gamma, device=z.device).reshape(-1).expand(z.shape[0])
        return self.network(z, timesteps=self.schedule.nearest_timestep(gamma), **kwargs)
