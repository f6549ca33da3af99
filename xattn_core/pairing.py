"""Which appearance and structure images meet in each output, and whether two inversions can meet at all."""

from __future__ import annotations

import torch

from .inversion import Inversion


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
    if appearance.step_kind != structure.step_kind:
        raise ValueError(
            f"the appearance inversion is a {appearance.step_kind} inversion and the structure one a "
            f"{structure.step_kind} one (different model families); invert both with the same model"
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
