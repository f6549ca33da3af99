import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from xattn_core.app.scores import (
    DinoScorer,
    PairScores,
    appearance_similarity,
    last_key_projection,
    preprocess,
    self_similarity,
    structure_distance,
)

transformers = pytest.importorskip("transformers")
from xattn_core.tiny import tiny_vit  # noqa: E402 - after the skip: it needs transformers


@pytest.fixture(scope="module")
def scorer():
    return DinoScorer.from_model(tiny_vit(0))


def structured_image() -> Image.Image:
    """A 512 px scene with a layout to keep: a colour gradient, three filled shapes and a bright line."""
    y, x = np.mgrid[0:512, 0:512] / 511.0
    gradient = np.stack([x, y, 1 - 0.5 * (x + y)], axis=-1) * 0.6 * 255 + 40
    image = Image.fromarray(gradient.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.ellipse((60, 80, 260, 280), fill=(220, 40, 40))
    draw.rectangle((300, 60, 460, 200), fill=(30, 160, 60))
    draw.polygon([(120, 460), (250, 320), (420, 470)], fill=(40, 60, 200))
    draw.line((0, 300, 512, 250), fill=(250, 250, 250), width=12)
    return image


def shuffle_tiles(image: Image.Image, tile: int = 32, seed: int = 0) -> Image.Image:
    """The same pixels with the layout destroyed: 32x32 tiles in a random order."""
    pixels = np.asarray(image)
    n = pixels.shape[0] // tile
    tiles = pixels.reshape(n, tile, n, tile, 3).transpose(0, 2, 1, 3, 4).reshape(n * n, tile, tile, 3)
    tiles = tiles[np.random.default_rng(seed).permutation(n * n)]
    return Image.fromarray(tiles.reshape(n, n, tile, tile, 3).transpose(0, 2, 1, 3, 4).reshape(n * tile, n * tile, 3))


def shift_colours(image: Image.Image, degrees: float = 30.0, gains=(1.08, 1.0, 0.92)) -> Image.Image:
    """The same layout in other colours: a hue rotation (about the grey axis) then per-channel gains, everywhere."""
    angle = np.deg2rad(degrees)
    cos, sin, third = np.cos(angle), np.sin(angle), 1 / 3
    root = np.sqrt(third)
    rotation = np.array(
        [
            [cos + (1 - cos) * third, third * (1 - cos) - root * sin, third * (1 - cos) + root * sin],
            [third * (1 - cos) + root * sin, cos + third * (1 - cos), third * (1 - cos) - root * sin],
            [third * (1 - cos) - root * sin, third * (1 - cos) + root * sin, cos + third * (1 - cos)],
        ]
    )
    pixels = np.asarray(image).astype(np.float32) @ rotation.T * np.array(gains)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def test_preprocess_resizes_and_normalises():
    solid = Image.new("RGB", (300, 200), (255, 128, 0))
    grey = Image.new("L", (64, 64), 51)  # converted to RGB
    batch = preprocess([solid, grey])
    assert batch.shape == (2, 3, 224, 224)
    mean = torch.tensor([0.485, 0.456, 0.406])
    std = torch.tensor([0.229, 0.224, 0.225])
    expected_solid = (torch.tensor([255, 128, 0]) / 255 - mean) / std
    expected_grey = (torch.tensor([51, 51, 51]) / 255 - mean) / std
    assert torch.allclose(batch[0].mean((1, 2)), expected_solid, atol=1e-5)
    assert torch.allclose(batch[1].mean((1, 2)), expected_grey, atol=1e-5)
    assert batch[0].std((1, 2)).max() < 1e-5  # a flat image stays flat


def test_self_similarity_and_distance_known_answers():
    e1, e2 = [3.0, 0.0], [0.0, 0.5]
    orthogonal = torch.tensor([[e1, e2]])  # [1, 2 tokens, 2]
    parallel = torch.tensor([[e1, [1.0, 0.0]]])
    assert torch.allclose(self_similarity(orthogonal), torch.eye(2)[None])
    assert torch.allclose(self_similarity(parallel), torch.ones(1, 2, 2))
    # the matrices differ by 1 in the 2 off-diagonal entries of 4
    assert structure_distance(orthogonal, parallel).tolist() == pytest.approx([0.5])
    assert structure_distance(orthogonal, orthogonal).tolist() == [0.0]
    similarity = appearance_similarity(torch.tensor([[1.0, 0.0], [2.0, 2.0]]), torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))
    assert similarity.tolist() == pytest.approx([2**-0.5, -1.0])
    with pytest.raises(ValueError, match="shapes differ"):
        structure_distance(orthogonal, torch.ones(1, 3, 2))


def test_image_scored_against_itself(scorer):
    image = structured_image()
    same = scorer.score(image, image, image)
    assert isinstance(same, PairScores)
    assert 0.0 <= same.structure_distance < 1e-10
    assert same.appearance_similarity == pytest.approx(1.0, abs=1e-6)
    other = scorer.score(shuffle_tiles(image), image, Image.new("RGB", (512, 512), (20, 200, 220)))
    assert other.structure_distance > 0.05
    assert other.appearance_similarity < 0.999


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_structure_distance_sees_layout_not_colour(seed):
    scorer = DinoScorer.from_model(tiny_vit(seed))
    image = structured_image()
    keys, _ = scorer.features([image, shuffle_tiles(image), shift_colours(image)])
    shuffled, recoloured = structure_distance(keys[1:], keys[:1].expand(2, -1, -1)).tolist()
    print(f"seed {seed}: shuffled {shuffled:.4f}, colour-shifted {recoloured:.4f}, ratio {shuffled / recoloured:.1f}")
    assert recoloured > 1e-3  # the colour shift did change the features...
    assert shuffled > 5 * recoloured  # ...but far less than moving the layout around


def test_features_keys_are_the_last_blocks(scorer):
    model = scorer.model
    blocks = model.layers if hasattr(model, "layers") else model.encoder.layer
    projection = last_key_projection(model)
    assert any(module is projection for module in blocks[-1].modules())
    block_inputs = []
    hooks = [block.register_forward_pre_hook(lambda module, args: block_inputs.append(args[0])) for block in blocks]
    try:
        keys, class_tokens = scorer.features([structured_image(), Image.new("RGB", (64, 64), (9, 99, 199))])
    finally:
        for hook in hooks:
            hook.remove()
    assert keys.shape == (2, 1 + 14 * 14, 64) and class_tokens.shape == (2, 64)
    with torch.no_grad():
        last = projection(blocks[-1].layernorm_before(block_inputs[-1]))
        first = projection(blocks[0].layernorm_before(block_inputs[0]))  # same weights, earlier block's input
    assert torch.allclose(keys, last, atol=1e-6)
    assert (keys - first).abs().max() > 0.1
    with torch.no_grad():
        final = model(pixel_values=preprocess([structured_image()])).last_hidden_state
    assert torch.allclose(class_tokens[0], final[0, 0], atol=1e-5)


def test_key_projection_found_in_the_transformers_4_layout():
    """transformers 4.x ViTModel: encoder.layer[i].attention.attention.key."""

    class Node(torch.nn.Module):
        def __init__(self, **children):
            super().__init__()
            for name, child in children.items():
                self.add_module(name, child)

    key = torch.nn.Linear(8, 8)
    block = Node(attention=Node(attention=Node(query=torch.nn.Linear(8, 8), key=key)))
    old_layout = Node(encoder=Node(layer=torch.nn.ModuleList([Node(), block])))
    assert last_key_projection(old_layout) is key


def test_loads_a_saved_folder(scorer, tmp_path):
    scorer.model.save_pretrained(tmp_path / "dino")
    loaded = DinoScorer(tmp_path / "dino")
    assert not loaded.model.training
    images = [structured_image(), shift_colours(structured_image())]
    for expected, got in zip(scorer.features(images), loaded.features(images), strict=True):
        assert torch.allclose(expected, got, atol=1e-6)


def one_line_error(call) -> str:
    with pytest.raises(ValueError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and message
    assert caught.value.__cause__ is None
    return message


def test_errors_are_one_clear_line(tmp_path):
    assert "not found" in one_line_error(lambda: DinoScorer(tmp_path / "nowhere"))
    assert "no config.json" in one_line_error(lambda: DinoScorer(tmp_path))
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    assert "not a ViT" in one_line_error(lambda: DinoScorer(clip))
    weightless = tmp_path / "weightless"
    weightless.mkdir()
    (weightless / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 64}))
    assert "could not load" in one_line_error(lambda: DinoScorer(weightless))
    assert "not a ViT" in one_line_error(lambda: DinoScorer.from_model(torch.nn.Linear(4, 4)))


def test_weights_that_do_not_fit_are_refused(scorer, tmp_path):
    """transformers would fill missing weights randomly and score nonsense: 3 blocks asked for, 2 saved."""
    scorer.model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    assert "lacks 16 ViT weights" in one_line_error(lambda: DinoScorer(tmp_path))
