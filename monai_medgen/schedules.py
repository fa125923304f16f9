"""Noise schedules as a single function: gamma(t) = -log SNR(t), t in [0, 1].

Every diffusion model of this package is a variance-preserving Gaussian diffusion
``z_t = alpha_t * x + sigma_t * eps`` with ``sigma_t^2 = sigmoid(gamma_t)`` and
``alpha_t^2 = sigmoid(-gamma_t)``.  A schedule is an ``nn.Module`` whose ``forward(t)`` returns
gamma(t); everything else (alpha, sigma, their ratios, gamma'(t)) is derived here, in one place,
with log-sigmoid / expm1 arithmetic so the extremes stay finite.

MONAI (1.6) only has discrete beta tables (``DDPMScheduler``, ``DDIMScheduler``);
:class:`DiscreteSchedule` reads such a table as gamma at ``t = k / T`` so the same samplers and
likelihood code run on MONAI-trained DDPMs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Schedule",
    "FixedLinearSchedule",
    "LearnedLinearSchedule",
    "MonotoneNetSchedule",
    "DiscreteSchedule",
    "alpha_sigma",
    "log_alpha2",
    "log_sigma2",
    "gamma_and_slope",
    "time_grid",
]


# ---------------------------------------------------------------------------------------------
# pure functions of gamma
# ---------------------------------------------------------------------------------------------
def log_alpha2(gamma: torch.Tensor) -> torch.Tensor:
    """log alpha^2 = log sigmoid(-gamma), exact for any finite gamma."""
    return F.logsigmoid(-gamma)


def log_sigma2(gamma: torch.Tensor) -> torch.Tensor:
    """log sigma^2 = log sigmoid(gamma), exact for any finite gamma."""
    return F.logsigmoid(gamma)


def alpha_sigma(gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) of a variance-preserving diffusion at log-SNR ``-gamma``."""
    return torch.exp(0.5 * log_alpha2(gamma)), torch.exp(0.5 * log_sigma2(gamma))


def gamma_and_slope(schedule: nn.Module, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gamma(t) and d gamma / dt by autograd (kept in the graph so learned schedules train).

    Args:
        schedule: any module mapping t (B,) to gamma (B,).
        t: times in [0, 1], shape (B,).
    """
    keep_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        t = t.detach().requires_grad_(True)
        gamma = schedule(t)
        (slope,) = torch.autograd.grad(gamma.sum(), t, create_graph=keep_graph)
    if not keep_graph:
        gamma, slope = gamma.detach(), slope.detach()
    return gamma, slope


def time_grid(num_steps: int, num_train_steps: int | None = None, device=None) -> torch.Tensor:
    """Decreasing times ``1 = t_0 > t_1 > ... > t_K = 0`` for a K-step reverse process.

    With ``num_train_steps`` (a discrete model with T steps) the grid lands on ``k / T`` exactly, so a
    sampler with fewer steps than training uses the trained noise levels (no off-by-one drift).
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}.")
    if num_train_steps is None:
        return torch.linspace(1.0, 0.0, num_steps + 1, device=device, dtype=torch.float64).float()
    if num_steps > num_train_steps:
        raise ValueError(f"num_steps ({num_steps}) cannot exceed the {num_train_steps} training steps of the schedule.")
    k = torch.linspace(num_train_steps, 0, num_steps + 1, dtype=torch.float64).round()
    return (k / num_train_steps).float().to(device)


# ---------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------
class Schedule(nn.Module):
    """Base class: ``forward(t)`` maps times (B,) in [0, 1] to gamma (B,), increasing in t.

    Subclasses implement :meth:`forward`; ``gamma_min`` / ``gamma_max`` give the values used to
    normalise gamma for a network's time embedding (fixed numbers, not learned).
    """

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0):
        super().__init__()
        if not gamma_max > gamma_min:
            raise ValueError(f"gamma_max must exceed gamma_min, got gamma_min={gamma_min}, gamma_max={gamma_max}.")
        self.gamma_min = float(gamma_min)
        self.gamma_max = float(gamma_max)

    def endpoints(self) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma(0) and gamma(1) as scalars (they carry gradients for learned schedules)."""
        ref = next(iter(self.parameters()), None)
        t = torch.tensor([0.0, 1.0], device=ref.device if ref is not None else None)
        g = self(t)
        return g[0], g[1]

    def _check_t(self, t: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(t):
            t = torch.as_tensor(t, dtype=torch.float32)
        return t


class FixedLinearSchedule(Schedule):
    """gamma(t) = gamma_min + (gamma_max - gamma_min) t, no parameters (the VDM reference default)."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = self._check_t(t)
        return self.gamma_min + (self.gamma_max - self.gamma_min) * t

    def endpoints(self):
        return torch.tensor(self.gamma_min), torch.tensor(self.gamma_max)


class LearnedLinearSchedule(Schedule):
    """gamma(t) = b + |w| t, initialised to the fixed linear schedule; both endpoints learn from the VLB."""

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0):
        super().__init__(gamma_min, gamma_max)
        self.b = nn.Parameter(torch.tensor(float(gamma_min)))
        self.w = nn.Parameter(torch.tensor(float(gamma_max - gamma_min)))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = self._check_t(t).to(self.b)
        return self.b + self.w.abs() * t

    @torch.no_grad()
    def set_gamma_min(self, gamma_min: float) -> None:
        """Move the lower endpoint gamma(0) to ``gamma_min`` and keep gamma(1) (e.g. to the value
        :meth:`monai_medgen.inferers.VDMInferer.gamma_min_scan` finds best on training images)."""
        gamma_1 = float(self.b + self.w.abs())
        if not gamma_min < gamma_1:
            raise ValueError(f"gamma_min must lie below gamma(1) = {gamma_1:.3f}, got {gamma_min}.")
        self.b.fill_(float(gamma_min))
        self.w.fill_(gamma_1 - float(gamma_min))

    @torch.no_grad()
    def set_gamma_max(self, gamma_max: float) -> None:
        """Move the upper endpoint gamma(1) to ``gamma_max`` and keep gamma(0)
        (:meth:`monai_medgen.inferers.VDMInferer.gamma_max_scan`)."""
        gamma_0 = float(self.b)
        if not gamma_max > gamma_0:
            raise ValueError(f"gamma_max must lie above gamma(0) = {gamma_0:.3f}, got {gamma_max}.")
        self.w.fill_(float(gamma_max) - gamma_0)


class _PositiveLinear(nn.Linear):
    """Linear layer whose weights are used through abs(), so it is monotone non-decreasing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.abs(), self.bias)


class MonotoneNetSchedule(Schedule):
    """Learned monotone network schedule of VDM (Kingma et al. 2021, App. I.2).

    ``g(t) = l1(t) + l3(phi(l2(t'))) / n_features`` with non-negative weights, ``phi(h) = 2(sigmoid(h) - 1/2)``
    and ``t' = 2(t - 1/2)``.  The shape ``(g(t) - g(0)) / (g(1) - g(0))`` runs from 0 to 1 and is rescaled
    between learned endpoints ``gamma(0) = b`` and ``gamma(1) = b + |w|``, so the endpoints and the shape
    are separate parameters.

    Args:
        gamma_min, gamma_max: initial endpoints.
        n_features: hidden width of the monotone network (1024 in the paper).
    """

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0, n_features: int = 1024):
        super().__init__(gamma_min, gamma_max)
        self.n_features = int(n_features)
        self.b = nn.Parameter(torch.tensor(float(gamma_min)))
        self.w = nn.Parameter(torch.tensor(float(gamma_max - gamma_min)))
        self.l1 = _PositiveLinear(1, 1)
        self.l2 = _PositiveLinear(1, self.n_features)
        self.l3 = _PositiveLinear(self.n_features, 1, bias=False)
        with torch.no_grad():
            self.l1.weight.fill_(1.0)
            self.l1.bias.zero_()

    def _g(self, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1, 1)
        h = self.l2(2.0 * (t - 0.5))
        h = 2.0 * (torch.sigmoid(h) - 0.5)
        return (self.l1(t) + self.l3(h) / self.n_features).reshape(-1)

    def shape(self, t: torch.Tensor) -> torch.Tensor:
        """Normalised monotone shape in [0, 1] with shape(0) = 0 and shape(1) = 1."""
        t = self._check_t(t).to(self.b)
        flat = t.reshape(-1)
        g = self._g(torch.cat([flat, flat.new_tensor([0.0, 1.0])]))
        g_t, g0, g1 = g[:-2], g[-2], g[-1]
        return ((g_t - g0) / (g1 - g0).clamp_min(1e-8)).reshape(t.shape)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.b + self.w.abs() * self.shape(t)


class DiscreteSchedule(Schedule):
    """A discrete T-step beta table read as gamma at ``t = k / T`` (k = 0..T), linear in between.

    ``gamma(k / T) = log((1 - abar_k) / abar_k)`` for k >= 1 where ``abar_k`` is the cumulative product
    of ``1 - beta`` up to step k (MONAI's ``alphas_cumprod[k - 1]``).  gamma(0) (clean data, -inf for a
    DDPM) is extrapolated linearly from the first two steps so the reconstruction term stays finite.

    Args:
        alphas_cumprod: (T,) cumulative products, decreasing.
    """

    def __init__(self, alphas_cumprod: torch.Tensor):
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).reshape(-1)
        if abar.numel() < 2 or not bool(((abar > 0) & (abar < 1)).all()):
            raise ValueError("alphas_cumprod must hold at least 2 values strictly between 0 and 1.")
        if not bool((abar[1:] < abar[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing.")
        g = torch.log1p(-abar) - torch.log(abar)
        g0 = 2 * g[0] - g[1]
        gammas = torch.cat([g0.reshape(1), g])
        super().__init__(float(gammas[0]), float(gammas[-1]))
        self.num_train_steps = int(abar.numel())
        self.register_buffer("gammas", gammas.float())

    @classmethod
    def from_scheduler(cls, scheduler) -> DiscreteSchedule:
        """Build from a MONAI ``DDPMScheduler`` / ``DDIMScheduler`` (anything with ``alphas_cumprod``)."""
        abar = getattr(scheduler, "alphas_cumprod", None)
        if abar is None:
            raise ValueError(f"scheduler must have an 'alphas_cumprod' table, got {type(scheduler).__name__}.")
        return cls(abar)

    @classmethod
    def linear_betas(cls, num_train_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        """The DDPM linear beta table (Ho et al.; Med-cDiff uses T = 2000)."""
        betas = torch.linspace(beta_start, beta_end, num_train_steps, dtype=torch.float64)
        return cls(torch.cumprod(1.0 - betas, 0))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = self._check_t(t).to(self.gammas.device, torch.float32)
        x = t.clamp(0.0, 1.0) * self.num_train_steps
        k0 = x.detach().floor().clamp(max=self.num_train_steps - 1).long()
        frac = x - k0.to(x.dtype)
        g0, g1 = self.gammas[k0], self.gammas[k0 + 1]
        return g0 + (g1 - g0) * frac

    def nearest_timestep(self, gamma: torch.Tensor) -> torch.Tensor:
        """MONAI timestep index (0..T-1) whose training noise level is nearest to ``gamma`` (any shape)."""
        table = self.gammas[1:]
        gamma = torch.as_tensor(gamma).to(table).contiguous()
        upper = torch.searchsorted(table, gamma).clamp(1, table.numel() - 1)
        lower_nearer = (gamma - table[upper - 1]) <= (table[upper] - gamma)
        return (upper - lower_nearer.long()).long()

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """MONAI integer timestep index (0..T-1) of time t: step k / T is index k - 1."""
        return (torch.as_tensor(t) * self.num_train_steps).round().long().clamp(1, self.num_train_steps) - 1


def snr_db(gamma: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio in decibels, handy for plots: -10 log10(e) gamma."""
    return -10.0 / math.log(10.0) * gamma
