"""The swap in joint text+image attention (xattn_core/joint_attention.py), in plain torch."""

import pytest
import torch

from tests.joint_reference import contrasted_weights
from xattn_core.attention import CallAttention, Capture, KeyValueStore, Recording, Swap
from xattn_core.joint_attention import (
    ContrastScope,
    JointBlock,
    JointSwapSettings,
    RopeMode,
    index_rotation,
    rotate,
    route_joint_attention,
)
from xattn_core.segmentation import AttentionMaps

HEADS, DIM, TEXT, IMAGE = 2, 8, 3, 6


def rope_for(positions: torch.Tensor) -> torch.Tensor:
    """Rotations [1, 1, tokens, DIM/2, 2, 2] of one position axis, as Flux's EmbedND makes them."""
    scale = torch.linspace(0, (DIM - 2) / DIM, steps=DIM // 2, dtype=torch.float64)
    angle = positions.double()[:, None] / 10000**scale
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([cos, -sin, sin, cos], -1).reshape(1, 1, len(positions), DIM // 2, 2, 2).float()


def plain(q, k, v):
    weights = torch.softmax(q @ k.transpose(-1, -2) / DIM**0.5, -1)
    return (weights @ v).transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def rows(seed: int, count: int = 2):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(count, HEADS, TEXT + IMAGE, DIM, generator=generator) for _ in range(3)]


def test_rotate_undoes_itself_and_the_index_rotation_moves_axis_zero_only():
    x = torch.randn(1, HEADS, IMAGE, DIM)
    pe = rope_for(torch.arange(IMAGE))
    assert torch.allclose(rotate(rotate(x, pe), pe, inverse=True), x, atol=1e-6)
    offset = index_rotation([4, 2, 2], 10000.0)  # axis 0 owns the first two channel pairs
    assert not torch.allclose(offset[:2], torch.eye(2).expand(2, 2, 2))
    assert torch.equal(offset[2:], torch.eye(2).expand(2, 2, 2))


def swapped(mode: RopeMode, source_permutation: torch.Tensor):
    """Row 1 (output) attends to row 0's image tokens (source in the same call), source tokens permuted."""
    q, k, v = rows(0)
    pe = rope_for(torch.cat([torch.zeros(TEXT), torch.arange(IMAGE)]))
    k, v = k.clone(), v.clone()
    # row 0's image tokens as another image with the same content in another order, rotated for its own positions
    image = slice(TEXT, None)
    raw = rotate(k[0:1, :, image], pe[:, :, image], inverse=True)
    k[0:1, :, image] = rotate(raw[:, :, source_permutation], pe[:, :, image])
    v[0:1, :, image] = v[0:1, :, image][:, :, source_permutation]
    swap = CallAttention(swap=Swap(frozenset({0}), (1,), (0,), None, 1.0))
    return route_joint_attention(q, k, v, JointBlock("layer", 0, TEXT, pe=pe, rope=mode), [0], swap, plain), (q, k, v)


def test_without_rope_the_swap_follows_content_not_positions():
    permutation = torch.randperm(IMAGE, generator=torch.Generator().manual_seed(1))
    none_out, _ = swapped(RopeMode.NONE, torch.arange(IMAGE))
    none_permuted, _ = swapped(RopeMode.NONE, permutation)
    keep_out, _ = swapped(RopeMode.KEEP, torch.arange(IMAGE))
    keep_permuted, _ = swapped(RopeMode.KEEP, permutation)
    assert torch.allclose(none_out[1], none_permuted[1], atol=1e-5)  # position-free: the order does not matter
    assert (keep_out[1] - keep_permuted[1]).abs().max() > 1e-3  # own positions: it does


def test_only_the_output_rows_image_tokens_change_and_the_capture_holds_image_keys():
    q, k, v = rows(2)
    store = KeyValueStore()
    route_joint_attention(
        q, k, v, JointBlock("layer", 0, TEXT), [0], CallAttention(capture=Capture(frozenset({0}), store)), plain
    )
    keys, values = store.get("layer", 0)
    assert keys.shape == values.shape == (2, IMAGE, HEADS * DIM)
    swap = CallAttention(swap=Swap(frozenset({0}), (0,), (1,), store, 1.67))
    out = route_joint_attention(q, k, v, JointBlock("layer", 0, TEXT), [0], swap, plain)
    own = plain(q, k, v)
    # ordinary attention for the rest (within float error: it is computed on fewer queries)
    assert torch.allclose(out[1], own[1], atol=1e-6) and torch.allclose(out[0, :TEXT], own[0, :TEXT], atol=1e-6)
    assert (out[0, TEXT:] - own[0, TEXT:]).abs().max() > 1e-3
    elsewhere = route_joint_attention(q, k, v, JointBlock("layer", 1, TEXT), [0], swap, plain)  # another level
    assert torch.equal(elsewhere, own)


@pytest.mark.parametrize("scope", list(ContrastScope))
def test_reference_image_tokens_after_the_image_are_context_never_swapped_nor_stored(scope):
    """Edit models append reference images' tokens after the image's own: the output row keeps its own text and
    reference keys; only its image keys/values come from the source, and only the image's tokens are stored. The
    contrast acts on the whole row, or on the source's image keys only (``scope``)."""
    reference = 4
    generator = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, HEADS, TEXT + IMAGE + reference, DIM, generator=generator) for _ in range(3))
    block = JointBlock("layer", 0, TEXT, image_tokens=IMAGE, contrast_scope=scope)
    store = KeyValueStore()
    route_joint_attention(q, k, v, block, [0], CallAttention(capture=Capture(frozenset({0}), store)), plain)
    assert store.get("layer", 0)[0].shape == (2, IMAGE, HEADS * DIM)
    contrast = 1.67
    out = route_joint_attention(
        q, k, v, block, [0], CallAttention(swap=Swap(frozenset({0}), (0,), (1,), store, contrast)), plain
    )
    image, refs = slice(TEXT, TEXT + IMAGE), slice(TEXT + IMAGE, None)
    # written out: output row 0's image queries over [its text, appearance row 1's image, its references]
    keys = torch.cat([k[0, :, :TEXT], k[1, :, image], k[0, :, refs]], 1)
    values = torch.cat([v[0, :, :TEXT], v[1, :, image], v[0, :, refs]], 1)
    weights = torch.softmax(q[0, :, image] @ keys.transpose(-1, -2) / DIM**0.5, -1)
    weights = contrasted_weights(weights, contrast, image if scope is ContrastScope.IMAGE else None)
    expected = (weights @ values).transpose(0, 1).reshape(IMAGE, HEADS * DIM)
    assert torch.allclose(out[0, image], expected, atol=1e-5)
    own = plain(q, k, v)
    # ordinary attention for the rest (within float error: it may be computed on fewer rows)
    assert torch.allclose(out[0, refs], own[0, refs], atol=1e-6) and torch.allclose(
        out[0, :TEXT], own[0, :TEXT], atol=1e-6
    )
    assert torch.allclose(out[1], own[1], atol=1e-6)
    # taken for image tokens (the old slice to the end) the result differs
    unsplit = route_joint_attention(
        q,
        k,
        v,
        JointBlock("layer", 0, TEXT, contrast_scope=scope),
        [0],
        CallAttention(swap=Swap(frozenset({0}), (0,), (1,), None, contrast)),
        plain,
    )
    assert (unsplit[0, image] - out[0, image]).abs().max() > 1e-3


def test_the_default_depth_is_the_last_third_which_on_flux1_is_the_second_half_of_the_single_blocks():
    settings = JointSwapSettings()
    assert settings.chosen([19, 38]) == [[], list(range(19, 38))]  # Flux.1 dev: the blocks it swapped before
    assert settings.chosen([2, 2]) == [[], [1]]  # the tiny Flux of the tests
    assert settings.chosen([8, 48]) == [[], list(range(30, 48))]  # Flux.2 dev: blocks 38-55 of 56
    assert JointSwapSettings(depth=(2 / 3, 1.0)).chosen([19, 38]) == settings.chosen([19, 38])  # 0.67 is 2/3 here
    assert settings.rope is RopeMode.KEEP


def test_a_depth_range_counts_every_block_kind_in_order():
    assert JointSwapSettings(depth=(0.0, 1.0)).chosen([2, 3]) == [[0, 1], [0, 1, 2]]
    assert JointSwapSettings(depth=(0.0, 0.5)).chosen([2, 2]) == [[0, 1], []]
    # five blocks' centres at 0.1, 0.3, 0.5, 0.7, 0.9: [0.3, 0.6) takes the second double and the first single
    assert JointSwapSettings(depth=(0.3, 0.6)).chosen([2, 3]) == [[1], [0]]
    assert JointSwapSettings(depth=(0.5, 0.5)).chosen([19, 38]) == [[], []]


def test_the_first_flux_block_inputs_still_choose_as_they_did():
    """The Options node's flux_*_blocks_* ranges (kept for saved prompts): start * count <= index < end * count."""
    legacy = JointSwapSettings(stream_blocks=((0.0, 0.5), (0.5, 1.0)))
    assert legacy.chosen([19, 38]) == [list(range(10)), list(range(19, 38))]
    assert JointSwapSettings(stream_blocks=((1.0, 1.0), (0.0, 0.5))).chosen([2, 2]) == [[], [0]]


def test_block_ranges_are_checked_when_made_and_the_rope_mode_may_be_its_name():
    assert JointSwapSettings(rope="none").rope is RopeMode.NONE
    for bad in ((0.6, 0.4), (-0.1, 0.5), (0.5, 1.5)):
        with pytest.raises(ValueError, match="swap depth range"):
            JointSwapSettings(depth=bad)
        with pytest.raises(ValueError, match="double block range"):
            JointSwapSettings(stream_blocks=(bad, (0.5, 1.0)))
    with pytest.raises(ValueError, match="'sideways' is not a valid RopeMode"):
        JointSwapSettings(rope="sideways")


def test_the_maps_are_recorded_from_the_cond_branch_rows_it_names():
    """Image queries over image keys and over text keys, each its own softmax, averaged over heads; the cond
    branch is found from cond_or_uncond (here second), and a call that records nothing leaves the maps empty."""
    q, k, v = rows(7, count=4)  # two branches of two rows: [uncond rows 0-1, cond rows 0-1]
    maps = AttentionMaps()
    call = CallAttention(record=Recording(maps, ((1, ("appearance", 0)),)))
    out = route_joint_attention(q, k, v, JointBlock("layer", None, TEXT, records_maps=True), [1, 0], call, plain)
    assert torch.equal(out, plain(q, k, v))  # recording changes nothing
    row = 2 + 1  # the cond branch's second row

    def expected(keys):
        weights = torch.softmax(q[row, :, TEXT:].double() @ keys.double().transpose(-1, -2) / DIM**0.5, -1)
        return weights.mean(0).float()

    image = ("appearance", 0)
    assert torch.allclose(maps.self_maps[image], expected(k[row, :, TEXT:]), atol=1e-6)
    assert torch.allclose(maps.cross_maps[image], expected(k[row, :, :TEXT]), atol=1e-6)
    assert maps.self_maps[image].shape == (IMAGE, IMAGE) and maps.cross_maps[image].shape == (IMAGE, TEXT)
    untouched = AttentionMaps()
    quiet = CallAttention(record=Recording(untouched, ((1, image),)))
    route_joint_attention(q, k, v, JointBlock("layer", None, TEXT), [1, 0], quiet, plain)  # not the maps block
    route_joint_attention(
        q, k, v, JointBlock("layer", None, TEXT, records_maps=True), [1], quiet, plain
    )  # no cond rows
    assert not untouched.self_maps and not untouched.cross_maps
