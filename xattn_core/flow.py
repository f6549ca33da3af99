"""Edit-friendly inversion for rectified-flow models (Flux), in ComfyUI's CONST parametrisation.

A flow model sees ``x_sigma = (1 - sigma) * x0 + sigma * noise`` with sigma from 1 (pure noise) to 0 (the image)
and predicts the velocity ``v = noise - x0``; the backend's "noise prediction" ``(x - denoised) / sigma`` is that
velocity, so ``denoised = x - sigma * v``.

The analogue of the DDPM (eta = 1) inversion: independent noisy samples ``x_i = (1 - sigma_i) x0 + sigma_i n_i``
along the schedule, and per step the noise map z_i that makes one stochastic step land on x_{i+1} exactly. The
step is ComfyUI's ``euler_ancestral_RF`` at eta = 1: an Euler step down to ``sigma_down = sigma_next**2 / sigma``,
rescaled to sigma_next's signal level, plus ``renoise * z``. The last step (to sigma = 0) has no noise left to
add; there z is the residual ``x0 - denoised`` (coefficient 1), so regeneration lands on the image itself too.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

FLOW = "flow"  # the step kind of this module (Inversion.step_kind)
FLUX_SHIFT = 1.15  # ComfyUI's ModelSamplingFlux default shift (Flux's sampling_settings set none)
FLUX_TABLE_SIZE = 10000  # ModelSamplingFlux's sigma table length


def flux_sigma(timestep: Tensor, shift: float = FLUX_SHIFT) -> Tensor:
    """Flux's time shift: ``e^shift / (e^shift + (1 / t - 1))`` (ComfyUI's ``flux_time_shift`` at sigma 1)."""
    return math.exp(shift) / (math.exp(shift) + (1.0 / timestep - 1.0))


def flux_sigmas(steps: int, shift: float = FLUX_SHIFT) -> Tensor:
    """Flux's shifted schedule as ComfyUI's "simple" scheduler makes it: ``steps + 1`` sigmas from 1 to 0."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    table = flux_sigma(torch.arange(1, FLUX_TABLE_SIZE + 1, dtype=torch.float64) / FLUX_TABLE_SIZE, shift).float()
    stride = len(table) / steps
    picked = [float(table[-(1 + int(k * stride))]) for k in range(steps)]
    return torch.tensor([*picked, 0.0], dtype=torch.float32)


def linear_sigmas(steps: int) -> Tensor:
    """The plain (unshifted) flow schedule: ``steps + 1`` evenly spaced sigmas from 1 to 0."""
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float32)


def flow_noisy(clean: Tensor, sigma: float, noise: Tensor) -> Tensor:
    """``(1 - sigma) * x0 + sigma * noise``: a flow model's noisy latent at ``sigma``."""
    return (1.0 - sigma) * clean + sigma * noise


def flow_split(sigma: float, sigma_next: float) -> tuple[float, float, float]:
    """(sigma_down, rescale, noise coefficient) of one eta = 1 rectified-flow ancestral step.

    ``x_next = rescale * (x + (sigma_down - sigma) * v) + coefficient * z``; the step to sigma 0 is the plain
    Euler step to the image with the residual z at coefficient 1.
    """
    if sigma_next <= 0.0:
        return 0.0, 1.0, 1.0
    sigma_down = sigma_next**2 / sigma
    alpha_next, alpha_down = 1.0 - sigma_next, 1.0 - sigma_down
    renoise = math.sqrt(max(sigma_next**2 - (sigma_down * alpha_next / alpha_down) ** 2, 0.0))
    return sigma_down, alpha_next / alpha_down, renoise


def _flow_mean(latent: Tensor, velocity: Tensor, sigma: float, sigma_next: float) -> Tensor:
    sigma_down, rescale, _ = flow_split(sigma, sigma_next)
    # float64 as in schedule.ddpm_step: the noise map divides by a small coefficient late in the schedule
    return rescale * (latent.double() + (sigma_down - sigma) * velocity.double())


def flow_step(latent: Tensor, velocity: Tensor, sigma: float, sigma_next: float, noise: Tensor | None) -> Tensor:
    """One stochastic rectified-flow step from ``sigma`` to ``sigma_next`` with the noise map ``noise``."""
    stepped = _flow_mean(latent, velocity, sigma, sigma_next)
    coefficient = flow_split(sigma, sigma_next)[2]
    if noise is not None and coefficient > 0.0:
        stepped = stepped + coefficient * noise.double()
    return stepped.to(latent.dtype)


def flow_noise_map(latent: Tensor, next_latent: Tensor, velocity: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """The z (float64) that makes ``flow_step(latent, velocity, ...)`` land on ``next_latent``."""
    coefficient = flow_split(sigma, sigma_next)[2]
    if coefficient == 0.0:
        return torch.zeros_like(latent, dtype=torch.float64)
    return (next_latent.double() - _flow_mean(latent, velocity, sigma, sigma_next)) / coefficient
