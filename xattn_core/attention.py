"""Cross-image attention: where the appearance (or structure) keys and values are used.

Both backends (diffusers processors and ComfyUI attn1 patches) project q, k, v themselves and
then call :func:`route_attention`, which decides per row what attention that row gets:

- ordinary rows go through the backend's fused attention (SDPA, ComfyUI's optimized attention);
- output rows in a swapping layer keep their own queries but attend to the keys/values of another
  row, the appearance's (captured from the appearance call of the same step) or the structure's
  (a row of the same call), with contrasted, un-renormalised weights (as the official ``AttentionProcessor``
  in ``appearance_transfer_model.py``). In fast mode both come from stores captured while inverting, and
  the output rows run alone.

What a model call's layers do is a :class:`CallAttention`: what to capture, what to swap, which maps to
record (the sampler's ``calls.py`` says which call gets which).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .segmentation import AttentionMaps

PlainAttention = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``(q, k, v) -> out``, all ``[rows, tokens, heads * dim_head]``: the backend's fused attention."""

DEFAULT_MEMORY_BUDGET = 64 * 2**20  # bytes of float32 attention weights alive at a time


def split_heads(tensor: Tensor, heads: int) -> Tensor:
    """``[rows, tokens, heads * dim_head]`` -> ``[rows, heads, tokens, dim_head]`` (a view)."""
    rows, tokens, width = tensor.shape
    return tensor.reshape(rows, tokens, heads, width // heads).transpose(1, 2)


def merge_heads(tensor: Tensor) -> Tensor:
    """``[rows, heads, tokens, dim_head]`` -> ``[rows, tokens, heads * dim_head]``, the inverse of ``split_heads``."""
    rows, heads, tokens, dim_head = tensor.shape
    return tensor.transpose(1, 2).reshape(rows, tokens, heads * dim_head)


# On CPU 32 to 64 queries a block ran fastest (bench/bench_attention.py: fewer starve the matrix products,
# more push the block out of the core's cache); on an accelerator bigger blocks mean fewer kernel launches,
# so there the budget alone sets the block.
CPU_QUERY_BLOCK = 64


def query_block(batch: int, key_tokens: int, memory_budget: int, device: torch.device) -> int:
    """Queries per block so that one float32 ``[batch, block, key_tokens]`` weight block fits the budget."""
    block = max(1, memory_budget // (batch * key_tokens * 4))
    return min(block, CPU_QUERY_BLOCK) if device.type == "cpu" else block


def softmax_blocks(query: Tensor, key: Tensor, memory_budget: int) -> Iterator[tuple[slice, Tensor]]:
    """softmax(QK^T / sqrt(d)) of float32 ``[batch, tokens, d]`` queries and keys, one block of queries at a time.

    Yields ``(query slice, weights [batch, block, key tokens])``. The weights of every block live in one buffer
    of at most ``memory_budget`` bytes (scores, scale and softmax all in place), so use or change them in place
    before asking for the next block.
    """
    batch, query_tokens, dim_head = query.shape
    key_tokens = key.shape[1]
    block = min(query_block(batch, key_tokens, memory_budget, query.device), query_tokens)
    keys_t = key.transpose(1, 2)  # a view: a contiguous copy makes one-query blocks round differently
    buffer = query.new_empty(batch, block, key_tokens)
    for start in range(0, query_tokens, block):
        rows = slice(start, min(start + block, query_tokens))
        weights = buffer[:, : rows.stop - start]
        # the scale after the product: folded into the queries or the product, it changes the last bits
        torch.bmm(query[:, rows], keys_t, out=weights).mul_(dim_head**-0.5)
        torch.softmax(weights, dim=-1, out=weights)
        yield rows, weights


def _heads_as_batch(tensor: Tensor, heads: int) -> Tensor:
    """``[rows, tokens, heads * dim_head]`` -> float32 ``[rows * heads, tokens, dim_head]``."""
    rows, tokens, width = tensor.shape
    return split_heads(tensor.float(), heads).reshape(rows * heads, tokens, width // heads)


# On CPU the swapped attention runs one head a thread, at most 256 queries a block (4 MiB of scores a head at 4096
# keys): the batched products share a group's heads among the threads, and small blocks stay in the cache. On one
# thread that ran 5 to 20% faster than groups of heads or 512 queries. On two (bench/bench_swapped_attention.py
# --threads 2 --splits, README "Performance"): the Flux-size op 1.31x SDPA's time, against 1.51x with the budget's
# groups of 7 heads (one thread waits for the fourth head) and 1.34x with groups of 6; the SDXL-size op 1.23x,
# against 1.38x with all 10 heads in one group. On an accelerator the budget sets both: fewer and larger parallel ops.
CPU_HEAD_QUERY_BLOCK = 256


class KeyPart(NamedTuple):
    """Keys and values ``[rows, heads, key tokens, dim]`` with the queries ``[rows, heads, query tokens, dim]`` as
    these keys see them (joint attention scores its text and its image keys with queries in different RoPE forms)."""

    queries: Tensor
    keys: Tensor
    values: Tensor


def head_blocks(
    heads: int,
    query_tokens: int,
    key_tokens: int,
    dim: int,
    value_dim: int,
    memory_budget: int,
    device: torch.device,
) -> tuple[int, int]:
    """``(heads per group, queries per block)`` for :func:`contrasted_attention_parts`.

    Its float32 buffers fit ``memory_budget``: the keys and values of one group of heads (at most half the budget),
    and per query of a block a row of scores, the query and its product. At least one head and one query, whatever
    the budget. On CPU (:data:`CPU_HEAD_QUERY_BLOCK`): one head per thread, or one head in all when the budget or
    the heads are fewer than the threads (its products are then threaded inside), and at most 256 queries a block.
    Queries, and on an accelerator heads, are cut as evenly as the sizes allow, so that no last block or group is a
    small remainder.
    """
    head_bytes = key_tokens * (dim + value_dim) * 4
    query_bytes = (key_tokens + dim + value_dim) * 4
    if device.type == "cpu":
        threads = torch.get_num_threads()
        group = threads if threads <= heads and threads * head_bytes <= memory_budget // 2 else 1
    else:
        group = _even_parts(heads, max(1, min(heads, memory_budget // 2 // head_bytes)))
    block = max(1, (memory_budget - group * head_bytes) // (group * query_bytes))
    if device.type == "cpu":
        block = min(block, CPU_HEAD_QUERY_BLOCK)
    return group, _even_parts(query_tokens, block)


def _even_parts(total: int, most: int) -> int:
    """The size of the parts when ``total`` items are cut into as few parts of at most ``most`` as evenly as they go
    (at least 1)."""
    if total <= 0:
        return max(1, most)
    parts = -(-total // most)
    return -(-total // parts)


def _front(buffer: Tensor, *shape: int) -> Tensor:
    """The first elements of ``buffer`` as a contiguous tensor of ``shape``. A smaller block taken as a slice
    (``buffer[:count, :size]``) would not be contiguous, and an op given such an ``out=`` allocates a temporary of
    its size: a last, partial block of queries would then double the scores' memory."""
    return buffer.view(-1)[: math.prod(shape)].view(shape)


@torch.no_grad()  # inference only: the blocks are computed in place (out=), which has no backward
def contrasted_attention_parts(
    parts: Sequence[KeyPart],
    contrast: float,
    memory_budget: int,
    out: Tensor | None = None,
    contrasted_from: int = 0,
) -> Tensor:
    """clip(c * softmax(QK^T / sqrt(d)) - (c - 1) / N_keys, 0, 1) V over the keys of all ``parts``, not renormalised.

    ``contrasted_from``: with k > 0 one softmax still runs over all the keys, but only the keys of ``parts[k:]``
    are contrasted, around their own mean weight m (per query): clip(c * A - (c - 1) * m, 0, 1); the weights of the
    first k parts stay as the softmax gives them. With k = 0, m = 1 / N_keys and both forms are the same.

    Returns ``[rows, query tokens, heads * value dim]`` in the values' dtype, written into ``out`` when given (a
    view of that shape, e.g. some tokens of a larger output). The maths runs in float32 whatever the inputs' dtype,
    one group of heads and one block of queries at a time (:func:`head_blocks`): per group the keys and values are
    converted once into float32 buffers (the keys transposed, which the product reads fastest), per block the
    queries; scores, softmax and clipping happen in place in one reused block, whose product with the values goes
    straight into the output. So besides the output at most ``memory_budget`` bytes are alive (or one head's keys
    and values and one query, if the budget is smaller), and no input is copied whole.

    The contrast is applied to the product, which leaves one in-place pass over the weights instead of three (6 to
    13% of the op on CPU): for c > 0, clip(c * A - o, 0, 1) = c * clip(A, o / c, (1 + o) / c) - o, so the output is
    c * (clip(A, o / c, (1 + o) / c) @ V) - o * (V summed over the keys), with o = (c - 1) / N_keys.
    """
    if contrast <= 0:
        raise ValueError(f"the attention contrast must be positive, got {contrast:g}")
    if not 0 <= contrasted_from < len(parts):
        raise ValueError(f"contrasted_from must name one of the {len(parts)} key parts, got {contrasted_from}")
    rows, heads, query_tokens, dim = parts[0].queries.shape
    values = parts[0].values
    value_dim, device = values.shape[-1], values.device
    key_tokens = sum(part.keys.shape[2] for part in parts)
    if out is None:
        out = torch.empty(rows, query_tokens, heads * value_dim, dtype=values.dtype, device=device)
    out_heads = out.unflatten(-1, (heads, value_dim)).transpose(1, 2)  # [rows, heads, query tokens, value dim]
    group, block = head_blocks(heads, query_tokens, key_tokens, dim, value_dim, memory_budget, device)
    columns, first = [], 0  # each part's key columns in the score block
    for part in parts:
        columns.append(slice(first, first + part.keys.shape[2]))
        first += part.keys.shape[2]
    # parts scored by the same queries (all of them, unless RoPE differs) make one product
    scored = [(parts[0].queries, columns[0])]
    for part, part_columns in zip(parts[1:], columns[1:], strict=True):
        if part.queries is scored[-1][0]:
            scored[-1] = (part.queries, slice(scored[-1][1].start, part_columns.stop))
        else:
            scored.append((part.queries, part_columns))
    keys_t = torch.empty(group, dim, key_tokens, device=device)
    values32 = torch.empty(group, key_tokens, value_dim, device=device)
    scores = torch.empty(group, block, key_tokens, device=device)
    queries32 = torch.empty(group, block, dim, device=device)
    product = torch.empty(group, block, value_dim, device=device)
    scale, offset = dim**-0.5, (contrast - 1.0) / key_tokens
    low, high = offset / contrast, (1.0 + offset) / contrast
    contrasted = slice(columns[contrasted_from].start, key_tokens)  # the key columns the contrast acts on
    contrasted_count = key_tokens - contrasted.start
    for row in range(rows):
        for first_head in range(0, heads, group):
            in_group = slice(first_head, min(first_head + group, heads))
            count = in_group.stop - first_head
            for part, part_columns in zip(parts, columns, strict=True):
                keys_t[:count, :, part_columns].copy_(part.keys[row, in_group].transpose(1, 2))
                values32[:count, part_columns].copy_(part.values[row, in_group])
            if contrasted_from == 0:
                baseline = values32[:count].sum(1, keepdim=True).mul_(-offset)  # -o * (V summed over the keys)
            else:
                part_baseline = values32[:count, contrasted].sum(1, keepdim=True).neg_()
            for start in range(0, query_tokens, block):
                in_block = slice(start, min(start + block, query_tokens))
                size = in_block.stop - start
                weights = _front(scores, count, size, key_tokens)
                into_product = _front(product, count, size, value_dim)
                for queries, part_columns in scored:
                    queries_block = _front(queries32, count, size, dim).copy_(queries[row, in_group, in_block])
                    into = weights[:, :, part_columns]
                    torch.baddbmm(into, queries_block, keys_t[:count, :, part_columns], beta=0, alpha=scale, out=into)
                torch.softmax(weights, dim=-1, out=weights)
                if contrasted_from == 0:
                    weights.clamp_(low, high)
                    torch.baddbmm(baseline, weights, values32[:count], alpha=contrast, out=into_product)
                else:  # as above with o = (c - 1) * m per query, on the contrasted columns; the others plain
                    part_weights = weights[:, :, contrasted]
                    part_offset = part_weights.sum(-1, keepdim=True).mul_((contrast - 1.0) / contrasted_count)
                    part_weights.clamp_(part_offset / contrast, (part_offset + 1.0) / contrast)
                    plain_columns = slice(0, contrasted.start)
                    torch.bmm(weights[:, :, plain_columns], values32[:count, plain_columns], out=into_product)
                    into_product.baddbmm_(part_weights, values32[:count, contrasted], alpha=contrast)
                    into_product.baddbmm_(part_offset, part_baseline)  # - o * (V summed over the contrasted keys)
                out_heads[row, in_group, in_block] = into_product
    return out


def contrasted_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    heads: int,
    contrast: float,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Tensor:
    """softmax(QK^T/sqrt(d)) contrasted as clip(c*A - (c-1)/N_keys, 0, 1), not renormalised, times V.

    Rows of softmax weights sum to one, so their mean over keys is 1/N_keys and the official
    ``(A - mean) * c + mean`` reduces to the expression above (its mean, taken without keepdim, broadcasts
    along the keys; every row's is 1/N_keys, so that changes nothing). Inputs are ``[rows, tokens, heads * dim]``;
    computed by :func:`contrasted_attention_parts`, in float32 so that fp16/bf16 models cannot overflow here, with
    at most ``memory_budget`` bytes of float32 work memory besides the output.
    """
    part = KeyPart(*(split_heads(tensor, heads) for tensor in (query, key, value)))
    return contrasted_attention_parts([part], contrast, memory_budget).to(query.dtype)


@torch.no_grad()  # as contrasted_attention_parts
def mean_attention_weights(query: Tensor, key: Tensor, heads: int, memory_budget: int) -> Tensor:
    """softmax(QK^T / sqrt(d)) of one row, averaged over heads: ``[query tokens, key tokens]`` in float32.

    ``query`` is ``[query tokens, heads * dim_head]``, ``key`` ``[key tokens, heads * dim_head]``; computed in
    query blocks (:func:`softmax_blocks`) so that at most ``memory_budget`` bytes of weights exist at once.
    """
    q, k = (_heads_as_batch(tensor[None], heads) for tensor in (query, key))
    weights = torch.empty(query.shape[0], key.shape[0], device=query.device)
    for block, head_weights in softmax_blocks(q, k, memory_budget):
        weights[block] = head_weights.mean(0)
    return weights


def row_runs(indices: list[int]) -> list[slice]:
    """Sorted row indices as slices of consecutive rows: ``[0, 1, 3]`` -> ``[0:2, 3:4]``."""
    runs: list[slice] = []
    for index in indices:
        if runs and runs[-1].stop == index:
            runs[-1] = slice(runs[-1].start, index + 1)
        else:
            runs.append(slice(index, index + 1))
    return runs


def _own_storage(tensor: Tensor) -> Tensor:
    """``tensor``, copied when it is a view into a larger tensor (so that tensor can be freed)."""
    return tensor.clone() if tensor.untyped_storage().nbytes() > tensor.nbytes else tensor


class KeyValueStore:
    """Keys/values of the swapping layers, per (layer, cond_or_uncond entry), each ``[rows, tokens, width]``.

    Filled by a capturing model call: the appearance call of the same step, or the inversion pass
    (fast mode). A store from the inversion may be asked for a branch it does not hold (the inversion
    ran without CFG or kept the cond branch only, and the transfer is guided); ``substitute_branches``
    then answers with another branch's keys/values of the same layer (the cond one first), an
    approximation the README documents.
    """

    def __init__(self, substitute_branches: bool = False) -> None:
        self._entries: dict[tuple[Hashable, int], tuple[Tensor, Tensor]] = {}
        self.substitute_branches = substitute_branches

    def put(self, layer: Hashable, branch: int, key: Tensor, value: Tensor) -> None:
        """Store the keys/values of ``layer`` for one cond_or_uncond entry (0 = cond, 1 = uncond)."""
        self._entries[(layer, branch)] = (key, value)

    def get(self, layer: Hashable, branch: int) -> tuple[Tensor, Tensor]:
        entry = self._entries.get((layer, branch))
        if entry is None and self.substitute_branches:
            others = sorted(b for (name, b) in self._entries if name == layer)
            entry = self._entries[(layer, others[0])] if others else None
        if entry is None:
            raise RuntimeError(
                f"no keys/values were captured for layer {layer!r}, cond_or_uncond {branch}; the capturing call "
                "(the appearance call of the step, or the inversion in fast mode) must cover this layer"
            )
        return entry

    def _mapped(self, transform: Callable[[Tensor], Tensor], branches: frozenset[int] | None = None) -> KeyValueStore:
        """A new store with ``transform`` applied to every key and value (of ``branches`` only, if given)."""
        mapped = KeyValueStore(self.substitute_branches)
        for (layer, branch), (key, value) in self._entries.items():
            if branches is None or branch in branches:
                mapped.put(layer, branch, transform(key), transform(value))
        return mapped

    def select(self, rows: list[int]) -> KeyValueStore:
        """The same keys/values for a subset of rows (images)."""
        return self._mapped(lambda tensor: tensor[rows])

    def only_branches(self, branches: frozenset[int]) -> KeyValueStore:
        """The entries of the given cond_or_uncond values only (0 = cond, 1 = uncond)."""
        return self._mapped(lambda tensor: tensor, branches)

    def to(self, device: torch.device | str | None) -> KeyValueStore:
        return self._mapped(lambda tensor: tensor.to(device))

    def compact(self) -> KeyValueStore:
        """The same store with views copied out, so it keeps only its own bytes alive (not the model call's)."""
        return self._mapped(_own_storage)

    @property
    def branches(self) -> frozenset[int]:
        return frozenset(branch for _, branch in self._entries)

    @property
    def layers(self) -> frozenset[Hashable]:
        return frozenset(layer for layer, _ in self._entries)

    @property
    def nbytes(self) -> int:
        return sum(key.nbytes + value.nbytes for key, value in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True, eq=False)
class Capture:
    """Keep every row's keys/values of the swapping layers at ``levels`` in ``store`` (the appearance call of a
    step; the joint call when hints run the output rows again; the inversion in fast mode)."""

    levels: frozenset[int]
    store: KeyValueStore


@dataclass(frozen=True, eq=False)
class Swap:
    """In the swapping layers at ``levels``, ``output_rows[j]`` attends with its own queries to the keys/values of
    row ``source_rows[j]`` of ``source`` (a store captured earlier: the appearance's, or a cached structure's) or,
    when ``source`` is None, of this call (the structure rows of the joint call), with contrasted weights."""

    levels: frozenset[int]
    output_rows: tuple[int, ...]
    source_rows: tuple[int, ...]
    source: KeyValueStore | None
    contrast: float
    memory_budget: int = DEFAULT_MEMORY_BUDGET


@dataclass(frozen=True, eq=False)
class Recording:
    """The recording layers (segmentation.py) put the maps of ``rows`` (row of this call, image it shows) into
    ``maps``."""

    maps: AttentionMaps
    rows: tuple[tuple[int, Hashable], ...]
    memory_budget: int = DEFAULT_MEMORY_BUDGET


@dataclass(frozen=True, eq=False)
class CallAttention:
    """What the attention layers do during one model call; each part is optional and the parts are independent.

    Row indices count within one cond_or_uncond branch of the batch.
    """

    capture: Capture | None = None
    swap: Swap | None = None
    record: Recording | None = None


def record_attention_maps(
    query: Tensor, key: Tensor, heads: int, cond_or_uncond: list[int], call: CallAttention | None, cross: bool
) -> None:
    """At a recording layer: keep the head-averaged weights of the cond-branch rows ``call.record`` names.

    The cond branch carries the positive prompt, which holds the object word; ``key`` is this layer's keys
    (the text's for cross-attention).
    """
    record = None if call is None else call.record
    if record is None or not record.rows or 0 not in cond_or_uncond:
        return
    rows = query.shape[0] // len(cond_or_uncond)
    first = cond_or_uncond.index(0) * rows
    store = record.maps.cross_maps if cross else record.maps.self_maps
    for row, image in record.rows:
        with torch.no_grad():  # the maps only feed k-means
            store[image] = mean_attention_weights(query[first + row], key[first + row], heads, record.memory_budget)


def route_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    heads: int,
    layer: Hashable,
    level: int | None,
    cond_or_uncond: list[int],
    call: CallAttention | None,
    plain: PlainAttention,
    records_maps: bool = False,
) -> Tensor:
    """Attention for one self-attention layer over a batch made of one block of rows per ``cond_or_uncond`` entry.

    ``records_maps`` marks the one self-attention layer whose maps the automatic masks use.
    """
    if call is None:
        return plain(query, key, value)
    if records_maps:
        record_attention_maps(query, key, heads, cond_or_uncond, call, cross=False)
    rows = query.shape[0] // len(cond_or_uncond)
    branch_rows = [slice(index * rows, (index + 1) * rows) for index in range(len(cond_or_uncond))]
    capture, swap = call.capture, call.swap
    if capture is not None and level in capture.levels:
        for branch, block in zip(cond_or_uncond, branch_rows, strict=True):
            capture.store.put(layer, branch, key[block], value[block])
    if swap is None or level not in swap.levels:
        return plain(query, key, value)

    swapped = {block.start + row for block in branch_rows for row in swap.output_rows}
    ordinary = [i for i in range(query.shape[0]) if i not in swapped]
    out = torch.empty_like(query)
    if ordinary:
        out[ordinary] = plain(query[ordinary], key[ordinary], value[ordinary])
    for branch, block in zip(cond_or_uncond, branch_rows, strict=True):
        if swap.source is None:
            source_keys, source_values = key[block], value[block]
        else:
            source_keys, source_values = swap.source.get(layer, branch)
        for output_row, source_row in zip(swap.output_rows, swap.source_rows, strict=True):
            index = block.start + output_row
            out[index : index + 1] = contrasted_attention(
                query[index : index + 1],
                source_keys[source_row : source_row + 1].to(query.device, query.dtype),
                source_values[source_row : source_row + 1].to(query.device, query.dtype),
                heads,
                swap.contrast,
                swap.memory_budget,
            )
    return out
