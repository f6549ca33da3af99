"""Step-by-step comparison of two samplers from identical latents (shared by the unit and ComfyUI tiers).

A random network amplifies float rounding step by step, so two whole trajectories agree only as far as one
machine's rounding allows. Handing both samplers the same latents at every step and comparing one step's
noise predictions tests what is meant: that they compute the same function.
"""

from __future__ import annotations

import torch

from xattn_core.transfer import JointSampler

PATHS = ("output", "appearance", "structure")


def relative_difference(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected| relative to the size of ``expected`` (at least 1)."""
    return ((got - expected).abs().max() / expected.abs().max().clamp_min(1.0)).item()


def teacher_forced(reference: JointSampler, candidate: JointSampler, paths=PATHS) -> list[float]:
    """Per step, the largest relative difference between the two samplers' noise predictions of ``paths``.

    Both start every step from the reference's output latent and the inversions' own path latents (where a
    fast-mode cache was computed); the reference's step then gives the next output latent.
    """
    latents = reference.initial_latents()
    differences = []
    for step in reference.plan:
        i = step.global_step
        latents.appearance = reference.appearance.latent_at(i)
        latents.structure = reference.structure.latent_at(i)
        expected, got = reference.predict(step, latents), candidate.predict(step, latents)
        differences.append(max(relative_difference(getattr(got, path), getattr(expected, path)) for path in paths))
        latents = reference.advance(step, latents, expected)
    return differences
