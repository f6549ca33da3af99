"""Fast mode: the appearance/structure paths replayed from the inversion's cached predictions and K/V.

Equality is checked one step at a time from identical latents (both samplers are handed the same state at
every step): a random network amplifies float rounding step by step, so two whole trajectories agree only
as far as one machine's and one torch build's rounding allows.
"""

import dataclasses

import pytest
import torch

from tests.stepwise import teacher_forced
from xattn_core.attention import KeyValueStore
from xattn_core.calls import CallLayout, Rows, model_evaluations
from xattn_core.diffusers_backend import DiffusersBackend
from xattn_core.freeu import FreeUSettings
from xattn_core.inversion import AttentionCache, CacheSettings, CacheTooLargeError, Inversion, invert
from xattn_core.plan import build_plan
from xattn_core.schedule import paper_sigmas
from xattn_core.tiny import tiny_context
from xattn_core.transfer import JointSampler, TransferSettings, transfer

CACHED_BOTH = frozenset({Rows.APPEARANCE, Rows.STRUCTURE})

STEPS, START = 10, 3
LEVELS = frozenset({0, 1})


def backend_for(unet, cfg):
    return DiffusersBackend(unet, tiny_context(1), tiny_context(2), cfg, freeu=FreeUSettings())


@pytest.fixture(scope="module")
def clean():
    return torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(8))  # 128 px


@pytest.fixture(scope="module")
def inverted(unet, clean):
    """Inversions of ``clean`` by (cfg, cached), each made once, with their image-evaluation counts."""
    made = {}

    def get(cfg: float, cached: bool, branches=None):
        key = (cfg, cached, branches)
        if key not in made:
            with backend_for(unet, cfg) as backend:
                cache = CacheSettings(LEVELS, branches=branches) if cached else None
                inversion = invert(backend.predict_noise, clean, paper_sigmas(steps=STEPS), START, 5, cache=cache)
                made[key] = inversion, backend.image_evaluations
        return made[key]

    return get


def teacher_forced_fast(unet, normal: Inversion, fast: Inversion, cfg: float, rows=((0,), (1,))) -> list[float]:
    """Per step, normal vs fast mode from identical latents (see tests/stepwise.py); the two differ only by
    float32 rounding of other batch shapes (~1e-6 relative), which cfg and swap guidance multiply."""
    with backend_for(unet, cfg) as backend:
        normal_sampler, fast_sampler = (
            JointSampler(backend, inversion.select(list(rows[0])), inversion.select(list(rows[1])))
            for inversion in (normal, fast)
        )
        return teacher_forced(normal_sampler, fast_sampler)


@pytest.mark.parametrize("cfg", [1.0, 3.5])
def test_fast_mode_equals_normal_mode_step_by_step_under_matched_guidance(unet, inverted, cfg):
    normal, normal_inversion_evals = inverted(cfg, False)
    fast, fast_inversion_evals = inverted(cfg, True)
    # the cache changes nothing about the inversion itself and costs no extra model evaluation
    assert torch.equal(fast.noise_maps, normal.noise_maps)
    assert fast_inversion_evals == normal_inversion_evals
    differences = teacher_forced_fast(unet, normal, fast, cfg)
    print(f"\ncfg {cfg}: per-step max |fast - normal| / max |normal| = {max(differences):.2e}")
    assert len(differences) == STEPS - START
    assert max(differences) <= 1e-4


def test_replayed_paths_are_the_cached_predictions(unet, inverted):
    """Equal by construction: a cached path's noise is the inversion's own prediction, and it steps onto the
    inversion's next latent with the stored noise map."""
    fast, _ = inverted(1.0, True)
    with backend_for(unet, 1.0) as backend:
        sampler = JointSampler(backend, fast.select([0]), fast.select([1]))
        latents = sampler.initial_latents()
        for step in sampler.plan[:3]:
            noise = sampler.predict(step, latents)
            i = step.global_step
            assert torch.equal(noise.appearance, fast.prediction_at(i)[[0]])
            assert torch.equal(noise.structure, fast.prediction_at(i)[[1]])
            latents = sampler.advance(step, latents, noise)
            assert (latents.appearance - fast.latent_at(i + 1)[[0]]).abs().max() <= 1e-4


@pytest.mark.parametrize("cfg", [1.0, 3.5])
def test_generation_evaluates_only_the_output_rows(unet, inverted, cfg):
    counts = {}
    for cached in (False, True):
        inversion, _ = inverted(cfg, cached)
        with backend_for(unet, cfg) as backend:
            result = transfer(backend, inversion.select([0]), inversion.select([1]))
            counts[cached] = backend.image_evaluations
    branches = 2 if cfg != 1.0 else 1
    plan = build_plan(STEPS, START)
    assert counts[False] == branches * model_evaluations(plan, CallLayout.of(1, 1))
    assert counts[True] == branches * model_evaluations(plan, CallLayout.of(1, 1, CACHED_BOTH))
    assert counts[True] < counts[False] / 2
    assert (result.output - result.structure).abs().mean() > 1e-2  # the transfer did something


def test_whole_trajectory_smoke(unet, inverted):
    """Loose on purpose: end to end the two modes drift apart by amplified rounding (about 1e-4 here on
    random weights), so this only shows that nothing is grossly off; equality is tested step by step above."""
    normal, _ = inverted(3.5, False)
    fast, _ = inverted(3.5, True)
    with backend_for(unet, 3.5) as backend:
        outputs = [
            transfer(backend, inversion.select([0]), inversion.select([1])).output for inversion in (normal, fast)
        ]
    assert (outputs[0] - outputs[1]).abs().max() <= 1e-2


def test_batches_and_mixed_caches(unet, inverted):
    """One appearance onto two structures, and only the appearance cached (the structure rows still run)."""
    normal, _ = inverted(1.0, False)
    fast, _ = inverted(1.0, True)
    differences = teacher_forced_fast(unet, normal, fast, 1.0, rows=((0,), (1, 2)))
    assert max(differences) <= 1e-4

    mixed_appearance = fast.select([0])
    with backend_for(unet, 1.0) as backend:
        before = backend.image_evaluations
        mixed = transfer(backend, mixed_appearance, normal.select([1, 2]), TransferSettings())
        mixed_evals = backend.image_evaluations - before
        plain_sampler = JointSampler(
            backend, dataclasses.replace(mixed_appearance, attention=None), normal.select([1, 2])
        )
        mixed_sampler = JointSampler(backend, mixed_appearance, normal.select([1, 2]))
        worst = max(teacher_forced(plain_sampler, mixed_sampler))
    cached_appearance = CallLayout.of(1, 2, frozenset({Rows.APPEARANCE}))
    assert mixed_evals == model_evaluations(build_plan(STEPS, START), cached_appearance)
    assert worst <= 1e-4
    assert mixed.output.shape == (2, 4, 16, 16)


def test_mismatched_guidance_runs_as_an_approximation(unet, inverted):
    """Inverted without CFG, generated with it: the uncond rows reuse the cond branch's cached K/V."""
    normal, _ = inverted(1.0, False)
    fast, _ = inverted(1.0, True)
    differences = teacher_forced_fast(unet, normal, fast, 3.5)
    # not exact even from identical latents: normal mode re-runs the paths under CFG, fast mode replays the
    # unguided inversion (random weights say nothing about how close the two look; that is for real models)
    assert max(differences) > 1e-2


def test_cache_contents_and_memory_limit(unet, clean, inverted):
    inversion, _ = inverted(3.5, True)
    cache = inversion.attention
    assert cache is not None and len(cache.keys_values) == STEPS - START
    # tiny UNet at 128 px, two self-attention layers per decoder level: level 0 has 16x16 tokens x 32 channels,
    # level 1 8x8 x 64; float32 keys and values, for 3 images x 2 branches (cond, uncond)
    per_image_and_branch = 2 * 2 * 4 * (16 * 16 * 32 + 8 * 8 * 64)
    per_step = cache.keys_values[0].nbytes
    assert per_step == 3 * 2 * per_image_and_branch
    assert all(store.nbytes == per_step and len(store) == 2 * 4 for store in cache.keys_values)
    assert cache.nbytes == per_step * (STEPS - START) + cache.predictions.nbytes
    with backend_for(unet, 3.5) as backend, pytest.raises(CacheTooLargeError, match=r"keep .* GiB .* for 7 steps"):
        invert(
            backend.predict_noise,
            clean,
            paper_sigmas(steps=STEPS),
            START,
            5,
            cache=CacheSettings(LEVELS, max_bytes=per_step * 6),
        )
    cond_only, _ = inverted(3.5, True, frozenset({0}))
    assert cache.branches == {0, 1} and cond_only.attention.branches == {0}
    assert cond_only.attention.keys_values[0].nbytes == per_step // 2
    assert torch.equal(cond_only.attention.predictions, cache.predictions)
    assert inversion.select([1]).attention.keys_values[0].nbytes == per_step // 3
    assert inversion.to("cpu").attention is inversion.attention


def test_generation_evaluations_at_paper_defaults_meet_the_target():
    """100 steps from 32: fast-mode generation spends <= 136 image-evaluations (counted, not computed); with the
    inversion's 272, 386 (the target: at most 397)."""
    sigmas = paper_sigmas(steps=100)
    latents = torch.zeros(69, 1, 4, 8, 8)
    cache = AttentionCache(torch.zeros(68, 1, 4, 8, 8), [KeyValueStore() for _ in range(68)])
    maps = torch.zeros(68, 1, 4, 8, 8, dtype=torch.float64)
    inversion = Inversion(torch.zeros(1, 4, 8, 8), sigmas, 32, latents, maps, {}, cache)

    class Counting:
        evaluations = 0

        def predict_noise(self, rows, sigma, swap, paths=False):
            self.evaluations += rows.shape[0]
            return torch.zeros_like(rows)

    backend = Counting()
    transfer(backend, inversion, inversion, TransferSettings())
    # 57 output rows (the first 11 steps swap nothing: the output is the cached structure) + 57 plain passes
    assert backend.evaluations == 114
    assert backend.evaluations <= 136  # the target: 2 x 68
    assert backend.evaluations == model_evaluations(build_plan(100, 32), CallLayout.of(1, 1, CACHED_BOTH))
