"""The joint three-path sampler (the official ``models/stable_diffusion.py`` loop), written against a small
backend interface.

Per generation step the sampler runs the model calls calls.py lists for it (appearance rows, output and
structure rows, the output's hint and plain passes; fewer in fast mode, where a path replays its inversion's
cache). Every path then takes a DDPM step with its own stored noise map, and AdaIN pulls the output's
latent statistics towards the appearance path.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from .adain import adain
from .attention import DEFAULT_MEMORY_BUDGET, CallAttention, Capture, KeyValueStore, Recording, Swap
from .calls import CallLayout, ModelCall, Rows, recording_step, step_calls, step_roles
from .inversion import Inversion
from .masks import resize_mask
from .pairing import check_compatible, pair_rows
from .plan import PlanSettings, StepPlan, build_plan
from .segmentation import AttentionMaps, automatic_masks, output_masks, uses_automatic_masks
from .settings import bounded, check_ranges


class Backend(Protocol):
    """A model that predicts noise for a batch of sigma-space latents at one sigma.

    ``paths`` says the rows are appearance/structure paths, which reconstruct their own images: a backend
    whose output conditioning carries hints (ControlNet, ...) leaves them out of such calls and sets
    ``output_hints``, so the sampler runs the output rows in calls of their own.
    """

    def predict_noise(
        self, latents: Tensor, sigma: float, attention: CallAttention | None, paths: bool = False
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
    # run the structure path to the end for its reconstruction (TransferResult.structure); without it the path
    # stops after the last step that reads it, which saves one evaluation per structure image and later step
    structure_reconstruction: bool = True

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class TransferResult:
    output: Tensor  # [outputs, C, H, W]
    appearance: Tensor  # the appearance path's own final latents (a reconstruction)
    structure: Tensor | None  # the structure path's own final latents; None without structure_reconstruction
    pairs: list[tuple[int, int]]  # (appearance index, structure index) of each output
    # [appearances, 1, H, W]: the masks given or found; an output whose automatic mask came out empty used
    # unmasked AdaIN (segmentation.output_masks) though its empty mask is returned here
    appearance_masks: Tensor | None = None
    structure_masks: Tensor | None = None  # [structures, 1, H, W]


GenerationCallback = Callable[[int, int, Tensor, Tensor], None]
"""``(steps done, generation steps, output latents after the step, the step's denoised output estimate)``; steps
are counted from 1, as the inversion's ``StepCallback`` counts them."""


@dataclass(frozen=True)
class TransferOutline:
    """What a transfer of two inversions does, known before any model call; :func:`outline_transfer` makes it once,
    for a caller that must set the model up first (ComfyUI's sampler node) and then for the sampler."""

    start: int  # the first generation step, of the schedule both inversions share
    pairs: list[tuple[int, int]]  # (appearance index, structure index) of each output
    plan: list[StepPlan]
    mask_step: int | None  # the step (index in ``plan``) whose model calls record the automatic masks' maps

    @property
    def records_maps(self) -> bool:
        """Whether the automatic masks are on, so the model's recording layers must be marked."""
        return self.mask_step is not None


def outline_transfer(
    appearance: Inversion,
    structure: Inversion,
    settings: TransferSettings = TransferSettings(),
    appearance_mask: Tensor | None = None,
    structure_mask: Tensor | None = None,
    object_tokens: Sequence[Sequence[int]] | None = None,
) -> TransferOutline:
    """The start step, pairs, plan and mask step of :func:`transfer` with the same arguments."""
    start = check_compatible(appearance, structure, settings.start_step)
    plan = build_plan(appearance.steps, start, settings.plan)
    pairs = pair_rows(appearance.batch_size, structure.batch_size)
    automatic = uses_automatic_masks(object_tokens, appearance_mask, structure_mask)
    return TransferOutline(start, pairs, plan, recording_step(plan, automatic))


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
    structure: Tensor | None  # None once the structure path has stopped (no reconstruction asked for)


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
        outline: TransferOutline | None = None,
    ) -> None:
        """``object_tokens`` (the object word's token positions in the positive prompt, one list per word)
        turns on the official automatic masks for AdaIN when no mask is given. ``outline``: what
        :func:`outline_transfer` gave for the same arguments, if the caller has it already."""
        self.backend, self.appearance, self.structure, self.settings = backend, appearance, structure, settings
        if outline is None:
            outline = outline_transfer(appearance, structure, settings, appearance_mask, structure_mask, object_tokens)
        self.start, self.pairs, self.plan = outline.start, outline.pairs, outline.plan
        self.mask_step = outline.mask_step  # the step whose calls record the automatic masks' maps
        self.appearance_rows = [a for a, _ in self.pairs]
        self.structure_rows = [s for _, s in self.pairs]
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
        cached = frozenset(
            path
            for path, inversion in ((Rows.APPEARANCE, appearance), (Rows.STRUCTURE, structure))
            if inversion.attention is not None
        )
        output_hints = bool(getattr(backend, "output_hints", False))
        self.layout = CallLayout(
            tuple(self.pairs),
            appearance.batch_size,
            structure.batch_size,
            cached,
            output_hints,
            noise_mask=self.noise_mask is not None,
            structure_reconstruction=settings.structure_reconstruction,
        )
        self.roles = step_roles(self.plan, self.layout, self.mask_step is not None)
        self.object_tokens = [list(positions) for positions in object_tokens or []]

    def initial_latents(self) -> PathLatents:
        return PathLatents(
            output=self.structure.latent_at(self.start)[self.structure_rows].clone(),
            appearance=self.appearance.latent_at(self.start).clone(),
            structure=self.structure.latent_at(self.start).clone(),
        )

    def calls(self, step: StepPlan, latents: PathLatents | None = None) -> list[ModelCall]:
        """The model calls :meth:`predict` runs for ``step`` (calls.py).

        The output rows share the structure rows' evaluation only while they are equal, as they are on the
        sampler's own trajectory; latents handed in from elsewhere (a test comparing one step from given
        latents) may differ, and then the output rows are evaluated in a call of their own.
        """
        role = self.roles[step.index]
        if role.output_is_structure and latents is not None:
            if not torch.equal(latents.output, latents.structure[self.structure_rows]):
                role = dataclasses.replace(role, output_is_structure=False)
        return step_calls(step, self.layout, role)

    def predict(self, step: StepPlan, latents: PathLatents) -> StepNoise:
        """Run the step's model calls in order; a replayed path's prediction and keys/values come from its cache."""
        i = step.global_step
        sigma, calls = self.sigmas[i], self.calls(step, latents)
        shared = not any(Rows.OUTPUT in call.rows for call in calls)  # the output rows are the structure rows
        device, dtype = latents.output.device, latents.output.dtype
        inversions = {Rows.APPEARANCE: self.appearance, Rows.STRUCTURE: self.structure}
        rows = {Rows.OUTPUT: latents.output, Rows.APPEARANCE: latents.appearance, Rows.STRUCTURE: latents.structure}
        noise = {path: inversions[path].prediction_at(i).to(device, dtype) for path in self.layout.cached}
        read = {call.swap.source for call in calls if call.swap is not None and not call.swap.in_this_call}
        keys_values = {path: inversions[path].keys_values_at(i).to(device) for path in self.layout.cached & read}
        maps = AttentionMaps() if any(call.records for call in calls) else None
        for call in calls:
            if call.capture is not None:
                keys_values[call.capture.path] = KeyValueStore()
            batch = rows[call.rows[0]] if len(call.rows) == 1 else torch.cat([rows[path] for path in call.rows])
            prediction = self.backend.predict_noise(
                batch, sigma, self._attention(call, keys_values, maps), paths=call.paths
            )
            blocks = prediction.split([self.layout.count(path) for path in call.rows])
            for path, block in zip(call.rows, blocks, strict=True):
                if path not in call.gives:
                    continue
                if call.swap_guidance is None:
                    noise[path] = block
                else:  # the plain pass: push the swapped prediction away from it
                    noise[path] = block + call.swap_guidance * (noise[path] - block)
        if shared:
            noise[Rows.OUTPUT] = noise[Rows.STRUCTURE][self.structure_rows]
        if maps is not None:
            self._set_automatic_masks(maps)
        structure = noise.get(Rows.STRUCTURE)
        return StepNoise(output=noise[Rows.OUTPUT], appearance=noise[Rows.APPEARANCE], structure=structure)

    def _attention(
        self, call: ModelCall, keys_values: dict[Rows, KeyValueStore], maps: AttentionMaps | None
    ) -> CallAttention | None:
        """What ``call``'s attention layers do, with this step's stores and maps; None for plain attention."""
        capture = swap = record = None
        if call.capture is not None:
            capture = Capture(call.capture.levels, keys_values[call.capture.path])
        if call.swap is not None:
            planned = call.swap
            source = None if planned.in_this_call else keys_values[planned.source]
            swap = Swap(
                planned.levels,
                planned.output_rows,
                planned.source_rows,
                source,
                self.settings.contrast,
                self.settings.memory_budget,
            )
        if call.records and maps is not None:
            record = Recording(maps, call.records, self.settings.memory_budget)
        if capture is None and swap is None and record is None:
            return None
        return CallAttention(capture, swap, record)

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
        structure_path = latents.structure  # the path stopped: nothing reads it any more
        if noise.structure is not None:
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
                callback(step.index + 1, len(self.plan), latents.output, denoised)
        return TransferResult(
            output=latents.output,
            appearance=latents.appearance,
            structure=latents.structure if self.settings.structure_reconstruction else None,
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
    outline: TransferOutline | None = None,
) -> TransferResult:
    """Generate images with the structure's layout and the appearance's look.

    An inversion that carries an attention cache (fast mode) is not run again: its path takes the
    cached noise predictions and keys/values, so only the output rows (and the other path, if it
    has no cache) go through the model.
    """
    sampler = JointSampler(
        backend, appearance, structure, settings, appearance_mask, structure_mask, object_tokens, outline
    )
    return sampler.run(callback)
