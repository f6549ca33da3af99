"""The model calls of one generation step, as data: which rows each call evaluates, what its attention layers
capture, swap and record, and which noise predictions the step takes from it.

:func:`step_calls` is pure: from a step of the plan, the :class:`CallLayout` (the pairs, the paths fast
mode replays from their inversion's cache, whether the output carries hints of its own, such as a ControlNet)
and the step's :class:`StepRole` (:func:`step_roles`) it gives the list that ``JointSampler.predict`` runs
straight down, and :func:`model_evaluations` counts the same lists. Per step:

1. the appearance rows, capturing their keys/values when the output will attend to them;
2. the output rows together with the structure rows, the output rows swapping attention (to the appearance's
   keys/values, or to the structure rows of the same call);
3. with output-only hints, call 2 runs as a path call without them (so the structure path is exactly what it
   would be without hints), capturing the structure's keys/values when the output reads them, and the output
   rows run again, with the hints;
4. when swap guidance is active, the output rows alone without swapping (the "plain" pass), which the
   swapped prediction is pushed away from.

A path replayed from its inversion's cache (fast mode) takes its noise prediction and keys/values from there:
call 1, or the structure half of call 2, goes (the output rows then run alone).

Two savings leave the results as they are: until the first swap (or AdaIN) the output rows equal their
structure rows, so call 2 holds the structure rows alone and the output takes their prediction (with hints or
a noise mask the output differs and runs in a call of its own); and when the structure's reconstruction is
not wanted, its rows stop after the last step that reads them.

Automatic masks: the maps are recorded at one step (:func:`recording_step`) by the path rows of these calls,
at no extra cost; a replayed path there gets one extra call of its own, which only records. What is recorded
and how it becomes masks is in segmentation.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .pairing import pair_rows
from .plan import KeyValueSource, StepPlan

Image = tuple[str, int]
"""An image of a path, as the recorded attention maps name it: ("appearance", 0), ("structure", 1), ..."""


class Rows(str, Enum):
    """A block of rows in a model call: the outputs (one per pair), the appearance or the structure images."""

    OUTPUT = "output"
    APPEARANCE = "appearance"
    STRUCTURE = "structure"


@dataclass(frozen=True)
class CallLayout:
    """What the calls of every step share."""

    pairs: tuple[tuple[int, int], ...]  # (appearance index, structure index) of each output
    appearances: int
    structures: int
    cached: frozenset[Rows] = frozenset()  # paths replayed from their inversion's attention cache (fast mode)
    output_hints: bool = False  # the output's conditioning carries hints (ControlNet, ...) the paths must not get
    noise_mask: bool = False  # a local transfer: outside the structure's noise mask the output is its inversion
    structure_reconstruction: bool = True  # the structure path runs to the end (its reconstruction is wanted)

    @classmethod
    def of(
        cls,
        appearances: int,
        structures: int,
        cached: frozenset[Rows] = frozenset(),
        output_hints: bool = False,
        noise_mask: bool = False,
        structure_reconstruction: bool = True,
    ) -> CallLayout:
        """The layout of ``appearances`` and ``structures`` images, paired as :func:`pair_rows` pairs them."""
        pairs = tuple(pair_rows(appearances, structures))
        return cls(pairs, appearances, structures, cached, output_hints, noise_mask, structure_reconstruction)

    def count(self, rows: Rows) -> int:
        return {Rows.OUTPUT: len(self.pairs), Rows.APPEARANCE: self.appearances, Rows.STRUCTURE: self.structures}[rows]


@dataclass(frozen=True)
class PlannedCapture:
    """Every row's keys/values at ``levels`` become ``path``'s keys/values of this step."""

    path: Rows
    levels: frozenset[int]


@dataclass(frozen=True)
class PlannedSwap:
    """At ``levels`` the output rows attend with their own queries to ``source``'s keys/values, row
    ``source_rows[j]`` for output row ``j``: rows of this very call when ``in_this_call``, else the keys/values
    ``source`` has for this step (captured by an earlier call, or from the inversion's cache)."""

    levels: frozenset[int]
    output_rows: tuple[int, ...]
    source: Rows
    source_rows: tuple[int, ...]
    in_this_call: bool


@dataclass(frozen=True)
class ModelCall:
    """One model call: its rows are the blocks ``rows`` one after another (within each cond_or_uncond branch)."""

    rows: tuple[Rows, ...]
    paths: bool  # the rows reconstruct the appearance/structure images: no output-only hints
    gives: tuple[Rows, ...] = ()  # the blocks whose noise predictions the step takes (none: the call only records)
    capture: PlannedCapture | None = None
    swap: PlannedSwap | None = None
    records: tuple[tuple[int, Image], ...] = ()  # (row of this call, its image) whose attention maps are recorded
    swap_guidance: float | None = None  # the plain pass: output = this + weight * (swapped output - this)


@dataclass(frozen=True)
class StepRole:
    """What a step of the plan means for its calls beyond the step itself (:func:`step_roles` gives them)."""

    records_maps: bool = False  # the recording step of the automatic masks
    before_swaps: bool = False  # nothing has swapped or run AdaIN yet: the structure rows run in a call of their own
    output_is_structure: bool = False  # ... and the output rows equal them (no hints, no noise mask): not evaluated
    structure_needed: bool = True  # something still reads the structure path (keys/values, maps, reconstruction)


def step_calls(step: StepPlan, layout: CallLayout, role: StepRole = StepRole()) -> list[ModelCall]:
    """The model calls of ``step`` in the order they run.

    Before anything swaps (``role.before_swaps``) the structure rows run alone, and while the output rows equal
    them (``role.output_is_structure``) the output rows are not evaluated: the sampler gives them the
    structure's prediction. Once nothing reads the structure path any more (``role.structure_needed`` false) its
    rows are not evaluated either and the path stops there.
    """
    output, appearance, structure = Rows.OUTPUT, Rows.APPEARANCE, Rows.STRUCTURE
    outputs = len(layout.pairs)
    records_maps = role.records_maps
    source = None
    if step.swaps:
        source = appearance if step.kv_source is KeyValueSource.APPEARANCE else structure

    def swap(structure_offset: int, structure_in_this_call: bool) -> PlannedSwap | None:
        """The output rows' swap; the structure's rows start at ``structure_offset`` where they are read."""
        output_rows = tuple(range(outputs))
        if source is appearance:  # always the appearance's own rows: captured by call 1, or cached
            return PlannedSwap(step.swap_levels, output_rows, source, tuple(a for a, _ in layout.pairs), False)
        if source is structure:
            rows = tuple(structure_offset + s for _, s in layout.pairs)
            return PlannedSwap(step.swap_levels, output_rows, source, rows, structure_in_this_call)
        return None

    def capture(path: Rows) -> PlannedCapture | None:
        return PlannedCapture(path, step.swap_levels) if source is path else None

    def images(path: Rows, offset: int = 0) -> tuple[tuple[int, Image], ...]:
        return tuple((offset + i, (path.value, i)) for i in range(layout.count(path))) if records_maps else ()

    calls = []
    if appearance not in layout.cached:
        calls.append(ModelCall((appearance,), True, (appearance,), capture(appearance), records=images(appearance)))
    elif records_maps:  # a replayed path ran no model call to record its maps in
        calls.append(ModelCall((appearance,), True, records=images(appearance)))
    structure_live = structure not in layout.cached and role.structure_needed
    if structure in layout.cached and records_maps:
        calls.append(ModelCall((structure,), True, records=images(structure)))
    if role.before_swaps:  # the output reads no keys/values yet: the structure rows alone
        if structure_live:
            calls.append(ModelCall((structure,), True, (structure,), records=images(structure)))
        if not role.output_is_structure:
            calls.append(ModelCall((output,), False, (output,)))
    elif not structure_live:
        calls.append(ModelCall((output,), False, (output,), swap=swap(0, False)))
    elif layout.output_hints:
        joint = ModelCall(
            (output, structure), True, (structure,), capture(structure), swap(outputs, True), images(structure, outputs)
        )
        calls += [joint, ModelCall((output,), False, (output,), swap=swap(outputs, False))]
    else:
        calls.append(
            ModelCall(
                (output, structure),
                False,
                (output, structure),
                swap=swap(outputs, True),
                records=images(structure, outputs),
            )
        )
    if step.swap_weight is not None:
        calls.append(ModelCall((output,), False, (output,), swap_guidance=step.swap_weight))
    return calls


def recording_step(plan: list[StepPlan], automatic_masks: bool) -> int | None:
    """The step (index in ``plan``) whose calls record the automatic masks' maps, or None: the official code
    segments during the model calls of the first AdaIN step and masks AdaIN from that step on."""
    if not automatic_masks:
        return None
    return next((step.index for step in plan if step.adain), None)


def step_roles(plan: list[StepPlan], layout: CallLayout, automatic_masks: bool = False) -> list[StepRole]:
    """The role of each step of ``plan``.

    The output rows start as copies of their structure rows and take the same DDPM steps, so they stay equal
    until a step swaps or an AdaIN step has changed them; not so with output-only hints (other conditioning) or
    a noise mask (the output is blended with the structure's inversion, not its path), where the output rows
    still run in calls of their own until then, so the structure path is the same with or without. The path is
    read up to its last key/value step, at the recording step and while the output equals it; after that only
    its reconstruction would, when ``layout.structure_reconstruction`` asks for it.
    """
    records_at = recording_step(plan, automatic_masks)
    read_until = max(
        [step.index for step in plan if step.swaps and step.kv_source is KeyValueSource.STRUCTURE]
        + ([records_at] if records_at is not None else []),
        default=-1,
    )
    shared = not layout.output_hints and not layout.noise_mask
    before_swaps, roles = True, []
    for step in plan:
        before_swaps = before_swaps and not step.swaps
        needed = layout.structure_reconstruction or step.index <= read_until or before_swaps
        roles.append(StepRole(step.index == records_at, before_swaps, before_swaps and shared, needed))
        before_swaps = before_swaps and not step.adain
    return roles


def model_evaluations(plan: list[StepPlan], layout: CallLayout, automatic_masks: bool = False) -> int:
    """Image-evaluations (rows, per cond_or_uncond branch) the joint sampler spends on ``plan``: its exact calls."""
    roles = step_roles(plan, layout, automatic_masks)
    return sum(
        layout.count(rows)
        for step, role in zip(plan, roles, strict=True)
        for call in step_calls(step, layout, role)
        for rows in call.rows
    )
