"""The node chain on tiny real ComfyUI models: SD-1.5- and SDXL-shaped, batches, masks, files, errors."""

import logging

import pytest
import torch
from comfyui_support import (
    conditioning,
    counting_clone,
    invert_node,
    run,
    sample_node,
    sdxl_conditioning,
    tiny_flux,
    tiny_sd15,
    tiny_sdxl,
)

STEPS, START = 8, 2


@pytest.fixture(scope="module")
def sd15(comfy):
    model, _ = tiny_sd15(comfy, seed=1)
    return model


def invert(comfy, model, samples, cond=conditioning, steps=STEPS, start=START):
    return invert_node(comfy, model, samples, positive=cond(1), negative=cond(2), steps=steps, start_step=start)


def transfer(comfy, model, appearance, structure, cond=conditioning, **inputs):
    return sample_node(comfy, model, appearance, structure, positive=cond(1), negative=cond(2), **inputs)


def latents(seed, batch=1, height=32, width=32):
    return torch.randn(batch, 4, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pair(comfy, sd15):
    return invert(comfy, sd15, latents(1)), invert(comfy, sd15, latents(2))


@pytest.fixture(scope="module")
def plain_transfer(comfy, sd15, pair):
    """The sampler's outputs on ``pair`` with every setting at its default (several tests compare to it)."""
    return transfer(comfy, sd15, *pair)


def test_sd15_chain_produces_a_transfer(pair, plain_transfer):
    appearance, _ = pair
    assert appearance.metadata["latent_format"] == "SD15" and appearance.metadata["freeu"] == "True"
    assert appearance.latents.shape == (STEPS + 1 - START, 1, 4, 32, 32)
    output, appearance_out, structure_out, appearance_mask, structure_mask = plain_transfer
    assert output["samples"].shape == (1, 4, 32, 32)
    assert torch.isfinite(output["samples"]).all()
    # the output departs from the structure path's own reconstruction: the swap did something
    assert (output["samples"] - structure_out["samples"]).abs().mean() > 1e-2
    assert appearance_out["samples"].shape == (1, 4, 32, 32)
    # no masks and no object word: AdaIN ran over the whole images, which the MASK outputs say at pixel size
    assert torch.equal(appearance_mask, torch.ones(1, 256, 256)) and torch.equal(structure_mask, appearance_mask)


def test_sdxl_chain_swaps_at_x2_and_x4(comfy):
    model = tiny_sdxl(comfy, seed=2)
    levels, starts = comfy.unet.decoder_levels(model.get_model_object("diffusion_model"))
    assert levels == {0: 1, 1: 1, 2: 0, 3: 0}  # no attention in the full-resolution decoder blocks 4, 5
    appearance = invert(comfy, model, latents(3), cond=sdxl_conditioning)
    structure = invert(comfy, model, latents(4), cond=sdxl_conditioning)
    assert appearance.metadata["latent_format"] == "SDXL" and appearance.metadata["freeu"] == "False"
    output, _, structure_out, *_ = transfer(comfy, model, appearance, structure, cond=sdxl_conditioning)
    assert torch.isfinite(output["samples"]).all()
    assert (output["samples"] - structure_out["samples"]).abs().mean() > 1e-2


def test_one_structure_many_appearances_of_another_size(comfy, sd15, pair):
    _, structure = pair
    appearances = invert(comfy, sd15, latents(5, batch=2, height=16, width=24))
    output, appearance_out, _, *_ = transfer(comfy, sd15, appearances, structure)
    assert output["samples"].shape == (2, 4, 32, 32)
    assert appearance_out["samples"].shape == (2, 4, 16, 24)
    first, second = output["samples"][0], output["samples"][1]
    assert (first - second).abs().mean() > 1e-3


def test_incompatible_batches_are_refused(comfy, sd15):
    three = invert(comfy, sd15, latents(6, batch=3, height=8, width=8), steps=3, start=1)
    two = invert(comfy, sd15, latents(7, batch=2, height=8, width=8), steps=3, start=1)
    with pytest.raises(ValueError, match="cannot pair 3 appearance images with 2 structure images"):
        transfer(comfy, sd15, three, two)


def test_masks_of_any_size_drive_masked_adain(comfy, sd15, pair, plain_transfer, caplog):
    appearance, structure = pair
    mask = torch.zeros(1, 100, 60)
    mask[:, 20:80, 10:50] = 1.0
    masked, _, _, *_ = transfer(
        comfy, sd15, appearance, structure, appearance_mask=torch.ones(64, 64), structure_mask=mask
    )
    plain, *_ = plain_transfer
    assert torch.isfinite(masked["samples"]).all()
    assert (masked["samples"] - plain["samples"]).abs().mean() > 1e-3
    caplog.clear()
    empty, _, _, *_ = transfer(comfy, sd15, appearance, structure, structure_mask=torch.zeros(1, 32, 32))
    logged = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any("AdaIN: a mask is empty" in text for text in logged), logged
    assert torch.equal(empty["samples"], plain["samples"])


def test_freeu_fires_once_per_decoder_level(comfy, sd15):
    """A recording patch before and after ours: h changes only entering a decoder level."""
    recorded = {"before": [], "after": []}

    def recorder(name):
        def patch(h, hsp, transformer_options):
            recorded[name].append((transformer_options["block"][1], h.clone()))
            return h, hsp

        return patch

    model = sd15.clone()
    model.set_model_output_block_patch(recorder("before"))
    patched = comfy.families.patch_model(model, comfy.core.freeu.FreeUSettings())
    patched.set_model_output_block_patch(recorder("after"))
    import comfy.model_management as model_management

    model_management.load_models_gpu([patched])
    with torch.no_grad():
        patched.model.apply_model(
            latents(8),
            torch.tensor([3.0]),
            c_crossattn=conditioning(1)[0][0],
            transformer_options=patched.model_options["transformer_options"],
        )
    assert len(recorded["before"]) == 4
    changed = [
        block
        for (block, before), (_, after) in zip(recorded["before"], recorded["after"], strict=True)
        if not torch.equal(before, after)
    ]
    _, level_starts = comfy.unet.decoder_levels(sd15.get_model_object("diffusion_model"))
    assert changed == sorted(level_starts) == [0, 2]


def test_save_and_load_inversion_round_trip(comfy, sd15, pair, plain_transfer, tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    monkeypatch.setattr(folder_paths, "input_directory", str(tmp_path / "input"))
    (tmp_path / "input").mkdir()
    appearance, structure = pair
    saved = comfy.nodes.XAttnSaveInversion.execute(appearance, "xattn/apple")
    name = saved.ui["text"][0]
    assert name == "xattn/apple_00001_.safetensors [output]"
    assert name in comfy.pack.nodes.inversion_files.inversion_files()
    assert comfy.nodes.XAttnLoadInversion.validate_inputs(name) is True
    (loaded,) = run(comfy.nodes.XAttnLoadInversion, name)
    assert torch.equal(loaded.noise_maps, appearance.noise_maps)
    assert loaded.metadata == appearance.metadata
    from_file, _, _, *_ = transfer(comfy, sd15, loaded, structure)
    assert torch.equal(from_file["samples"], plain_transfer[0]["samples"])


@pytest.mark.parametrize("name", ["../secret.safetensors", "/etc/passwd", "../../x.safetensors [output]", "notes.txt"])
def test_load_refuses_paths_outside_the_folders(comfy, name):
    message = comfy.nodes.XAttnLoadInversion.validate_inputs(name)
    assert isinstance(message, str) and "refusing" in message


def test_save_refuses_path_traversal(comfy, pair, tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    with pytest.raises(Exception, match="outside"):
        comfy.nodes.XAttnSaveInversion.execute(pair[0], "../../evil")
    assert not any(tmp_path.parent.glob("evil*"))


def test_unsupported_model_is_refused_before_sampling(comfy):
    """A Flux-style model that puts its image tokens before the text (a layout the swap does not read)."""
    flux = tiny_flux(comfy)
    for block in flux.model.diffusion_model.double_blocks:
        block.flipped_img_txt = True
    with pytest.raises(ValueError, match="puts the image tokens before the text"):
        invert(comfy, flux, torch.randn(1, 16, 8, 8))


def test_inversion_from_another_latent_format_is_refused(comfy, sd15, pair):
    appearance, structure = pair
    foreign = appearance.select([0])
    foreign.metadata["latent_format"] = "SD3"
    with pytest.raises(ValueError, match="latent format SD3.*invert the image again"):
        transfer(comfy, sd15, foreign, structure)


def test_inversion_with_other_channel_count_is_refused(comfy, sd15, pair):
    appearance, structure = pair
    foreign = appearance.select([0])
    foreign.clean = torch.zeros(1, 16, 32, 32)
    with pytest.raises(ValueError, match="16 latent channels but this MODEL expects 4"):
        transfer(comfy, sd15, foreign, structure)


def test_inversion_from_other_weights_warns_and_proceeds(comfy, sd15, pair, caplog):
    appearance, structure = pair
    other, _ = tiny_sd15(comfy, seed=9)
    with caplog.at_level(logging.WARNING):
        output, _, _, *_ = transfer(comfy, other, appearance, structure)
    assert "made with other model weights" in caplog.text
    assert torch.isfinite(output["samples"]).all()


def test_inversions_of_different_schedules_are_refused(comfy, sd15, pair):
    appearance, _ = pair
    structure = invert(comfy, sd15, latents(2), steps=10, start=2)
    with pytest.raises(ValueError, match="different schedules"):
        transfer(comfy, sd15, appearance, structure)


def test_start_step_rules(comfy, sd15, pair):
    # ComfyUI range-checks steps and start_step itself: Invert Image names neither in a validate_inputs
    assert "validate_inputs" not in vars(comfy.nodes.XAttnInvertImage)
    with pytest.raises(ValueError, match=r"^start_step \(10\) must be below the number of steps \(10\)$"):
        invert(comfy, sd15, latents(1), steps=10, start=10)
    sigmas = torch.tensor([10.0, 5.0, 1.0, 0.1])
    with pytest.raises(ValueError, match=r"^start_step \(3\) must be below the SIGMAS input's number of steps \(3\)$"):
        invert_node(comfy, sd15, latents(1), steps=10, start_step=3, sigmas=sigmas)
    appearance, structure = pair
    with pytest.raises(ValueError, match="start step 1 is not available"):
        transfer(comfy, sd15, appearance, structure, start_step=1)
    later, _, _, *_ = transfer(comfy, sd15, appearance, structure, start_step=START + 2)
    assert torch.isfinite(later["samples"]).all()


def test_a_latent_where_an_inversion_belongs_is_a_clear_error(comfy, sd15, pair):
    with pytest.raises(TypeError, match="needs an XATTN_INVERSION.*not dict"):
        transfer(comfy, sd15, {"samples": latents(1)}, pair[1])


def test_empty_latent_batch_is_refused(comfy, sd15):
    with pytest.raises(ValueError, match="latent batch is empty"):
        invert(comfy, sd15, torch.zeros(0, 4, 32, 32))


def test_adain_latent_match_node(comfy):
    content, style = latents(10), latents(11) * 3 + 1
    (matched,) = run(comfy.nodes.XAttnAdaINLatentMatch, {"samples": content}, {"samples": style}, 1.0)
    assert torch.allclose(matched["samples"].mean(dim=(2, 3)), style.mean(dim=(2, 3)), atol=1e-4)


def test_options_node_reaches_the_sampler(comfy, sd15, pair, plain_transfer):
    appearance, structure = pair
    (nothing,) = run(comfy.nodes.XAttnOptions, 0.0, 0.0, 0.0, 0.0, 5, 0.4, 0.0, 0.0, 16)
    assert nothing["memory_budget"] == 16 * 2**20
    # no level swaps and no AdaIN: the output path is the structure path, bit for bit
    output, _, structure_out, *_ = transfer(comfy, sd15, appearance, structure, options=nothing)
    assert torch.equal(output["samples"], structure_out["samples"])
    (defaults,) = run(comfy.nodes.XAttnOptions, 0.1, 0.9, 0.1, 0.7, 5, 0.4, 0.2, 1.0, 64)
    with_defaults, _, _, *_ = transfer(comfy, sd15, appearance, structure, options=defaults)
    assert torch.equal(with_defaults["samples"], plain_transfer[0]["samples"])


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_latents_and_inversions_are_refused_before_any_model_call(comfy, sd15, pair, value):
    """One NaN made the inversion's noise maps and the whole output NaN, with no error anywhere."""
    appearance, structure = pair
    counted, calls = counting_clone(sd15)
    poisoned = latents(5)
    poisoned[0, 1, 3, 4] = value
    with pytest.raises(ValueError, match="the latent input holds NaN or Inf values: encode the image again"):
        invert(comfy, counted, poisoned)
    for part in ("clean", "latents", "noise_maps"):
        bad = appearance.select([0])
        tensor = getattr(bad, part).clone()
        tensor.view(-1)[7] = value
        setattr(bad, part, tensor)
        where = {"clean": "clean latent", "latents": "noisy latents", "noise_maps": "noise maps"}[part]
        with pytest.raises(ValueError, match=f"the appearance inversion has NaN or Inf values in its {where}"):
            transfer(comfy, counted, bad, structure)
    assert not calls


def test_a_missing_ui_channel_never_fails_a_node_nor_hides_its_error(comfy, monkeypatch, caplog):
    """ComfyUI hosted as a library has no PromptServer: showing warnings on the node then only logs them."""
    from types import SimpleNamespace

    def no_server():
        raise ImportError("No module named 'server'")

    monkeypatch.setattr(comfy.common, "get_executing_context", lambda: SimpleNamespace(node_id="7"))
    monkeypatch.setattr(comfy.common, "prompt_server", no_server)
    with caplog.at_level(logging.WARNING), comfy.common.engine_warnings() as messages:
        messages.append("a warning for the node")
    assert "a warning for the node" in caplog.text
    with pytest.raises(ValueError, match="the node's own error"), comfy.common.engine_warnings() as messages:
        messages.append("another warning")
        raise ValueError("the node's own error")
