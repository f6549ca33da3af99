"""The contrasted-attention rewrite computes what the previous op computed, and its bench reports real figures."""

import pytest
import torch

from bench.attention_ops import (
    previous_contrasted_attention,
    previous_mean_attention_weights,
    two_pass_contrasted_attention,
)
from bench.bench_attention import Case, run
from xattn_core.attention import (
    CPU_QUERY_BLOCK,
    DEFAULT_MEMORY_BUDGET,
    contrasted_attention,
    mean_attention_weights,
    merge_heads,
    query_block,
    split_heads,
)


@pytest.mark.parametrize("rows,tokens,key_tokens,heads,width", [(1, 300, 300, 8, 320), (2, 70, 130, 4, 64)])
@pytest.mark.parametrize("budget", [200_000, 2**20, DEFAULT_MEMORY_BUDGET])  # 2**20: the lowest the settings allow
def test_engine_equals_previous_op(rows, tokens, key_tokens, heads, width, budget):
    generator = torch.Generator().manual_seed(tokens + budget)
    query = torch.randn(rows, tokens, width, generator=generator) * 2
    key = torch.randn(rows, key_tokens, width, generator=generator) * 2
    value = torch.randn(rows, key_tokens, width, generator=generator)
    ours = contrasted_attention(query, key, value, heads, 1.67, budget)
    previous = previous_contrasted_attention(query, key, value, heads, 1.67, budget)
    maps = mean_attention_weights(query[0], key[0], heads, budget)
    previous_maps = previous_mean_attention_weights(query[0], key[0], heads, budget)
    # Two implementations (bmm over query blocks of the engine's size vs matmul over the previous op's blocks),
    # at every budget: float32 reordering moves the last bits (measured <= 4e-7 of max |previous|), so compare
    # within 1e-5 of the largest value; a wrong contrast (1.6 for 1.67) is off by about 4e-2 of it.
    assert (ours - previous).abs().max() <= 1e-5 * previous.abs().max()
    assert (maps - previous_maps).abs().max() <= 1e-5 * previous_maps.abs().max()
    streamed = two_pass_contrasted_attention(query, key, value, heads, 1.67, budget, key_chunk=64)
    assert (streamed - ours).abs().max() <= 1e-5 * ours.abs().max()  # another order of rounding


def test_head_split_round_trip_and_block_sizes():
    tensor = torch.arange(2 * 5 * 12.0).reshape(2, 5, 12)
    split = split_heads(tensor, 3)
    assert split.shape == (2, 3, 5, 4) and torch.equal(split[1, 2, 4], tensor[1, 4, 8:12])
    assert torch.equal(merge_heads(split), tensor)
    budget = 64 * 2**20
    assert query_block(8, 4096, budget, torch.device("cuda")) == 512  # one 64 MiB float32 block of 8 x 4096 keys
    assert query_block(8, 4096, budget, torch.device("cpu")) == CPU_QUERY_BLOCK
    assert query_block(8, 4096, 1, torch.device("cpu")) == 1  # a budget below one query still makes progress


def test_quick_bench_reports_equal_outputs_and_real_times(capsys):
    results = run(quick=True, repeats=1, memory=False)
    printed = capsys.readouterr().out
    assert "## contrasted_attention" in printed and "## mean_attention_weights" in printed
    assert [case["case"] for case in results["cases"]] == [
        Case(1, 256, 40).label,
        Case(2, 96, 80).label,
    ]
    # "difference" is (max |a - previous|, that / max |previous|) between different implementations: only a
    # rounding bound holds, not bit equality (a wrong contrast would be off by about 4e-2 relative)
    for case in results["cases"]:
        assert case["difference"]["engine"][1] <= 1e-5
        assert 0 < case["difference"]["two-pass"][1] <= 1e-5
        assert all(seconds > 0 for seconds in case["median"].values())
    assert results["maps"]["difference"][1] <= 1e-5
