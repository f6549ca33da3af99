"""Automatic object masks from the model's own attention ("self-segmentation", as in the official code).

Tokens that attend alike belong to the same region, so k-means over the rows of a self-attention map splits
the image into a few segments. The cross-attention map of an object word then says which segments show that
object: a segment whose mean (normalised) word attention stands out from the others is kept. Everything here
is plain torch so that it runs wherever the model runs, with no numpy or scikit-learn at run time.

The whole automatic-mask path, in order:

- :func:`uses_automatic_masks`: they are on when the object word's token positions are known and no mask is
  given;
- ``calls.py``: at which step the maps are recorded (the first AdaIN step) and by which model calls and rows
  (a path replayed from fast mode's cache gets one call of its own there);
- the two recording layers, :data:`SELF_MAPS_LEVEL` and :data:`CROSS_MAPS_LEVEL` below (each backend marks
  them), keep head-averaged maps of those rows in :class:`AttentionMaps`
  (``attention.record_attention_maps``);
- :func:`automatic_masks` and :func:`output_masks` here turn the maps into AdaIN's masks for the rest of the
  generation.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import XAttnError
from .kmeans import KMEANS_CLUSTERS, kmeans

KMEANS_SEED = 1  # the official code seeds numpy with 1 before clustering (results differ anyway: other RNG)
OBJECT_SCORE_RATIO = 1.4

# the official layers: the last decoder self-attention of the highest-resolution attention level, and the last
# decoder cross-attention of the next level
SELF_MAPS_LEVEL = 0
CROSS_MAPS_LEVEL = 1

_SPECIAL_TOKEN = re.compile(r"^<\|.*\|>$|^<pad>$|^<s>$|^</s>$")
_END_TOKENS = frozenset({"<|endoftext|>", "</s>"})  # what follows the first of these is padding
_WORD_END = "</w>"  # CLIP's BPE marks a word's last piece
_WORD_START = "\u2581"  # T5's SentencePiece marks a word's first piece ("▁")


class ObjectWordError(XAttnError, ValueError):
    """An object word that the prompt does not contain, so its attention map cannot be read."""


@dataclass
class AttentionMaps:
    """Head-averaged attention maps recorded for the automatic object masks, keyed by image.

    Only the two recording layers write here, for the cond branch of the rows a model call names in its
    ``attention.Recording``; every other layer and row stays on fused attention.
    """

    self_maps: dict[Hashable, Tensor] = field(default_factory=dict)  # image -> [tokens, tokens]
    cross_maps: dict[Hashable, Tensor] = field(default_factory=dict)  # image -> [tokens, context tokens]


def uses_automatic_masks(object_tokens: object, appearance_mask: object, structure_mask: object) -> bool:
    """Whether the automatic masks are on: the object word's token positions are known (not None) and no mask is
    given, since a given mask (either one) replaces them."""
    return object_tokens is not None and appearance_mask is None and structure_mask is None


def _normalise(word_maps: Tensor) -> Tensor:
    """The official per-word scaling ``(m - |min m|) / max m``; a map whose maximum is 0 scores 0 everywhere."""
    flat = word_maps.flatten(1)
    low = flat.min(1).values.abs()
    high = flat.max(1).values
    safe_high = torch.where(high == 0, torch.ones_like(high), high)
    normalised = (flat - low[:, None]) / safe_high[:, None]
    return torch.where((high == 0)[:, None], torch.zeros_like(normalised), normalised).view_as(word_maps)


def label_clusters(labels: Tensor, word_maps: Tensor, is_object: Sequence[bool], clusters: int | None = None) -> Tensor:
    """Which clusters show the object: a bool tensor ``[clusters]``.

    ``labels`` is ``[h, w]`` (int), ``word_maps`` ``[words, h, w]`` (already upsampled, not yet normalised) and
    ``is_object`` says for each word whether it names the object (the others are scored only to compete).
    ``clusters`` defaults to ``labels.max() + 1``. A cluster's score for a word is the mean of that word's
    normalised map over the cluster; a cluster is the object when its best score exceeds
    ``OBJECT_SCORE_RATIO`` times the mean best score of the other clusters (one top-scoring cluster left out)
    and its best word is an object word. Empty clusters score nothing and are never the object; with fewer
    than two non-empty clusters nothing can stand out, so none is.
    """
    if word_maps.dim() != 3 or word_maps.shape[1:] != labels.shape:
        raise ValueError(
            f"word maps must be [words, {', '.join(map(str, labels.shape))}], got {tuple(word_maps.shape)}"
        )
    if len(is_object) != word_maps.shape[0]:
        raise ValueError(f"is_object has {len(is_object)} entries for {word_maps.shape[0]} word maps")
    count = int(labels.max()) + 1 if clusters is None else clusters
    flat_labels = labels.flatten().long()
    maps = _normalise(word_maps.float()).flatten(1)  # [words, pixels]
    members = F.one_hot(flat_labels, count).to(maps.dtype)  # [pixels, clusters]
    sizes = members.sum(0)
    scores = (maps @ members) / sizes.clamp_min(1)  # [words, clusters]
    best_scores, best_words = scores.max(0)
    present = sizes > 0
    present_scores = best_scores[present]
    if present_scores.numel() < 2:
        return torch.zeros(count, dtype=torch.bool, device=labels.device)  # nothing to compare against
    top = int(present_scores.argmax())
    mean_score = torch.cat([present_scores[:top], present_scores[top + 1 :]]).mean()
    word_is_object = torch.tensor(list(is_object), dtype=torch.bool, device=labels.device)
    return present & (best_scores > OBJECT_SCORE_RATIO * mean_score) & word_is_object[best_words]


def object_mask(
    self_map: Tensor,
    cross_map: Tensor,
    word_positions: Sequence[Sequence[int]],
    is_object: Sequence[bool],
    self_grid: tuple[int, int],
    cross_grid: tuple[int, int],
    size: tuple[int, int],
    seed: int = 0,
) -> Tensor:
    """A float 0/1 mask ``[H, W]`` (``size``) of the object in one image.

    ``self_map`` ``[T0, T0]`` is the head-averaged self-attention at the highest-resolution decoder level
    (``self_grid`` = (h0, w0) tokens) and ``cross_map`` ``[T1, context_tokens]`` the head-averaged
    cross-attention at the next level (``cross_grid`` = (h1, w1)). ``word_positions`` holds the context token
    positions of each scored word (the columns of a multi-token word are averaged) and ``is_object`` whether
    each word names the object. The mask is resized with nearest neighbour, since the level-0 grid need not
    match the latent (on SDXL it is half its size).
    """
    (h0, w0), (h1, w1) = self_grid, cross_grid
    if self_map.shape != (h0 * w0, h0 * w0):
        raise ValueError(f"self map must be [{h0 * w0}, {h0 * w0}] for a {h0}x{w0} grid, got {tuple(self_map.shape)}")
    if cross_map.dim() != 2 or cross_map.shape[0] != h1 * w1:
        raise ValueError(f"cross map must be [{h1 * w1}, tokens] for a {h1}x{w1} grid, got {tuple(cross_map.shape)}")
    if len(word_positions) != len(is_object) or not word_positions:
        raise ValueError(f"need one is_object flag per word, got {len(is_object)} for {len(word_positions)} words")
    if not any(is_object):
        raise ValueError("at least one scored word must be an object word")
    context_tokens = cross_map.shape[1]
    for positions in word_positions:
        if not positions or not all(0 <= p < context_tokens for p in positions):
            raise ValueError(f"word token positions {list(positions)} are not in 0..{context_tokens - 1}")
    labels = kmeans(self_map, seed=seed).view(h0, w0)
    cross = cross_map.to(self_map.device, torch.float32)
    word_maps = torch.stack([cross[:, list(positions)].mean(1) for positions in word_positions])
    word_maps = F.interpolate(word_maps.view(1, -1, h1, w1), size=(h0, w0), mode="nearest")[0]
    objects = label_clusters(labels, word_maps, is_object, clusters=KMEANS_CLUSTERS)
    mask = objects[labels].float()
    return F.interpolate(mask[None, None], size=tuple(size), mode="nearest")[0, 0]


def token_grid(tokens: int, latent_size: Sequence[int]) -> tuple[int, int]:
    """The (h, w) grid of an attention layer with ``tokens`` tokens in a UNet fed a latent of ``latent_size``.

    Each UNet level halves the grid, rounding up (stride-2 convolutions with padding 1), so the grid is found
    by halving the latent size until it holds that many tokens.
    """
    height, width = (int(side) for side in latent_size)
    while height * width > tokens and (height > 1 or width > 1):
        height, width = (height + 1) // 2, (width + 1) // 2
    if height * width != tokens:
        raise ValueError(f"{tokens} attention tokens do not match a downsampled {tuple(latent_size)} latent")
    return height, width


def automatic_masks(
    maps: AttentionMaps, role: str, images: int, latent_size: Sequence[int], object_tokens: Sequence[Sequence[int]]
) -> Tensor:
    """``[images, 1, H, W]`` object masks of the images recorded in ``maps`` as ``(role, index)``.

    One mask per image from its own self-attention clusters, labelled by the object word's cross-attention
    (``object_tokens``: each object word's token positions). Raises when the model has no second decoder
    attention level to read the cross-attention from.
    """
    masks = []
    for index in range(images):
        image = (role, index)
        if image not in maps.self_maps or image not in maps.cross_maps:
            raise ValueError(
                "automatic masks need a decoder self-attention level and a lower cross-attention level; this "
                "model recorded none for the " + role + " image (give masks, or turn the automatic masks off)"
            )
        self_map, cross_map = maps.self_maps[image], maps.cross_maps[image]
        mask = object_mask(
            self_map,
            cross_map,
            object_tokens,
            [True] * len(object_tokens),
            token_grid(self_map.shape[0], latent_size),
            token_grid(cross_map.shape[0], latent_size),
            tuple(latent_size),
            seed=KMEANS_SEED,
        )
        masks.append(mask)
    return torch.stack(masks)[:, None]


def output_masks(structure_masks: Tensor, appearance_masks: Tensor) -> tuple[Tensor, Tensor]:
    """The automatic masks of each output's structure and appearance image ``[outputs, 1, H, W]``, as AdaIN's
    content and style masks; an output where either mask came out empty falls back to unmasked AdaIN (with a
    warning), since matching colour statistics over nothing would be undefined."""
    empty = (structure_masks.flatten(1).sum(1) <= 0) | (appearance_masks.flatten(1).sum(1) <= 0)
    if not empty.any():
        return structure_masks, appearance_masks
    outputs = ", ".join(str(index) for index in empty.nonzero().flatten().tolist())
    warnings.warn(
        f"automatic masks: the object word was not found in one of the images of output {outputs}; "
        "those outputs use unmasked AdaIN (check the object word, or connect masks)",
        stacklevel=3,
    )
    whole = empty.reshape(-1, 1, 1, 1)
    content = torch.where(whole, torch.ones_like(structure_masks), structure_masks)
    style = torch.where(whole, torch.ones_like(appearance_masks), appearance_masks)
    return content, style


def _before_end(tokens: Sequence[str]) -> list[str]:
    """The tokens up to the first end marker: after it come only padding tokens (on SDXL's second CLIP, '!')."""
    tokens = list(tokens)
    ends = [index for index, token in enumerate(tokens) if token in _END_TOKENS]
    return tokens[: ends[0]] if ends else tokens


def _readable(tokens: Sequence[str]) -> tuple[list[str], str]:
    """The prompt's tokens without special markers and '</w>', and the text they spell (CLIP-style joins)."""
    pieces = [token for token in _before_end(tokens) if not _SPECIAL_TOKEN.match(token)]
    shown = [token.removesuffix(_WORD_END).removeprefix(_WORD_START) for token in pieces]
    if any(token.startswith(_WORD_START) for token in pieces):
        text = "".join(pieces).replace(_WORD_START, " ")
    elif any(token.endswith(_WORD_END) for token in pieces):
        text = "".join(token.removesuffix(_WORD_END) + (" " if token.endswith(_WORD_END) else "") for token in pieces)
    else:
        text = " ".join(shown)
    return shown, text.strip()


def word_pieces(tokens: Sequence[str]) -> list[str]:
    """The tokens of a word alone that name it: T5 spells a word that has no piece of its own with a leading
    space piece ("▁", then the pieces); that space is not the word, and its attention would dilute the word's."""
    tokens = list(tokens)
    return tokens[1:] if len(tokens) > 1 and tokens[0] == _WORD_START else tokens


def split_words(text: str | None) -> tuple[str, ...]:
    """Object words as users type them: comma-separated, blanks dropped."""
    return tuple(word.strip() for word in (text or "").split(",") if word.strip())


def word_positions(prompt_tokens: Sequence[str], word_tokens: Sequence[str], word: str) -> list[int]:
    """Positions in ``prompt_tokens`` of every occurrence of the contiguous token run ``word_tokens``.

    ``prompt_tokens`` are the prompt's token strings as the model's tokenizer gives them, start token at 0, so
    the positions index the cross-attention columns; padding after the end token is not searched. Raises
    ObjectWordError, naming the word and showing the prompt's tokens, when the word has no tokens or does not
    occur: the mask cannot be found without it.
    """
    shown, text = _readable(prompt_tokens)
    where = f"the prompt reads {text!r} (tokens: {', '.join(shown)})"
    run = list(word_tokens)
    if not run:
        raise ObjectWordError(f"object word {word!r} gives no tokens; {where}")
    tokens = _before_end(prompt_tokens)
    positions: set[int] = set()
    for start in range(len(tokens) - len(run) + 1):
        if tokens[start : start + len(run)] == run:
            positions.update(range(start, start + len(run)))
    if not positions:
        raise ObjectWordError(f"object word {word!r} is not in the prompt; {where}")
    return sorted(positions)
