"""End to end on a tiny random SD-1.5-shaped diffusers UNet at 256 x 256 (32x32 and 16x16 decoder attention;
the bench runs the same model at 512 px)."""

import pytest
import torch

from tests.stepwise import teacher_forced
from xattn_core.calls import CallLayout, model_evaluations
from xattn_core.diffusers_backend import DiffusersBackend
from xattn_core.freeu import FreeUSettings
from xattn_core.inversion import invert
from xattn_core.pairing import pair_rows
from xattn_core.plan import PlanSettings, build_plan
from xattn_core.schedule import paper_sigmas
from xattn_core.transfer import JointSampler, TransferSettings, transfer

STEPS, START = 20, 6  # 14 generation steps; first mixing step 3 (counter 2 = 0.1 * 20)
FIRST_MIXING = 3


class Recorder:
    """Wraps a backend and keeps each call's inputs and swap directive."""

    def __init__(self, backend):
        self.backend = backend
        self.calls = []

    def predict_noise(self, latents, sigma, swap, paths=False):
        self.calls.append((latents.clone(), sigma, swap))
        return self.backend.predict_noise(latents, sigma, swap, paths)


@pytest.fixture(scope="module")
def inversions(unet):
    from xattn_core.tiny import tiny_context

    generator = torch.Generator().manual_seed(21)
    clean = torch.randn(2, 4, 32, 32, generator=generator)  # appearance, structure at 256 px
    with DiffusersBackend(unet, tiny_context(1), tiny_context(2), cfg=3.5, freeu=FreeUSettings()) as backend:
        both = invert(backend.predict_noise, clean, paper_sigmas(steps=STEPS), START, seed=5)
    return both.select([0]), both.select([1])


def run(unet, inversions, settings, freeu=True):
    from xattn_core.tiny import tiny_context

    appearance, structure = inversions
    with DiffusersBackend(unet, tiny_context(1), None, 1.0, freeu=FreeUSettings() if freeu else None) as backend:
        recorder = Recorder(backend)
        result = transfer(recorder, appearance, structure, settings)
        evaluations = backend.image_evaluations
    return result, recorder, evaluations


def test_without_swap_and_adain_the_output_path_is_the_structure_path(unet, inversions):
    settings = TransferSettings(plan=PlanSettings(level_ranges=(), adain_range=(0.0, 0.0)))
    result, _, evaluations = run(unet, inversions, settings)
    assert torch.equal(result.output, result.structure)
    assert evaluations == 2 * (STEPS - START)  # the output rows share the structure rows' evaluations


@pytest.fixture(scope="module")
def default_run(unet, inversions):
    return run(unet, inversions, TransferSettings())


def test_swap_changes_the_output_from_the_first_mixing_step(unet, inversions):
    settings = TransferSettings(plan=PlanSettings(adain_range=(0.0, 0.0)))
    result, recorder, evaluations = run(unet, inversions, settings)
    plan = build_plan(STEPS, START, settings.plan)
    assert [step.index for step in plan if step.swaps][0] == FIRST_MIXING
    assert evaluations == model_evaluations(plan, CallLayout.of(1, 1))
    # before the first mixing step the output rows are the structure rows: evaluated once, in the structure call
    joint_inputs = [latents for latents, _, swap in recorder.calls if latents.shape[0] == 2]
    assert len(joint_inputs) == STEPS - START - FIRST_MIXING
    first_output, first_structure = joint_inputs[0]  # the first mixing step's inputs are still identical
    assert torch.equal(first_output, first_structure)
    for latents in joint_inputs[1:]:
        assert (latents[0] - latents[1]).abs().max() > 1e-3
    assert (result.output - result.structure).abs().mean() > 1e-2
    assert torch.isfinite(result.output).all()


def test_transfer_is_deterministic(unet, inversions, default_run):
    first, _, _ = default_run
    second, _, _ = run(unet, inversions, TransferSettings())
    assert torch.equal(first.output, second.output)
    assert (first.output - first.structure).abs().mean() > 1e-2


def test_batch_pairing_rules():
    assert pair_rows(3, 1) == [(0, 0), (1, 0), (2, 0)]
    assert pair_rows(1, 2) == [(0, 0), (0, 1)]
    assert pair_rows(2, 2) == [(0, 0), (1, 1)]
    with pytest.raises(ValueError, match="cannot pair 3 appearance images with 2 structure"):
        pair_rows(3, 2)


def test_one_structure_many_appearances_and_different_sizes(unet):
    from xattn_core.tiny import tiny_context

    generator = torch.Generator().manual_seed(3)
    sigmas = paper_sigmas(steps=8)
    with DiffusersBackend(unet, tiny_context(1), tiny_context(2), cfg=3.5) as backend:
        appearances = invert(backend.predict_noise, torch.randn(2, 4, 24, 16, generator=generator), sigmas, 2)
        structure = invert(backend.predict_noise, torch.randn(1, 4, 16, 20, generator=generator), sigmas, 2)
        backend.with_guidance(tiny_context(1), None, 1.0)
        result = transfer(backend, appearances, structure, TransferSettings(start_step=3))
    assert result.output.shape == (2, 4, 16, 20)
    assert result.pairs == [(0, 0), (1, 0)]
    assert (result.output[0] - result.output[1]).abs().mean() > 1e-3  # two appearances, two results


def test_start_before_the_inversion_is_refused(inversions, unet):
    appearance, structure = inversions
    with pytest.raises(ValueError, match="start step 2 is not available"):
        transfer(None, appearance, structure, TransferSettings(start_step=2))


def test_output_hints_give_the_output_rows_calls_of_their_own(unet, inversions):
    """A backend whose output conditioning carries hints (ControlNet in ComfyUI): the joint call runs as it would
    without them, as a path call, and the output rows run again in output calls, so the paths are unchanged."""
    from xattn_core.tiny import tiny_context

    class Hinted(Recorder):
        output_hints = True

        def predict_noise(self, latents, sigma, swap, paths=False):
            self.calls.append((latents.shape[0], paths, swap))
            return self.backend.predict_noise(latents, sigma, swap, paths)

    appearance, structure = inversions
    with DiffusersBackend(unet, tiny_context(1), None, 1.0, freeu=FreeUSettings()) as backend:
        plain = transfer(backend, appearance, structure)
        before = backend.image_evaluations
        hinted_backend = Hinted(backend)
        hinted = transfer(hinted_backend, appearance, structure)
        evaluations = backend.image_evaluations - before
        # no real hint here, so the output calls must predict what the joint call did, one step at a time
        # (batch composition differs: rounding only)
        per_step = teacher_forced(
            JointSampler(backend, appearance, structure), JointSampler(Hinted(backend), appearance, structure)
        )
    assert torch.equal(hinted.structure, plain.structure) and torch.equal(hinted.appearance, plain.appearance)
    plan = build_plan(STEPS, START)
    swapping = sum(step.swaps for step in plan)
    assert swapping == len(plan) - FIRST_MIXING
    # the output rows are evaluated at every step (other conditioning than the structure's), and once more in
    # each swapping step: as many evaluations as a local transfer (evaluated too) plus one a swapping step
    assert evaluations == model_evaluations(plan, CallLayout.of(1, 1, output_hints=True))
    assert evaluations == model_evaluations(plan, CallLayout.of(1, 1, noise_mask=True)) + swapping
    joint_calls = [paths for rows, paths, _ in hinted_backend.calls if rows == 2]
    output_calls = [(paths, swap is not None) for rows, paths, swap in hinted_backend.calls if rows == 1]
    assert joint_calls == [True] * swapping  # output + structure rows, without the hints
    # per step the appearance path (True); before the first swap the structure rows alone (True), the output
    # with hints (False); then the output with hints swapping (False, swaps); the plain passes (False, False)
    assert output_calls.count((True, False)) + output_calls.count((True, True)) == len(plan) + FIRST_MIXING
    assert output_calls.count((False, True)) == swapping
    structure_steps = [step for step in plan if step.swaps and step.kv_source.value == "structure"]
    assert structure_steps  # the output call then reads the structure keys/values the joint call captured
    assert max(per_step) <= 1e-4, per_step


def test_a_noise_mask_on_the_structure_keeps_everything_outside_it_exactly(unet, inversions, default_run):
    import dataclasses

    from xattn_core.tiny import tiny_context

    appearance, structure = inversions
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 6:20] = 1.0
    with DiffusersBackend(unet, tiny_context(1), None, 1.0, freeu=FreeUSettings()) as backend:
        local = transfer(backend, appearance, dataclasses.replace(structure, noise_mask=mask))
        with pytest.warns(UserWarning, match="appearance inversion carries a noise mask, .* it is ignored"):
            ignored = transfer(backend, dataclasses.replace(appearance, noise_mask=mask), structure)
    outside, inside = (mask == 0).expand_as(local.output), (mask == 1).expand_as(local.output)
    assert (local.output - structure.clean)[outside].abs().max() <= 1e-6  # the structure image's own latent
    assert (local.output - structure.clean)[inside].abs().mean() > 1e-2  # inside, the transfer ran
    assert torch.equal(ignored.output, default_run[0].output)  # without a structure mask: unchanged
