"""Score network eps_hat(z_t, gamma_t, class_labels) for 2D images and 3D volumes.

MONAI's ``DiffusionModelUNet`` does the heavy lifting; this adapter adds what VDM needs and MONAI
lacks: a continuous noise level (the log-SNR gamma, not an integer timestep), Fourier features of the
input for fine-scale likelihood (VDM App. C), an ``eps_hat = z + net(.)`` residual output, and a
reserved *null* class for classifier-free guidance.

Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` by default (MONAI's
``use_flash_attention``): the same values as the plain softmax(QK^T)V (tested), without materialising the
(tokens x tokens) matrix, which for a 64^3 patch (4096 bottleneck tokens) is 268 MB per call and most of the
page-fault (system) time of 3D sampling on a CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import CrossAttentionBlock, SABlock
from monai.networks.nets import DiffusionModelUNet
from torch import nn

__all__ = ["FourierFeatures", "GridSkip", "ScoreUNet", "size_multiple"]


class FourierFeatures(nn.Module):
    """``sin(2^n 2 pi z)`` and ``cos(2^n 2 pi z)`` for n in ``exponents``, appended as channels.

    Input (B, C, *spatial) -> (B, C * (1 + 2 * len(exponents)), *spatial).
    """

    def __init__(self, exponents: Sequence[int] = (6, 7)):
        super().__init__()
        self.register_buffer("freqs", 2.0 * torch.pi * 2.0 ** torch.as_tensor(list(exponents), dtype=torch.float32))

    @property
    def multiplier(self) -> int:
        return 1 + 2 * int(self.freqs.numel())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.freqs.numel() == 0:
            return z
        shape = (1, 1, -1) + (1,) * (z.ndim - 2)
        h = z.unsqueeze(2) * self.freqs.reshape(shape).to(z.dtype)  # B, C, F, *spatial
        h = torch.cat([h.sin(), h.cos()], dim=2).flatten(1, 2)
        return torch.cat([z, h], dim=1)


class GridSkip(nn.Module):
    """Discretisation-aware skip: the noise implied by snapping z onto the data's intensity grid.

    8-bit data sit on ``V`` levels ``c_k = (2k + 1)/V - 1``.  Below the grid spacing the noise is
    recoverable exactly: ``f = (z - alpha c(z / alpha)) / sigma`` with ``c(.)`` the nearest level equals eps
    whenever ``sigma / alpha`` is well under half a level.  A plain U-Net must learn this gamma-dependent,
    up-to-1000x gain from Fourier features, which costs many steps; here it is given, and a learned gate
    ``w(gamma) = sigmoid(s (c - gamma))`` (initialised to open a little below one level of noise) mixes it
    with the network: ``eps_hat = w f + (1 - w) eps_net``.  Any eps model gives a valid bound, so bits/dim
    stay exact.

    Args:
        vocab_size: number of data levels V (256 for 8-bit).
    """

    def __init__(self, vocab_size: int = 256):
        super().__init__()
        self.vocab_size = int(vocab_size)
        spacing = 2.0 / self.vocab_size
        self.centre = nn.Parameter(torch.tensor(2.0 * float(torch.log(torch.tensor(spacing / 3.0)))))
        self.sharpness = nn.Parameter(torch.tensor(2.0))

    def features(self, z: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        g = gamma.reshape(-1, *([1] * (z.ndim - 1))).to(z.dtype)
        alpha, sigma = torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()
        v = self.vocab_size
        k = torch.floor((z / alpha + 1) * 0.5 * v).clamp(0, v - 1)
        nearest = (2 * k + 1) / v - 1
        return (z - alpha * nearest) / sigma

    def forward(self, z: torch.Tensor, gamma: torch.Tensor, eps_net: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.sharpness * (self.centre - gamma)).reshape(-1, *([1] * (z.ndim - 1)))
        return w * self.features(z, gamma) + (1 - w) * eps_net


class ScoreUNet(nn.Module):
    """eps_hat(z_t, gamma_t, class_labels) on top of MONAI's ``DiffusionModelUNet``.

    The noise level enters as ``1000 * (gamma - gamma_min) / (gamma_max - gamma_min)`` through the
    U-Net's sinusoidal timestep embedding (VDM's convention), so any continuous or discrete schedule works.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels C of z.
        out_channels: channels of eps (default C).
        cond_channels: channels of an image condition concatenated to z (restoration); 0 for none.
        channels, num_res_blocks, attention_levels, num_head_channels, norm_num_groups: passed to
            ``DiffusionModelUNet`` (defaults: no attention but MONAI's middle block, heads of up to 32
            channels, the largest group count <= 32 dividing every level).
        num_classes: number of real classes; one extra embedding (index ``num_classes``) is the null
            class used when a label is dropped (classifier-free guidance).  None: unconditional.
        fourier_exponents: exponents n of the Fourier features of z (empty: none).
        residual: return ``z + net(.)`` (VDM) instead of ``net(.)``.
        grid_levels: number of intensity levels of discrete data (256 for 8-bit) to add a
            :class:`GridSkip`; None (default) for none.
        gamma_min, gamma_max: range used to normalise gamma for the embedding.
        optional_condition: with ``cond_channels``, a missing condition is a zero image (a network trained with its
            condition sometimes zeroed, e.g. contrast translation that also generates without a source image).
        use_flash_attention: attention by torch's ``scaled_dot_product_attention`` (flash / memory-efficient
            kernels; default) instead of MONAI's explicit softmax(QK^T)V; same values, far less memory.  Switch it
            later with the ``use_flash_attention`` attribute (weights are the same either way).

    Shapes: z (B, C, *spatial), gamma (B,) or scalar, class_labels (B,) long, condition
    (B, cond_channels, *spatial) -> eps (B, out_channels, *spatial).

    Packed input: ``forward(x)`` with ``gamma`` left out takes everything in one tensor of
    :attr:`packed_channels` channels, ``x = cat([z, condition, gamma map, class-label map])``: the condition
    channels as MONAI's ``DiffusionInferer`` concatenates them (``mode="concat"``), then one channel holding
    gamma_t, then (class-conditional networks only) one channel holding the class index (as a float; the null
    class for none), each constant over an image.  It is the form tools that call a network with one tensor use:
    ``python -m monai.bundle ckpt_export --use_trace True`` (TorchScript by tracing) and ``verify_net_in_out``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int | None = None,
        cond_channels: int = 0,
        channels: Sequence[int] = (32, 64, 64),
        num_res_blocks: Sequence[int] | int = 1,
        attention_levels: Sequence[bool] | None = None,
        num_head_channels: int | Sequence[int] | None = None,
        norm_num_groups: int | None = None,
        num_classes: int | None = None,
        fourier_exponents: Sequence[int] = (6, 7),
        residual: bool = True,
        gamma_min: float = -13.3,
        gamma_max: float = 5.0,
        use_flash_attention: bool = True,
        grid_levels: int | None = None,
        optional_condition: bool = False,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        out_channels = in_channels if out_channels is None else out_channels
        if residual and out_channels != in_channels:
            raise ValueError("residual=True needs out_channels == in_channels.")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer or None, got {num_classes}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.cond_channels = int(cond_channels)
        self.optional_condition = bool(optional_condition)
        self.num_classes = num_classes
        self.residual = residual
        self.gamma_min, self.gamma_max = float(gamma_min), float(gamma_max)
        self.fourier = FourierFeatures(fourier_exponents)
        self.grid_skip = GridSkip(grid_levels) if grid_levels else None
        if attention_levels is None:
            attention_levels = [False] * len(channels)
        if norm_num_groups is None:  # the largest group count (<= 32) that divides every level's channels
            norm_num_groups = min(32, math.gcd(*(int(c) for c in channels)))
        if num_head_channels is None:  # the bottleneck attention as heads of up to 32 channels
            num_head_channels = math.gcd(32, int(channels[-1]))
        self.unet = DiffusionModelUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels * self.fourier.multiplier + self.cond_channels,
            out_channels=out_channels,
            channels=tuple(channels),
            num_res_blocks=num_res_blocks,
            attention_levels=tuple(attention_levels),
            num_head_channels=num_head_channels,
            norm_num_groups=norm_num_groups,
            num_class_embeds=None if num_classes is None else num_classes + 1,
            use_flash_attention=use_flash_attention,
        )

    @property
    def use_flash_attention(self) -> bool:
        """Whether the attention blocks use torch's ``scaled_dot_product_attention``; settable at any time."""
        flags = [m.use_flash_attention for m in self.modules() if isinstance(m, (SABlock, CrossAttentionBlock))]
        return bool(flags) and all(flags)

    @use_flash_attention.setter
    def use_flash_attention(self, enabled: bool) -> None:
        for m in self.modules():
            if isinstance(m, (SABlock, CrossAttentionBlock)):
                if enabled and getattr(m, "save_attn", False):
                    raise ValueError("use_flash_attention cannot be set on attention blocks built with save_attn=True.")
                m.use_flash_attention = bool(enabled)

    @property
    def null_class(self) -> int | None:
        """Index of the 'no label' embedding used for classifier-free guidance."""
        return self.num_classes

    @property
    def packed_channels(self) -> int:
        """Channels of the packed single-tensor input (see the class docstring): image, condition, gamma and, for
        a class-conditional network, the class index."""
        return self.in_channels + self.cond_channels + 1 + (self.num_classes is not None)

    def unpack(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(z, gamma, class_labels, condition)`` from a packed input ``x`` (B, :attr:`packed_channels`, *spatial);
        gamma and the class index are read at the first voxel of their channels."""
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.packed_channels:
            raise ValueError(
                f"gamma: not given, so x must be the packed input of shape (B, {self.packed_channels}, *spatial) with "
                f"{self.spatial_dims} spatial dims (image, condition, gamma{', class' if self.num_classes is not None else ''}"
                f" channels), got {tuple(x.shape)}; or pass gamma."
            )
        c0, c1 = self.in_channels, self.in_channels + self.cond_channels
        z, condition = x[:, :c0], (x[:, c0:c1] if self.cond_channels else None)
        first = x.flatten(2)[:, :, 0]  # (B, channels): the value at the first voxel
        gamma = first[:, c1]
        class_labels = first[:, c1 + 1].round().long() if self.num_classes is not None else None
        return z, gamma, class_labels, condition

    def forward(
        self,
        z: torch.Tensor,
        gamma: torch.Tensor | float | None = None,
        class_labels: torch.Tensor | None = None,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if gamma is None:
            if class_labels is not None or condition is not None:
                raise ValueError("gamma: required when class_labels or condition are given separately.")
            z, gamma, class_labels, condition = self.unpack(z)
        if z.ndim != self.spatial_dims + 2 or z.shape[1] != self.in_channels:
            raise ValueError(
                f"z must have shape (B, {self.in_channels}, *spatial) with {self.spatial_dims} spatial dims, "
                f"got {tuple(z.shape)}."
            )
        gamma = torch.as_tensor(gamma, device=z.device, dtype=torch.float32).reshape(-1).expand(z.shape[0])
        t_emb = 1000.0 * (gamma - self.gamma_min) / (self.gamma_max - self.gamma_min)
        h = self.fourier(z)
        if self.cond_channels:
            if condition is None and self.optional_condition:  # "no source image": the zero image it trained on
                condition = z.new_zeros((z.shape[0], self.cond_channels, *z.shape[2:]))
            if condition is None or condition.shape[1] != self.cond_channels or condition.shape[2:] != z.shape[2:]:
                got = None if condition is None else tuple(condition.shape)
                raise ValueError(
                    f"condition must have shape (B, {self.cond_channels}, *{tuple(z.shape[2:])}), got {got}."
                )
            h = torch.cat([h, condition.to(h.dtype)], dim=1)
        elif condition is not None:
            raise ValueError("condition given but the network was built with cond_channels=0.")
        if self.num_classes is not None:
            if class_labels is None:
                class_labels = torch.full((z.shape[0],), self.num_classes, device=z.device, dtype=torch.long)
            class_labels = torch.as_tensor(class_labels, device=z.device).long().reshape(-1)
            if class_labels.numel() == 1:
                class_labels = class_labels.expand(z.shape[0])
            outside = (class_labels < 0) | (class_labels > self.num_classes)
            if class_labels.device.type != "cpu":  # checked on the device: no wait for it at every sampling step
                torch._assert_async(~outside.any(), f"class_labels must lie in [0, {self.num_classes}].")
            elif bool(outside.any()):
                raise ValueError(
                    f"class_labels must lie in [0, {self.num_classes - 1}] (or {self.num_classes} for the null class), "
                    f"got {class_labels.tolist()}."
                )
        elif class_labels is not None:
            raise ValueError("class_labels given but the network was built with num_classes=None.")
        out = self.unet(h, t_emb, class_labels=class_labels)
        eps = z + out if self.residual else out
        return eps if self.grid_skip is None else self.grid_skip(z, gamma, eps)


def size_multiple(network, default: int = 4) -> int:
    """The multiple every image side must be for ``network`` (a :class:`ScoreUNet`, possibly inside a
    ``DistributedDataParallel`` wrapper): 2 ** (number of U-Net levels - 1); ``default`` for another network."""
    unet = getattr(getattr(network, "module", network), "unet", None)
    levels = getattr(unet, "block_out_channels", None)
    return 2 ** max(0, len(levels) - 1) if levels else int(default)
