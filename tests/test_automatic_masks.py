"""Automatic object masks end to end on tiny diffusers UNets (SD-1.5-shaped with three attention levels, and
SDXL-shaped): what is recorded, when, for which rows and layers, and how the masks reach AdaIN.

Random weights do not segment anything (their clusters are noise), so the tests that follow the masks into
AdaIN hand the engine synthetic attention maps with a known object at the recording layers, after checking
that the real model recorded its own maps there. k-means is tested on its own in tests/test_kmeans.py, the
labelling in tests/test_segmentation.py.
"""

import dataclasses
import warnings

import pytest
import torch

import xattn_core.attention as attention
from xattn_core.diffusers_backend import DiffusersBackend
from xattn_core.inversion import CacheSettings, Inversion, invert
from xattn_core.plan import PlanSettings
from xattn_core.schedule import ddpm_step, paper_sigmas
from xattn_core.tiny import tiny_context, tiny_unet
from xattn_core.transfer import JointSampler, TransferSettings

STEPS, START = 10, 2  # 8 generation steps; the first AdaIN step (0.2 x 10 = counter 2) is step 2
OBJECT = [[5]]  # the object word's token position in the (random) prompt
LATENT = 16  # 128 px
SHAPES = {  # name: (tiny_unet arguments, level-0 grid, level-1 grid) at a 16 x 16 latent
    "sd15-3-levels": (dict(levels=3), (16, 16), (8, 8)),
    "sdxl-shaped": (dict(levels=3, plain_levels=1), (8, 8), (4, 4)),
}


@pytest.fixture(scope="module", params=list(SHAPES))
def model(request):
    arguments, self_grid, cross_grid = SHAPES[request.param]
    unet = tiny_unet(0, **arguments)
    clean = torch.randn(3, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(4))
    with DiffusersBackend(unet, tiny_context(1), tiny_context(2), 3.5) as backend:
        inversion = invert(backend.predict_noise, clean, paper_sigmas(steps=STEPS), START, 5)
    return unet, inversion, self_grid, cross_grid


class Recorder:
    """A backend wrapper that notes which calls asked for attention maps, for which rows."""

    def __init__(self, backend, replace_maps=None):
        self.backend, self.replace_maps = backend, replace_maps
        self.recording_calls = []

    def predict_noise(self, latents, sigma, attention=None, paths=False):
        noise = self.backend.predict_noise(latents, sigma, attention, paths)
        if attention is not None and attention.record is not None:
            record = attention.record
            self.recording_calls.append((float(sigma), record.rows, dict(record.maps.self_maps)))
            if self.replace_maps is not None:
                self.replace_maps(record)
        return noise


def sampler_for(unet, inversion, backend, rows=((0,), (1, 2)), **kwargs):
    return JointSampler(backend, inversion.select(list(rows[0])), inversion.select(list(rows[1])), **kwargs)


def test_maps_are_recorded_once_for_the_path_rows_at_the_two_official_layers(model, monkeypatch):
    unet, inversion, self_grid, cross_grid = model
    computed = []
    original = attention.mean_attention_weights
    monkeypatch.setattr(
        attention, "mean_attention_weights", lambda *args: computed.append(args[0].shape) or original(*args)
    )
    with DiffusersBackend(unet, tiny_context(1), None, 1.0) as backend:
        recorder = Recorder(backend)
        sampler = sampler_for(unet, inversion, recorder, object_tokens=OBJECT)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights find no object (see the module docstring)
            result = sampler.run()
    mask_step = sampler.plan[sampler.mask_step]
    assert mask_step.index == 2 and mask_step.adain and not sampler.plan[1].adain
    # two recording calls, both at the mask step's sigma: the appearance call and the joint call
    sigma = sampler.sigmas[mask_step.global_step]
    assert [call[0] for call in recorder.recording_calls] == [pytest.approx(sigma)] * 2
    appearance_rows, joint_rows = (call[1] for call in recorder.recording_calls)
    assert appearance_rows == ((0, ("appearance", 0)),)
    assert joint_rows == ((2, ("structure", 0)), (3, ("structure", 1)))  # after the two output rows
    # one explicit map per image and kind: 3 images x (self + cross); nothing else left fused attention
    tokens0, tokens1 = self_grid[0] * self_grid[1], cross_grid[0] * cross_grid[1]
    assert len(computed) == 6  # query shapes: three at level 0 (self), three at level 1 (cross)
    assert sorted(shape[0] for shape in computed) == sorted([tokens0] * 3 + [tokens1] * 3)
    maps = recorder.recording_calls[-1][2]
    assert maps[("structure", 1)].shape == (tokens0, tokens0)
    assert torch.allclose(maps[("structure", 1)].sum(1), torch.ones(tokens0), atol=1e-4)  # softmax rows
    assert result.structure_masks.shape == (2, 1, LATENT, LATENT)
    assert result.appearance_masks.shape == (1, 1, LATENT, LATENT)


def test_the_masks_cost_no_model_evaluation(model):
    unet, inversion, _, _ = model
    counts = {}
    for words in (None, OBJECT):
        with DiffusersBackend(unet, tiny_context(1), None, 1.0) as backend, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sampler_for(unet, inversion, backend, object_tokens=words).run()
            counts[words is None] = backend.image_evaluations
    assert counts[True] == counts[False]


def synthetic_maps(self_grid, cross_grid, context_tokens=77, word=OBJECT[0][0]):
    """Head-averaged maps of an image whose object is the centre square: tokens attend within their region,
    and the object word's cross-attention is high inside the square."""
    (h0, w0), (h1, w1) = self_grid, cross_grid
    region = torch.zeros(h0, w0, dtype=torch.bool)
    region[h0 // 4 : 3 * h0 // 4, w0 // 4 : 3 * w0 // 4] = True
    flat = region.flatten()
    self_map = (flat[:, None] == flat[None, :]).float()
    self_map = self_map / self_map.sum(1, keepdim=True)
    small = torch.nn.functional.interpolate(region[None, None].float(), size=(h1, w1), mode="nearest")[0, 0]
    cross_map = torch.full((h1 * w1, context_tokens), 0.01)
    cross_map[:, word] = 0.05 + 0.5 * small.flatten()
    return region, self_map, cross_map


def test_a_found_object_masks_adain_and_adain_leaves_the_rest_alone(model):
    unet, inversion, self_grid, cross_grid = model
    region, self_map, cross_map = synthetic_maps(self_grid, cross_grid)

    def replace(record):  # the real maps were recorded (checked above); the object is made findable here
        for _, image in record.rows:
            assert image in record.maps.self_maps and image in record.maps.cross_maps
            record.maps.self_maps[image], record.maps.cross_maps[image] = self_map, cross_map

    with DiffusersBackend(unet, tiny_context(1), None, 1.0) as backend:
        sampler = sampler_for(unet, inversion, Recorder(backend, replace), object_tokens=OBJECT)
        latents = sampler.initial_latents()
        for step in sampler.plan[: sampler.mask_step]:
            latents = sampler.advance(step, latents, sampler.predict(step, latents))
        step = sampler.plan[sampler.mask_step]
        noise = sampler.predict(step, latents)
    expected = torch.nn.functional.interpolate(region[None, None].float(), size=(LATENT, LATENT), mode="nearest")
    assert torch.equal(sampler.structure_masks, expected.expand(2, -1, -1, -1))
    assert torch.equal(sampler.appearance_masks, expected)
    assert torch.equal(sampler.content_mask, expected.expand(2, -1, -1, -1))
    with_adain = sampler.advance(step, latents, noise).output
    without_adain = sampler.advance(dataclasses.replace(step, adain=False), latents, noise).output
    outside = expected.expand_as(with_adain) == 0
    assert torch.equal(with_adain[outside], without_adain[outside])
    assert (with_adain[~outside] - without_adain[~outside]).abs().max() > 1e-2
    sigma, sigma_next = sampler.sigmas[step.global_step], sampler.sigmas[step.global_step + 1]
    stepped = ddpm_step(latents.output, noise.output, sigma, sigma_next, inversion.noise_at(step.global_step)[[1, 2]])
    assert torch.equal(without_adain, stepped)


def test_no_object_found_falls_back_to_unmasked_adain_with_one_warning(model):
    unet, inversion, self_grid, cross_grid = model
    _, self_map, _ = synthetic_maps(self_grid, cross_grid)
    flat_cross = torch.full((cross_grid[0] * cross_grid[1], 77), 1 / 77)  # the word stands out nowhere

    def replace(record):
        for _, image in record.rows:
            record.maps.self_maps[image], record.maps.cross_maps[image] = self_map, flat_cross

    with DiffusersBackend(unet, tiny_context(1), None, 1.0) as backend:
        sampler = sampler_for(unet, inversion, Recorder(backend, replace), object_tokens=OBJECT)
        with pytest.warns(UserWarning, match="object word was not found .* output 0, 1; those outputs use unmasked"):
            result = sampler.run()
    assert result.structure_masks.sum() == 0  # the MASK outputs show what was found: nothing
    assert torch.equal(sampler.content_mask, torch.ones(2, 1, LATENT, LATENT))  # AdaIN over the whole image


def test_connected_masks_win_and_nothing_is_recorded(model, monkeypatch):
    unet, inversion, _, _ = model
    monkeypatch.setattr(attention, "mean_attention_weights", lambda *args: pytest.fail("recorded maps"))
    mask = torch.ones(LATENT, LATENT)
    with DiffusersBackend(unet, tiny_context(1), None, 1.0) as backend:
        sampler = sampler_for(unet, inversion, backend, structure_mask=mask, object_tokens=OBJECT)
        result = sampler.run()
    assert sampler.mask_step is None
    assert torch.equal(result.structure_masks, torch.ones(2, 1, LATENT, LATENT))
    assert result.appearance_masks is None


def test_fast_mode_records_with_one_extra_call_per_cached_path(model):
    unet, _, _, _ = model
    clean = torch.randn(2, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(9))
    with DiffusersBackend(unet, tiny_context(1), tiny_context(2), 1.0) as backend:
        cached = invert(backend.predict_noise, clean, paper_sigmas(steps=STEPS), START, 5, cache=CacheSettings())
        counts = {}
        for words in (None, OBJECT):
            before = backend.image_evaluations
            recorder = Recorder(backend)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sampler_for(unet, cached, recorder, rows=((0,), (1,)), object_tokens=words).run()
            counts[words is None] = backend.image_evaluations - before
    assert counts[False] == counts[True] + 2  # the appearance and the structure image, at one step
    assert [call[1] for call in recorder.recording_calls] == [((0, ("appearance", 0)),), ((0, ("structure", 0)),)]


def test_at_paper_settings_the_maps_come_from_the_step_whose_official_counter_is_19():
    sigmas = paper_sigmas(steps=100)
    maps = torch.zeros(68, 1, 4, 8, 8, dtype=torch.float64)
    inversion = Inversion(torch.zeros(1, 4, 8, 8), sigmas, 32, torch.zeros(69, 1, 4, 8, 8), maps)
    sampler = JointSampler(None, inversion, inversion, object_tokens=OBJECT)
    step = sampler.plan[sampler.mask_step]
    assert (step.index, step.global_step, max(step.index - 1, 0)) == (20, 52, 19)  # loop step, global, counter
    assert step.adain and not sampler.plan[19].adain
    later = JointSampler(
        None, inversion, inversion, TransferSettings(plan=PlanSettings(adain_range=(0.5, 1.0))), object_tokens=OBJECT
    )
    assert later.mask_step == 50
