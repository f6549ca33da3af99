"""The joint three-path sampler (the official ``models/stable_diffusion.py`` loop), written against a small
backend interface.

Per generation step the backend is asked for noise predictions in these calls:

1. the appearance rows (capturing their keys/values when the output will attend to them);
2. the output rows together with the structure rows, the output rows swapping attention;
3. with output-only hints (ControlNet, ...), the output rows again, with the hints, attending to the
   structure keys/values call 2 captured (call 2 then runs as it would without hints);
4. when swap guidance is active, the output rows alone without swapping (the "plain" pass).

In fast mode (inversions made with an attention cache) calls 1 and the structure half of 2 are
replaced by what the inversion computed at the same latents, so only output rows are evaluated; with
automatic masks, each replayed path gets one extra call, at the one step that records their attention
maps.

Every path then takes a DDPM step with its own stored noise map, and AdaIN pulls the output's
latent statistics towards the appearance path.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from .adain import adain, resize_mask
from .attention import DEFAULT_MEMORY_BUDGET, AttentionMaps, AttentionSwap, KeyValueStore
from .inversion import Inversion
from .pairing import check_compatible, pair_rows
from .plan import KeyValueSource, PlanSettings, StepPlan, build_plan
from .segmentation import automatic_masks, output_masks
from .settings import bounded, check_ranges


class Backend(Protocol):
    """A model that predicts noise for a batch of sigma-space latents at one sigma.

    ``paths`` says the rows are appearance/structure paths, which reconstruct their own images: a backend
    whose output conditioning carries hints (ControlNet, ...) leaves them out of such calls and sets
    ``output_hints``, so the sampler runs the output rows in calls of their own.
    """

    def predict_noise(
        self, latents: Tensor, sigma: float, swap: AttentionSwap | None, paths: bool = False
    ) -> Tensor: ...


@dataclass(frozen=True)
class TransferSettings:
    """The generation's settings; defaults are the paper's (official config.py and run.py)."""

    plan: PlanSettings = field(default_factory=PlanSettings)
    contrast: float = bounded(1.67, 1.0, 5.0)  # attention contrast of the swapped rows
    cfg: float = bounded(1.0, 0.0, 30.0)  # prompt guidance the backend applies while generating (paper: none)
    start_step: int | None = None  # None: the later of the two inversions' start steps
    adain_strength: float = bounded(1.0, 0.0, 1.0)
    memory_budget: int = bounded(DEFAULT_MEMORY_BUDGET, 2**20, 2**36)  # bytes of explicit attention weights

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class TransferResult:
    output: Tensor  # [outputs, C, H, W]
    appearance: Tensor  # the appearance path's own final latents (a reconstruction)
    structure: Tensor  # the structure path's own final latents
    pairs: list[tuple[int, int]]  # (appearance index, structure index) of each output
    # [appearances, 1, H, W]: the masks given or found; an output whose automatic mask came out empty used
    # unmasked AdaIN (segmentation.output_masks) though its empty mask is returned here
    appearance_masks: Tensor | None = None
    structure_masks: Tensor | None = None  # [structures, 1, H, W]


GenerationCallback = Callable[[int, int, Tensor, Tensor], None]
"""``(step index, generation steps, output latents after the step, the step's denoised output estimate)``."""


def _swap_for(
    step: StepPlan,
    pairs: list[tuple[int, int]],
    settings: TransferSettings,
    appearance_keys_values: KeyValueStore | None,
    structure_keys_values: KeyValueStore | None,
    structure_offset: int,
) -> AttentionSwap | None:
    """The swap directive for the output rows' call of ``step``.

    Appearance keys/values always come from a store (captured this step, or cached by the inversion).
    Structure keys/values come from ``structure_keys_values`` (the inversion's cache in fast mode, or what
    the joint call captured) or, when None, from the structure rows of the same call; either way the
    structure images' rows start at ``structure_offset``.
    """
    if not step.swaps:
        return None
    if step.kv_source is KeyValueSource.APPEARANCE:
        source_store, source_rows = appearance_keys_values, tuple(appearance for appearance, _ in pairs)
    else:
        source_store = structure_keys_values
        source_rows = tuple(structure_offset + structure for _, structure in pairs)
    return AttentionSwap(
        levels=step.swap_levels,
        contrast=settings.contrast,
        output_rows=tuple(range(len(pairs))),
        source_rows=source_rows,
        source_store=source_store,
        memory_budget=settings.memory_budget,
    )


@dataclass
class PathLatents:
    """The three paths' sigma-space latents at one step."""

    output: Tensor  # [outputs, C, H, W]
    appearance: Tensor  # [appearances, C, H, W]
    structure: Tensor  # [structures, C, H, W]


@dataclass
class StepNoise:
    """The guided noise predictions of one step (the output's already mixed by swap guidance)."""

    output: Tensor
    appearance: Tensor
    structure: Tensor


class JointSampler:
    """The three-path generation, one step at a time; :func:`transfer` runs every step of the plan.

    Split into :meth:`predict` (the model calls) and :meth:`advance` (DDPM steps and AdaIN), so a test
    can hand two samplers the same latents at a step and compare one step (random weights amplify
    rounding step by step, so whole trajectories are no test of equality).
    """

    def __init__(
        self,
        backend: Backend,
        appearance: Inversion,
        structure: Inversion,
        settings: TransferSettings = TransferSettings(),
        appearance_mask: Tensor | None = None,
        structure_mask: Tensor | None = None,
        object_tokens: Sequence[Sequence[int]] | None = None,
    ) -> None:
        """``object_tokens`` (the object word's token positions in the positive prompt, one list per word)
        turns on the official automatic masks for AdaIN when no mask is given."""
        self.backend, self.appearance, self.structure, self.settings = backend, appearance, structure, settings
        self.start = check_compatible(appearance, structure, settings.start_step)
        self.pairs = pair_rows(appearance.batch_size, structure.batch_size)
        self.appearance_rows = [a for a, _ in self.pairs]
        self.structure_rows = [s for _, s in self.pairs]
        self.plan = build_plan(appearance.steps, self.start, settings.plan)
        self.sigmas = appearance.sigmas.tolist()
        self.appearance_masks = self.structure_masks = None  # per image, [B, 1, H, W]
        if structure_mask is not None:
            self.structure_masks = resize_mask(structure_mask, structure.clean.shape[-2:], structure.batch_size)
        if appearance_mask is not None:
            self.appearance_masks = resize_mask(appearance_mask, appearance.clean.shape[-2:], appearance.batch_size)
        self.content_mask = None if self.structure_masks is None else self.structure_masks[self.structure_rows]
        self.style_mask = None if self.appearance_masks is None else self.appearance_masks[self.appearance_rows]
        # local transfer: outside the structure's noise mask the output follows the structure's own inversion
        self.noise_mask = None
        if structure.noise_mask is not None:
            noise_mask = resize_mask(structure.noise_mask, structure.clean.shape[-2:], structure.batch_size)
            self.noise_mask = noise_mask[self.structure_rows]
        if appearance.noise_mask is not None:
            warnings.warn(
                "the appearance inversion carries a noise mask, which means nothing for the image colours are taken "
                "from: it is ignored (a noise mask on the structure makes the transfer local)",
                stacklevel=2,
            )
        # the official code segments during the model calls of the first AdaIN step and masks AdaIN from then on
        automatic = object_tokens is not None and appearance_mask is None and structure_mask is None
        first_adain = next((step.index for step in self.plan if step.adain), None)
        self.mask_step = first_adain if automatic else None
        self.object_tokens = [list(positions) for positions in object_tokens or []]

    def initial_latents(self) -> PathLatents:
        return PathLatents(
            output=self.structure.latent_at(self.start)[self.structure_rows].clone(),
            appearance=self.appearance.latent_at(self.start).clone(),
            structure=self.structure.latent_at(self.start).clone(),
        )

    def predict(self, step: StepPlan, latents: PathLatents) -> StepNoise:
        """The model calls of ``step``: appearance rows, output + structure rows, the plain output pass."""
        appearance, structure, backend = self.appearance, self.structure, self.backend
        i, outputs = step.global_step, len(self.pairs)
        sigma = self.sigmas[i]
        wants_appearance = step.swaps and step.kv_source is KeyValueSource.APPEARANCE
        wants_structure = step.swaps and step.kv_source is KeyValueSource.STRUCTURE
        device, dtype = latents.output.device, latents.output.dtype
        maps = AttentionMaps() if step.index == self.mask_step else None
        appearance_images = tuple((a, ("appearance", a)) for a in range(appearance.batch_size))
        structure_images = tuple((s, ("structure", s)) for s in range(structure.batch_size))

        appearance_keys_values: KeyValueStore | None = None
        if appearance.attention is not None:
            appearance_noise = appearance.prediction_at(i).to(device, dtype)
            if wants_appearance:
                appearance_keys_values = appearance.keys_values_at(i).to(device)
            if maps is not None:  # a replayed path ran no model call to record its maps in: one extra call
                backend.predict_noise(latents.appearance, sigma, self._recording(maps, appearance_images), paths=True)
        else:
            appearance_keys_values = KeyValueStore() if wants_appearance else None
            capture = None
            if wants_appearance:
                capture = AttentionSwap(
                    step.swap_levels,
                    self.settings.contrast,
                    capture_store=appearance_keys_values,
                    memory_budget=self.settings.memory_budget,
                )
            capture = self._with_maps(capture, maps, appearance_images)
            appearance_noise = backend.predict_noise(latents.appearance, sigma, capture, paths=True)

        if structure.attention is not None:
            structure_noise = structure.prediction_at(i).to(device, dtype)
            structure_keys_values = structure.keys_values_at(i).to(device) if wants_structure else None
            if maps is not None:
                backend.predict_noise(latents.structure, sigma, self._recording(maps, structure_images), paths=True)
            swap = _swap_for(step, self.pairs, self.settings, appearance_keys_values, structure_keys_values, 0)
            output_noise = backend.predict_noise(latents.output, sigma, swap, paths=False)
        else:
            hints = getattr(backend, "output_hints", False)
            structure_keys_values = KeyValueStore() if hints and wants_structure else None
            swap = _swap_for(step, self.pairs, self.settings, appearance_keys_values, None, outputs)
            joint_rows = tuple((outputs + s, image) for s, image in structure_images)
            swap = self._with_maps(swap, maps, joint_rows)
            if swap is not None and structure_keys_values is not None:
                swap = dataclasses.replace(swap, capture_store=structure_keys_values)
            # with hints (ControlNet, ...) for the output only, the joint call runs as it would without them
            # (so the structure path is exactly the same) and the output rows run again with the hints
            joint = torch.cat([latents.output, latents.structure])
            joint_noise = backend.predict_noise(joint, sigma, swap, paths=hints)
            output_noise, structure_noise = joint_noise[:outputs], joint_noise[outputs:]
            if hints:
                swap = _swap_for(
                    step, self.pairs, self.settings, appearance_keys_values, structure_keys_values, outputs
                )
                output_noise = backend.predict_noise(latents.output, sigma, swap, paths=False)
        if step.swap_weight is not None:
            plain_noise = backend.predict_noise(latents.output, sigma, None, paths=False)
            output_noise = plain_noise + step.swap_weight * (output_noise - plain_noise)
        if maps is not None:
            self._set_automatic_masks(maps)
        return StepNoise(output=output_noise, appearance=appearance_noise, structure=structure_noise)

    def _recording(self, maps: AttentionMaps, rows: tuple[tuple[int, Hashable], ...]) -> AttentionSwap:
        """A directive that swaps nothing and only records the maps of ``rows``."""
        return AttentionSwap(
            frozenset(), self.settings.contrast, memory_budget=self.settings.memory_budget, maps=maps, map_rows=rows
        )

    def _with_maps(
        self, swap: AttentionSwap | None, maps: AttentionMaps | None, rows: tuple[tuple[int, Hashable], ...]
    ) -> AttentionSwap | None:
        if maps is None:
            return swap
        if swap is None:
            return self._recording(maps, rows)
        return dataclasses.replace(swap, maps=maps, map_rows=rows)

    def _set_automatic_masks(self, maps: AttentionMaps) -> None:
        """Segment both images from the recorded maps; masked AdaIN from this step on (official default)."""
        self.appearance_masks = automatic_masks(
            maps, "appearance", self.appearance.batch_size, self.appearance.clean.shape[-2:], self.object_tokens
        )
        self.structure_masks = automatic_masks(
            maps, "structure", self.structure.batch_size, self.structure.clean.shape[-2:], self.object_tokens
        )
        self.content_mask, self.style_mask = output_masks(
            self.structure_masks[self.structure_rows], self.appearance_masks[self.appearance_rows]
        )

    def advance(self, step: StepPlan, latents: PathLatents, noise: StepNoise) -> PathLatents:
        """Every path's stochastic step (DDPM or flow) with its own stored noise map, then AdaIN on the output."""
        i = step.global_step
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        structure_maps = self.structure.noise_at(i)
        step_path = self.appearance.stepper  # DDPM, or rectified flow (check_compatible made both kinds agree)
        output = step_path(latents.output, noise.output, sigma, sigma_next, structure_maps[self.structure_rows])
        appearance_path = step_path(
            latents.appearance, noise.appearance, sigma, sigma_next, self.appearance.noise_at(i)
        )
        structure_path = step_path(latents.structure, noise.structure, sigma, sigma_next, structure_maps)
        if step.adain:
            style = appearance_path[self.appearance_rows]
            output = adain(output, style, self.content_mask, self.style_mask, self.settings.adain_strength)
        if self.noise_mask is not None:  # as ComfyUI's inpainting: outside the mask, the structure at this step
            keep = self.structure.latent_at(i + 1)[self.structure_rows]
            mask = self.noise_mask.to(output.device, output.dtype)
            output = output * mask + keep * (1 - mask)
        return PathLatents(output=output, appearance=appearance_path, structure=structure_path)

    def run(self, callback: GenerationCallback | None = None) -> TransferResult:
        latents = self.initial_latents()
        for step in self.plan:
            noise = self.predict(step, latents)
            denoised = latents.output - self.sigmas[step.global_step] * noise.output  # for previews
            latents = self.advance(step, latents, noise)
            if callback is not None:
                callback(step.index, len(self.plan), latents.output, denoised)
        return TransferResult(
            output=latents.output,
            appearance=latents.appearance,
            structure=latents.structure,
            pairs=self.pairs,
            appearance_masks=self.appearance_masks,
            structure_masks=self.structure_masks,
        )


def transfer(
    backend: Backend,
    appearance: Inversion,
    structure: Inversion,
    settings: TransferSettings = TransferSettings(),
    appearance_mask: Tensor | None = None,
    structure_mask: Tensor | None = None,
    callback: GenerationCallback | None = None,
    object_tokens: Sequence[Sequence[int]] | None = None,
) -> TransferResult:
    """Generate images with the structure's layout and the appearance's look.

    An inversion that carries an attention cache (fast mode) is not run again: its path takes the
    cached noise predictions and keys/values, so only the output rows (and the other path, if it
    has no cache) go through the model.
    """
    sampler = JointSampler(backend, appearance, structure, settings, appearance_mask, structure_mask, object_tokens)
    return sampler.run(callback)
