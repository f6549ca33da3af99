"""The joint three-path sampler (SPEC 2.3), written against a small backend interface.

Per generation step the backend is asked for noise predictions in up to three calls:

1. the appearance rows (capturing their keys/values when the output will attend to them);
2. the output rows together with the structure rows, the output rows swapping attention;
3. when swap guidance is active, the output rows alone without swapping (the "plain" pass).

In fast mode (inversions made with an attention cache) calls 1 and the structure half of 2 are
replaced by what the inversion computed at the same latents, so only output rows are evaluated.

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
    step: StepPlan,
    pairs: list[tuple[int, int]],
    settings: TransferSettings,
    appearance_keys_values: KeyValueStore | None,
    structure_keys_values: KeyValueStore | None,
) -> AttentionSwap | None:
    """The swap directive for the output rows' call of ``step``.

    Appearance keys/values always come from a store (captured this step, or cached by the
    inversion); structure keys/values come from the cached store in fast mode, otherwise from the
    structure rows that follow the output rows in the same call.
    """
    if not step.swaps:
        return None
    outputs = len(pairs)
    if step.kv_source is KeyValueSource.APPEARANCE:
        source_store, source_rows = appearance_keys_values, tuple(appearance for appearance, _ in pairs)
    elif structure_keys_values is not None:
        source_store, source_rows = structure_keys_values, tuple(structure for _, structure in pairs)
    else:
        source_store, source_rows = None, tuple(outputs + structure for _, structure in pairs)
    return AttentionSwap(
        levels=step.swap_levels,
        contrast=settings.contrast,
        output_rows=tuple(range(outputs)),
        source_rows=source_rows,
        source_store=source_store,
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
    """Generate images with the structure's layout and the appearance's look.

    An inversion that carries an attention cache (fast mode) is not run again: its path takes the
    cached noise predictions and keys/values, so only the output rows (and the other path, if it
    has no cache) go through the model.
    """
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
        wants_appearance = step.swaps and step.kv_source is KeyValueSource.APPEARANCE
        wants_structure = step.swaps and step.kv_source is KeyValueSource.STRUCTURE

        appearance_keys_values: KeyValueStore | None = None
        if appearance.attention is not None:
            appearance_noise = appearance.prediction_at(i).to(output.device, output.dtype)
            if wants_appearance:
                appearance_keys_values = appearance.keys_values_at(i).to(output.device)
        else:
            appearance_keys_values = KeyValueStore() if wants_appearance else None
            capture = (
                AttentionSwap(step.swap_levels, settings.contrast, capture_store=appearance_keys_values)
                if wants_appearance
                else None
            )
            appearance_noise = backend.predict_noise(appearance_path, sigma, capture)

        structure_keys_values: KeyValueStore | None = None
        if structure.attention is not None:
            structure_noise = structure.prediction_at(i).to(output.device, output.dtype)
            if wants_structure:
                structure_keys_values = structure.keys_values_at(i).to(output.device)
            swap = _swap_for(step, pairs, settings, appearance_keys_values, structure_keys_values)
            output_noise = backend.predict_noise(output, sigma, swap)
        else:
            swap = _swap_for(step, pairs, settings, appearance_keys_values, None)
            joint_noise = backend.predict_noise(torch.cat([output, structure_path]), sigma, swap)
            output_noise, structure_noise = joint_noise[:outputs], joint_noise[outputs:]
        if step.swap_weight is not None:
            plain_noise = backend.predict_noise(output, sigma, None)
            output_noise = plain_noise + step.swap_weight * (output_noise - plain_noise)
        del appearance_keys_values, structure_keys_values, swap

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
