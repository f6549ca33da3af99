"""Local transfer through the LATENT's noise mask, batches split and reproducible, CFG branches in separate model
calls, and inputs refused before any model call."""

import logging
import warnings

import pytest
import torch
from comfyui_support import conditioning, invert_node, run, sample_node, tiny_sd15

from tests.stepwise import relative_difference

STEPS, START = 8, 2


@pytest.fixture(scope="module")
def sd15(comfy):
    return tiny_sd15(comfy, seed=8)[0]


def latents(seed, batch=2):
    return torch.randn(batch, 4, 32, 32, generator=torch.Generator().manual_seed(seed))


def square_mask(size=256):
    """A pixel-size MASK, as SetLatentNoiseMask stores it: the middle of the image may change."""
    mask = torch.zeros(1, size, size)
    mask[:, 64:192, 48:176] = 1.0
    return mask


def test_a_noise_mask_keeps_the_structure_outside_it_exactly(comfy, sd15, tmp_path, monkeypatch):
    import folder_paths

    import nodes as comfy_nodes

    samples = latents(1)
    (masked_latent,) = comfy_nodes.SetLatentNoiseMask().set_mask({"samples": samples[1:]}, square_mask())
    appearance = invert_node(comfy, sd15, samples[:1], steps=STEPS, start_step=START)
    structure = invert_node(
        comfy, sd15, masked_latent["samples"], steps=STEPS, start_step=START, noise_mask=masked_latent["noise_mask"]
    )
    plain_structure = invert_node(comfy, sd15, samples[1:], steps=STEPS, start_step=START)
    assert structure.noise_mask.shape == (1, 1, 32, 32) and plain_structure.noise_mask is None
    local = sample_node(comfy, sd15, appearance, structure)
    plain = sample_node(comfy, sd15, appearance, plain_structure)
    output = sd15.model.process_latent_in(local[0]["samples"])  # the engine's units
    keep = torch.nn.functional.interpolate(square_mask()[None], size=(32, 32), mode="bilinear")[0] == 0
    keep = keep.expand_as(output[0])[None]
    assert (output - structure.clean)[keep].abs().max() <= 1e-6  # outside: the structure image's own latent
    assert (output - structure.clean)[~keep].abs().mean() > 1e-2  # inside: transferred
    assert (plain[0]["samples"] - local[0]["samples"])[~keep].abs().max() > 0  # the mask changed the result
    # the mask survives Save/Load Inversion
    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path))
    saved = comfy.nodes.XAttnSaveInversion.execute(structure, "xattn/local").ui["text"][0]
    (loaded,) = run(comfy.nodes.XAttnLoadInversion, saved)
    assert torch.equal(loaded.noise_mask, structure.noise_mask)
    assert torch.equal(sample_node(comfy, sd15, appearance, loaded)[0]["samples"], local[0]["samples"])


def test_without_a_noise_mask_nothing_changes(comfy, sd15):
    samples = latents(2)
    first = invert_node(comfy, sd15, samples, steps=STEPS, start_step=START)
    assert first.noise_mask is None
    with_mask = invert_node(
        comfy, sd15, samples, steps=STEPS, start_step=START, noise_mask=torch.ones(1, 1, 256, 256)
    )  # the whole image may change
    plain = sample_node(comfy, sd15, first.select([0]), first.select([1]))
    everywhere = sample_node(comfy, sd15, first.select([0]), with_mask.select([1]))
    assert torch.equal(plain[0]["samples"], everywhere[0]["samples"])


def test_select_splits_a_batched_inversion(comfy, sd15):
    both = invert_node(comfy, sd15, latents(3), steps=STEPS, start_step=START)
    (appearance,) = run(comfy.nodes.XAttnSelectInversion, both, "0")
    (structure,) = run(comfy.nodes.XAttnSelectInversion, both, "1")
    assert torch.equal(structure.noise_maps, both.noise_maps[:, 1:])
    output = sample_node(comfy, sd15, appearance, structure)
    assert output[0]["samples"].shape == (1, 4, 32, 32)
    assert comfy.nodes.XAttnSelectInversion.validate_inputs("0-2, 4") is True
    assert "use 0-based numbers" in comfy.nodes.XAttnSelectInversion.validate_inputs("first")
    with pytest.raises(ValueError, match="name image 2, but the inversion holds 2 image"):
        run(comfy.nodes.XAttnSelectInversion, both, "2")


def test_image_i_of_a_batch_inverts_like_a_single_image_with_seed_plus_i(comfy, sd15):
    samples = latents(4, batch=3)
    batch = invert_node(comfy, sd15, samples, steps=STEPS, start_step=START, seed=100)
    alone = invert_node(comfy, sd15, samples[2:], steps=STEPS, start_step=START, seed=102)
    assert torch.equal(batch.latents[:, 2:], alone.latents)  # the noise draws, bit for bit


def counted(model):
    calls = []
    clone = model.clone()
    clone.set_model_unet_function_wrapper(
        lambda apply_model, args: calls.append(1) or apply_model(args["input"], args["timestep"], **args["c"])
    )
    return clone, calls


@pytest.mark.parametrize("channels", [1, 3, 16])
def test_a_latent_with_other_channels_is_refused_before_any_model_call(comfy, sd15, channels):
    model, calls = counted(sd15)
    with pytest.raises(ValueError, match=f"the latent has {channels} channels but this MODEL expects 4"):
        invert_node(comfy, model, torch.zeros(1, channels, 8, 8))
    assert calls == []


def test_an_inversion_without_metadata_is_checked_by_shape(comfy, sd15, caplog):
    inversion = invert_node(comfy, sd15, latents(5), steps=STEPS, start_step=START)
    bare = inversion.select([0])
    bare.metadata = {}
    with caplog.at_level(logging.WARNING):
        sample_node(comfy, sd15, bare, inversion.select([1]))
    assert "carries no model metadata" in caplog.text
    foreign = inversion.select([0])
    foreign.metadata, foreign.sigmas = {}, foreign.sigmas / 100  # e.g. a flow model's 0..1 schedule
    with pytest.raises(ValueError, match="noise schedule .* lies outside this MODEL's"):
        sample_node(comfy, sd15, foreign, inversion.select([1]))


def test_cond_and_uncond_in_separate_model_calls_match_batched_step_by_step(comfy, sd15, monkeypatch):
    """Under memory pressure ComfyUI runs the CFG branches in separate model calls; compared one step at a time
    from identical latents (whole trajectories drift apart chaotically on random weights, as KSampler's do)."""
    import comfy.model_management as model_management

    inversion = invert_node(comfy, sd15, latents(6), steps=STEPS, start_step=START, cfg=2.0)
    free = model_management.get_free_memory
    split = {"on": False}
    monkeypatch.setattr(
        model_management, "get_free_memory", lambda *args, **kwargs: 1 if split["on"] else free(*args, **kwargs)
    )
    patched = comfy.families.patch_model(sd15, comfy.common.freeu_settings("auto", sd15))
    branches_seen = []

    def loop(backend, x, report):
        sampler = comfy.core.transfer.JointSampler(backend, inversion.select([0]), inversion.select([1]))
        latents_now = sampler.initial_latents()
        worst = []
        for step in sampler.plan:
            split["on"] = False
            batched = sampler.predict(step, latents_now)
            split["on"] = True
            separate = sampler.predict(step, latents_now)
            split["on"] = False
            worst.append(
                max(
                    relative_difference(getattr(separate, path), getattr(batched, path))
                    for path in ("output", "appearance", "structure")
                )
            )
            latents_now = sampler.advance(step, latents_now, batched)
        return x, worst

    patched.set_model_unet_function_wrapper(
        lambda apply_model, args: (
            branches_seen.append(tuple(args["cond_or_uncond"]))
            or apply_model(args["input"], args["timestep"], **args["c"])
        )
    )
    _, worst = comfy.backend.run_in_guider(
        patched, conditioning(1), conditioning(2), 2.0, torch.zeros(1, 4, 32, 32), inversion.sigmas[START:], loop
    )
    print(f"\nper-step max |separate - batched| / max |batched| = {max(worst):.2e}")
    assert (0,) in branches_seen and (1,) in branches_seen  # the branches really ran alone
    assert max(worst) <= 1e-4


def logged_warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


def test_a_schedule_with_no_swapping_step_warns_in_the_log_on_every_run(comfy, sd15, caplog):
    """Not through Python's warnings filter, which would show the text once per process."""
    inversion = invert_node(comfy, sd15, latents(7), steps=5, start_step=4)
    for attempt in range(2):
        caplog.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the node lets no warning escape to the filter
            sample_node(comfy, sd15, inversion.select([0]), inversion.select([1]))
        swaps = [text for text in logged_warnings(caplog) if "no generation step swaps attention" in text]
        assert len(swaps) == 1, (attempt, logged_warnings(caplog))
        assert swaps[0].startswith("Cross-Image Attention: ")


def test_warnings_stay_silent_without_a_reason(comfy, sd15, caplog):
    inversion = invert_node(comfy, sd15, latents(9), steps=STEPS, start_step=START)
    # at this short schedule the paper's structure rule falls on no swapping step, which warns; every 1st step does
    options = {"plan": comfy.core.plan.PlanSettings(structure_kv_every=1)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sample_node(comfy, sd15, inversion.select([0]), inversion.select([1]), options=options)
    assert logged_warnings(caplog) == []
