"""Edit-friendly DDPM inversion (Huberman-Spiegelglas et al., eta = 1) in sigma space."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .schedule import noise_map

NoisePredictor = Callable[[Tensor, Tensor], Tensor]
"""``(latents [R, C, H, W], sigmas [R]) -> noise prediction [R, C, H, W]``, guidance included."""

StepCallback = Callable[[int, int], None]
"""``(steps done, steps total)``; called after every model call so callers can report and interrupt."""


@dataclass
class Inversion:
    """A batch of images inverted along one schedule, from ``start_step`` on.

    ``latents[j]`` is x at global step ``start_step + j`` (the last one is the clean x0) and
    ``noise_maps[j]`` is the z that takes it to the next one. Steps before ``start_step`` are
    never used by generation, so they are neither computed nor stored.
    """

    clean: Tensor  # [B, C, H, W] model-space clean latent
    sigmas: Tensor  # [steps + 1], the whole schedule
    start_step: int
    latents: Tensor  # [steps + 1 - start_step, B, C, H, W]
    noise_maps: Tensor  # [steps - start_step, B, C, H, W], float64 (see schedule.noise_map)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def batch_size(self) -> int:
        return self.clean.shape[0]

    def latent_at(self, step: int) -> Tensor:
        return self.latents[self._index(step, self.steps)]

    def noise_at(self, step: int) -> Tensor:
        return self.noise_maps[self._index(step, self.steps - 1)]

    def _index(self, step: int, last: int) -> int:
        if not self.start_step <= step <= last:
            raise IndexError(f"step {step} is outside this inversion's stored range {self.start_step}..{last}")
        return step - self.start_step

    def to(self, device: torch.device | str) -> Inversion:
        """The same inversion with its latents and noise maps on ``device``."""
        return Inversion(
            clean=self.clean.to(device),
            sigmas=self.sigmas,
            start_step=self.start_step,
            latents=self.latents.to(device),
            noise_maps=self.noise_maps.to(device),
            metadata=dict(self.metadata),
        )

    def select(self, rows: list[int]) -> Inversion:
        """The inversion of a subset of the batch's images."""
        return Inversion(
            clean=self.clean[rows],
            sigmas=self.sigmas,
            start_step=self.start_step,
            latents=self.latents[:, rows],
            noise_maps=self.noise_maps[:, rows],
            metadata=dict(self.metadata),
        )


def draw_noisy_latents(clean: Tensor, sigmas: Tensor, seed: int) -> list[Tensor]:
    """x_i = x0 + sigma_i * n_i with independent n_i for i < N, and x_N = x0.

    All N draws are made in order whatever start step is used later, so an inversion that skips
    early steps sees exactly the same x_i as a full one with the same seed.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    steps = len(sigmas) - 1
    noisy = []
    for i in range(steps):
        draw = torch.randn(clean.shape, generator=generator, dtype=torch.float32)
        noisy.append(clean + float(sigmas[i]) * draw.to(clean.device, clean.dtype))
    noisy.append(clean.clone())
    return noisy


def invert(
    predict_noise: NoisePredictor,
    clean: Tensor,
    sigmas: Tensor,
    start_step: int = 0,
    seed: int = 0,
    steps_per_call: int = 1,
    zero_last_noise: bool = True,
    callback: StepCallback | None = None,
) -> Inversion:
    """Invert a batch of clean latents.

    Each noise map depends only on its own two independently drawn latents, so the model calls
    for different steps are independent: ``steps_per_call`` batches several steps in one call.
    ``zero_last_noise`` reproduces the official code, which zeroes the last noise map.
    """
    steps = len(sigmas) - 1
    if not 0 <= start_step < steps:
        raise ValueError(f"start step must be in 0..{steps - 1} for {steps} steps, got {start_step}")
    if clean.shape[0] == 0:
        raise ValueError("cannot invert an empty latent batch")
    noisy = draw_noisy_latents(clean, sigmas, seed)
    batch = clean.shape[0]
    todo = list(range(start_step, steps))
    noise_maps: list[Tensor] = []
    for first in range(0, len(todo), max(1, steps_per_call)):
        group = todo[first : first + max(1, steps_per_call)]
        rows = torch.cat([noisy[i] for i in group])
        row_sigmas = torch.cat([sigmas[i].expand(batch) for i in group]).to(clean.device)
        predictions = predict_noise(rows, row_sigmas).split(batch)
        for i, prediction in zip(group, predictions, strict=True):
            noise_maps.append(noise_map(noisy[i], noisy[i + 1], prediction, float(sigmas[i]), float(sigmas[i + 1])))
        if callback is not None:
            callback(first + len(group), len(todo))
    if zero_last_noise:
        noise_maps[-1] = torch.zeros_like(noise_maps[-1])
    return Inversion(
        clean=clean,
        sigmas=sigmas.detach().float().cpu(),
        start_step=start_step,
        latents=torch.stack(noisy[start_step:]),
        noise_maps=torch.stack(noise_maps),
    )
