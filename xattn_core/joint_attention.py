"""Cross-image attention in joint (MM-DiT) attention, as Flux's double and single blocks compute it.

One call attends over ``cat(text tokens, image tokens)``: queries, keys and values are ``[rows, heads, tokens,
dim_head]`` with rotary position embeddings (RoPE) already applied; the text comes first in both block kinds.
In a swapping layer:

- ordinary rows, and the text queries of output rows, keep their own attention (the backend's fused one);
- an output row's image queries attend to its own text keys/values and to the *image* keys/values of its source
  row (the appearance's, or in structure steps the structure's), in one softmax, with the paper's contrast on the
  source's image keys (:class:`ContrastScope`; ``row`` puts it on the whole row). Keeping the text keys, and their
  ordinary weight, is the analogue of the UNet, where the swapped self-attention leaves the text's
  cross-attention alone.

RoPE (:class:`RopeMode`): keys carry their own image positions. ``keep`` leaves them, so an output query at
(y, x) is biased towards the source's tokens near (y, x); ``none`` removes the rotation from the output's image
queries and the source's image keys, so the swap matches by content alone, as the UNet's position-free
self-attention does; ``offset`` gives the source Flux Kontext's reference index (1 on the first RoPE axis).
``bench/flux_rope.py`` measures which one hands the structure its own features back from a shifted copy of
itself; on the tiny random Flux ``keep`` did at every shift (README "Flux"), so it is the default.

Automatic object masks (:func:`record_joint_maps`): one block, :data:`MAPS_DOUBLE_BLOCK`, records both maps the
segmentation reads, from the model's own queries and keys: the image tokens' attention over the image tokens
(the self map, clustered) and over the text tokens (the cross map, whose object-word columns label the clusters).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor

from .attention import (
    CallAttention,
    KeyPart,
    contrasted_attention_parts,
    mean_attention_weights,
    merge_heads,
    row_runs,
    split_heads,
)

JointAttention = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``(q, k, v) -> out``: q, k, v ``[rows, heads, tokens, dim_head]``, out ``[rows, tokens, heads * dim_head]``."""


class RopeMode(str, Enum):
    KEEP = "keep"
    NONE = "none"
    OFFSET = "offset"


DEFAULT_ROPE = RopeMode.KEEP  # measured by bench/flux_rope.py (README "Flux")


class ContrastScope(str, Enum):
    """Which weights of an output image query's joint softmax the paper's contrast sharpens.

    ``row``: the whole row, its own text keys (and reference images) with the source's image keys, around the
    row's mean 1 / N_keys. ``image``: the source's image keys only, around their own mean weight; the text keeps
    the weight the softmax gives it, as in the UNet, whose text attention is a separate layer the contrast never
    touches.
    """

    ROW = "row"
    IMAGE = "image"


# bench/joint_contrast_scope.py on the tiny Flux with sharpened attention: `image` leaves the text's mass as ordinary
# attention has it where `row` raised it by 29-37%, and handed a shifted copy's structure back 2-9% closer at every
# shift (README "Flux"). On the tiny Qwen-Image and Z-Image `row` raised the text's mass by 26% and 38% and the
# shifted copy did not separate the two. Its image part is the UNet's contrasted map over the image keys, scaled by
# the image's share of the row.
DEFAULT_CONTRAST_SCOPE = ContrastScope.IMAGE


def rotate(x: Tensor, pe: Tensor, inverse: bool = False) -> Tensor:
    """Apply (or undo) Flux's RoPE; ``pe`` holds one 2x2 rotation per channel pair, ``[..., tokens, dim/2, 2, 2]``."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2, 1)
    matrices = pe.float().transpose(-1, -2) if inverse else pe.float()
    return (matrices @ pairs).reshape(x.shape).to(x.dtype)


def index_rotation(axes_dim: list[int], theta: float, index: float = 1.0) -> Tensor:
    """RoPE rotations ``[dim/2, 2, 2]`` of position (index, 0, 0): Flux Kontext's reference-image index."""
    angles = []
    for axis, dim in enumerate(axes_dim):
        scale = torch.linspace(0, (dim - 2) / dim, steps=dim // 2, dtype=torch.float64)
        position = index if axis == 0 else 0.0
        angles.append(position / theta**scale)
    angle = torch.cat(angles)
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([cos, -sin, sin, cos], dim=-1).reshape(-1, 2, 2).float()


def contrasted_joint_attention(
    context_queries: Tensor,
    context: Sequence[tuple[Tensor, Tensor]],
    image_queries: Tensor,
    image_keys: Tensor,
    image_values: Tensor,
    contrast: float,
    memory_budget: int,
    out: Tensor | None = None,
    scope: ContrastScope = DEFAULT_CONTRAST_SCOPE,
) -> Tensor:
    """The paper's contrasted attention over context keys and image keys scored with queries of their own RoPE form.

    ``context``: the output row's own (keys, values) that are not its image (its text, then any reference images'
    tokens), each ``[1, heads, tokens, dim]``, scored with ``context_queries``; ``image_keys``/``image_values`` the
    source's image, scored with ``image_queries`` (the same queries ``[1, heads, Q, dim]``, which differ only when
    RoPE is removed from the image part). Weights: one softmax over all the keys, then clip(c * A - (c - 1) * m, 0,
    1), not renormalised, on the keys ``scope`` names (m their mean weight: 1 / N_keys for the whole row), in float32
    (:func:`~.attention.contrasted_attention_parts`: at most ``memory_budget`` bytes of work memory, no key list
    concatenated). Returns ``[1, Q, heads * dim]`` in the values' dtype, written into ``out`` when given.
    """
    parts = [KeyPart(context_queries, keys, values) for keys, values in context]
    parts.append(KeyPart(image_queries, image_keys, image_values))
    contrasted_from = len(context) if scope is ContrastScope.IMAGE else 0
    return contrasted_attention_parts(parts, contrast, memory_budget, out, contrasted_from)


@dataclass(frozen=True, eq=False)
class JointBlock:
    """What one call of a joint-attention block tells the swap: the block, its token layout and its RoPE.

    ``layer``: the block's key in the key/value stores. ``level``: the plan level whose step range it follows
    (None: it swaps nowhere). ``text_tokens``: how many text tokens open the sequence (the image's follow).
    ``image_tokens``: how many of the tokens after the text are the image's own (None: all of them); the rest are
    reference images (Flux Kontext, Flux.2 and Qwen-Image edit models append theirs), context like the text: an
    output row keeps its own, and they are neither swapped nor stored.
    ``pe``: the block's RoPE, ``[1 or rows, 1, tokens, dim/2, 2, 2]``; ``rope`` the form the source keys take and
    ``offset`` the extra rotation of :func:`index_rotation` for ``RopeMode.OFFSET``. ``contrast_scope``: the weights
    the contrast sharpens (:class:`ContrastScope`). ``records_maps``: the maps block of the automatic masks.
    """

    layer: Hashable
    level: int | None
    text_tokens: int
    image_tokens: int | None = None
    pe: Tensor | None = None
    rope: RopeMode = DEFAULT_ROPE
    offset: Tensor | None = None
    contrast_scope: ContrastScope = DEFAULT_CONTRAST_SCOPE
    records_maps: bool = False

    @property
    def image_slice(self) -> slice:
        """The image's own tokens in the joint sequence."""
        end = None if self.image_tokens is None else self.text_tokens + self.image_tokens
        return slice(self.text_tokens, end)


def touches(call: CallAttention | None, level: int | None) -> bool:
    """Whether a block at ``level`` captures or swaps during the call ``call`` directs."""
    if call is None or level is None:
        return False
    return any(part is not None and level in part.levels for part in (call.capture, call.swap))


def records(call: CallAttention | None) -> bool:
    """Whether the call ``call`` directs records attention maps (at the maps block)."""
    return call is not None and call.record is not None and bool(call.record.rows)


def record_joint_maps(query: Tensor, key: Tensor, block: JointBlock, cond_or_uncond: list[int], call) -> None:
    """At the maps block: the head-averaged maps of the cond-branch rows ``call.record`` names, each softmax over
    one kind of key as a UNet's separate self- and cross-attention computes it: image queries over the image keys
    (``self_maps``, ``[image tokens, image tokens]``) and over the text keys (``cross_maps``, ``[image tokens, text
    tokens]``, the text's token order, so the object word's positions index its columns). The cond branch carries
    the positive prompt, which holds the object word."""
    if not records(call) or 0 not in cond_or_uncond:
        return
    rows = query.shape[0] // len(cond_or_uncond)
    first = cond_or_uncond.index(0) * rows
    heads = query.shape[1]
    budget = call.record.memory_budget
    text, image_part = slice(0, block.text_tokens), block.image_slice
    for row, image in call.record.rows:
        index = first + row
        queries = merge_heads(query[index : index + 1, :, image_part])[0]
        image_keys = merge_heads(key[index : index + 1, :, image_part])[0]
        text_keys = merge_heads(key[index : index + 1, :, text])[0]
        with torch.no_grad():  # the maps only feed k-means
            call.record.maps.self_maps[image] = mean_attention_weights(queries, image_keys, heads, budget)
            call.record.maps.cross_maps[image] = mean_attention_weights(queries, text_keys, heads, budget)


def route_joint_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    block: JointBlock,
    cond_or_uncond: list[int],
    call: CallAttention | None,
    plain: JointAttention,
    plain_takes_parts: bool = True,
) -> Tensor:
    """Joint attention for one block call over a batch of one block of rows per ``cond_or_uncond`` entry.

    Stores hold the image keys/values ``[rows, image tokens, heads * dim]``, the keys already in the RoPE form
    ``block.rope`` asks for. In a swapping call ``plain`` runs on some rows and, for the output rows, on their
    queries other than the image's (keys and values whole rows); ``plain_takes_parts=False`` gives it the whole
    call instead (for a backend call that carries inputs of the whole layout, e.g. an attention mask), whose
    output rows' image tokens are then computed and overwritten.
    """
    layer, level, pe, rope, offset = block.layer, block.level, block.pe, block.rope, block.offset
    if block.records_maps:
        record_joint_maps(query, key, block, cond_or_uncond, call)
    if not touches(call, level):
        return plain(query, key, value)
    capture, swap = call.capture, call.swap
    heads = query.shape[1]
    image = block.image_slice
    image_pe = None if pe is None or rope is RopeMode.KEEP else pe[:, :, image]

    def row_pe(rows: slice) -> Tensor:
        return image_pe if image_pe.shape[0] == 1 else image_pe[rows]

    def source_form(keys: Tensor, rows: slice) -> Tensor:
        """Image keys ``[rows, heads, image tokens, dim]`` as the swap reads them (RoPE kept, removed or moved)."""
        if image_pe is None:
            return keys
        if rope is RopeMode.OFFSET:  # the image's index axis is 0 and its (y, x) axes are other channel pairs,
            return rotate(keys, offset.to(keys.device))  # so the extra rotation moves the keys to (1, y, x)
        return rotate(keys, row_pe(rows), inverse=True)

    # an output row's own tokens that are not its image: the text, then any reference images
    own_tokens = [slice(0, block.text_tokens)] if block.text_tokens else []
    if image.stop is not None and image.stop < query.shape[2]:
        own_tokens.append(slice(image.stop, None))

    rows = query.shape[0] // len(cond_or_uncond)
    branch_rows = [slice(index * rows, (index + 1) * rows) for index in range(len(cond_or_uncond))]
    if capture is not None and level in capture.levels:
        for branch, in_branch in zip(cond_or_uncond, branch_rows, strict=True):
            image_keys = source_form(key[in_branch, :, image], in_branch)
            capture.store.put(layer, branch, merge_heads(image_keys), merge_heads(value[in_branch, :, image]))
    if swap is None or level not in swap.levels or not swap.output_rows:
        return plain(query, key, value)

    # Ordinary attention only where it is kept: the rows that do not swap, and the output rows' own queries (over
    # their whole sequence); runs of consecutive rows, so that no row is copied. The output's dtype is the one the
    # backend's attention returns.
    swapped = sorted(in_branch.start + row for in_branch in branch_rows for row in swap.output_rows)
    others = [index for index in range(query.shape[0]) if index not in swapped]
    ordinary = [(run, slice(None)) for run in row_runs(others)]
    ordinary += [(run, tokens) for run in row_runs(swapped) for tokens in own_tokens]
    if not plain_takes_parts:
        ordinary = [(slice(None), slice(None))]
    out = None
    for in_run, tokens in ordinary:
        attention = plain(query[in_run, :, tokens], key[in_run], value[in_run])
        if out is None:
            out = attention.new_empty(query.shape[0], query.shape[2], attention.shape[-1])
        out[in_run, tokens] = attention
    if out is None:  # every row swaps and there is no text
        out = value.new_empty(query.shape[0], query.shape[2], value.shape[1] * value.shape[3])

    for branch, in_branch in zip(cond_or_uncond, branch_rows, strict=True):
        stored = None if swap.source is None else swap.source.get(layer, branch)
        for output_row, source_row in zip(swap.output_rows, swap.source_rows, strict=True):
            index = in_branch.start + output_row
            row = slice(index, index + 1)
            if stored is None:  # a row of this call (the structure's)
                source = slice(in_branch.start + source_row, in_branch.start + source_row + 1)
                image_keys, image_values = source_form(key[source, :, image], source), value[source, :, image]
            else:
                image_keys = split_heads(stored[0][source_row : source_row + 1].to(key), heads)
                image_values = split_heads(stored[1][source_row : source_row + 1].to(value), heads)
            queries = query[row, :, image]
            image_queries = queries
            if image_pe is not None and rope is RopeMode.NONE:
                image_queries = rotate(queries, row_pe(row), inverse=True)
            context = [(key[row, :, tokens], value[row, :, tokens]) for tokens in own_tokens]
            budget = swap.memory_budget
            contrasted_joint_attention(
                queries,
                context,
                image_queries,
                image_keys,
                image_values,
                swap.contrast,
                budget,
                out[row, image],
                block.contrast_scope,
            )
    return out


SINGLE_BLOCK_LEVEL = 0  # single blocks follow the plan's level-0 step range (the UNet's highest-resolution level)
DOUBLE_BLOCK_LEVEL = 1  # double blocks follow level 1's
# The automatic masks' maps come from the last double block: the deepest point where text and image tokens are
# still separate streams, as the UNet's maps come from its last decoder layers. A choice, not tuned on real
# Flux weights (README "Flux").
MAPS_DOUBLE_BLOCK = -1


# The blocks that swap by default: the last third of the network's blocks in depth order. The paper swaps in the
# decoder's two highest-resolution levels, the late part of the UNet (the last 6 of SD 1.5's 16 self-attention
# layers); on Flux.1 (19 double + 38 single blocks) the last third is exactly the second half of the single blocks,
# the default this pack shipped for Flux.1 first. A choice carried over, not tuned on real weights. 0.67 rather
# than 2/3: the widget shows two decimals, and a block counts by its centre, so both choose the same blocks.
DEFAULT_DEPTH = (0.67, 1.0)


# The Options node's first, Flux-only block inputs (double blocks, then single blocks) at their defaults: no double
# block, the single blocks' second half; on Flux.1 the same blocks as DEFAULT_DEPTH. Kept as optional aliases.
STREAM_BLOCKS_DEFAULT = ((1.0, 1.0), (0.5, 1.0))


def _check_range(name: str, low: float, high: float) -> None:
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"{name}: fractions 0 <= start <= end <= 1, got start {low:g} and end {high:g}")


@dataclass(frozen=True)
class JointSwapSettings:
    """Which blocks of a joint-attention transformer swap, and the RoPE form of the source keys.

    ``depth``: ``[start, end)`` as fractions of the family's swappable blocks in depth order (Flux: its double
    blocks, then its single blocks); a block swaps when its centre, ``(index + 0.5) / count``, lies in the
    range. The same numbers mean the same part of the network on every family; each family file lists its blocks.
    ``stream_blocks``: the Flux-only ranges the Options node had first (``flux_double_blocks_*``,
    ``flux_single_blocks_*``), each ``[start, end)`` of one block kind by ``start * count <= index < end * count``;
    when given they replace ``depth`` (saved prompts keep their result). ``rope``: see :class:`RopeMode`;
    ``contrast_scope``: see :class:`ContrastScope`.
    """

    depth: tuple[float, float] = DEFAULT_DEPTH
    rope: RopeMode = DEFAULT_ROPE
    stream_blocks: tuple[tuple[float, float], ...] | None = None
    contrast_scope: ContrastScope = DEFAULT_CONTRAST_SCOPE

    def __post_init__(self) -> None:
        _check_range("swap depth range", *self.depth)
        for kind, (low, high) in zip(("double", "single"), self.stream_blocks or (), strict=False):
            _check_range(f"{kind} block range", low, high)
        object.__setattr__(self, "rope", RopeMode(self.rope))  # accept the plain string, as the Options node has
        object.__setattr__(self, "contrast_scope", ContrastScope(self.contrast_scope))

    def chosen(self, counts: Sequence[int]) -> list[list[int]]:
        """For each block kind, in depth order, with ``counts[i]`` blocks: the indices that swap."""
        if self.stream_blocks is not None:
            return [
                [index for index in range(count) if low * count <= index < high * count]
                for count, (low, high) in zip(counts, self.stream_blocks, strict=True)
            ]
        total, low, high = sum(counts), *self.depth
        chosen, first = [], 0
        for count in counts:
            chosen.append([index for index in range(count) if low <= (first + index + 0.5) / total < high])
            first += count
        return chosen
