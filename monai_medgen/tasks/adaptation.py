"""Test-time adaptation of a denoising model to the one image in hand, scored by Stein's unbiased risk estimate.

A denoiser trained on a corpus meets, in a user's scan, textures, contrasts and noise it never saw.  The noisy image
itself says how well a denoiser ``f`` does on it: for additive Gaussian noise of level ``sigma`` on the pixels ``S``,

    SURE(f) = |f(y) - y|^2_S / |S| - sigma^2 + 2 sigma^2 div_S f(y) / |S|

has the expectation of the mean squared error against the clean image, which no one has (Stein 1981).  The
divergence comes from one random probe per step (Monte-Carlo SURE, Ramani et al. 2008):
``div f(y) ~ b . (f(y + eps b) - f(y)) / eps`` with ``b`` standard normal on ``S``.  :func:`sure_adapt` lowers
SURE by a few Adam steps on a copy of the network in which only the normalisation layers' per-channel scales and
shifts move (a few thousand numbers, as in GainTuning, Mohan et al. 2021): enough to re-tune the network's gains to
the image, too few to learn the image's noise.  ``f`` is the whole residual sampler (the restorer's own steps, with
its starting noise fixed per step), so what is adapted is exactly what restores the image.

Salt-and-pepper impulses (voxels at the ends of the range, :func:`~monai_medgen.tasks.switching_median`) are left
out of ``S``: the estimate covers the voxels with Gaussian noise.  The noise level is estimated from the image
(:func:`~monai_medgen.tasks.estimate_noise_sigma`).  SURE needs zero-mean Gaussian noise: where the output has a
floor (``value_range``, e.g. non-negative magnitudes) and the noise never reaches below it (Rician MR magnitudes,
clipped or count data, whose noise near the floor is one-sided and biased) the restorer is returned unadapted; on
such data SURE would pull the output towards the noise's bias.  The impulse voxels, which SURE does not see, are
held to the unadapted network's output (their squared change from it counts as error), and an image with no
measurable noise is returned unadapted.
"""

from __future__ import annotations

import copy
import logging
import math

import torch
from torch import nn

from monai_medgen.engines import unwrap_network
from monai_medgen.tasks.operators import estimate_noise_sigma, switching_median

__all__ = ["adaptable_parameters", "sure_adapt"]

logger = logging.getLogger(__name__)

NORM_TYPES = (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
MIN_SIGMA = 1e-3  # below this (in [0, 1] units) there is no noise to measure the risk by


def adaptable_parameters(network: nn.Module) -> list[nn.Parameter]:
    """The per-channel scales and shifts of ``network``'s normalisation layers (those with affine parameters)."""
    params = []
    for module in unwrap_network(network).modules():
        if isinstance(module, NORM_TYPES):
            params += [p for p in (getattr(module, "weight", None), getattr(module, "bias", None)) if p is not None]
    return params


def _crops(measured: torch.Tensor, crop: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` random crops (count, 1, *c) of the stack ``measured`` (S, 1, *spatial), c = min(crop, side)."""
    spatial = measured.shape[2:]
    sizes = [min(int(crop), int(n)) for n in spatial]
    out = []
    for _ in range(count):
        k = int(torch.randint(measured.shape[0], (1,), generator=generator))
        starts = [int(torch.randint(n - c + 1, (1,), generator=generator)) for n, c in zip(spatial, sizes)]
        window = tuple(slice(s, s + c) for s, c in zip(starts, sizes))
        out.append(measured[(slice(k, k + 1), slice(None), *window)])
    return torch.cat(out)


def _check(restorer, measured, steps, lr, crop, batch_size, eps) -> None:
    if restorer.family != "denoise":
        raise ValueError(f"SURE adaptation needs a 'denoise' restorer, got family={restorer.family!r}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}.")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}.")
    if isinstance(crop, bool) or not isinstance(crop, int) or crop < 16:
        raise ValueError(f"crop must be an integer >= 16, got {crop!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a positive number, got {eps!r}.")
    if not torch.is_tensor(measured) or measured.ndim < 4 or measured.shape[1] != 1:
        shape = tuple(measured.shape) if torch.is_tensor(measured) else type(measured).__name__
        raise ValueError(f"measured must be a (S, 1, *spatial) tensor, got {shape}.")


def sure_adapt(
    restorer,
    measured: torch.Tensor,
    steps: int = 30,
    lr: float = 3e-3,
    crop: int = 128,
    batch_size: int = 2,
    eps: float = 1e-3,
    value_range: tuple[float | None, float | None] | None = None,
    generator: torch.Generator | None = None,
):
    """A copy of the denoising ``restorer`` (:class:`~monai_medgen.tasks.ResidualRestorer`) whose network is adapted to
    ``measured`` by lowering its Monte-Carlo SURE; ``restorer`` and its network are left as they are.

    Args:
        restorer: a ``"denoise"`` restorer.
        measured: (S, 1, *spatial) noisy images in [0, 1] units (a 2D image as S = 1, a volume's slices).
        steps: Adam steps (0: an unadapted copy).
        lr: Adam learning rate.
        crop: each step scores ``batch_size`` random crops of this side (whole images when smaller), so the cost
            does not grow with the image.
        batch_size: crops per step.
        eps: finite-difference step of the divergence probe, in [0, 1] units.
        value_range: the output's range (as the restorer's call), part of the function that is scored.
        generator: a CPU generator for the crops, probes and sampler noise (default: seed 0).
    """
    _check(restorer, measured, steps, lr, crop, batch_size, eps)
    adapted = copy.copy(restorer)
    adapted.adapt_steps = 0
    if steps == 0:
        return adapted
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    measured = measured.detach().float()
    level = _noise_level(measured, restorer.impulse_values)
    if level < MIN_SIGMA:
        logger.info("SURE adaptation skipped: no measurable noise (estimated sigma %.2g).", level)
        return adapted
    if value_range is not None and value_range[0] is not None and not _two_sided(measured, value_range[0], level):
        logger.info(
            "SURE adaptation skipped: the noise does not reach below the values' floor (MR magnitudes, clipped or "
            "count data), so it is not zero-mean Gaussian."
        )
        return adapted
    network = copy.deepcopy(restorer.network)
    network.eval()
    for p in network.parameters():
        p.requires_grad_(False)
    params = adaptable_parameters(network)
    if not params:
        raise ValueError("the network has no normalisation layers with affine parameters to adapt.")
    for p in params:
        p.requires_grad_(True)
    adapted.network = network
    logger.info(
        "SURE adaptation: %d steps on %d x %d crops, estimated noise sigma %.3g.", steps, batch_size, crop, level
    )
    opt = torch.optim.Adam(params, lr=float(lr))
    for step in range(steps):
        y = _crops(measured, crop, batch_size, g)
        sigma = torch.full((y.shape[0],), level, dtype=y.dtype, device=y.device)
        gaussian = _gaussian_voxels(y, restorer.impulse_values)
        probe = torch.randn(y.shape, generator=g, dtype=y.dtype).to(y.device) * gaussian
        seed = int(torch.randint(2**62, (1,), generator=g))
        anchor = None
        if float(gaussian.mean()) < 1:  # voxels SURE does not cover: held to the unadapted network's output
            with torch.no_grad():
                anchor = restorer._sample(
                    y, None, None, torch.Generator(device=y.device).manual_seed(seed), False, value_range
                )
        with torch.enable_grad():  # also inside a caller's no_grad (ResidualRestorer.__call__)
            risk = _risk(adapted, y, probe, gaussian, sigma, seed, eps, value_range, anchor)
        opt.zero_grad(set_to_none=True)
        risk.backward()
        opt.step()
        logger.debug("SURE adaptation step %d/%d: risk %.3g", step + 1, steps, float(risk.detach()))
    for p in params:
        p.requires_grad_(False)
    return adapted


def _noise_level(measured, impulse_values) -> float:
    """The noise level of the stack ``measured`` (S, 1, *spatial): the median of its slices' estimates
    (:func:`~monai_medgen.tasks.estimate_noise_sigma`, impulses replaced first)."""
    clean = switching_median(measured, impulse_values)
    return float(estimate_noise_sigma(clean if clean.ndim == 4 else clean[:, :, 0]).median())


def _two_sided(measured, floor: float, level: float) -> bool:
    """Whether the noise reaches below the values' floor (at least 0.1% of the voxels more than 2 noise levels under
    it), as zero-mean Gaussian noise on a dark background does; Rician magnitudes, clipped and count data do not."""
    return float((measured < float(floor) - 2 * level).float().mean()) >= 1e-3


def _gaussian_voxels(y, impulse_values) -> torch.Tensor:
    """0/1 map of the voxels of ``y`` that hold no salt-and-pepper impulse."""
    keep = torch.ones_like(y, dtype=torch.bool)
    for v in impulse_values:
        keep &= y != v
    return keep.to(y)


def _risk(restorer, y, probe, gaussian, sigma, seed: int, eps: float, value_range, anchor=None) -> torch.Tensor:
    """Monte-Carlo SURE of one sample of ``restorer`` on the batch ``y`` over the voxels ``gaussian`` (per voxel,
    averaged over the batch); both calls draw the same sampler noise, so their difference is the network's response
    to the probe.  With ``anchor`` (the unadapted restorer's sample, same noise) the voxels outside ``gaussian`` add
    their squared change from it, and the sum is per voxel of the whole image."""
    outputs = [
        restorer._sample(
            v, None, None, torch.Generator(device=y.device).manual_seed(seed), False, value_range, grad=True
        )
        for v in (y, y + eps * probe)
    ]
    axes = tuple(range(1, y.ndim))
    n = gaussian.sum(axes)
    fit = ((outputs[0] - y) ** 2 * gaussian).sum(axes)
    div = (probe * (outputs[1] - outputs[0])).sum(axes) / eps
    s2 = sigma.reshape(-1).to(y) ** 2
    risk = fit - s2 * n + 2 * s2 * div  # summed over the voxels of S
    if anchor is not None:  # elsewhere any change from the unadapted output counts as error
        risk = risk + ((outputs[0] - anchor) ** 2 * (1 - gaussian)).sum(axes)
        return (risk / gaussian[0].numel()).mean()
    return (risk / n.clamp_min(1)).mean()
