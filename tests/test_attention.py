import pytest
import torch

from xattn_core.attention import (
    CallAttention,
    Capture,
    KeyValueStore,
    Swap,
    contrasted_attention,
    route_attention,
)


def naive_contrasted(query, key, value, heads, contrast):
    """Full-matrix reference written from the official formula, with the mean taken explicitly."""
    rows, tokens, width = query.shape
    d = width // heads
    split = lambda t: t.reshape(rows, -1, heads, d).transpose(1, 2)  # noqa: E731
    weights = torch.softmax(split(query) @ split(key).transpose(-1, -2) / d**0.5, dim=-1)
    mean = weights.mean(dim=-1, keepdim=True)
    weights = ((weights - mean) * contrast + mean).clamp(0, 1)
    return (weights @ split(value)).transpose(1, 2).reshape(rows, tokens, width)


@pytest.mark.parametrize("query_tokens,key_tokens", [(64, 64), (96, 40), (17, 130)])
@pytest.mark.parametrize("budget", [1, 4096, 50_000, 2**30])
def test_chunked_equals_naive(query_tokens, key_tokens, budget):
    generator = torch.Generator().manual_seed(query_tokens + key_tokens)
    query = torch.randn(2, query_tokens, 32, generator=generator) * 2
    key = torch.randn(2, key_tokens, 32, generator=generator) * 2
    value = torch.randn(2, key_tokens, 32, generator=generator)
    ours = contrasted_attention(query, key, value, heads=4, contrast=1.67, memory_budget=budget)
    assert torch.allclose(ours, naive_contrasted(query, key, value, 4, 1.67), atol=1e-5)


def test_contrast_one_is_ordinary_attention():
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(1, 50, 16, generator=generator) for _ in range(3))
    ordinary = (
        torch.nn.functional.scaled_dot_product_attention(
            *(t.reshape(1, 50, 2, 8).transpose(1, 2) for t in (query, key, value))
        )
        .transpose(1, 2)
        .reshape(1, 50, 16)
    )
    assert torch.allclose(contrasted_attention(query, key, value, 2, 1.0), ordinary, atol=1e-5)


def test_half_precision_inputs_stay_finite():
    query = torch.full((1, 64, 16), 300.0, dtype=torch.float16)  # q.k = 72000 would overflow fp16 scores
    out = contrasted_attention(query, query, query, 2, 1.67)
    # equal keys: uniform weights, which the contrast leaves at 1/N, so every output is the value 300
    assert out.dtype == torch.float16 and torch.equal(out, query)


def plain(query, key, value):
    return naive_contrasted(query, key, value, 4, 1.0)


def test_route_attention_swaps_only_output_rows_and_reads_captured_appearance():
    generator = torch.Generator().manual_seed(3)
    # appearance call: two appearance rows, captured for cond chunk 0 and uncond chunk 1
    app_q, app_k, app_v = (torch.randn(4, 20, 32, generator=generator) for _ in range(3))
    store = KeyValueStore()
    capture = CallAttention(capture=Capture(frozenset({0}), store))
    route_attention(app_q, app_k, app_v, 4, "layer", 0, [1, 0], capture, plain)
    assert len(store) == 2
    # output call: rows [output0, output1, structure] per chunk, chunk order [1, 0]
    q, k, v = (torch.randn(6, 24, 32, generator=generator) for _ in range(3))
    swap = CallAttention(swap=Swap(frozenset({0}), output_rows=(0, 1), source_rows=(1, 0), source=store, contrast=1.67))
    out = route_attention(q, k, v, 4, "layer", 0, [1, 0], swap, plain)
    # uncond chunk (first), output 0 takes appearance row 1 of the uncond capture (rows 0..1 of app)
    assert torch.allclose(out[0:1], naive_contrasted(q[0:1], app_k[1:2], app_v[1:2], 4, 1.67), atol=1e-5)
    # cond chunk (second), output 1 takes appearance row 0 of the cond capture (rows 2..3 of app)
    assert torch.allclose(out[4:5], naive_contrasted(q[4:5], app_k[2:3], app_v[2:3], 4, 1.67), atol=1e-5)
    # the structure rows are untouched
    assert torch.allclose(out[2:3], plain(q[2:3], k[2:3], v[2:3]), atol=1e-6)
    assert torch.allclose(out[5:6], plain(q[5:6], k[5:6], v[5:6]), atol=1e-6)
    # another level does not swap at all
    assert torch.allclose(route_attention(q, k, v, 4, "layer", 1, [1, 0], swap, plain), plain(q, k, v), atol=1e-6)


def test_route_attention_structure_source_uses_same_call_rows():
    generator = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 16, 32, generator=generator) for _ in range(3))
    swap = CallAttention(swap=Swap(frozenset({1}), output_rows=(0,), source_rows=(1,), source=None, contrast=1.67))
    out = route_attention(q, k, v, 4, "layer", 1, [0], swap, plain)
    assert torch.allclose(out[0:1], naive_contrasted(q[0:1], k[1:2], v[1:2], 4, 1.67), atol=1e-5)
    assert torch.allclose(out[1:2], plain(q[1:2], k[1:2], v[1:2]), atol=1e-6)


def test_missing_capture_is_a_clear_error():
    swap = CallAttention(swap=Swap(frozenset({0}), (0,), (0,), source=KeyValueStore(), contrast=1.67))
    q = torch.randn(1, 4, 8)
    with pytest.raises(RuntimeError, match="no keys/values were captured for layer 'layer', cond_or_uncond 0"):
        route_attention(q, q, q, 2, "layer", 0, [0], swap, plain)


def test_store_select_and_branch_substitution():
    store = KeyValueStore(substitute_branches=True)
    keys = torch.arange(3.0).reshape(3, 1, 1)  # three images, one branch (cond)
    store.put("layer", 0, keys, -keys)
    assert torch.equal(store.select([2, 0]).get("layer", 0)[1].flatten(), torch.tensor([-2.0, 0.0]))
    # an inversion without CFG cached only the cond branch; an uncond row of a guided transfer reuses it
    assert torch.equal(store.get("layer", 1)[0], store.get("layer", 0)[0])
    assert store.nbytes == 2 * 3 * 4
    with pytest.raises(RuntimeError, match="layer 'other'"):
        store.get("other", 0)
    strict = KeyValueStore()
    strict.put("layer", 0, keys, keys)
    with pytest.raises(RuntimeError, match="cond_or_uncond 1"):
        strict.get("layer", 1)


def test_compact_copies_views_out_of_the_model_calls_tensors():
    keys = torch.randn(4, 16, 8)  # one call's keys for [cond, uncond] x 2 rows
    store = KeyValueStore()
    store.put("layer", 0, keys[:2], keys[2:])
    compact = store.only_branches(frozenset({0})).compact()
    key, value = compact.get("layer", 0)
    assert torch.equal(key, keys[:2]) and torch.equal(value, keys[2:])
    assert key.untyped_storage().nbytes() == key.nbytes == 2 * 16 * 8 * 4  # no longer the whole call's tensor
    assert compact.branches == {0} and store.only_branches(frozenset({1})).branches == frozenset()


def test_inputs_that_require_grad_are_fine():
    # ComfyUI may call attention with autograd on (weights that require grad); the blocks are computed in place
    generator = torch.Generator().manual_seed(6)
    query = torch.randn(1, 40, 16, generator=generator).requires_grad_()
    out = contrasted_attention(query, query, query, 2, 1.67)
    assert torch.equal(out, contrasted_attention(query.detach(), query.detach(), query.detach(), 2, 1.67))
