"""The step plan: what happens at each generation step (paper Sec. 3-4; the official run.py, config.py,
utils/attention_utils.py and appearance_transfer_model.py).

The official code reads a step counter that its callback sets *after* each step, so during the
model calls of generation step k the counter is max(k - 1, 0) while AdaIN after step k sees k.
Ranges are given as fractions of the schedule length N and turned into counter units with
``round(fraction * N)``; at N = 100 that gives back the official integers exactly. The structure
keys/values come every ``structure_kv_every`` counter values (the official 5), whatever N is, so the
structure keeps its official share (1 swapping step in 5) at any schedule length.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from enum import Enum

import torch

from .settings import bounded, check_ranges


class KeyValueSource(str, Enum):
    APPEARANCE = "appearance"
    STRUCTURE = "structure"


@dataclass(frozen=True)
class PlanSettings:
    """Official defaults (paper Sec. 4, official config.py); every range is ``[start, end)`` in fractions of
    the schedule length."""

    swap_guidance: float = bounded(3.5, 0.0, 20.0)
    level_ranges: tuple[tuple[float, float], ...] = ((0.10, 0.90), (0.10, 0.70))
    structure_kv_every: int = bounded(5, 1, 100)  # structure K/V when the counter is a multiple of this ...
    structure_kv_end: float = bounded(0.40, 0.0, 1.0)  # ... below counter 40 (at N = 100)
    adain_range: tuple[float, float] = (0.20, 1.00)
    swap_guidance_range: tuple[float, float] = (0.10, 0.90)  # inclusive at both ends, in loop steps

    def __post_init__(self) -> None:
        check_ranges(self)
        for low, high in (*self.level_ranges, self.adain_range, self.swap_guidance_range):
            if not 0.0 <= low <= 1.0 or not 0.0 <= high <= 1.0:
                raise ValueError(f"step ranges are fractions of the schedule in 0..1, got ({low:g}, {high:g})")


SWAP_LEVELS = frozenset(range(len(PlanSettings().level_ranges)))
"""The decoder attention levels that can swap (one per level range): 0 and 1."""


@dataclass(frozen=True)
class StepPlan:
    """What generation step ``index`` (global step ``global_step``) does."""

    index: int
    global_step: int
    swap_levels: frozenset[int]  # decoder attention levels (0 = highest resolution) that swap
    kv_source: KeyValueSource
    swap_weight: float | None  # swap-guidance weight, or None when no plain pass is needed
    adain: bool  # AdaIN on the output latent after this step

    @property
    def swaps(self) -> bool:
        return bool(self.swap_levels)


def _units(fraction: float, steps: int) -> int:
    return int(fraction * steps + 0.5)


def build_plan(steps: int, start_step: int, settings: PlanSettings = PlanSettings()) -> list[StepPlan]:
    """One StepPlan per generation step, for a schedule of ``steps`` steps started at ``start_step``."""
    if not 0 <= start_step < steps:
        raise ValueError(f"start step must be in 0..{steps - 1} for {steps} steps, got {start_step}")
    generation_steps = steps - start_step
    level_bounds = [(_units(lo, steps), _units(hi, steps)) for lo, hi in settings.level_ranges]
    kv_end = _units(settings.structure_kv_end, steps)
    adain_lo, adain_hi = (_units(f, steps) for f in settings.adain_range)
    guide_lo, guide_hi = (_units(f, steps) for f in settings.swap_guidance_range)
    final_weight = max(settings.swap_guidance / 2, 1.0)
    weights = torch.linspace(settings.swap_guidance, final_weight, generation_steps, dtype=torch.float64).tolist()

    plan = []
    for k in range(generation_steps):
        counter = max(k - 1, 0)  # the official callback updates the counter after the step
        levels = frozenset(level for level, (lo, hi) in enumerate(level_bounds) if lo <= counter < hi)
        structure_kv = counter % settings.structure_kv_every == 0 and counter < kv_end
        guided = levels and settings.swap_guidance > 1.0 and guide_lo <= k <= guide_hi
        plan.append(
            StepPlan(
                index=k,
                global_step=start_step + k,
                swap_levels=levels,
                kv_source=KeyValueSource.STRUCTURE if structure_kv else KeyValueSource.APPEARANCE,
                swap_weight=weights[k] if guided else None,
                adain=adain_lo <= k < adain_hi,
            )
        )
    if not any(step.swaps for step in plan):
        warnings.warn(
            f"no generation step swaps attention ({steps} steps from start step {start_step}): the output is the "
            "structure's reconstruction, recoloured by AdaIN at most; use more steps or an earlier start step",
            stacklevel=2,
        )
    elif settings.structure_kv_end > 0 and not any(
        step.swaps and step.kv_source is KeyValueSource.STRUCTURE for step in plan
    ):
        # few-step schedules (Z-Image Turbo's 8): "every 5th step, before 40 %" falls on no swapping step, and
        # nothing holds the layout; the largest structure_kv_every that gives one, if any, is the advice
        swapping = [max(step.index - 1, 0) for step in plan if step.swaps]
        candidates = [counter for counter in swapping if 0 < counter < kv_end]
        advice = (
            f"set structure_kv_every to {max(candidates)} or less in the Options node"
            if candidates
            else "raise structure_kv_end in the Options node or use more steps"
        )
        warnings.warn(
            f"no swapping step attends to the structure's keys/values ({steps} steps from start step {start_step}, "
            f"structure_kv_every {settings.structure_kv_every}, structure_kv_end {settings.structure_kv_end:g}), "
            f"so nothing holds the structure's layout during the swap: {advice}",
            stacklevel=2,
        )
    return plan
