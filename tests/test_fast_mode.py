"""Fast mode: the appearance/structure paths replayed from the inversion's cached predictions and K/V."""

import dataclasses

import pytest
import torch

from xattn_core.attention import KeyValueStore
from xattn_core.diffusers_backend import DiffusersBackend
from xattn_core.freeu import FreeUSettings
from xattn_core.inversion import AttentionCache, CacheSettings, CacheTooLargeError, Inversion, invert
from xattn_core.plan import build_plan, model_evaluations
from xattn_core.transfer import TransferSettings, transfer
from xattn_core.schedule import paper_sigmas
from xattn_core.tiny import tiny_context

STEPS, START = 12, 3
LEVELS = frozenset({0, 1})


def invert_and_transfer(unet, clean, cfg, cached, rows=((0,), (1,)), generation_cfg=None):
    """Invert ``clean`` (with or without the cache) and transfer appearance rows onto structure rows."""
    cache = CacheSettings(LEVELS) if cached else None
    generation_cfg = cfg if generation_cfg is None else generation_cfg
    with DiffusersBackend(unet, tiny_context(1), tiny_context(2), cfg, freeu=FreeUSettings()) as backend:
        both = invert(
            backend.predict_noise, clean, paper_sigmas(steps=STEPS), START, 5, cache=cache
        )
        inversion_evaluations = backend.image_evaluations
        backend.with_guidance(tiny_context(1), tiny_context(2), generation_cfg)
        result = transfer(backend, both.select(list(rows[0])), both.select(list(rows[1])), TransferSettings())
        generation_evaluations = backend.image_evaluations - inversion_evaluations
    return both, result, inversion_evaluations, generation_evaluations


@pytest.fixture(scope="module")
def clean():
    return torch.randn(3, 4, 32, 32, generator=torch.Generator().manual_seed(8))  # 256 px


@pytest.mark.parametrize("cfg", [1.0, 3.5])
def test_fast_mode_equals_normal_mode_under_matched_guidance(unet, clean, cfg):
    normal_inversion, normal, normal_inv_evals, normal_gen_evals = invert_and_transfer(unet, clean[:2], cfg, False)
    fast_inversion, fast, fast_inv_evals, fast_gen_evals = invert_and_transfer(unet, clean[:2], cfg, True)

    # the cache changes nothing about the inversion itself and costs no extra model evaluation
    assert torch.equal(fast_inversion.noise_maps, normal_inversion.noise_maps)
    assert fast_inv_evals == normal_inv_evals
    # generation evaluates the output row only: one call per step plus the swap-guidance passes
    chunks = 2 if cfg != 1.0 else 1
    plan = build_plan(STEPS, START)
    assert normal_gen_evals == chunks * model_evaluations(plan)
    assert fast_gen_evals == chunks * model_evaluations(plan, appearances=0, structures=0)
    assert fast_gen_evals < normal_gen_evals / 2

    difference = (fast.output - normal.output).abs().max().item()
    print(f"\ncfg {cfg}: max |fast - normal| = {difference:.2e}")
    assert difference <= 1e-4
    assert (fast.appearance - normal.appearance).abs().max() <= 1e-4
    assert (fast.structure - normal.structure).abs().max() <= 1e-4
    assert (normal.output - normal.structure).abs().mean() > 1e-2  # the transfer did something


def test_fast_mode_batches_and_mixed_caches(unet, clean):
    """One appearance onto two structures: cached rows are selected like the inversion's."""
    _, normal, _, _ = invert_and_transfer(unet, clean, 1.0, False, rows=((0,), (1, 2)))
    _, fast, _, fast_evals = invert_and_transfer(unet, clean, 1.0, True, rows=((0,), (1, 2)))
    assert (fast.output - normal.output).abs().max() <= 1e-4
    assert fast_evals == model_evaluations(build_plan(STEPS, START), outputs=2, appearances=0, structures=0)

    # only the appearance cached: the structure rows still run, the appearance rows do not
    with DiffusersBackend(unet, tiny_context(1), tiny_context(2), 1.0, freeu=FreeUSettings()) as backend:
        sigmas = paper_sigmas(steps=STEPS)
        appearance = invert(backend.predict_noise, clean[:1], sigmas, START, 5, cache=CacheSettings(LEVELS))
        structure = invert(backend.predict_noise, clean[1:], sigmas, START, 5)
        before = backend.image_evaluations
        mixed = transfer(backend, appearance, structure, TransferSettings())
        mixed_evals = backend.image_evaluations - before
        unmixed = transfer(backend, dataclasses.replace(appearance, attention=None), structure, TransferSettings())
    assert mixed_evals == model_evaluations(build_plan(STEPS, START), outputs=2, appearances=0, structures=2)
    assert (mixed.output - unmixed.output).abs().max() <= 1e-4


def test_mismatched_guidance_runs_as_an_approximation(unet, clean):
    """Inverted without CFG, generated with it: the uncond rows reuse the cond chunk's cached K/V."""
    _, normal, _, _ = invert_and_transfer(unet, clean[:2], 1.0, False, generation_cfg=3.5)
    _, fast, _, _ = invert_and_transfer(unet, clean[:2], 1.0, True, generation_cfg=3.5)
    assert torch.isfinite(fast.output).all()
    # not exact: the normal mode re-runs the paths under CFG, the fast mode replays the unguided inversion
    # (random weights say nothing about how close the two look; that is for real models)
    assert (fast.output - normal.output).abs().max() > 1e-3


def test_cache_contents_and_memory_limit(unet, clean):
    with DiffusersBackend(unet, tiny_context(1), tiny_context(2), 3.5) as backend:
        inversion = invert(backend.predict_noise, clean[:2], paper_sigmas(steps=STEPS), START, 5,
                           cache=CacheSettings(LEVELS))
        cache = inversion.attention
        assert cache is not None and len(cache.keys_values) == STEPS - START
        # tiny UNet at 256 px, two self-attention layers per decoder level: level 0 has 32x32 tokens x 32
        # channels, level 1 16x16 x 64; float32 keys and values, for 2 images x 2 chunks (cond, uncond)
        per_image_and_chunk = 2 * 2 * 4 * (32 * 32 * 32 + 16 * 16 * 64)
        per_step = cache.keys_values[0].nbytes
        assert per_step == 2 * 2 * per_image_and_chunk
        assert all(store.nbytes == per_step and len(store) == 2 * 4 for store in cache.keys_values)
        assert cache.nbytes == per_step * (STEPS - START) + cache.predictions.nbytes
        with pytest.raises(CacheTooLargeError, match=r"fast mode would keep .* GiB .* for 9 steps"):
            invert(backend.predict_noise, clean[:2], paper_sigmas(steps=STEPS), START, 5,
                   cache=CacheSettings(LEVELS, max_bytes=per_step * 8))
        cond_only = invert(backend.predict_noise, clean[:2], paper_sigmas(steps=STEPS), START, 5,
                           cache=CacheSettings(LEVELS, branches=frozenset({0})))
    assert cache.branches == {0, 1} and cond_only.attention.branches == {0}
    assert cond_only.attention.keys_values[0].nbytes == per_step // 2
    assert torch.equal(cond_only.attention.predictions, cache.predictions)
    assert inversion.select([1]).attention.keys_values[0].nbytes == per_step // 2
    assert inversion.to("cpu").attention is inversion.attention


def test_generation_evaluations_at_paper_defaults_meet_the_target():
    """100 steps from 32: fast-mode generation spends <= 136 image-evaluations (counted, not computed)."""
    sigmas = paper_sigmas(steps=100)
    latents = torch.zeros(69, 1, 4, 8, 8)
    cache = AttentionCache(torch.zeros(68, 1, 4, 8, 8), [KeyValueStore() for _ in range(68)])
    inversion = Inversion(torch.zeros(1, 4, 8, 8), sigmas, 32, latents, torch.zeros(68, 1, 4, 8, 8,
                                                                                    dtype=torch.float64), {}, cache)

    class Counting:
        evaluations = 0

        def predict_noise(self, rows, sigma, swap):
            self.evaluations += rows.shape[0]
            return torch.zeros_like(rows)

    backend = Counting()
    transfer(backend, inversion, inversion, TransferSettings())
    assert backend.evaluations == 125  # 68 output rows + 57 swap-guidance passes
    assert backend.evaluations <= 136  # the target: 2 x 68
    assert backend.evaluations == model_evaluations(build_plan(100, 32), appearances=0, structures=0)
