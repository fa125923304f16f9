"""Latent Variational Diffusion Model: the VDM of :mod:`monai_medgen.inferers.vdm` run in the latent space of
MONAI's ``AutoencoderKL`` (the encoder/decoder design of the Medical VDM seed and of latent diffusion,
Rombach et al. 2022), trained in two stages.

Stage 1 trains the autoencoder alone (MONAI's ``SupervisedTrainer`` with :class:`AutoencoderLoss`: L1
reconstruction plus a small KL term).  Stage 2 freezes it and trains a score network on its latents with the
unchanged :class:`~monai_medgen.inferers.VDMInferer`; sampling runs our samplers on latents and decodes once.

Latents as VDM data.  The VDM models data on 256 levels in [-1, 1] (exact bits/dim).  The posterior mean
``mu`` of the encoder is scaled to unit variance by ``scale_factor`` (1 / std of the training latents, computed
at the start of stage 2 and stored with the weights, as MONAI's ``LatentDiffusionInferer`` uses it), divided by
``latent_range`` and clipped to [-1, 1]: with ``latent_range = 4`` the grid covers +-4 standard deviations
in steps of 0.031 of one.  Every bits/dim here is therefore of these quantised latents (per latent
dimension), never of the image's voxels: the autoencoder is lossy, so no pixel-space likelihood follows.

This module is an ``Inferer`` (MONAI keeps its ``LatentDiffusionInferer`` in ``monai.inferers``) that composes
two existing parts, MONAI's ``AutoencoderKL`` and our ``VDMInferer``; it adds no network of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.inferers import Inferer
from torch import nn

from monai_medgen.engines import unwrap_network
from monai_medgen.inferers.vdm import VDMInferer, VDMOutput

__all__ = [
    "AutoencoderLoss",
    "LatentVDMInferer",
    "ReconstructionInferer",
    "init_posterior_variance",
    "kl_to_standard_normal",
]


def kl_to_standard_normal(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, sigma^2) || N(0, 1))`` of the encoder's posterior, summed over latent dims: (B,)."""
    kl = 0.5 * (z_mu.float() ** 2 + z_sigma.float() ** 2 - torch.log(z_sigma.float() ** 2 + 1e-12) - 1.0)
    return kl.flatten(1).sum(1)


def init_posterior_variance(autoencoder: nn.Module, log_variance: float = -8.0) -> nn.Module:
    """Start an ``AutoencoderKL``'s posterior at a small variance: the bias of its ``quant_conv_log_sigma`` set to
    ``log_variance`` (log sigma^2), in place; returns the autoencoder.

    MONAI's default initialisation gives log sigma^2 near 0, so at first the decoder sees latents blurred by noise
    as large as the latents themselves, and with Adam moving that bias by about the learning rate per step, a
    short training (a few thousand steps) spends itself on that noise.  Starting at sigma ~ 0.02 (log sigma^2 = -8)
    removes the wait; the KL term still acts on it.
    """
    conv = getattr(getattr(autoencoder, "quant_conv_log_sigma", None), "conv", None)
    if conv is None or conv.bias is None:
        raise ValueError(
            f"autoencoder must be a MONAI AutoencoderKL (quant_conv_log_sigma), got {type(autoencoder).__name__}."
        )
    with torch.no_grad():
        conv.bias.fill_(float(log_variance))
    return autoencoder


class AutoencoderLoss(nn.Module):
    """Stage-1 loss for ``SupervisedTrainer`` with ``network=AutoencoderKL`` and a plain inferer:
    ``l1_weight * mean |x_hat - x| + kl_weight * mean_b KL_b``.

    No perceptual or adversarial term: LPIPS-style networks need downloaded weights, and a patch
    discriminator doubles the cost per step; L1 gives slightly blurrier reconstructions, which the README says.

    Args:
        kl_weight: weight of the KL term (summed over latent dims, averaged over the batch); small (1e-6, as in
            MONAI's latent diffusion tutorials), it keeps the latents bounded without costing reconstruction.
        l1_weight: weight of the L1 reconstruction term.

    ``pred`` is the autoencoder's ``(reconstruction, z_mu, z_sigma)``; ``target`` (B, C, *spatial) the input.
    """

    def __init__(self, kl_weight: float = 1e-6, l1_weight: float = 1.0):
        super().__init__()
        if kl_weight < 0 or l1_weight <= 0:
            raise ValueError(f"kl_weight must be >= 0 and l1_weight > 0, got {kl_weight}, {l1_weight}.")
        self.kl_weight, self.l1_weight = float(kl_weight), float(l1_weight)

    def forward(self, pred, target: torch.Tensor) -> torch.Tensor:
        if not isinstance(pred, (tuple, list)) or len(pred) != 3:
            raise TypeError("pred must be AutoencoderKL's (reconstruction, z_mu, z_sigma) tuple.")
        recon, z_mu, z_sigma = pred
        if recon.shape != target.shape:
            raise ValueError(f"reconstruction {tuple(recon.shape)} and target {tuple(target.shape)} differ in shape.")
        loss = self.l1_weight * (recon.float() - target.float()).abs().mean()
        if self.kl_weight > 0:
            loss = loss + self.kl_weight * kl_to_standard_normal(z_mu, z_sigma).mean()
        return loss


class ReconstructionInferer(Inferer):
    """Evaluation inferer for an ``AutoencoderKL``: the decoding of the posterior mean, ``network.reconstruct(x)``
    (B, C, *spatial), for MONAI's ``SupervisedEvaluator`` and PSNR / SSIM handlers (a ``DistributedDataParallel``
    wrapper is looked through)."""

    def __call__(self, inputs: torch.Tensor, network: Callable, *args, **kwargs) -> torch.Tensor:  # type: ignore[override]
        return unwrap_network(network).reconstruct(inputs)


class LatentVDMInferer(Inferer):
    """Train, evaluate (bits/dim of latents) and sample a VDM in the latent space of a frozen ``AutoencoderKL``.

    Args:
        autoencoder: a trained MONAI ``AutoencoderKL`` (stage 1); it is put in eval mode and frozen.
        vdm: the :class:`VDMInferer` run on latents (default: fixed linear schedule).
        scale_factor: multiplies the encoder's posterior mean to unit variance; None until
            :meth:`fit_scale_factor` computes it at the start of stage 2 (then stored with the weights).
        latent_range: unit-variance latents in ``[-latent_range, latent_range]`` map to the VDM's [-1, 1] and are
            quantised to its ``vocab_size`` levels (values beyond are clipped; :meth:`clipped_fraction` counts them).

    Shapes: images (B, C, *spatial) in [-1, 1] with every spatial size divisible by :attr:`downsample_factor`;
    model-space latents (B, latent_channels, *spatial / downsample_factor) in [-1, 1].
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        vdm: VDMInferer | None = None,
        scale_factor: float | None = None,
        latent_range: float = 4.0,
    ):
        super().__init__()
        if not (hasattr(autoencoder, "encode") and hasattr(autoencoder, "decode")):
            raise ValueError(
                f"autoencoder must be a MONAI AutoencoderKL (encode/decode), got {type(autoencoder).__name__}."
            )
        if latent_range <= 0:
            raise ValueError(f"latent_range must be > 0, got {latent_range}.")
        if scale_factor is not None and not float(scale_factor) > 0:
            raise ValueError(f"scale_factor must be > 0 or None, got {scale_factor}.")
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.vdm = VDMInferer() if vdm is None else vdm
        self.scale_factor = None if scale_factor is None else float(scale_factor)
        self.latent_range = float(latent_range)

    # -----------------------------------------------------------------------------------------
    # geometry
    # -----------------------------------------------------------------------------------------
    @property
    def downsample_factor(self) -> int:
        """Image voxels per latent voxel along each axis: 2 per encoder level after the first."""
        return 2 ** (len(self.autoencoder.encoder.channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.autoencoder.latent_channels)

    def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, ...]:
        """(B, latent_channels, *spatial / f) of images (B, C, *spatial); every spatial size must divide by f."""
        shape = tuple(int(s) for s in image_shape)
        f = self.downsample_factor
        if len(shape) < 3 or any(s % f for s in shape[2:]):
            raise ValueError(f"shape must be (B, C, *spatial) with spatial sizes divisible by {f}, got {shape}.")
        return (shape[0], self.latent_channels, *(s // f for s in shape[2:]))

    def noise_shape(self, image_shape: Sequence[int]) -> tuple[int, ...]:
        """The shape of ``sample``'s ``input_noise`` for images of ``image_shape``: the latents' (:meth:`latent_shape`)."""
        return self.latent_shape(image_shape)

    def parameters(self):
        """Learnable parameters of the VDM's schedule (the autoencoder is frozen)."""
        return self.vdm.parameters()

    # -----------------------------------------------------------------------------------------
    # encode / decode
    # -----------------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        p = next(iter(self.autoencoder.parameters()), None)
        return p.device if p is not None else torch.device("cpu")

    @torch.no_grad()
    def encode_raw(self, images: torch.Tensor) -> torch.Tensor:
        """Posterior mean of the encoder, unscaled: (B, latent_channels, *spatial / f)."""
        self.latent_shape(images.shape)
        z_mu, _ = self.autoencoder.encode(images.to(self._device()))
        return z_mu

    def _require_scale(self) -> float:
        if self.scale_factor is None:
            raise ValueError(
                "scale_factor is not set: call fit_scale_factor(latents) at the start of stage 2, or load the "
                "value stored with the trained weights."
            )
        return self.scale_factor

    def to_model_space(self, raw_latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``clip(scale_factor * z / latent_range, -1, 1)``, the VDM's data."""
        return (raw_latents * (self._require_scale() / self.latent_range)).clamp(-1.0, 1.0)

    def clipped_fraction(self, raw_latents: torch.Tensor) -> float:
        """Share of latent values outside ``latent_range`` standard deviations (clipped by :meth:`to_model_space`)."""
        return float(((raw_latents * self._require_scale()).abs() > self.latent_range).float().mean())

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, *spatial) in [-1, 1] to model-space latents in [-1, 1]."""
        return self.to_model_space(self.encode_raw(images))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Model-space latents back to images (B, C, *spatial * f), not clipped."""
        z = latents.to(self._device()) * (self.latent_range / self._require_scale())
        return self.autoencoder.decode(z)

    def fit_scale_factor(self, raw_latents: torch.Tensor | Sequence[torch.Tensor]) -> float:
        """Set and return ``scale_factor = 1 / std`` of the given unscaled latents (all values pooled)."""
        if isinstance(raw_latents, torch.Tensor):
            raw_latents = [raw_latents]
        flat = torch.cat([torch.as_tensor(z).detach().float().reshape(-1).cpu() for z in raw_latents])
        if flat.numel() < 2:
            raise ValueError("raw_latents must hold at least two values to estimate a standard deviation.")
        std = float(flat.std())
        if not std > 0:
            raise ValueError("the latents have zero variance: is the autoencoder trained?")
        self.scale_factor = 1.0 / std
        return self.scale_factor

    # -----------------------------------------------------------------------------------------
    # state (for ignite's CheckpointSaver / CheckpointLoader)
    # -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"scale_factor": self.scale_factor, "latent_range": self.latent_range}

    def load_state_dict(self, state: dict) -> None:
        if state.get("scale_factor") is not None:
            self.scale_factor = float(state["scale_factor"])
        if state.get("latent_range") is not None:
            self.latent_range = float(state["latent_range"])

    # -----------------------------------------------------------------------------------------
    # training, evaluation, sampling
    # -----------------------------------------------------------------------------------------
    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: Callable, class_labels: torch.Tensor | None = None, **kwargs
    ) -> VDMOutput:
        """One Monte-Carlo estimate of the VDM's negative VLB on the latents of ``inputs`` (images in [-1, 1]);
        ``bpd`` and its terms are bits per latent dimension.  ``kwargs`` go to :meth:`VDMInferer.__call__`.
        For training on latents encoded once (the autoencoder is frozen), call ``self.vdm`` on :meth:`encode`'s
        output instead; that is the same computation without the encoder pass."""
        return self.vdm(self.encode(inputs), network, class_labels=class_labels, **kwargs)

    @torch.no_grad()
    def bits_per_dim(self, inputs: torch.Tensor, network: Callable, **kwargs) -> dict[str, torch.Tensor]:
        """Variational bound of the quantised latents of ``inputs``, bits per latent dimension (B,) per term
        (:meth:`VDMInferer.bits_per_dim`)."""
        return self.vdm.bits_per_dim(self.encode(inputs), network, **kwargs)

    @torch.no_grad()
    def sample(self, input_noise: torch.Tensor, network: Callable, decode: bool = True, **kwargs):
        """Sample latents from ``input_noise`` with the VDM's samplers and decode them.

        Args:
            input_noise: (B, C_latent, *latent_spatial) standard normal noise in latent space; its shape for images
                of shape ``(B, C, *spatial)`` is :meth:`latent_shape` of that shape.
            network: the latent score network.
            decode: False returns the model-space latents instead of images.
            kwargs: the rest of :meth:`VDMInferer.sample`: ``class_labels``, ``generator``, ``options``
                (:class:`~monai_medgen.inferers.SamplingOptions`) or its fields as keywords (``sampler``,
                ``num_steps``, ``save_intermediates``, ``intermediate_steps``, ...).

        Returns:
            images (B, C, *spatial) in [-1, 1] (or latents), or ``(images, frames)`` with ``save_intermediates``
            (the intermediate latents decoded on the CPU, for an animation).
        """
        out = self.vdm.sample(input_noise, network, **kwargs)
        save_intermediates = isinstance(out, tuple)
        latents, frames = out if save_intermediates else (out, None)
        if not decode:
            return out
        images = self.decode(latents).clamp(-1.0, 1.0)
        if frames is None:
            return images
        return images, [self.decode(z).clamp(-1.0, 1.0).cpu() for z in frames]
