"""Noise schedules and the DDPM (eta = 1) step, all in sigma space.

Sigma space is ComfyUI's convention: ``x = x_ddpm / sqrt(alpha_bar)`` and
``sigma = sqrt((1 - alpha_bar) / alpha_bar)``. The official implementation works
with diffusers' DDPM formulas; every helper here is those formulas rescaled.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TRAINING_STEPS = 1000


def sd_alphas_cumprod(
    beta_start: float = 0.00085, beta_end: float = 0.012, training_steps: int = TRAINING_STEPS
) -> Tensor:
    """Cumulative alpha of the Stable Diffusion "scaled_linear" schedule (float64)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, training_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def sd_sigma_table() -> Tensor:
    """The 1000 training sigmas, float32, as ComfyUI's ``model_sampling.sigmas`` holds them."""
    alphas_cumprod = sd_alphas_cumprod()
    return (((1.0 - alphas_cumprod) / alphas_cumprod) ** 0.5).float()


def paper_timesteps(steps: int = 100, training_steps: int = TRAINING_STEPS) -> list[int]:
    """DDIM "leading" spacing with steps_offset 1, then the final t = 0 (set_alpha_to_one=False).

    At 100 steps: 991, 981, ..., 1, 0 (101 entries).
    """
    if steps < 1 or steps > training_steps:
        raise ValueError(f"steps must be in 1..{training_steps}, got {steps}")
    ratio = training_steps // steps
    timesteps = [i * ratio + 1 for i in reversed(range(steps))]
    return timesteps + [0]


def paper_sigmas(sigma_table: Tensor | None = None, steps: int = 100) -> Tensor:
    """The paper schedule: ``steps + 1`` decreasing sigmas ending at sigma(t=0), not at 0.

    ``sigma_table`` is the model's 1000-entry table (``model_sampling.sigmas`` in ComfyUI);
    the SD 1.x table is used when it is omitted.
    """
    table = sd_sigma_table() if sigma_table is None else sigma_table.float().cpu()
    return table[torch.tensor(paper_timesteps(steps, len(table)))]


def timestep_for_sigma(sigma: Tensor, sigma_table: Tensor) -> Tensor:
    """Nearest training timestep in log-sigma (ComfyUI's discrete ``timestep(sigma)``)."""
    log_table = sigma_table.float().to(sigma.device).log()
    distance = (sigma.float().log().reshape(-1, 1) - log_table.reshape(1, -1)).abs()
    return distance.argmin(dim=1).reshape(sigma.shape)


def ancestral_split(sigma: float, sigma_next: float) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an eta = 1 ancestral step from ``sigma`` to ``sigma_next``."""
    if sigma_next <= 0.0:
        return 0.0, 0.0
    sigma_up = math.sqrt(max(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2, 0.0))
    sigma_down = math.sqrt(max(sigma_next**2 - sigma_up**2, 0.0))
    return sigma_down, sigma_up


def ddpm_step(latent: Tensor, noise_pred: Tensor, sigma: float, sigma_next: float, noise: Tensor | None) -> Tensor:
    """One DDPM (eta = 1) step = one Euler-ancestral step with the given noise map.

    ``x_next = denoised + sigma_down * eps + sigma_up * noise`` with ``denoised = x - sigma * eps``.
    """
    sigma_down, sigma_up = ancestral_split(sigma, sigma_next)
    # float64 arithmetic: latents reach |x| ~ 100 at high sigma, where float32 rounding alone
    # would keep an inversion from reproducing its own trajectory to 1e-4
    stepped = latent.double() + (sigma_down - sigma) * noise_pred.double()
    if noise is not None and sigma_up > 0.0:
        stepped = stepped + sigma_up * noise.double()
    return stepped.to(latent.dtype)


def noise_map(latent: Tensor, next_latent: Tensor, noise_pred: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """The noise map z that makes ``ddpm_step(latent, noise_pred, ...)`` land on ``next_latent``.

    Returned in float64: z = (x_next - mean) / sigma_up divides by a small sigma_up late in the
    schedule, and a float32 z would no longer step back onto ``next_latent`` bit for bit.
    """
    sigma_down, sigma_up = ancestral_split(sigma, sigma_next)
    if sigma_up == 0.0:
        return torch.zeros_like(latent, dtype=torch.float64)
    mean = latent.double() + (sigma_down - sigma) * noise_pred.double()
    return (next_latent.double() - mean) / sigma_up
