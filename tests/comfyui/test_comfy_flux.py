"""Flux on the real ComfyUI: a tiny random Flux.1-shaped MODEL built in code from comfy.ldm.flux.

Inversion (rectified flow), the swap in the chosen blocks' joint attention, and the same nodes as for SD.
"""

import logging

import pytest
import torch
from comfyui_support import (
    counting_clone,
    flow_regeneration_errors,
    flux_conditioning,
    interrupted_calls,
    invert_node,
    run,
    sample_node,
    stepwise_inversion_pair,
    tiny_flux,
    tiny_sd15,
)

STEPS, START = 6, 2
POSITIVE, NEGATIVE = flux_conditioning(1), flux_conditioning(2)


@pytest.fixture(scope="module")
def flux(comfy):
    return tiny_flux(comfy, seed=0)


def velocity(model, x, sigma, conditioning, guidance=None):
    context, extras = conditioning[0]
    guidance = torch.tensor([extras.get("guidance", 3.5) if guidance is None else guidance])
    with torch.no_grad():
        denoised = model.model.apply_model(
            x, torch.tensor([sigma]), c_crossattn=context, y=extras["pooled_output"], guidance=guidance
        )
    return (x - denoised) / sigma


def flux_latents(seed: int, batch: int = 1, size: int = 8):
    return torch.randn(batch, 16, size, size, generator=torch.Generator().manual_seed(seed))


def invert_flux(comfy, model, samples, **inputs):
    """Invert Image on Flux at cfg 1 (guidance-distilled: the guidance comes from the prompt's FluxGuidance)."""
    settings = dict(steps=STEPS, start_step=START, cfg=1.0, positive=POSITIVE, negative=NEGATIVE)
    settings.update(inputs)
    return invert_node(comfy, model, samples, **settings)


def sample_flux(comfy, model, appearance, structure, **inputs):
    return sample_node(comfy, model, appearance, structure, positive=POSITIVE, negative=NEGATIVE, **inputs)


@pytest.fixture(scope="module")
def flux_pair(comfy, flux):
    both = invert_flux(comfy, flux, torch.cat([flux_latents(3), flux_latents(4)]))
    return both.select([0]), both.select([1])


def test_the_tiny_flux_is_a_real_network(comfy, flux):
    import comfy.ldm.flux.model

    assert isinstance(flux.model.diffusion_model, comfy.ldm.flux.model.Flux)
    assert flux.model.latent_format.latent_channels == 16
    x = flux_latents(1)
    base = velocity(flux, x, 0.6, POSITIVE)
    assert 0.5 < base.std().item() < 2.0
    other_input = velocity(flux, x.roll(1, -1), 0.6, POSITIVE)
    other_sigma = velocity(flux, x, 0.3, POSITIVE)
    other_context = velocity(flux, x, 0.6, NEGATIVE)
    other_guidance = velocity(flux, x, 0.6, POSITIVE, guidance=1.0)
    for changed in (other_input, other_sigma, other_context, other_guidance):
        assert (changed - base).abs().mean().item() > 1e-2 * base.abs().mean().item()
    # attention mixes tokens: one changed latent cell changes the velocity far from it
    poked = x.clone()
    poked[:, :, 0, 0] += 1.0
    far = velocity(flux, poked, 0.6, POSITIVE)[:, :, 6:, 6:] - base[:, :, 6:, 6:]
    assert far.abs().max().item() > 1e-4


@pytest.mark.parametrize("schedule", ["flux", "linear"])
def test_flux_inversion_reconstructs_every_step_exactly(comfy, flux, flux_pair, schedule):
    flow = comfy.core.flow
    if schedule == "flux":
        inversion = flux_pair[0]
        # Invert Image's default is the model's own schedule (KSampler's "simple"); the engine's copy agrees
        assert torch.allclose(inversion.sigmas, flow.flux_sigmas(STEPS), atol=1e-6)
    else:
        inversion = invert_flux(comfy, flux, flux_latents(3), sigmas=flow.linear_sigmas(STEPS))
        assert torch.equal(inversion.sigmas, flow.linear_sigmas(STEPS))
    assert inversion.metadata["family"] == "flux" and inversion.step_kind == "flow"
    assert inversion.latents.shape == (STEPS + 1 - START, 1, 16, 8, 8)
    assert torch.equal(inversion.latent_at(STEPS), flux.model.process_latent_in(flux_latents(3)))
    errors = flow_regeneration_errors(comfy, flux, inversion, POSITIVE, NEGATIVE)
    assert len(errors) == STEPS - START and max(errors) <= 1e-5, errors


def no_swap_options(comfy):
    plan = comfy.core.plan.PlanSettings(level_ranges=((0.0, 0.0), (0.0, 0.0)))
    return {"plan": plan}


@pytest.fixture(scope="module")
def flux_transfer(comfy, flux, flux_pair):
    appearance, structure = flux_pair
    swapped = sample_flux(comfy, flux, appearance, structure)
    warned = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warned.append(record.getMessage())
    logging.getLogger().addHandler(handler)  # the nodes log their warnings (caplog is per test, this is per module)
    try:
        plain = sample_flux(comfy, flux, appearance, structure, options=no_swap_options(comfy))
    finally:
        logging.getLogger().removeHandler(handler)
    assert any("no generation step swaps" in message for message in warned), warned
    return swapped, plain


def test_the_swap_changes_only_the_output_and_both_paths_reconstruct(comfy, flux, flux_pair, flux_transfer):
    appearance, structure = flux_pair
    (output, appearance_out, structure_out, *_), (plain_output, plain_appearance, plain_structure, *_) = flux_transfer
    # the paths are the same with and without the swap, bit for bit, and reconstruct their images
    assert torch.equal(appearance_out["samples"], plain_appearance["samples"])
    assert torch.equal(structure_out["samples"], plain_structure["samples"])
    for path, inversion in ((appearance_out, appearance), (structure_out, structure)):
        clean = flux.model.process_latent_out(inversion.clean)
        error = ((path["samples"] - clean).norm() / clean.norm()).item()
        assert error <= 1e-4, error
    difference = ((output["samples"] - plain_output["samples"]).norm() / plain_output["samples"].norm()).item()
    assert difference > 1e-3, difference
    assert torch.isfinite(output["samples"]).all() and output["samples"].shape == (1, 16, 8, 8)


class Recorder:
    """Another pack's optimized_attention_override: records every attention call's q, k, v and computes it."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, func, q, k, v, heads, *args, **kwargs):
        self.calls.append((q.clone(), k.clone(), v.clone()))
        return func(q, k, v, heads, *args, **kwargs)


def reference_swap(query, key, value, appearance_key, appearance_value, text_tokens, contrast):
    """Plain torch: the output row's image queries over its own text keys and the appearance's image keys."""
    image = slice(text_tokens, None)
    keys = torch.cat([key[:, :, :text_tokens], appearance_key[:, :, image]], 2).double()
    values = torch.cat([value[:, :, :text_tokens], appearance_value[:, :, image]], 2).double()
    weights = torch.softmax(query[:, :, image].double() @ keys.transpose(-1, -2) / query.shape[-1] ** 0.5, -1)
    weights = (contrast * weights - (contrast - 1) / keys.shape[2]).clamp(0, 1)
    return (weights @ values).transpose(1, 2).reshape(1, -1, query.shape[1] * query.shape[-1])


def test_the_swapped_attention_equals_a_plain_torch_reference(comfy, flux):
    """One swapping call through ComfyUI's Flux (default blocks: the last single block of two) against plain torch.

    The queries, keys and values come from a recording override another pack set; the block's attention output is
    read at the input of its output projection.
    """
    import comfy.model_management as model_management

    attention = comfy.core.attention
    recorder = Recorder()
    patched = comfy.families.patch_model(flux, None)
    # set on the patched clone itself: ModelPatcher.clone deep-copies model_options, and with them a recorder
    patched.model_options["transformer_options"]["optimized_attention_override"] = recorder
    model_management.load_models_gpu([patched])
    context, extras = POSITIVE[0]
    block = patched.model.diffusion_model.single_blocks[1]
    seen = []
    handle = block.linear2.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))

    def call(x, swap):
        options = dict(patched.model_options["transformer_options"])
        options.update({comfy.backend.SWAP_KEY: swap, "cond_or_uncond": [0]})
        with torch.no_grad():
            patched.model.apply_model(
                x,
                torch.tensor([0.6]),
                c_crossattn=context,
                y=extras["pooled_output"],
                guidance=torch.tensor([3.5]),
                transformer_options=options,
            )
        return recorder.calls[-1]  # the last attention of the forward is single block 1's

    try:
        store, contrast = attention.KeyValueStore(), 1.67
        _, appearance_key, appearance_value = call(
            flux_latents(5), attention.CallAttention(capture=attention.Capture(frozenset({0}), store))
        )
        swap = attention.CallAttention(swap=attention.Swap(frozenset({0}), (0,), (0,), store, contrast))
        query, key, value = call(flux_latents(6), swap)
    finally:
        handle.remove()
    hidden = block.hidden_size
    text_tokens = context.shape[1]
    ours = seen[-1][:, :, :hidden]
    expected_image = reference_swap(query, key, value, appearance_key, appearance_value, text_tokens, contrast)
    assert ((ours[:, text_tokens:] - expected_image).abs().max() / expected_image.abs().max()).item() <= 1e-5
    # the text tokens keep their own attention over the row's own text and image
    own = torch.softmax(
        query[:, :, :text_tokens].double() @ key.double().transpose(-1, -2) / query.shape[-1] ** 0.5, -1
    )
    expected_text = (own @ value.double()).transpose(1, 2).reshape(1, text_tokens, hidden)
    assert ((ours[:, :text_tokens] - expected_text).abs().max() / expected_text.abs().max()).item() <= 1e-5
    assert (ours[:, text_tokens:] - seen[0][:, text_tokens:, :hidden]).abs().max() > 1e-3  # not the capture's


def test_the_base_model_is_unchanged_afterwards(comfy, flux, flux_pair):
    x = flux_latents(9)
    before = velocity(flux, x, 0.5, POSITIVE)
    options = repr(flux.model_options)
    sample_flux(comfy, flux, *flux_pair)
    assert torch.equal(velocity(flux, x, 0.5, POSITIVE), before)
    assert repr(flux.model_options) == options
    assert "patches_replace" not in flux.model_options.get("transformer_options", {})


def test_interrupt_stops_a_flux_transfer_before_the_next_model_call(comfy, flux, flux_pair):
    counted, calls = counting_clone(flux)
    sample_flux(comfy, counted, *flux_pair)
    for after in (1, len(calls) // 2, len(calls) - 1):
        assert interrupted_calls(flux, after, lambda clone: sample_flux(comfy, clone, *flux_pair)) == after
    assert "patches_replace" not in flux.model_options.get("transformer_options", {})


def test_batches_one_structure_many_appearances_and_the_reverse(comfy, flux, flux_pair):
    appearance, structure = flux_pair
    two = invert_flux(comfy, flux, torch.cat([flux_latents(7), flux_latents(8)]))
    many_appearances, _, _, *_ = sample_flux(comfy, flux, two, structure)
    many_structures, _, structures_out, *_ = sample_flux(comfy, flux, appearance, two)
    assert many_appearances["samples"].shape == many_structures["samples"].shape == (2, 16, 8, 8)
    for outputs in (many_appearances, many_structures):
        assert (outputs["samples"][0] - outputs["samples"][1]).abs().mean() > 1e-3
    clean = flux.model.process_latent_out(two.clean)
    assert ((structures_out["samples"] - clean).norm() / clean.norm()).item() <= 1e-4


def counting(model):
    """A clone whose model calls are counted (a unet wrapper, as other packs add one)."""
    counted = model.clone()
    calls = {"n": 0}

    def wrapper(apply_model, args):
        calls["n"] += 1
        return apply_model(args["input"], args["timestep"], **args["c"])

    counted.set_model_unet_function_wrapper(wrapper)
    return counted, calls


def test_inversions_of_the_other_family_are_refused_before_any_model_call(comfy, flux, flux_pair):
    sd15 = tiny_sd15(comfy, seed=0)[0]
    sd_inversion = invert_node(comfy, sd15, torch.randn(1, 4, 8, 8), steps=3, start_step=1)
    counted_flux, flux_calls = counting(flux)
    with pytest.raises(ValueError, match="made with a unet model, but this MODEL is a flux model"):
        sample_flux(comfy, counted_flux, sd_inversion, flux_pair[1])
    counted_sd, sd_calls = counting(sd15)
    with pytest.raises(ValueError, match="made with a flux model, but this MODEL is a unet model"):
        sample_node(comfy, counted_sd, flux_pair[0], sd_inversion)
    assert flux_calls["n"] == sd_calls["n"] == 0
    # an inversion without metadata still says what it is: the engine refuses to pair a flow and a DDPM one
    bare = flux_pair[0].select([0])
    bare.metadata = {k: v for k, v in bare.metadata.items() if k == "step_kind"}
    with pytest.raises(ValueError, match="made with a flux model"):
        sample_node(comfy, counted_sd, bare, sd_inversion)
    assert sd_calls["n"] == 0


def test_a_flux_inversion_refuses_a_ddpm_schedule(comfy, flux):
    with pytest.raises(ValueError, match="flow schedule from at most 1 down to 0"):
        invert_flux(comfy, flux, flux_latents(3), sigmas=torch.tensor([14.6, 3.0, 0.03]))


def test_fast_mode_on_flux_equals_normal_mode_step_by_step(comfy, flux):
    """Fast mode keeps the chosen blocks' image keys/values; one step at a time from identical latents."""
    samples = torch.cat([flux_latents(3), flux_latents(4)])
    normal, fast = (invert_flux(comfy, flux, samples, fast_mode=mode) for mode in ("off", "on"))
    assert fast.attention is not None and len(fast.keys_values_at(START)) == 1  # single block 1 of 2, cond
    assert torch.equal(normal.noise_maps, fast.noise_maps)
    patched = comfy.families.patch_model(flux, None)
    differences = stepwise_inversion_pair(comfy, patched, normal, fast, POSITIVE, NEGATIVE, 1.0)
    assert len(differences) == STEPS - START and max(differences) <= 1e-4, differences


def flux_options(comfy, **flux_inputs):
    """The Options node at its step defaults, with Flux block ranges / RoPE as given."""
    plan = (0.1, 0.9, 0.1, 0.7, 5, 0.4, 0.2, 1.0, 64)
    return run(comfy.nodes.XAttnOptions, *plan, **flux_inputs)[0]


def test_the_options_node_chooses_the_flux_blocks_and_rope(comfy, flux, flux_pair, flux_transfer):
    """Its defaults are the engine's (the output equals a run without options, bit for bit); no blocks at all is
    the no-swap run's output; other blocks or another RoPE mode change the output only."""
    appearance, structure = flux_pair
    (output, _, structure_out, *_), (plain_output, *_) = flux_transfer
    defaults = flux_options(comfy)
    assert defaults["flux"] == comfy.core.joint_attention.JointSwapSettings()
    same, _, _, *_ = sample_flux(comfy, flux, appearance, structure, options=defaults)
    assert torch.equal(same["samples"], output["samples"])
    nowhere = flux_options(comfy, flux_single_blocks_start=0.0, flux_single_blocks_end=0.0)
    unswapped, _, _, *_ = sample_flux(comfy, flux, appearance, structure, options=nowhere)
    # no block swaps: the output of a plan with no swapping steps (AdaIN runs in both). The two runs batch their
    # calls differently, so over a whole trajectory they agree to rounding (5.7e-7 here), far below what one
    # swapping block changes (the swap test's > 1e-3)
    difference = ((unswapped["samples"] - plain_output["samples"]).norm() / plain_output["samples"].norm()).item()
    assert difference <= 1e-4, difference
    for changed in (
        flux_options(comfy, flux_double_blocks_start=0.0, flux_double_blocks_end=1.0),
        flux_options(comfy, flux_rope="none"),
    ):
        other, _, other_structure, *_ = sample_flux(comfy, flux, appearance, structure, options=changed)
        assert torch.equal(other_structure["samples"], structure_out["samples"])
        difference = ((other["samples"] - output["samples"]).norm() / output["samples"].norm()).item()
        assert difference > 1e-4, difference


def test_the_options_node_refuses_a_flux_block_range_that_ends_before_it_starts(comfy):
    with pytest.raises(ValueError, match="single block range: .* got start 0.8 and end 0.2"):
        flux_options(comfy, flux_single_blocks_start=0.8, flux_single_blocks_end=0.2)


# --- automatic object masks ---------------------------------------------------------------------------------


def test_the_object_word_is_found_among_flux_t5_tokens(comfy):
    """On Flux the context is T5's: the positions index T5's tokens (no start token), from ComfyUI's own Flux
    tokenizer files."""
    from types import SimpleNamespace

    from comfy.text_encoders.flux import FluxTokenizer

    object_word = comfy.nodes.object_word
    tokenizer = FluxTokenizer()
    clip = SimpleNamespace(tokenizer=tokenizer)
    text = "A photo of a giraffe by the lake"
    tokens = tokenizer.tokenize_with_weights(text)
    assert len(tokens["t5xxl"][0]) == 256 and len(tokens["l"][0]) == 77  # T5 padded to Flux's 256
    (positions,) = object_word.object_token_positions(clip, tokens, ["giraffe"])
    prompt_ids = tokenizer.t5xxl.tokenizer(text)["input_ids"]
    # "giraffe" alone is a space piece, then gi, r, affe, then the end token: the word is the three pieces
    space, *word_ids, end = tokenizer.t5xxl.tokenizer("giraffe")["input_ids"]
    assert tokenizer.t5xxl.inv_vocab[space] == "\u2581" and end == tokenizer.t5xxl.end_token
    assert [prompt_ids[position] for position in positions] == word_ids and positions == (6, 7, 8)
    with pytest.raises(ValueError, match="'zebra' is not in the prompt; the prompt reads 'A photo of a giraffe by"):
        object_word.object_token_positions(clip, tokens, ["zebra"])


def test_the_maps_block_records_the_model_s_own_attention(comfy, flux):
    """The recorded maps equal plain-torch softmaxes of the last double block's queries and keys (read by another
    pack's recording override), image over image and image over text, averaged over the heads."""
    import comfy.model_management as model_management

    attention, segmentation = comfy.core.attention, comfy.core.segmentation
    recorder = Recorder()
    patched = comfy.families.patch_model(flux, None, records_maps=True)
    patched.model_options["transformer_options"]["optimized_attention_override"] = recorder
    model_management.load_models_gpu([patched])
    context, extras = POSITIVE[0]
    maps = segmentation.AttentionMaps()
    image = ("structure", 0)
    record = attention.CallAttention(record=attention.Recording(maps, ((0, image),)))
    options = dict(patched.model_options["transformer_options"])
    options.update({comfy.backend.SWAP_KEY: record, "cond_or_uncond": [0]})
    with torch.no_grad():
        patched.model.apply_model(
            flux_latents(5),
            torch.tensor([0.6]),
            c_crossattn=context,
            y=extras["pooled_output"],
            guidance=torch.tensor([3.5]),
            transformer_options=options,
        )
    assert len(recorder.calls) == 4  # 2 double blocks, then 2 single blocks
    query, key, _ = recorder.calls[1]  # the last double block's
    text = context.shape[1]

    def reference(keys):
        scores = query[0, :, text:].double() @ keys.double().transpose(-1, -2) / query.shape[-1] ** 0.5
        return torch.softmax(scores, -1).mean(0)

    expected_self, expected_cross = reference(key[0, :, text:]), reference(key[0, :, :text])
    assert maps.self_maps[image].shape == (16, 16) and maps.cross_maps[image].shape == (16, text)
    assert (maps.self_maps[image] - expected_self).abs().max().item() <= 1e-6
    assert (maps.cross_maps[image] - expected_cross).abs().max().item() <= 1e-6
    # without a recording directive the block only computes attention
    assert not comfy.core.joint_attention.records(attention.CallAttention())


def test_the_flux_sampler_finds_automatic_masks_at_no_extra_cost(comfy, flux, flux_pair, caplog):
    """The object word's tokens in the positive prompt turn the automatic masks on, as on SD: masks come out at
    pixel size, the count of model calls is unchanged, and nothing says they are unavailable."""
    appearance, structure = flux_pair
    key = comfy.nodes.object_word.OBJECT_TOKENS_KEY
    context, extras = POSITIVE[0]
    marked = [[context, {**extras, key: ((2,),)}]]
    counted, calls = counting(flux)
    plain_output, _, _, plain_appearance_mask, _ = sample_flux(comfy, counted, appearance, structure)
    plain_calls = calls["n"]
    calls["n"] = 0
    with caplog.at_level(logging.INFO):
        output, _, _, appearance_mask, structure_mask = sample_node(
            comfy, counted, appearance, structure, positive=marked, negative=NEGATIVE
        )
    assert calls["n"] == plain_calls > 0
    assert "not available" not in caplog.text
    assert "adain_masks auto: automatic object masks" in caplog.text
    assert torch.equal(plain_appearance_mask, torch.ones(1, 64, 64))  # unmasked: all ones
    for mask in (appearance_mask, structure_mask):
        assert mask.shape == (1, 64, 64) and set(mask.unique().tolist()) <= {0.0, 1.0}
    # on this tiny Flux the word's column stands out in some clusters of both images (7 and 4 of 16 tokens here;
    # k-means on random maps may split otherwise on another build), so AdaIN is masked and the output moves
    assert "those outputs use unmasked AdaIN" not in caplog.text
    assert all(0.0 < mask.mean().item() < 1.0 for mask in (appearance_mask, structure_mask))
    assert not torch.equal(output["samples"], plain_output["samples"])


def test_a_guided_flux_transfer_swaps_in_both_branches_and_reconstructs(comfy, flux):
    """cfg 2 (a de-distilled or schnell-like Flux used with a negative prompt): every call carries a cond and an
    uncond branch, found from cond_or_uncond; the paths still reconstruct their images and only the output moves."""
    samples = torch.cat([flux_latents(3), flux_latents(4)])
    both = invert_flux(comfy, flux, samples, cfg=2.0)
    appearance, structure = both.select([0]), both.select([1])
    output, appearance_out, structure_out, *_ = sample_flux(comfy, flux, appearance, structure, cfg=2.0)
    plain, _, plain_structure, *_ = sample_flux(
        comfy, flux, appearance, structure, cfg=2.0, options=no_swap_options(comfy)
    )
    assert torch.equal(structure_out["samples"], plain_structure["samples"])
    for path, inversion in ((appearance_out, appearance), (structure_out, structure)):
        clean = flux.model.process_latent_out(inversion.clean)
        assert ((path["samples"] - clean).norm() / clean.norm()).item() <= 1e-4
    difference = ((output["samples"] - plain["samples"]).norm() / plain["samples"].norm()).item()
    assert difference > 1e-3, difference
