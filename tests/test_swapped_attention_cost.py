"""The swapped attention against a written-out reference, in blocks, within its memory, and only where it is used."""

import pytest
import torch

import xattn_core.attention as attention
from bench.bench_swapped_attention import run
from bench.measure import peak_allocated
from tests.joint_reference import contrasted_weights
from xattn_core.attention import (
    CallAttention,
    KeyPart,
    Swap,
    contrasted_attention,
    contrasted_attention_parts,
    head_blocks,
    row_runs,
)
from xattn_core.joint_attention import JointBlock, route_joint_attention

CONTRAST = 1.67


def reference(parts: list[KeyPart], contrast: float, contrasted_from: int = 0) -> torch.Tensor:
    """The explicit softmax matrix in float64: clip(c * softmax - (c - 1) / N_keys, 0, 1) @ V, not renormalised (with
    ``contrasted_from`` k > 0 only the keys of ``parts[k:]`` contrasted, around their mean); ``[rows, queries, heads
    * dim]``."""
    scores = torch.cat([part.queries.double() @ part.keys.double().transpose(-1, -2) for part in parts], -1)
    values = torch.cat([part.values.double() for part in parts], 2)
    weights = torch.softmax(scores / parts[0].queries.shape[-1] ** 0.5, -1)
    first = sum(part.keys.shape[2] for part in parts[:contrasted_from])
    weights = contrasted_weights(weights, contrast, slice(first, None) if contrasted_from else None)
    out = weights @ values
    return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)


def assert_close(ours: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """float32: within 2e-6 of the largest value (the formula written out in float32 is 1e-6 off on these inputs);
    half types: within their rounding of each output (one ulp)."""
    assert ours.dtype == dtype
    difference = (ours.double() - expected).abs()
    if dtype == torch.float32:
        assert difference.max() <= 2e-6 * expected.abs().max()
    else:
        ulp = torch.finfo(dtype).eps  # the spacing at 1; rounding to the dtype moves each output by at most half
        assert (difference <= ulp * expected.abs() + 1e-6 * expected.abs().max()).all()


def random_parts(dtype: torch.dtype, key_tokens=(5, 40), same_queries=True, rows=1, heads=3, queries=37, dim=16):
    generator = torch.Generator().manual_seed(sum(key_tokens) + queries)
    first = (torch.randn(rows, heads, queries, dim, generator=generator) * 2).to(dtype)
    parts = []
    for tokens in key_tokens:
        own = first if same_queries else (torch.randn(first.shape, generator=generator) * 2).to(dtype)
        keys = (torch.randn(rows, heads, tokens, dim, generator=generator) * 2).to(dtype)
        parts.append(KeyPart(own, keys, torch.randn(rows, heads, tokens, dim, generator=generator).to(dtype)))
    return parts


@pytest.fixture(params=[1, 2], ids=["1 thread", "2 threads"])
def threads(request):
    """CPU blocks differ by thread count: one head at a time on one thread, groups of heads on several."""
    default = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(default)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("budget", [1, 3000, 20_000, 2**30])  # 1 and 3000: one query a block; 20_000: a few
@pytest.mark.parametrize("same_queries", [True, False])
def test_the_op_equals_the_written_out_formula_in_every_block_size(dtype, budget, same_queries, threads):
    parts = random_parts(dtype, same_queries=same_queries, rows=2)
    assert_close(contrasted_attention_parts(parts, CONTRAST, budget), reference(parts, CONTRAST), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("budget", [1, 20_000, 2**30])
@pytest.mark.parametrize("contrasted_from", [1, 2])
def test_contrasting_only_the_last_parts_equals_the_written_out_formula(dtype, budget, contrasted_from, threads):
    """The joint attention's image scope: one softmax over all the keys, the contrast on the last parts' keys only,
    around their own mean; the first parts keep the softmax's weights."""
    parts = random_parts(dtype, key_tokens=(5, 3, 40), same_queries=False, rows=2)
    ours = contrasted_attention_parts(parts, CONTRAST, budget, contrasted_from=contrasted_from)
    assert_close(ours, reference(parts, CONTRAST, contrasted_from), dtype)
    whole_row = reference(parts, CONTRAST)
    assert (ours.double() - whole_row).abs().max() > 1e-2  # a different function on these inputs


def test_contrasted_from_must_name_a_part():
    parts = random_parts(torch.float32)
    with pytest.raises(ValueError, match="contrasted_from"):
        contrasted_attention_parts(parts, CONTRAST, 2**20, contrasted_from=2)


def test_groups_of_heads_that_do_not_divide_the_heads(monkeypatch):
    """The accelerator path: several heads a group (here 2 of 3), several queries a block, three key parts."""
    monkeypatch.setattr(attention, "head_blocks", lambda *args: (2, 5))
    parts = random_parts(torch.bfloat16, key_tokens=(5, 40, 3), same_queries=False)
    assert_close(contrasted_attention_parts(parts, CONTRAST, 0), reference(parts, CONTRAST), torch.bfloat16)


def fits(group: int, block: int, budget: int, key_tokens: int = 4608, dim: int = 128) -> bool:
    """Whether a group's float32 keys and values and a block's scores, queries and products fit the budget."""
    return group * key_tokens * 2 * dim * 4 + group * block * (key_tokens + 2 * dim) * 4 <= budget


def test_blocks_fit_the_budget():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    budget = 64 * 2**20
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # one head's float32 keys and values (4.5 MiB), 256 queries (the cap) of 4608 scores
        assert head_blocks(24, 4096, 4608, 128, 128, budget, cpu) == (1, 256)
        assert head_blocks(24, 4096, 4608, 128, 128, 1, cpu) == (1, 1)  # a budget below one query still progresses
    finally:
        torch.set_num_threads(threads)
    # half the budget holds 7 heads' keys and values: 24 heads go as 4 groups of 6, not 3 of 7 and one of 3; the
    # rest holds 332 queries of 6 heads, and 4096 queries go as 13 blocks of 316, not 12 of 332 and one of 112
    assert head_blocks(24, 4096, 4608, 128, 128, budget, cuda) == (6, 316)
    assert fits(6, 332, budget) and not fits(6, 333, budget)
    assert head_blocks(24, 4096, 4608, 128, 128, 1, cuda) == (1, 1)


@pytest.mark.parametrize(
    ("threads_count", "heads", "expected_group"),
    [
        (2, 24, 2),  # Flux.1 / Qwen-Image
        (2, 30, 2),  # Z-Image
        (2, 10, 2),  # SDXL's largest level: 5 groups of 2, not one of 10 (40 MiB of scores a block)
        (3, 24, 3),
        (4, 24, 4),
        (8, 24, 1),  # 8 heads' keys and values exceed half the budget: one head, its products threaded inside
        (4, 3, 1),  # fewer heads than threads
    ],
)
def test_on_cpu_a_group_is_one_head_a_thread(threads_count, heads, expected_group):
    """The batched products share a group's heads among the threads; blocks of at most 256 queries, evenly cut."""
    default = torch.get_num_threads()
    try:
        torch.set_num_threads(threads_count)
        key_tokens, dim = (4608, 128) if heads != 10 else (4096, 64)
        group, block = head_blocks(heads, 4096, key_tokens, dim, dim, 64 * 2**20, torch.device("cpu"))
    finally:
        torch.set_num_threads(default)
    assert group == expected_group and block == 256 and fits(group, block, 64 * 2**20, key_tokens, dim)


def test_the_output_goes_into_a_given_view_and_into_the_values_dtype():
    parts = random_parts(torch.bfloat16)
    larger = torch.zeros(2, 50, 3 * 16, dtype=torch.bfloat16)
    contrasted_attention_parts(parts, CONTRAST, 2**20, out=larger[1:, 10:47])
    assert_close(larger[1:, 10:47], reference(parts, CONTRAST), torch.bfloat16)
    assert not larger[0].any() and not larger[1, :10].any() and not larger[1, 47:].any()


def test_the_unet_op_equals_the_formula_at_several_budgets():
    generator = torch.Generator().manual_seed(3)
    query, key, value = (torch.randn(2, 70, 4 * 8, generator=generator).bfloat16() for _ in range(3))
    split = [tensor.reshape(2, 70, 4, 8).transpose(1, 2) for tensor in (query, key, value)]
    expected = reference([KeyPart(*split)], CONTRAST)
    for budget in (1, 10_000, 2**30):
        assert_close(contrasted_attention(query, key, value, 4, CONTRAST, budget), expected, torch.bfloat16)


def test_no_half_precision_input_is_copied_whole_to_float32():
    """Peak live allocations during the op: at most the budget plus the output. A float32 copy of the keys alone
    (2 MiB here) would exceed the 1 MiB budget."""
    parts = random_parts(torch.bfloat16, key_tokens=(64, 2048), heads=8, queries=512, dim=32)
    budget = 2**20
    peak, out = peak_allocated(lambda: contrasted_attention_parts(parts, CONTRAST, budget))
    assert sum(part.keys.numel() for part in parts) * 4 > 2 * budget
    assert 0 < peak <= budget + out.numel() * out.element_size()


@pytest.mark.parametrize("contrasted_from", [0, 1])
def test_a_smaller_last_block_allocates_nothing_of_its_size(threads, contrasted_from):
    """A last group of heads (with 2 threads: 5 heads as 2, 2 and 1) and a last block of queries smaller than
    the others reuse the front of the block buffers. A slice of them as ``out=`` would not be contiguous, and
    softmax and the product would each allocate a temporary of the block's size (1.5 times the budget in all)."""
    budget, heads, dim, key_tokens, queries = 5 * 2**20, 5, 32, (64, 2048), 433
    group, block = head_blocks(heads, queries, sum(key_tokens), dim, dim, budget, torch.device("cpu"))
    assert queries % block and group == threads  # the case meant
    parts = random_parts(torch.float32, key_tokens=key_tokens, heads=heads, queries=queries, dim=dim)
    peak, out = peak_allocated(lambda: contrasted_attention_parts(parts, CONTRAST, budget, None, contrasted_from))
    assert 0 < peak <= budget + out.numel() * out.element_size()


def test_plain_attention_runs_only_where_it_is_kept():
    """The backend's attention sees the rows that do not swap and the output rows' own (text and reference) queries,
    never the output rows' image queries; every such query still attends to its own full sequence."""
    heads, dim, text, image, references = 2, 8, 5, 12, 4
    tokens = text + image + references
    generator = torch.Generator().manual_seed(9)
    query, key, value = (torch.randn(4, heads, tokens, dim, generator=generator) for _ in range(3))
    calls = []

    def plain(q, k, v):
        calls.append((q.shape[0], q.shape[2], k.shape[2]))
        weights = torch.softmax(q @ k.transpose(-1, -2) / dim**0.5, -1)
        return (weights @ v).transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)

    # rows per branch [output, structure]; branches [uncond, cond]; each output reads its branch's structure row
    block = JointBlock("layer", 0, text, image_tokens=image)
    swap = CallAttention(swap=Swap(frozenset({0}), (0,), (1,), None, CONTRAST))
    out = route_joint_attention(query, key, value, block, [1, 0], swap, plain)
    assert sorted(calls) == sorted([(1, tokens, tokens)] * 2 + [(1, text, tokens)] * 2 + [(1, references, tokens)] * 2)
    own = plain(query, key, value)
    image_part = slice(text, text + image)
    for row in (1, 3):
        assert torch.allclose(out[row], own[row], atol=1e-6)
    for row in (0, 2):
        assert torch.allclose(out[row, :text], own[row, :text], atol=1e-6)
        assert torch.allclose(out[row, text + image :], own[row, text + image :], atol=1e-6)
        source = row + 1
        parts = [  # the row's own text and references, then the source's image, the part contrasted by default
            KeyPart(query[row : row + 1, :, image_part], key[row : row + 1, :, :text], value[row : row + 1, :, :text]),
            KeyPart(
                query[row : row + 1, :, image_part],
                key[row : row + 1, :, text + image :],
                value[row : row + 1, :, text + image :],
            ),
            KeyPart(
                query[row : row + 1, :, image_part],
                key[source : source + 1, :, image_part],
                value[source : source + 1, :, image_part],
            ),
        ]
        assert_close(out[row : row + 1, image_part], reference(parts, CONTRAST, contrasted_from=2), torch.float32)


def test_a_backend_that_takes_whole_calls_only_gets_the_whole_call():
    """E.g. a call with an attention mask of the whole layout: plain runs once on everything, the result is the same."""
    generator = torch.Generator().manual_seed(10)
    query, key, value = (torch.randn(2, 2, 4 + 12, 8, generator=generator) for _ in range(3))
    calls = []

    def plain(q, k, v):
        calls.append(q.shape)
        weights = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1)
        return (weights @ v).transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)

    swap = CallAttention(swap=Swap(frozenset({0}), (0,), (1,), None, CONTRAST))
    block = JointBlock("layer", 0, 4)
    parts = route_joint_attention(query, key, value, block, [0], swap, plain)
    calls.clear()
    whole = route_joint_attention(query, key, value, block, [0], swap, plain, plain_takes_parts=False)
    assert calls == [query.shape] and torch.allclose(whole, parts, atol=1e-6)


def test_row_runs():
    assert row_runs([]) == []
    assert row_runs([0, 1, 3, 5, 6, 7]) == [slice(0, 2), slice(3, 4), slice(5, 8)]


def test_quick_bench_measures_both_ops_and_the_memory(capsys):
    results, _ = run(quick=True, repeats=1, threads=[1])
    printed = capsys.readouterr().out
    assert "ratio = ours / SDPA" in printed and "peak live torch allocations" in printed
    cases = results[1]
    assert [(case["case"], case["dtype"]) for case in cases] == [
        (name, dtype) for name in ("flux op", "flux route", "sdxl op") for dtype in ("float32", "bfloat16")
    ]
    for case in cases:
        assert all(seconds > 0 for seconds in case["median"].values()) and case["ratio_median"] > 0
        assert 0 < case["peak"]["ours"] <= 64 * 2**20 + case["output_bytes"]


def test_the_bench_times_fixed_splits_with_the_engine_s_own(capsys, monkeypatch):
    """``--splits``: the same op with head_blocks fixed, for these runs only (the engine's split is back after)."""
    splits_seen = []
    real = attention.contrasted_attention_parts

    def spy(parts, *args, **kwargs):
        splits_seen.append(attention.head_blocks(1, 1, 1, 1, 1, 1, torch.device("cpu")))
        return real(parts, *args, **kwargs)

    monkeypatch.setattr(attention, "contrasted_attention_parts", spy)
    results, _ = run(quick=True, repeats=1, threads=[1], memory=False, cases=["sdxl op"], splits=[(2, 5)])
    assert "split 2x5" in capsys.readouterr().out
    assert all("split 2x5" in case["median"] for case in results[1])
    assert (2, 5) in splits_seen and (1, 1) in splits_seen  # the fixed split and the engine's own
    assert attention.head_blocks(24, 4096, 4608, 128, 128, 2**26, torch.device("cuda")) == (6, 316)


def test_a_contrast_that_is_not_positive_is_refused():
    parts = random_parts(torch.float32)
    with pytest.raises(ValueError, match="contrast must be positive, got 0"):
        contrasted_attention_parts(parts, 0.0, 2**20)
