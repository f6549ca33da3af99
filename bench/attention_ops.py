"""The contrasted attention ops the benches compare against the engine's ``xattn_core.attention``.

- ``previous_contrasted_attention`` and ``previous_mean_attention_weights``: the ops as they were up to
  commit 71237de, kept verbatim; ``bench_attention.py`` times them against the engine's, ``memory_worker.py``
  measures the first one's peak memory ("previous");
- ``two_pass_contrasted_attention``: the issue's streaming variant over key chunks (row max and sum online,
  then the weights of each chunk times its values), which computes the scores twice.

Shared here so that ``bench_attention.py`` and ``memory_worker.py`` both import them and not each other.
"""

from __future__ import annotations

import torch
from torch import Tensor

from xattn_core.attention import DEFAULT_MEMORY_BUDGET, split_heads


def previous_contrasted_attention(
    query: Tensor, key: Tensor, value: Tensor, heads: int, contrast: float, memory_budget: int = DEFAULT_MEMORY_BUDGET
) -> Tensor:
    """``contrasted_attention`` as of commit 71237de, kept verbatim for the comparison."""
    rows, query_tokens, width = query.shape
    key_tokens = key.shape[1]
    dim_head = width // heads
    q = query.float().reshape(rows, query_tokens, heads, dim_head).transpose(1, 2)
    k = key.float().reshape(rows, key_tokens, heads, dim_head).transpose(1, 2)
    v = value.float().reshape(rows, key_tokens, heads, dim_head).transpose(1, 2)
    scale = dim_head**-0.5
    bytes_per_query = 2 * rows * heads * key_tokens * 4
    query_block = max(1, memory_budget // bytes_per_query)
    offset = (contrast - 1.0) / key_tokens
    out = torch.empty_like(q)
    for start in range(0, query_tokens, query_block):
        block = slice(start, start + query_block)
        weights = torch.softmax((q[:, :, block] @ k.transpose(-1, -2)) * scale, dim=-1)
        weights = weights.mul_(contrast).sub_(offset).clamp_(0.0, 1.0)
        out[:, :, block] = weights @ v
        del weights
    return out.transpose(1, 2).reshape(rows, query_tokens, width).to(query.dtype)


def previous_mean_attention_weights(query: Tensor, key: Tensor, heads: int, memory_budget: int) -> Tensor:
    """``mean_attention_weights`` as of commit 71237de, kept verbatim for the comparison."""
    query_tokens, width = query.shape
    key_tokens = key.shape[0]
    dim_head = width // heads
    q = query.float().reshape(query_tokens, heads, dim_head).transpose(0, 1)
    k = key.float().reshape(key_tokens, heads, dim_head).transpose(0, 1)
    query_block = max(1, memory_budget // (2 * heads * key_tokens * 4))
    weights = torch.empty(query_tokens, key_tokens, device=query.device)
    for start in range(0, query_tokens, query_block):
        block = slice(start, start + query_block)
        weights[block] = torch.softmax((q[:, block] @ k.transpose(-1, -2)) * dim_head**-0.5, dim=-1).mean(0)
    return weights


def two_pass_contrasted_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    heads: int,
    contrast: float,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    key_chunk: int = 512,
) -> Tensor:
    """The same op streamed over key chunks: pass 1 the row max and sum (online), pass 2 the weights @ V."""
    rows, query_tokens, width = query.shape
    key_tokens = key.shape[1]
    dim_head = width // heads
    q, k, v = (split_heads(t.float(), heads).reshape(rows * heads, -1, dim_head) for t in (query, key, value))
    keys_t = k.transpose(1, 2).contiguous()
    scale, offset = dim_head**-0.5, (contrast - 1.0) / key_tokens
    query_block = max(1, memory_budget // (rows * heads * key_chunk * 4))
    out = q.new_empty(q.shape)
    for start in range(0, query_tokens, query_block):
        queries = q[:, start : start + query_block]
        row_max = queries.new_full((*queries.shape[:2], 1), -float("inf"))
        row_sum = torch.zeros_like(row_max)
        for chunk in range(0, key_tokens, key_chunk):
            scores = torch.bmm(queries, keys_t[:, :, chunk : chunk + key_chunk]).mul_(scale)
            new_max = torch.maximum(row_max, scores.amax(-1, keepdim=True))
            row_sum = row_sum * (row_max - new_max).exp() + (scores - new_max).exp_().sum(-1, keepdim=True)
            row_max = new_max
        accumulated = torch.zeros_like(queries)
        for chunk in range(0, key_tokens, key_chunk):
            scores = torch.bmm(queries, keys_t[:, :, chunk : chunk + key_chunk]).mul_(scale)
            weights = scores.sub_(row_max).exp_().div_(row_sum).mul_(contrast).sub_(offset).clamp_(0.0, 1.0)
            accumulated.baddbmm_(weights, v[:, chunk : chunk + key_chunk])
        out[:, start : start + query_block] = accumulated
    return out.reshape(rows, heads, query_tokens, dim_head).transpose(1, 2).reshape(rows, query_tokens, width)
