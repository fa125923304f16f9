"""Pictures of what a diffusion model does: sample grids (PNG, TensorBoard) and sampling GIFs."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from ignite.engine import Events

__all__ = ["make_grid", "save_grid_png", "save_gif", "SampleGridHandler"]


def _to_uint8(x: torch.Tensor, value_range: tuple[float, float]) -> np.ndarray:
    lo, hi = value_range
    a = ((x.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    return (a.numpy() * 255 + 0.5).astype(np.uint8)


def make_grid(images: torch.Tensor, ncols: int | None = None, value_range=(-1.0, 1.0), pad: int = 2) -> np.ndarray:
    """Tile (B, C, H, W) images, or (B, C, H, W, D) volumes by their middle slices along each axis,
    into one uint8 (rows, cols) array; the first channel is shown."""
    if images.ndim == 5:  # three orthogonal middle slices per volume, side by side
        h, w, d = images.shape[2:]
        views = [images[:, :1, h // 2], images[:, :1, :, w // 2], images[:, :1, :, :, d // 2]]
        size = max(max(v.shape[-2:]) for v in views)
        views = [
            torch.nn.functional.pad(v, (0, size - v.shape[-1], 0, size - v.shape[-2]), value=value_range[0])
            for v in views
        ]
        images = torch.cat(views, dim=-1)
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W) or (B, C, H, W, D), got {tuple(images.shape)}.")
    b, _, h, w = images.shape
    ncols = ncols or int(np.ceil(np.sqrt(b)))
    nrows = int(np.ceil(b / ncols))
    grid = np.zeros((nrows * (h + pad) + pad, ncols * (w + pad) + pad), dtype=np.uint8)
    tiles = _to_uint8(images[:, 0], value_range)
    for i in range(b):
        r, c = divmod(i, ncols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = tiles[i]
    return grid


def save_grid_png(images: torch.Tensor, path: str | os.PathLike, **kwargs) -> str:
    """Write :func:`make_grid` of ``images`` to a PNG file; returns the path."""
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(make_grid(images, **kwargs)).save(path)
    return str(path)


def save_gif(frames: Sequence[torch.Tensor], path: str | os.PathLike, duration_ms: int = 80, **kwargs) -> str:
    """A sampling animation: one grid per frame (each frame (B, C, *spatial)), last frame held longer."""
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    pics = [Image.fromarray(make_grid(f.clamp(-1, 1), **kwargs)) for f in frames]
    durations = [duration_ms] * (len(pics) - 1) + [duration_ms * 15]
    pics[0].save(path, save_all=True, append_images=pics[1:], duration=durations, loop=0)
    return str(path)


class SampleGridHandler:
    """Every ``interval`` epochs, draw samples with ``sample_fn()`` and write a PNG grid (and a GIF of the
    sampling chain when ``sample_fn`` returns ``(samples, intermediates)``) to ``output_dir`` and, if given,
    to a TensorBoard ``SummaryWriter``.

    Args:
        sample_fn: no-argument callable returning samples (B, C, *spatial) in [-1, 1], or (samples, frames).
        output_dir: folder for ``samples_epoch_{E}.png`` / ``.gif``.
        interval: epochs between grids.
        summary_writer: optional ``torch.utils.tensorboard.SummaryWriter``.
    """

    def __init__(
        self, sample_fn: Callable, output_dir: str, interval: int = 1, summary_writer=None, tag: str = "samples"
    ):
        self.sample_fn, self.output_dir, self.interval = sample_fn, output_dir, max(1, int(interval))
        self.writer, self.tag = summary_writer, tag

    def attach(self, engine) -> None:

        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine) -> None:
        epoch = engine.state.epoch
        out = self.sample_fn()
        samples, frames = out if isinstance(out, tuple) else (out, None)
        path = save_grid_png(samples, os.path.join(self.output_dir, f"{self.tag}_epoch_{epoch}.png"))
        if frames:
            save_gif(list(frames) + [samples], os.path.join(self.output_dir, f"{self.tag}_epoch_{epoch}.gif"))
        if self.writer is not None:
            from PIL import Image

            grid = np.asarray(Image.open(path))
            self.writer.add_image(self.tag, grid[None], global_step=engine.state.iteration)
