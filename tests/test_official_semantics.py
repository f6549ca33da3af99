"""The engine computes what the official code computes, one step at a time.

The reference is bench/naive_port.py, a plain port of the official implementation (three rows in one batch,
keys/values swapped inside the batch, full-matrix contrasted attention, a swap and a no-swap call every step,
each image inverted on its own). Both are handed the same latents at every step and must give the same noise
predictions and the same next latents; whole trajectories are not compared, since random weights amplify
rounding step by step.
"""

import copy
import sys
from pathlib import Path

import pytest
import torch

from tests.stepwise import relative_difference
from xattn_core.diffusers_backend import DiffusersBackend
from xattn_core.freeu import FreeUSettings
from xattn_core.inversion import invert
from xattn_core.schedule import ancestral_split, paper_sigmas
from xattn_core.tiny import tiny_context
from xattn_core.transfer import JointSampler, TransferSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from naive_port import (  # noqa: E402
    NaiveSwapState,
    install_naive_processors,
    naive_inversion,
    official_noise,
    official_step,
)

STEPS, START = 12, 2


@pytest.fixture(scope="module")
def clean():
    return torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(31))  # appearance, structure


@pytest.fixture(scope="module")
def inversion(unet, clean):
    with DiffusersBackend(unet, tiny_context(1), tiny_context(2), 3.5, freeu=FreeUSettings()) as backend:
        return invert(backend.predict_noise, clean, paper_sigmas(steps=STEPS), START, seed=5)


def test_inversion_noise_maps_equal_the_official_ones(unet, clean, inversion):
    result = {}
    with DiffusersBackend(unet, tiny_context(1), tiny_context(2), 3.5, freeu=FreeUSettings()) as backend:
        for _ in naive_inversion(backend, clean, paper_sigmas(steps=STEPS), 5, result):
            pass
    assert torch.equal(result["latents"][START:], inversion.latents)  # the same noise draws
    sigmas = paper_sigmas(steps=STEPS)
    for i in range(START, STEPS):  # z is divided by a small sigma_up late in the schedule: compare sigma_up * z
        _, sigma_up = ancestral_split(float(sigmas[i]), float(sigmas[i + 1]))
        difference = (result["maps"][i] - inversion.noise_at(i)).abs().max().item() * sigma_up
        assert difference <= 1e-4, (i, difference)


def test_every_generation_step_equals_the_official_computation(unet, inversion):
    naive_unet = copy.deepcopy(unet)
    state = NaiveSwapState(contrast=TransferSettings().contrast)
    with (
        DiffusersBackend(unet, tiny_context(1), None, 1.0, freeu=FreeUSettings()) as ours,
        DiffusersBackend(naive_unet, tiny_context(1), None, 1.0, freeu=FreeUSettings()) as naive,
    ):
        install_naive_processors(naive_unet, state)
        sampler = JointSampler(ours, inversion.select([0]), inversion.select([1]))
        latents = sampler.initial_latents()
        noise_differences, step_differences = [], []
        for step in sampler.plan:
            i = step.global_step
            sigma, sigma_next = sampler.sigmas[i], sampler.sigmas[i + 1]
            noise = sampler.predict(step, latents)
            rows = torch.cat([latents.output, latents.appearance, latents.structure])
            official = official_noise(naive, state, step, rows, sigma)
            ours_rows = torch.cat([noise.output, noise.appearance, noise.structure])
            noise_differences.append(relative_difference(ours_rows, official))
            # one official step from the same latents and noise: DDPM with each path's maps, then AdaIN
            expected = official_step(step, rows, official, sigma, sigma_next, inversion.noise_at(i))
            stepped = sampler.advance(step, latents, noise)
            got = torch.cat([stepped.output, stepped.appearance, stepped.structure])
            step_differences.append(relative_difference(got, expected))
            latents = stepped
    print(f"\nper step: noise {max(noise_differences):.1e}, next latents {max(step_differences):.1e} (relative)")
    assert any(step.swaps for step in sampler.plan) and any(step.adain for step in sampler.plan)
    assert max(noise_differences) <= 1e-4
    assert max(step_differences) <= 1e-4
