import pytest
import torch
import torch.nn.functional as F

from xattn_core.segmentation import (
    ObjectWordError,
    label_clusters,
    object_mask,
    word_pieces,
    word_positions,
)


def regions_self_map(regions, seed=0):
    """Self-attention whose rows spread evenly over the token's own region (plus a little noise)."""
    flat = regions.flatten()
    same = (flat[:, None] == flat[None]).float()
    noise = torch.rand(same.shape, generator=torch.Generator().manual_seed(seed)) * 0.05
    attention = same + noise
    return attention / attention.sum(1, keepdim=True)


def square_scene():
    """16x16 tokens: an 8x8 object square (region 4) in four background quadrants (regions 0-3), and the
    square's cells on the 8x8 cross-attention grid."""
    rows, cols = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    regions = (rows >= 8).long() * 2 + (cols >= 8).long()
    square = (rows >= 4) & (rows < 12) & (cols >= 4) & (cols < 12)
    regions[square] = 4
    coarse = torch.zeros(8, 8, dtype=torch.bool)
    coarse[2:6, 2:6] = True
    return regions, square, coarse


def cross_map_for(object_cells, background=0.05, other_word=None):
    """Cross-attention [h1*w1, 6]: token 0 start, 2-3 the object word's two tokens, 5 another word."""
    h1, w1 = object_cells.shape
    cross = torch.full((h1 * w1, 6), 0.1)
    cross[:, 2] = torch.where(object_cells.flatten(), 0.8, background)
    cross[:, 3] = torch.where(object_cells.flatten(), 0.6, background)
    if other_word is not None:
        cross[:, 5] = other_word.flatten()
    return cross / cross.sum(1, keepdim=True)


def test_object_mask_finds_the_object_square():
    regions, square, coarse = square_scene()
    self_map, cross = regions_self_map(regions), cross_map_for(coarse)
    mask = object_mask(self_map, cross, [[2, 3]], [True], (16, 16), (8, 8), size=(16, 16))
    assert mask.dtype == torch.float32
    assert torch.equal(mask, square.float())
    # on SDXL the level-0 grid is half the latent: the mask is resized to the latent
    large = object_mask(self_map, cross, [[2, 3]], [True], (16, 16), (8, 8), size=(32, 32))
    assert torch.equal(large, square.float().repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_multi_token_word_averages_its_tokens():
    regions, square, coarse = square_scene()
    cross = torch.full((64, 5), 0.2)
    cross[:, 3] = torch.where(coarse.flatten(), 0.9, 0.05)  # token 2 of the word is flat, token 3 finds the object
    self_map = regions_self_map(regions)
    for positions in ([2, 3], [3, 2]):
        mask = object_mask(self_map, cross, [positions], [True], (16, 16), (8, 8), size=(16, 16))
        assert torch.equal(mask, square.float())
    assert object_mask(self_map, cross, [[2]], [True], (16, 16), (8, 8), size=(16, 16)).sum() == 0


def test_object_mask_ignores_clusters_where_another_word_wins():
    regions, square, coarse = square_scene()
    table = torch.zeros(8, 8)
    table[4:, :4] = 1.0  # the other word covers the bottom-left quadrant (region 2)
    cross = cross_map_for(coarse, other_word=table)
    self_map = regions_self_map(regions)
    both = object_mask(self_map, cross, [[2, 3], [5]], [True, True], (16, 16), (8, 8), size=(16, 16))
    assert torch.equal(both.bool(), square | (regions == 2))
    only_object = object_mask(self_map, cross, [[2, 3], [5]], [True, False], (16, 16), (8, 8), size=(16, 16))
    assert torch.equal(only_object.bool(), square)


def test_object_mask_rejects_mismatched_input():
    regions, _, _ = square_scene()
    self_map, cross = regions_self_map(regions), torch.full((64, 4), 0.25)
    with pytest.raises(ValueError, match="self map"):
        object_mask(self_map, cross, [[2]], [True], (16, 15), (8, 8), size=(16, 16))
    with pytest.raises(ValueError, match="cross map"):
        object_mask(self_map, cross, [[2]], [True], (16, 16), (8, 7), size=(16, 16))
    with pytest.raises(ValueError, match="positions"):
        object_mask(self_map, cross, [[4]], [True], (16, 16), (8, 8), size=(16, 16))
    with pytest.raises(ValueError, match="object word"):
        object_mask(self_map, cross, [[2]], [False], (16, 16), (8, 8), size=(16, 16))


def test_flat_word_map_gives_an_empty_mask():
    regions, _, _ = square_scene()
    cross = torch.full((64, 4), 0.25)
    mask = object_mask(regions_self_map(regions), cross, [[2]], [True], (16, 16), (8, 8), size=(16, 16))
    assert torch.equal(mask, torch.zeros(16, 16))


def test_object_mask_on_odd_grids():
    coarse = torch.zeros(8, 7, dtype=torch.bool)
    coarse[2:5, 3:6] = True
    fine = F.interpolate(coarse[None, None].float(), size=(15, 13), mode="nearest")[0, 0].bool()
    rows, cols = torch.meshgrid(torch.arange(15), torch.arange(13), indexing="ij")
    regions = (rows >= 8).long() * 2 + (cols >= 6).long()
    regions[fine] = 4
    mask = object_mask(regions_self_map(regions), cross_map_for(coarse), [[2, 3]], [True], (15, 13), (8, 7), (30, 26))
    assert mask.shape == (30, 26)
    expected = F.interpolate(fine[None, None].float(), size=(30, 26), mode="nearest")[0, 0]
    assert torch.equal(mask, expected)
    assert 0 < mask.sum() < mask.numel()


def scores_scene(scores):
    """Five one-pixel clusters whose normalised scores for a single word are exactly ``scores``."""
    labels = torch.arange(5)[None]  # [1, 5]
    word_map = torch.tensor(scores, dtype=torch.float32)[None, None]  # min 0, max 1: normalising keeps it
    return labels, word_map


def test_score_ratio_threshold():
    # mean of the others (top one left out) = (0 + 0 + 0.5 + x) / 4; x is the object when x > 0.7 / 2.6 = 0.26923
    above = label_clusters(*scores_scene([1.0, 0.0, 0.0, 0.5, 0.27]), [True])
    below = label_clusters(*scores_scene([1.0, 0.0, 0.0, 0.5, 0.268]), [True])
    assert above.tolist() == [True, False, False, True, True]
    assert below.tolist() == [True, False, False, True, False]


def test_only_one_top_score_is_left_out_of_the_mean():
    # leaving out one of four tied top scores: mean 0.75, threshold 1.05, so no cluster is the object
    assert label_clusters(*scores_scene([1.0, 1.0, 1.0, 1.0, 0.0]), [True]).tolist() == [False] * 5


def test_normalisation_subtracts_the_absolute_minimum():
    labels = torch.arange(5)[None]
    # (m - 2) / 4: scores 0.5, 0, 0, 0.125, 0.25 -> mean of others 0.09375, threshold 0.13125
    # (raw scores would give threshold 3.325 and leave cluster 4 out)
    word_map = torch.tensor([[[4.0, 2.0, 2.0, 2.5, 3.0]]])
    assert label_clusters(labels, word_map, [True]).tolist() == [True, False, False, False, True]
    # the official formula takes |min|: (m - 1) / 2 = 0.5, -1, -1, -0.75, -0.25 -> threshold -1.05, all pass
    # ((m - min) / (max - min) would give 1, 0, 0, 1/6, 1/2 and only clusters 0 and 4)
    word_map = torch.tensor([[[2.0, -1.0, -1.0, -0.5, 0.5]]])
    assert label_clusters(labels, word_map, [True]).tolist() == [True] * 5


def test_best_word_must_be_an_object_word():
    labels = torch.arange(5)[None]
    maps = torch.tensor([[[1.0, 0.0, 0.0, 0.0, 0.1]], [[0.0, 0.0, 0.0, 0.0, 1.0]]])  # word 1 wins cluster 4
    assert label_clusters(labels, maps, [True, True]).tolist() == [True, False, False, False, True]
    assert label_clusters(labels, maps, [True, False]).tolist() == [True, False, False, False, False]


def test_empty_cluster_is_never_the_object_and_makes_no_nan():
    labels = torch.tensor([[0, 1, 3, 4]])  # cluster 2 has no pixels
    word_map = torch.tensor([[[1.0, 0.0, 0.1, 0.0]]])
    objects = label_clusters(labels, word_map, [True], clusters=5)
    assert objects.tolist() == [True, False, False, True, False]
    assert label_clusters(torch.zeros(2, 2, dtype=torch.long), torch.rand(1, 2, 2), [True]).tolist() == [False]


CLIP_PROMPT = ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>", "gir", "affe</w>", "<|endoftext|>"]


def test_word_positions_multi_token_word():
    assert word_positions(CLIP_PROMPT, ["gir", "affe</w>"], "giraffe") == [5, 6]
    assert word_positions(CLIP_PROMPT, ["photo</w>"], "photo") == [2]


def test_word_positions_repeated_word():
    assert word_positions(CLIP_PROMPT, ["a</w>"], "a") == [1, 4]
    prompt = CLIP_PROMPT[:-1] + ["and</w>", "a</w>", "gir", "affe</w>", "<|endoftext|>", "<|endoftext|>"]
    assert word_positions(prompt, ["gir", "affe</w>"], "giraffe") == [5, 6, 9, 10]


T5_PROMPT = ["\u2581A", "\u2581photo", "\u2581of", "\u2581a", "\u2581gir", "affe", "</s>", "<pad>", "<pad>"]


def test_word_positions_in_a_t5_prompt():
    """Flux's context is T5's: SentencePiece pieces, no start token, '</s>' then padding."""
    assert word_positions(T5_PROMPT, ["\u2581gir", "affe"], "giraffe") == [4, 5]
    with pytest.raises(ObjectWordError) as error:
        word_positions(T5_PROMPT + ["\u2581zebra"], ["\u2581zebra"], "zebra")  # after the end: padding
    assert "'A photo of a giraffe'" in str(error.value) and "A, photo, of, a, gir, affe" in str(error.value)


def test_a_word_s_leading_space_piece_is_not_part_of_it():
    assert word_pieces(["\u2581", "gi", "r", "affe"]) == ["gi", "r", "affe"]
    assert word_pieces(["\u2581zebra"]) == ["\u2581zebra"] and word_pieces(["\u2581"]) == ["\u2581"]
    assert word_pieces(["gir", "affe</w>"]) == ["gir", "affe</w>"]  # CLIP's pieces are left alone


def test_padding_after_the_end_token_is_not_searched():
    # SDXL's second CLIP pads with '!' after the end token
    prompt = ["<|startoftext|>", "wow</w>", "!</w>", "<|endoftext|>", "!</w>", "!</w>"]
    assert word_positions(prompt, ["!</w>"], "!") == [2]
    with pytest.raises(ObjectWordError) as error:
        word_positions(prompt, ["cat</w>"], "cat")
    assert "'wow !'" in str(error.value)


def test_missing_word_is_reported_with_the_prompt():
    with pytest.raises(ObjectWordError) as error:
        word_positions(CLIP_PROMPT, ["zebra</w>"], "zebra")
    message = str(error.value)
    assert "'zebra'" in message
    assert "'a photo of a giraffe'" in message
    assert "a, photo, of, a, gir, affe" in message
    assert "startoftext" not in message and "</w>" not in message
    with pytest.raises(ObjectWordError, match="'giraffe'"):
        word_positions(CLIP_PROMPT, ["affe</w>", "gir"], "giraffe")  # the tokens must be in order
    with pytest.raises(ObjectWordError, match="no tokens"):
        word_positions(CLIP_PROMPT, [], "")
    assert issubclass(ObjectWordError, ValueError)
