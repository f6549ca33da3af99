"""Cross-image attention: where the appearance (or structure) keys and values are used.

Both backends (diffusers processors and ComfyUI attn1 patches) project q, k, v themselves and
then call :func:`route_attention`, which decides per row what attention that row gets:

- ordinary rows go through the backend's fused attention (SDPA, ComfyUI's optimized attention);
- output rows in a swapping layer keep their own queries but attend to the keys/values of another
  row, the appearance's (captured from the appearance call of the same step) or the structure's
  (a row of the same call), with contrasted, un-renormalised weights (SPEC 2.4). In fast mode both
  come from stores captured while inverting, and the output rows run alone.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch
from torch import Tensor

PlainAttention = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``(q, k, v) -> out``, all ``[rows, tokens, heads * dim_head]``: the backend's fused attention."""

DEFAULT_MEMORY_BUDGET = 64 * 2**20  # bytes of float32 attention weights alive at a time


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
    ``(A - mean) * c + mean`` reduces to the expression above. Queries are processed in chunks so
    that at most ``memory_budget`` bytes of weights exist at once; the maths runs in float32 so
    fp16/bf16 models cannot overflow here.
    """
    rows, query_tokens, width = query.shape
    key_tokens = key.shape[1]
    dim_head = width // heads
    q = query.float().reshape(rows, query_tokens, heads, dim_head).transpose(1, 2)
    k = key.float().reshape(rows, key_tokens, heads, dim_head).transpose(1, 2)
    v = value.float().reshape(rows, key_tokens, heads, dim_head).transpose(1, 2)
    scale = dim_head**-0.5
    # the scores and their softmax are both alive at once: two float32 matrices per query chunk
    bytes_per_query = 2 * rows * heads * key_tokens * 4
    chunk = max(1, memory_budget // bytes_per_query)
    offset = (contrast - 1.0) / key_tokens
    out = torch.empty_like(q)
    for start in range(0, query_tokens, chunk):
        weights = torch.softmax((q[:, :, start : start + chunk] @ k.transpose(-1, -2)) * scale, dim=-1)
        weights = weights.mul_(contrast).sub_(offset).clamp_(0.0, 1.0)
        out[:, :, start : start + chunk] = weights @ v
        del weights
    return out.transpose(1, 2).reshape(rows, query_tokens, width).to(query.dtype)


def _own_storage(tensor: Tensor) -> Tensor:
    """``tensor``, copied when it is a view into a larger tensor (so that tensor can be freed)."""
    return tensor.clone() if tensor.untyped_storage().nbytes() > tensor.nbytes else tensor


class KeyValueStore:
    """Keys/values of the swapping layers, per (layer, cond/uncond chunk), each ``[rows, tokens, width]``.

    Filled by a capturing model call: the appearance call of the same step, or the inversion pass
    (fast mode). A store from the inversion may be asked for a chunk it does not hold (the inversion
    ran without CFG or kept the cond branch only, and the transfer is guided); ``substitute_chunks``
    then answers with another chunk's keys/values of the same layer (the cond one first), an
    approximation the README documents.
    """

    def __init__(self, substitute_chunks: bool = False) -> None:
        self._entries: dict[tuple[Hashable, int], tuple[Tensor, Tensor]] = {}
        self.substitute_chunks = substitute_chunks

    def put(self, layer: Hashable, chunk: int, key: Tensor, value: Tensor) -> None:
        self._entries[(layer, chunk)] = (key, value)

    def get(self, layer: Hashable, chunk: int) -> tuple[Tensor, Tensor]:
        entry = self._entries.get((layer, chunk))
        if entry is None and self.substitute_chunks:
            others = sorted(c for (name, c) in self._entries if name == layer)
            entry = self._entries[(layer, others[0])] if others else None
        if entry is None:
            raise RuntimeError(
                f"no keys/values were captured for layer {layer!r}, batch chunk {chunk}; the capturing call "
                "(the appearance call of the step, or the inversion in fast mode) must cover this layer"
            )
        return entry

    def split(self, rows: int) -> list[KeyValueStore]:
        """Stores of consecutive ``rows``-row groups (one per step of a several-steps inversion call)."""
        parts: list[KeyValueStore] = []
        for (layer, chunk), (key, value) in self._entries.items():
            for index, (key_part, value_part) in enumerate(zip(key.split(rows), value.split(rows), strict=True)):
                if index == len(parts):
                    parts.append(KeyValueStore(self.substitute_chunks))
                parts[index].put(layer, chunk, key_part, value_part)
        return parts

    def _mapped(self, transform: Callable[[Tensor], Tensor], chunks: frozenset[int] | None = None) -> KeyValueStore:
        """A new store with ``transform`` applied to every key and value (of ``chunks`` only, if given)."""
        mapped = KeyValueStore(self.substitute_chunks)
        for (layer, chunk), (key, value) in self._entries.items():
            if chunks is None or chunk in chunks:
                mapped.put(layer, chunk, transform(key), transform(value))
        return mapped

    def select(self, rows: list[int]) -> KeyValueStore:
        """The same keys/values for a subset of rows (images)."""
        return self._mapped(lambda tensor: tensor[rows])

    def only_chunks(self, chunks: frozenset[int]) -> KeyValueStore:
        """The entries of the given cond/uncond chunks only (0 = cond, 1 = uncond)."""
        return self._mapped(lambda tensor: tensor, chunks)

    def to(self, device: torch.device | str | None) -> KeyValueStore:
        return self._mapped(lambda tensor: tensor.to(device))

    def compact(self) -> KeyValueStore:
        """The same store with views copied out, so it keeps only its own bytes alive (not the model call's)."""
        return self._mapped(_own_storage)

    @property
    def chunks(self) -> frozenset[int]:
        return frozenset(chunk for _, chunk in self._entries)

    @property
    def nbytes(self) -> int:
        return sum(key.nbytes + value.nbytes for key, value in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class AttentionSwap:
    """What the swapping layers do during one model call.

    Row indices count within one cond/uncond chunk. ``capture`` stores every row's keys/values
    (the appearance call, or the inversion in fast mode). ``outputs[j]`` attends with its own
    queries to the keys/values of row ``sources[j]`` of ``source`` (a store captured earlier:
    the appearance's, or a cached structure's) or, when ``source`` is None, of this call
    (the structure rows of the joint call).
    """

    levels: frozenset[int]
    contrast: float = 1.67
    capture: KeyValueStore | None = None
    outputs: tuple[int, ...] = ()
    sources: tuple[int, ...] = ()
    source: KeyValueStore | None = None
    memory_budget: int = DEFAULT_MEMORY_BUDGET


def route_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    heads: int,
    layer: Hashable,
    level: int | None,
    chunks: list[int],
    swap: AttentionSwap | None,
    plain: PlainAttention,
) -> Tensor:
    """Attention for one self-attention layer over a whole batch of cond/uncond ``chunks``."""
    if swap is None or level is None or level not in swap.levels:
        return plain(query, key, value)
    rows = query.shape[0] // len(chunks)
    if swap.capture is not None:
        for c, chunk in enumerate(chunks):
            swap.capture.put(layer, chunk, key[c * rows : (c + 1) * rows], value[c * rows : (c + 1) * rows])
    if not swap.outputs:
        return plain(query, key, value)

    swapped = {c * rows + row for c in range(len(chunks)) for row in swap.outputs}
    ordinary = [i for i in range(query.shape[0]) if i not in swapped]
    out = torch.empty_like(query)
    if ordinary:
        out[ordinary] = plain(query[ordinary], key[ordinary], value[ordinary])
    for c, chunk in enumerate(chunks):
        if swap.source is None:
            source_key, source_value = key[c * rows : (c + 1) * rows], value[c * rows : (c + 1) * rows]
        else:
            source_key, source_value = swap.source.get(layer, chunk)
        for row, source in zip(swap.outputs, swap.sources, strict=True):
            index = c * rows + row
            out[index : index + 1] = contrasted_attention(
                query[index : index + 1],
                source_key[source : source + 1].to(query.device, query.dtype),
                source_value[source : source + 1].to(query.device, query.dtype),
                heads,
                swap.contrast,
                swap.memory_budget,
            )
    return out
