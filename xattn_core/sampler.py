"""The joint three-path sampler (SPEC 2.3), written against a small backend interface.

Per generation step the backend is asked for noise predictions in up to three calls:

1. the appearance rows (capturing their keys/values when the output will attend to them);
2. the output rows together with the structure rows, the output rows swapping attention;
3. when swap guidance is active, the output rows alone without swapping (the "plain" pass).

Every path then takes a DDPM step with its own stored noise map, and AdaIN pulls the output's
latent statistics towards the appearance path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from .adain import adain, resize_mask
from .attention import DEFAULT_MEMORY_BUDGET, AttentionSwap, KeyValueStore
from .inversion import Inversion
from .plan import KeyValueSource, PlanSettings, StepPlan, build_plan
from .schedule import ddpm_step


class Backend(Protocol):
    """A model that predicts noise for a batch of sigma-space latents at one sigma."""

    def predict_noise(self, latents: Tensor, sigma: float, swap: AttentionSwap | None) -> Tensor: ...


@dataclass(frozen=True)
class TransferSettings:
    plan: PlanSettings = field(default_factory=PlanSettings)
    contrast: float = 1.67
    start_step: int | None = None  # None: the later of the two inversions' start steps
    adain_strength: float = 1.0
    memory_budget: int = DEFAULT_MEMORY_BUDGET


@dataclass
class TransferResult:
    output: Tensor  # [outputs, C, H, W]
    appearance: Tensor  # the appearance path's own final latents (a reconstruction)
    structure: Tensor  # the structure path's own final latents
    pairs: list[tuple[int, int]]  # (appearance index, structure index) of each output


GenerationCallback = Callable[[int, int, Tensor, Tensor], None]
"""``(step index, generation steps, output latents after the step, the step's denoised output estimate)``."""


def pair_rows(appearances: int, structures: int) -> list[tuple[int, int]]:
    """(appearance, structure) index of each output: 1 x N, N x 1, or N x N paired."""
    if appearances < 1 or structures < 1:
        raise ValueError("both the appearance and the structure inversion need at least one image")
    if appearances == structures:
        return [(i, i) for i in range(appearances)]
    if structures == 1:
        return [(i, 0) for i in range(appearances)]
    if appearances == 1:
        return [(0, i) for i in range(structures)]
    raise ValueError(
        f"cannot pair {appearances} appearance images with {structures} structure images: use one structure "
        "with many appearances, many structures with one appearance, or equal counts (paired one to one)"
    )


def check_compatible(appearance: Inversion, structure: Inversion, start_step: int | None) -> int:
    """Validate the two inversions against each other and return the generation's start step."""
    if appearance.steps != structure.steps or not torch.allclose(appearance.sigmas, structure.sigmas, rtol=1e-5):
        raise ValueError(
            f"the appearance inversion ({appearance.steps} steps) and the structure inversion "
            f"({structure.steps} steps) use different schedules; invert both with the same steps and sigmas"
        )
    if appearance.clean.shape[1] != structure.clean.shape[1]:
        raise ValueError("the appearance and structure inversions have different latent channel counts")
    earliest = max(appearance.start_step, structure.start_step)
    start = earliest if start_step is None else start_step
    if not earliest <= start < appearance.steps:
        raise ValueError(
            f"start step {start} is not available: the inversions start at steps {appearance.start_step} and "
            f"{structure.start_step} of {appearance.steps}; use a start step from {earliest} to {appearance.steps - 1}"
        )
    return start


def _swap_for(
    step: StepPlan, pairs: list[tuple[int, int]], settings: TransferSettings, captured: KeyValueStore | None
) -> AttentionSwap | None:
    """The swap directive for the output + structure call of ``step``."""
    if not step.swaps:
        return None
    outputs = len(pairs)
    if step.kv_source is KeyValueSource.STRUCTURE:
        sources = tuple(outputs + structure_index for _, structure_index in pairs)
    else:
        sources = tuple(appearance_index for appearance_index, _ in pairs)
    return AttentionSwap(
        levels=step.swap_levels,
        contrast=settings.contrast,
        outputs=tuple(range(outputs)),
        sources=sources,
        kv_source=step.kv_source,
        captured=captured,
        memory_budget=settings.memory_budget,
    )


def transfer(
    backend: Backend,
    appearance: Inversion,
    structure: Inversion,
    settings: TransferSettings = TransferSettings(),
    appearance_mask: Tensor | None = None,
    structure_mask: Tensor | None = None,
    callback: GenerationCallback | None = None,
) -> TransferResult:
    """Generate images with the structure's layout and the appearance's look."""
    start = check_compatible(appearance, structure, settings.start_step)
    pairs = pair_rows(appearance.batch_size, structure.batch_size)
    appearance_rows = [a for a, _ in pairs]
    structure_rows = [s for _, s in pairs]
    plan = build_plan(appearance.steps, start, settings.plan)
    sigmas = appearance.sigmas.tolist()

    content_mask = style_mask = None
    if structure_mask is not None:
        content_mask = resize_mask(structure_mask, structure.clean.shape[-2:], structure.batch_size)[structure_rows]
    if appearance_mask is not None:
        style_mask = resize_mask(appearance_mask, appearance.clean.shape[-2:], appearance.batch_size)[appearance_rows]

    output = structure.latent_at(start)[structure_rows].clone()
    appearance_path = appearance.latent_at(start).clone()
    structure_path = structure.latent_at(start).clone()
    outputs = len(pairs)

    for step in plan:
        i = step.global_step
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        store = KeyValueStore() if step.swaps and step.kv_source is KeyValueSource.APPEARANCE else None
        appearance_swap = AttentionSwap(levels=step.swap_levels, capture=store) if store is not None else None
        appearance_noise = backend.predict_noise(appearance_path, sigma, appearance_swap)

        joint = torch.cat([output, structure_path])
        joint_noise = backend.predict_noise(joint, sigma, _swap_for(step, pairs, settings, store))
        output_noise, structure_noise = joint_noise[:outputs], joint_noise[outputs:]
        if step.swap_weight is not None:
            plain_noise = backend.predict_noise(output, sigma, None)
            output_noise = plain_noise + step.swap_weight * (output_noise - plain_noise)
        del store

        denoised = output - sigma * output_noise  # for previews
        structure_maps = structure.noise_at(i)
        output = ddpm_step(output, output_noise, sigma, sigma_next, structure_maps[structure_rows])
        appearance_path = ddpm_step(appearance_path, appearance_noise, sigma, sigma_next, appearance.noise_at(i))
        structure_path = ddpm_step(structure_path, structure_noise, sigma, sigma_next, structure_maps)
        if step.adain:
            output = adain(output, appearance_path[appearance_rows], content_mask, style_mask, settings.adain_strength)
        if callback is not None:
            callback(step.index, len(plan), output, denoised)

    return TransferResult(output=output, appearance=appearance_path, structure=structure_path, pairs=pairs)
