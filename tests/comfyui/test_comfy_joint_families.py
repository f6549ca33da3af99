"""Qwen-Image and Z-Image on the real ComfyUI: tiny random models built in code from this ComfyUI's own model
classes and model detection, through the pack's nodes, as the Flux tests do for Flux.1 and Flux.2.

Each test takes the ``joint`` fixture, one tiny model per family. Qwen-Image runs on both ComfyUI versions (its
LATENTs carry a frame axis, ``[batch, 16, 1, h, w]``, which the nodes take and give back); Z-Image where ComfyUI
has it (0.9 on: conftest.py deselects it elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from comfyui_support import (
    QWEN_CHANNELS,
    counting_clone,
    flow_regeneration_errors,
    interrupted_calls,
    invert_node,
    qwen_image_conditioning,
    run,
    sample_node,
    stepwise_inversion_pair,
    tiny_qwen_image,
    tiny_sd15,
    tiny_z_image,
    z_image_conditioning,
)

from tests.joint_reference import contrasted_weights  # noqa: E402  (the path comfyui_support sets)

STEPS, START = 6, 2


@dataclass(frozen=True)
class TinyJoint:
    """A tiny random model of one joint-attention family and the prompts its tests use."""

    family: str
    patcher: object
    channels: int
    frame_axis: bool  # its LATENTs are [batch, channels, 1, h, w]
    positive: list
    negative: list
    swap_effect: float  # the least relative change of the output that the default swap makes here
    swapped_block: tuple[str, int]  # the last block that swaps by default

    def latents(self, seed: int, batch: int = 1, size: int = 8) -> torch.Tensor:
        """Engine-shaped latents ``[batch, channels, size, size]``."""
        return torch.randn(batch, self.channels, size, size, generator=torch.Generator().manual_seed(seed))

    def layers_of(self, diffusion_model) -> list:
        """The transformer's main blocks, in order."""
        return list(diffusion_model.transformer_blocks if self.family == "qwen_image" else diffusion_model.layers)

    def as_latent(self, samples: torch.Tensor) -> torch.Tensor:
        """``samples`` as this model's LATENTs hold them (VAE Encode's output)."""
        return samples.unsqueeze(2) if self.frame_axis else samples


FAMILIES = {  # family -> (builder, conditioning, channels, frame axis, swap effect, last swapping block)
    "qwen_image": (tiny_qwen_image, qwen_image_conditioning, QWEN_CHANNELS, True, 1e-3, ("double_block", 2)),
    "z_image": (tiny_z_image, z_image_conditioning, 16, False, 1e-3, ("layer", 2)),
}


def model_inputs(joint: TinyJoint, context: torch.Tensor) -> dict:
    """What model_base passes the transformer besides the latent: the context (and NextDiT's token count)."""
    inputs = {"c_crossattn": context}
    if joint.family == "z_image":
        inputs["num_tokens"] = context.shape[1]
    return inputs


def attention_output(joint: TinyJoint, diffusion_model, index: int):
    """The module whose input is layer ``index``'s attention output, and where the image's tokens start in it:
    Qwen-Image's image-stream projection (image tokens first), NextDiT's joint one (padded caption first)."""
    if joint.family == "qwen_image":
        return diffusion_model.transformer_blocks[index].attn.to_out[0], 0
    return diffusion_model.layers[index].attention.out, None


@pytest.fixture(scope="module", params=list(FAMILIES))
def joint(comfy, request):
    build, conditioning, channels, frame_axis, swap_effect, block = FAMILIES[request.param]
    patcher = build(comfy, seed=0)
    return TinyJoint(request.param, patcher, channels, frame_axis, conditioning(1), conditioning(2), swap_effect, block)


def invert(comfy, joint: TinyJoint, samples, model=None, **inputs):
    settings = dict(steps=STEPS, start_step=START, cfg=1.0, positive=joint.positive, negative=joint.negative)
    settings.update(inputs)
    return invert_node(comfy, model or joint.patcher, joint.as_latent(samples), **settings)


def sample(comfy, joint: TinyJoint, appearance, structure, model=None, **inputs):
    return sample_node(
        comfy, model or joint.patcher, appearance, structure, positive=joint.positive, negative=joint.negative, **inputs
    )


def velocity(joint: TinyJoint, x, sigma, conditioning):
    context, _ = conditioning[0]
    with torch.no_grad():
        denoised = joint.patcher.model.apply_model(
            joint.as_latent(x), torch.tensor([sigma]), **model_inputs(joint, context)
        )
    return (joint.as_latent(x) - denoised) / sigma


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def pair(comfy, joint):
    both = invert(comfy, joint, torch.cat([joint.latents(3), joint.latents(4)]))
    return both.select([0]), both.select([1])


def no_swap_options(comfy):
    return {"plan": comfy.core.plan.PlanSettings(level_ranges=((0.0, 0.0), (0.0, 0.0)))}


@pytest.fixture(scope="module")
def transfer(comfy, joint, pair):
    swapped = sample(comfy, joint, *pair)
    plain = sample(comfy, joint, *pair, options=no_swap_options(comfy))
    return swapped, plain


def test_the_tiny_model_is_a_real_network_of_its_family(comfy, joint):
    assert comfy.families.family_of(joint.patcher).name == joint.family
    assert joint.patcher.model.latent_format.latent_channels == joint.channels
    x = joint.latents(1)
    base = velocity(joint, x, 0.6, joint.positive)
    assert 0.5 < base.std().item() < 2.0
    for changed in (
        velocity(joint, x.roll(1, -1), 0.6, joint.positive),
        velocity(joint, x, 0.3, joint.positive),
        velocity(joint, x, 0.6, joint.negative),
    ):
        assert (changed - base).abs().mean().item() > 1e-2 * base.abs().mean().item()


def test_the_inversion_reconstructs_every_step_exactly_on_the_model_s_schedule(comfy, joint, pair):
    from comfy.samplers import calculate_sigmas

    inversion = pair[0]
    model_sampling = joint.patcher.get_model_object("model_sampling")
    expected = calculate_sigmas(model_sampling, "simple", STEPS).float()
    assert torch.allclose(inversion.sigmas, expected, atol=1e-6)
    assert inversion.metadata["family"] == joint.family and inversion.step_kind == "flow"
    assert inversion.latents.shape == (STEPS + 1 - START, 1, joint.channels, 8, 8)
    errors = flow_regeneration_errors(comfy, joint.patcher, inversion, joint.positive, joint.negative)
    assert len(errors) == STEPS - START and max(errors) <= 1e-5, errors


def test_the_swap_changes_only_the_output_and_both_paths_reconstruct(comfy, joint, pair, transfer):
    (output, appearance_out, structure_out, *_), (plain_output, plain_appearance, plain_structure, *_) = transfer
    # the paths run the same computation with and without the swap, on other batch compositions of their calls
    assert relative(appearance_out["samples"], plain_appearance["samples"]) <= 1e-6
    assert relative(structure_out["samples"], plain_structure["samples"]) <= 1e-6
    for path, inversion in ((appearance_out, pair[0]), (structure_out, pair[1])):
        clean = joint.patcher.model.process_latent_out(joint.as_latent(inversion.clean))
        assert path["samples"].shape == clean.shape  # the LATENT's own layout, frame axis included
        assert relative(path["samples"], clean) <= 1e-5
    assert relative(output["samples"], plain_output["samples"]) > joint.swap_effect
    assert torch.isfinite(output["samples"]).all()


class Recorder:
    """Another pack's optimized_attention_override: records every attention call's q, k, v and computes it."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __deepcopy__(self, memo) -> Recorder:
        return self  # one recorder, however often ModelPatcher.clone copies the options

    def __call__(self, func, q, k, v, heads, *args, **kwargs):
        if not kwargs.get("skip_reshape", False):  # [rows, tokens, heads * dim]: record in heads layout
            self.calls.append(tuple(t.unflatten(-1, (heads, -1)).transpose(1, 2).clone() for t in (q, k, v)))
        else:
            self.calls.append((q.clone(), k.clone(), v.clone()))
        return func(q, k, v, heads, *args, **kwargs)


@pytest.mark.parametrize("references", [0, 1])
def test_the_swapped_attention_equals_a_plain_torch_reference(comfy, joint, references):
    """One swapping call through ComfyUI's model (default blocks) against plain torch, read at the input of the last
    swapping block's image output projection; with ``references``, an edit model's reference image, whose tokens
    follow the image's and stay the row's own."""
    import comfy.model_management as model_management

    attention = comfy.core.attention
    recorder = Recorder()
    # another pack's override, set before the transfer patches the model: the pack's own runs around it
    recording = joint.patcher.clone()
    recording.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = recorder
    patched = comfy.families.patch_model(recording, None)
    model_management.load_models_gpu([patched])
    context, _ = joint.positive[0]
    kind, index = joint.swapped_block
    diffusion_model = patched.model.diffusion_model
    projection, image_start = attention_output(joint, diffusion_model, index)
    seen = []
    handle = projection.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
    extra = {"ref_latents": [joint.as_latent(joint.latents(7, size=4))]} if references else {}

    def call(x, swap):
        options = dict(patched.model_options["transformer_options"])
        options.update({comfy.backend.SWAP_KEY: swap, comfy.backend.LATENT_SHAPE_KEY: x.shape, "cond_or_uncond": [0]})
        recorder.calls.clear()
        with torch.no_grad():
            patched.model.apply_model(
                joint.as_latent(x),
                torch.tensor([0.6]),
                transformer_options=options,
                **model_inputs(joint, context),
                **extra,
            )
        # the main layers' attentions, one per layer, after any refiners' (NextDiT: 2 + 2, on fewer tokens); a
        # directed call runs only some of its attention through the recorder
        if swap is not None:
            return None
        return recorder.calls[len(recorder.calls) - len(joint.layers_of(diffusion_model)) + index]

    try:
        store, contrast = attention.KeyValueStore(), 1.67
        capture = attention.CallAttention(capture=attention.Capture(frozenset({0}), store))
        _, appearance_key, appearance_value = call(joint.latents(5), None)  # what the capture will store
        call(joint.latents(5), capture)
        # the queries, keys and values the swapping block sees: no block before it swaps, so an ordinary call on
        # the same latent records them (a swapped call computes its rows' ordinary attention on fewer tokens)
        query, key, value = call(joint.latents(6), None)
        swap = attention.CallAttention(swap=attention.Swap(frozenset({0}), (0,), (0,), store, contrast))
        call(joint.latents(6), swap)
    finally:
        handle.remove()
    # NextDiT pads the caption and the image each to a multiple of 32 tokens; the image's padding is the row's own
    multiple = getattr(diffusion_model, "pad_tokens_multiple", None) or 1
    text_tokens, image_tokens = -(-context.shape[1] // multiple) * multiple, 16  # 8 x 8 cells, 2 x 2 patches
    padding = -image_tokens % multiple
    assert query.shape[2] == text_tokens + image_tokens + padding + 4 * references
    assert store.get((kind, index), 0)[0].shape[1] == image_tokens  # the reference is never stored
    image = slice(text_tokens, text_tokens + image_tokens)
    own = torch.ones(query.shape[2], dtype=torch.bool)
    own[image] = False
    keys = torch.cat([key[:, :, own], appearance_key[:, :, image]], 2).double()
    values = torch.cat([value[:, :, own], appearance_value[:, :, image]], 2).double()
    weights = torch.softmax(query[:, :, image].double() @ keys.transpose(-1, -2) / query.shape[-1] ** 0.5, -1)
    # the default contrast scope: the appearance's image keys only (after the row's own), around their own mean
    weights = contrasted_weights(weights, contrast, slice(int(own.sum()), None))
    expected = (weights @ values).transpose(1, 2).flatten(2)
    start = text_tokens if image_start is None else image_start
    ours = seen[-1][:, start : start + image_tokens].double()  # the image's attention output, [1, tokens, hidden]
    assert relative(ours, expected) <= 1e-5
    plain_image = torch.softmax(query[:, :, image].double() @ key.double().transpose(-1, -2) / 128**0.5, -1)
    assert relative(ours, (plain_image @ value.double()).transpose(1, 2).flatten(2)) > 1e-3


def test_the_base_model_is_unchanged_afterwards(comfy, joint, pair):
    x = joint.latents(9)
    before = velocity(joint, x, 0.5, joint.positive)
    options = repr(joint.patcher.model_options)
    sample(comfy, joint, *pair)
    assert torch.equal(velocity(joint, x, 0.5, joint.positive), before)
    assert repr(joint.patcher.model_options) == options


def test_fast_mode_equals_normal_mode_step_by_step(comfy, joint):
    samples = torch.cat([joint.latents(3), joint.latents(4)])
    normal, fast = (invert(comfy, joint, samples, fast_mode=mode) for mode in ("off", "on"))
    assert fast.attention is not None and len(fast.keys_values_at(START)) == 1  # the last block of three, cond
    patched = comfy.families.patch_model(joint.patcher, None)
    differences = stepwise_inversion_pair(comfy, patched, normal, fast, joint.positive, joint.negative, 1.0)
    assert len(differences) == STEPS - START and max(differences) <= 1e-4, differences


def test_the_swap_depth_chooses_the_blocks(comfy, joint, pair, transfer):
    """The Options node's defaults give the default output bit for bit; all blocks give another."""
    (output, *_), _ = transfer
    plan = (0.1, 0.9, 0.1, 0.7, 5, 0.4, 0.2, 1.0, 64)
    defaults = run(comfy.nodes.XAttnOptions, *plan)[0]
    assert torch.equal(sample(comfy, joint, *pair, options=defaults)[0]["samples"], output["samples"])
    everywhere = run(comfy.nodes.XAttnOptions, *plan, swap_depth_start=0.0, swap_depth_end=1.0)[0]
    assert relative(sample(comfy, joint, *pair, options=everywhere)[0]["samples"], output["samples"]) > 1e-4


def test_interrupt_stops_a_transfer_before_the_next_model_call(comfy, joint, pair):
    counted, calls = counting_clone(joint.patcher)
    sample(comfy, joint, *pair, model=counted)
    for after in (1, len(calls) // 2):
        assert interrupted_calls(joint.patcher, after, lambda clone: sample(comfy, joint, *pair, model=clone)) == after


def test_inversions_of_another_family_are_refused_before_any_model_call(comfy, joint, pair):
    sd15 = tiny_sd15(comfy, seed=0)[0]
    sd_inversion = invert_node(comfy, sd15, torch.randn(1, 4, 8, 8), steps=3, start_step=1)
    counted, calls = counting_clone(joint.patcher)
    with pytest.raises(ValueError, match=f"made with a unet model, but this MODEL is a {joint.family} model"):
        sample(comfy, joint, sd_inversion, pair[1], model=counted)
    assert len(calls) == 0


def test_a_video_latent_is_refused_in_one_sentence(comfy):
    """Qwen-Image's LATENTs have a frame axis; the pack transfers one image, so more frames are refused."""
    frames = torch.randn(1, QWEN_CHANNELS, 3, 8, 8)
    with pytest.raises(ValueError, match="the latent holds 3 frames"):
        invert_node(comfy, tiny_qwen_image(comfy), frames, steps=STEPS, start_step=START, cfg=1.0)


def test_the_object_word_is_found_among_qwen_image_s_context_tokens(comfy):
    """Qwen-Image's text encoder drops its template's system part: the positions count from the user turn, and
    index the context the model gets, from ComfyUI's own tokenizer files."""
    from types import SimpleNamespace

    from comfy.text_encoders.qwen_image import QwenImageTokenizer

    object_word = comfy.nodes.object_word
    tokenizer = QwenImageTokenizer()
    clip = SimpleNamespace(tokenizer=tokenizer)
    tokens = tokenizer.tokenize_with_weights("A photo of a giraffe by the lake")
    ids = [token for token, *_ in tokens["qwen25_7b"][0]]
    strings = [tokenizer.qwen25_7b.inv_vocab[token] for token in ids]
    (positions,) = object_word.object_token_positions(clip, tokens, ["giraffe"])
    dropped = ids.index(151644, 1) + 3  # the second "<|im_start|>", then "user", "\n"
    assert strings[dropped - 3 : dropped] == ["<|im_start|>", "user", "\u010a"]
    assert positions == (4, 5)  # A, photo, of, a, then "Ġgir", "affe" in the context
    assert [strings[dropped + position] for position in positions] == ["\u0120gir", "affe"]


def test_the_sampler_finds_automatic_masks_at_no_extra_cost(comfy, joint, pair, caplog):
    """The object word's tokens in the positive prompt turn the automatic masks on, from the family's maps block:
    masks at pixel size, the same count of model calls, and a masked AdaIN that moves the output."""
    import logging

    key = comfy.nodes.object_word.OBJECT_TOKENS_KEY
    context, extras = joint.positive[0]
    marked = [[context, {**extras, key: ((2,),)}]]
    counted, calls = counting_clone(joint.patcher)
    plain_output, *_ = sample(comfy, joint, *pair, model=counted)
    plain_calls = len(calls)
    calls.clear()
    with caplog.at_level(logging.INFO):
        output, _, _, appearance_mask, structure_mask = sample_node(
            comfy, counted, *pair, positive=marked, negative=joint.negative
        )
    assert len(calls) == plain_calls > 0
    assert "adain_masks auto: automatic object masks" in caplog.text and "not available" not in caplog.text
    for mask in (appearance_mask, structure_mask):
        assert mask.shape == (1, 64, 64) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(output["samples"], plain_output["samples"])


@pytest.mark.needs_z_image
def test_the_object_word_is_found_among_z_image_s_context_tokens(comfy):
    """Z-Image's context is Qwen 3's templated prompt, one context token per token (NextDiT pads it at the end),
    from ComfyUI's own tokenizer files."""
    from types import SimpleNamespace

    from comfy.text_encoders.z_image import ZImageTokenizer

    object_word = comfy.nodes.object_word
    tokenizer = ZImageTokenizer()
    clip = SimpleNamespace(tokenizer=tokenizer)
    tokens = tokenizer.tokenize_with_weights("A photo of a giraffe by the lake")
    strings = [tokenizer.qwen3_4b.inv_vocab[token] for token, *_ in tokens["qwen3_4b"][0]]
    (positions,) = object_word.object_token_positions(clip, tokens, ["giraffe"])
    assert strings[:3] == ["<|im_start|>", "user", "\u010a"] and positions == (7, 8)
    assert [strings[position] for position in positions] == ["\u0120gir", "affe"]


OTHER_SWAPS = {  # options the default fast-mode cache cannot serve
    "rope none": dict(flux_rope="none"),
    "rope offset": dict(flux_rope="offset"),
    "depth 0-0.5": dict(swap_depth_start=0.0, swap_depth_end=0.5),
}


@pytest.mark.parametrize("swap", list(OTHER_SWAPS))
def test_fast_mode_with_the_sampler_s_options_equals_normal_mode(comfy, joint, swap):
    """Invert Image given the sampler's Options keeps those blocks' keys in that RoPE form (NextDiT's RoPE comes
    from its noise refiner patch): the transfer from it equals the one from a normal inversion, one step at a
    time from identical latents, and the RoPE mode changes the output."""
    plan = (0.1, 0.9, 0.1, 0.7, 5, 0.4, 0.2, 1.0, 64)
    options = run(comfy.nodes.XAttnOptions, *plan, **OTHER_SWAPS[swap])[0]
    samples = torch.cat([joint.latents(3), joint.latents(4)])
    normal = invert(comfy, joint, samples)
    fast = invert(comfy, joint, samples, fast_mode="on", options=options)
    patched = comfy.families.patch_model(joint.patcher, None, options=options)
    differences = stepwise_inversion_pair(comfy, patched, normal, fast, joint.positive, joint.negative, 1.0)
    assert len(differences) == STEPS - START and max(differences) <= 1e-4, differences
    other, *_ = sample(comfy, joint, fast.select([0]), fast.select([1]), options=options)
    default, *_ = sample(comfy, joint, normal.select([0]), normal.select([1]))
    assert relative(other["samples"], default["samples"]) > 1e-5


def test_a_transfer_makes_the_engine_s_call_list_and_no_evaluation_more(comfy, joint, pair):
    """The performance goal for every family: the image-evaluations of a transfer (rows through the model, cfg 1)
    are the count of xattn_core/calls.py for the plan, as for SD and Flux; an inversion is one per image a step."""
    rows = []
    counted = joint.patcher.clone()

    def wrapper(apply_model, args):
        rows.append(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"])

    counted.set_model_unet_function_wrapper(wrapper)
    sample(comfy, joint, *pair, model=counted)
    calls = comfy.core.calls
    assert sum(rows) == calls.model_evaluations(comfy.core.plan.build_plan(STEPS, START), calls.CallLayout.of(1, 1))
    rows.clear()
    invert(comfy, joint, torch.cat([joint.latents(3), joint.latents(4)]), model=counted)
    assert sum(rows) == 2 * (STEPS - START)
