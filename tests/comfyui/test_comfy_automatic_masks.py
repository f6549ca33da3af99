"""Automatic masks through the real nodes: CLIP Text Encode (Object Word) with ComfyUI's own tokenizer, the
sampler's adain_masks modes, and its MASK outputs through a stock mask node (GrowMask) and back in."""

import warnings

import pytest
import torch
from comfyui_support import conditioning, invert_node, object_prompt, sample_node, tiny_clip, tiny_sd15

STEPS, START = 8, 2


@pytest.fixture(scope="module")
def clip(comfy):
    return tiny_clip(comfy, seed=3)


@pytest.fixture(scope="module")
def setup(comfy, clip):
    model, _ = tiny_sd15(comfy, seed=2)
    positive = object_prompt(comfy, clip, "A photo of a giraffe", "giraffe")
    samples = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(6))
    inversion = invert_node(comfy, model, samples, positive=positive, steps=STEPS, start_step=START)
    return model, positive, inversion.select([0]), inversion.select([1])


def test_the_object_word_is_found_with_the_models_own_tokenizer(comfy, clip):
    marked = object_prompt(comfy, clip, "a vase of sunflowers, on a table", "sunflowers, vase")
    ((embedding, extras),) = marked
    assert embedding.shape == (1, 77, 32)
    assert extras["xattn_object_tokens"] == ((4,), (2,))  # <start> a vase of sunflowers: one token each
    (plain,) = comfy.comfy.sd.CLIP.encode_from_tokens_scheduled(clip, clip.tokenize("a vase of sunflowers, on a table"))
    assert torch.equal(plain[0], embedding)  # the same encoding as CLIP Text Encode
    with pytest.raises(
        ValueError,
        match=r"object word 'dog' is not in the prompt; the prompt reads 'a photo of a cat' "
        r"\(tokens: a, photo, of, a, cat\)",
    ):
        object_prompt(comfy, clip, "a photo of a cat", "dog")


def count_maps(comfy, monkeypatch):
    computed = []
    original = comfy.core.attention.mean_attention_weights
    monkeypatch.setattr(
        comfy.core.attention,
        "mean_attention_weights",
        lambda *args: computed.append(args[0].shape[0]) or original(*args),
    )
    return computed


def test_auto_masks_are_recorded_once_and_come_out_as_masks(comfy, setup, monkeypatch, caplog):
    model, positive, appearance, structure = setup
    computed = count_maps(comfy, monkeypatch)
    output, _, _, appearance_mask, structure_mask = sample_node(comfy, model, appearance, structure, positive=positive)
    logged = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any("object word was not found" in text for text in logged), logged  # random weights: nothing to find
    assert sorted(computed) == [16 * 16] * 2 + [32 * 32] * 2  # two images x (level-1 cross, level-0 self)
    assert appearance_mask.shape == structure_mask.shape == (1, 256, 256)  # one per image, at pixel size
    assert structure_mask.sum() == 0  # what was found: nothing, so AdaIN ran unmasked
    assert torch.isfinite(output["samples"]).all()


def test_none_and_a_plain_prompt_record_nothing_and_agree(comfy, setup, monkeypatch):
    model, positive, appearance, structure = setup
    computed = count_maps(comfy, monkeypatch)
    ignored = sample_node(comfy, model, appearance, structure, positive=positive, adain_masks="none")
    assert computed == []
    plain_prompt = [[positive[0][0], {}]]  # the same embedding without the object word's positions
    plain = sample_node(comfy, model, appearance, structure, positive=plain_prompt)
    assert computed == []
    assert torch.equal(ignored[0]["samples"], plain[0]["samples"])
    assert torch.equal(ignored[4], torch.ones(1, 256, 256))  # unmasked AdaIN: the whole image


def test_masks_go_through_grow_mask_and_back_into_the_sampler(comfy, setup):
    from comfy_extras.nodes_mask import GrowMask

    model, positive, appearance, structure = setup
    square = torch.zeros(1, 256, 256)
    square[:, 64:192, 80:176] = 1.0

    def with_masks(appearance_mask, structure_mask):
        return sample_node(
            comfy,
            model,
            appearance,
            structure,
            positive=positive,
            adain_masks="from inputs",
            appearance_mask=appearance_mask,
            structure_mask=structure_mask,
        )

    first = with_masks(square, square)
    assert torch.equal(first[4], square) and torch.equal(first[3], square)  # the masks used, as given
    # fed back unchanged (they came back as given): the same transfer, bit for bit, i.e. a deterministic run
    again = with_masks(first[3], first[4])
    assert torch.equal(again[0]["samples"], first[0]["samples"])
    (grown,) = GrowMask().expand_mask(first[4], 16, True)
    assert grown.sum() > square.sum()
    edited = with_masks(first[3], grown)
    assert edited[4].sum() > first[4].sum()  # the grown mask, as the sampler used it (at latent resolution)
    assert (edited[0]["samples"] - first[0]["samples"]).abs().max() > 1e-3


def test_connected_masks_win_over_the_object_word(comfy, setup, monkeypatch):
    model, positive, appearance, structure = setup
    computed = count_maps(comfy, monkeypatch)
    square = torch.zeros(1, 256, 256)
    square[:, 64:192, 80:176] = 1.0
    auto = sample_node(comfy, model, appearance, structure, positive=positive, structure_mask=square)
    chosen = sample_node(
        comfy, model, appearance, structure, positive=positive, adain_masks="from inputs", structure_mask=square
    )
    assert computed == []
    assert torch.equal(auto[0]["samples"], chosen[0]["samples"])


def test_sdxl_shaped_model_records_at_its_first_and_second_attention_levels(comfy, monkeypatch):
    from comfyui_support import sdxl_conditioning, tiny_sdxl

    model = tiny_sdxl(comfy, seed=4)
    positive = [[sdxl_conditioning(1)[0][0], {**sdxl_conditioning(1)[0][1], "xattn_object_tokens": ((5,),)}]]
    samples = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(7))
    inversion = invert_node(
        comfy, model, samples, positive=positive, negative=sdxl_conditioning(2), steps=STEPS, start_step=START
    )
    computed = count_maps(comfy, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights may or may not find an 'object' here
        outputs = sample_node(
            comfy, model, inversion.select([0]), inversion.select([1]), positive=positive, negative=sdxl_conditioning(2)
        )
    # SDXL has no attention at full resolution: self maps at x2 (8 x 8), cross maps at x4 (4 x 4)
    assert sorted(computed) == [4 * 4] * 2 + [8 * 8] * 2
    assert outputs[4].shape == outputs[3].shape == (1, 128, 128)
    assert set(outputs[4].unique().tolist()) <= {0.0, 1.0}


def test_conditioning_without_positions_is_an_ordinary_prompt(comfy, setup):
    model, _, appearance, structure = setup
    outputs = sample_node(comfy, model, appearance, structure, positive=conditioning(1))
    assert torch.equal(outputs[3], torch.ones(1, 256, 256))
