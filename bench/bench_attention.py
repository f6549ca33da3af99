"""Benchmark the contrasted attention op: the engine's ``contrasted_attention`` against its previous version.

Run from the repository root, with the project's Python environment active:

    python bench/bench_attention.py                # the four cases below, 5 timed runs each, 1 thread
    python bench/bench_attention.py --quick        # small cases, 2 runs: a smoke check (the test runs it)
    python bench/bench_attention.py --block-sweep  # the engine's op with CPU query blocks of 16, 32, 64, 128

Cases: 1 and 2 rows, 8 heads, float32, at SD 1.5's two swapping levels (level 0: 4096 tokens, 320 channels,
head dim 40; level 1: 1024 tokens, 640 channels, head dim 80), with the engine's contrast and memory budget
(``TransferSettings``). Three implementations run in the same process, interleaved run by run so they see
the same load:

- ``previous``: the op as it was up to commit 71237de (kept verbatim in ``attention_ops.py``): per query
  block, scores, a scaled copy, softmax into a new tensor, three in-place passes for the contrast, then
  ``@ V``; blocks sized for two float32 matrices within the budget;
- ``engine``: ``xattn_core.attention.contrasted_attention`` as it is now;
- ``two-pass`` (``attention_ops.py``): the issue's streaming variant over key chunks (row max and sum
  online, then the weights of each chunk times its values), which computes the scores twice.

It prints the median and best wall time of each, the ratios previous / engine, and the largest difference
of each against ``previous`` (max |a - b| and that over max |previous|), then the same for
``mean_attention_weights`` and the peak memory of one op at 64x64 tokens (``memory_worker.py``: a fresh
process per op).
"""

# ruff: noqa: E402 (imports follow the sys.path set-up that lets this file run as a script)

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch
from torch import Tensor

from bench.attention_ops import (
    previous_contrasted_attention,
    previous_mean_attention_weights,
    two_pass_contrasted_attention,
)
from bench.measure import engine_revision, time_interleaved
from bench.memory_worker import MEMORY_DIM_HEAD, MEMORY_HEADS, MEMORY_TOKENS, measure_memory
from xattn_core.attention import DEFAULT_MEMORY_BUDGET, contrasted_attention, mean_attention_weights
from xattn_core.transfer import TransferSettings

MIB = 2**20


IMPLEMENTATIONS = {
    "previous": previous_contrasted_attention,
    "engine": contrasted_attention,
    "two-pass": two_pass_contrasted_attention,
}


@dataclass
class Case:
    rows: int
    tokens: int
    dim_head: int
    heads: int = 8

    @property
    def label(self) -> str:
        return f"rows {self.rows}, {self.tokens} tokens, {self.heads}x{self.dim_head}"


FULL_CASES = [Case(1, 4096, 40), Case(2, 4096, 40), Case(1, 1024, 80), Case(2, 1024, 80)]
QUICK_CASES = [Case(1, 256, 40), Case(2, 96, 80)]


def inputs(case: Case, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    width = case.heads * case.dim_head
    return tuple(torch.randn(case.rows, case.tokens, width, generator=generator) for _ in range(3))


def differences(ours: Tensor, reference: Tensor) -> tuple[float, float]:
    """max |ours - reference| and that over max |reference|."""
    largest = (ours.double() - reference.double()).abs().max().item()
    return largest, largest / reference.double().abs().max().item()


def bench_case(case: Case, repeats: int, contrast: float, budget: int) -> dict:
    query, key, value = inputs(case)
    ops = {name: partial(op, query, key, value, case.heads, contrast, budget) for name, op in IMPLEMENTATIONS.items()}
    outputs = {name: op() for name, op in ops.items()}
    seconds = time_interleaved(ops, repeats)
    return {
        "case": case.label,
        "median": {name: statistics.median(values) for name, values in seconds.items()},
        "best": {name: min(values) for name, values in seconds.items()},
        "difference": {name: differences(out, outputs["previous"]) for name, out in outputs.items()},
    }


def bench_maps(case: Case, repeats: int, budget: int) -> dict:
    query, key, _ = inputs(case)
    ops = {
        "previous": lambda: previous_mean_attention_weights(query[0], key[0], case.heads, budget),
        "engine": lambda: mean_attention_weights(query[0], key[0], case.heads, budget),
    }
    seconds = time_interleaved(ops, repeats)
    return {
        "case": case.label,
        "median": {name: statistics.median(values) for name, values in seconds.items()},
        "difference": differences(ops["engine"](), ops["previous"]()),
    }


def block_sweep(repeats: int, blocks: tuple[int, ...] = (16, 32, 64, 128)) -> dict:
    """The engine's op at 4096 tokens, 1 and 2 rows, with each CPU query block in turn (best of ``repeats``)."""
    import xattn_core.attention as attention

    chosen, best = attention.CPU_QUERY_BLOCK, {}
    try:
        for rows in (1, 2):
            case = Case(rows, 4096, 40)
            query, key, value = inputs(case)
            seconds: dict[int, list[float]] = {block: [] for block in blocks}
            for _ in range(repeats):
                for block in blocks:
                    attention.CPU_QUERY_BLOCK = block
                    started = time.perf_counter()
                    contrasted_attention(query, key, value, case.heads, 1.67)
                    seconds[block].append(time.perf_counter() - started)
            best[rows] = {block: min(values) for block, values in seconds.items()}
            print(f"rows {rows}: " + ", ".join(f"{block} queries {t:.3f} s" for block, t in best[rows].items()))
    finally:
        attention.CPU_QUERY_BLOCK = chosen
    return best


def memory_lines(threads: int) -> list[str]:
    lines = [
        f"peak memory of one op, fresh process each: 1 row, {MEMORY_TOKENS} tokens, {MEMORY_HEADS} heads, head dim "
        f"{MEMORY_DIM_HEAD}, float32, budget {DEFAULT_MEMORY_BUDGET / MIB:.0f} MiB (full weight matrix "
        f"{MEMORY_HEADS * MEMORY_TOKENS**2 * 4 / MIB:.0f} MiB)"
    ]
    for method in ("profiler", "rusage"):
        peaks = {name: measure_memory(name, method, threads) for name in ("previous", "ours")}
        note = "" if all(p["conclusive"] for p in peaks.values()) else " (inconclusive: no new high-water mark)"
        lines.append(
            f"{method:<9} previous {peaks['previous']['peak_bytes'] / MIB:7.1f} MiB, engine "
            f"{peaks['ours']['peak_bytes'] / MIB:7.1f} MiB, engine/previous "
            f"{peaks['ours']['peak_bytes'] / peaks['previous']['peak_bytes']:.3f}{note}"
        )
    return lines


def run(quick: bool = False, repeats: int | None = None, threads: int = 1, memory: bool = True) -> dict:
    """Run the benchmark, print its report and return the figures."""
    torch.set_num_threads(threads)
    settings = TransferSettings()
    cases = QUICK_CASES if quick else FULL_CASES
    repeats = repeats or (2 if quick else 5)
    print("# contrasted attention benchmark")
    print(f"command: python bench/bench_attention.py{' --quick' if quick else ''}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; engine commit {engine_revision()}")
    print(
        f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, torch threads "
        f"{threads}, cpu, float32; contrast {settings.contrast}, budget {settings.memory_budget / MIB:.0f} MiB, "
        f"{repeats} runs each, interleaved"
    )
    print("difference: against previous, max |a - b| (and / max |previous|)")
    results = {"cases": [], "maps": None, "memory": []}
    header = f"{'case':<28} {'previous s':>10} {'engine s':>9} {'two-pass s':>10} {'prev/eng':>8} {'2pass/eng':>9}"
    print(f"\n## contrasted_attention, median (best) wall seconds\n{header}")
    for case in cases:
        result = bench_case(case, repeats, settings.contrast, settings.memory_budget)
        results["cases"].append(result)
        median, best = result["median"], result["best"]
        print(
            f"{case.label:<28} {median['previous']:10.4f} {median['engine']:9.4f} {median['two-pass']:10.4f} "
            f"{median['previous'] / median['engine']:8.2f} {median['two-pass'] / median['engine']:9.2f}"
            f"   best {best['previous']:.4f} / {best['engine']:.4f} / {best['two-pass']:.4f}"
        )
        diffs = ", ".join(f"{name} {a:.2e} ({r:.2e})" for name, (a, r) in result["difference"].items() if a or r)
        print(f"{'':<28} difference: {diffs or 'none'}{'' if diffs else ' (bit for bit)'}")
    maps = bench_maps(cases[0], repeats, settings.memory_budget)
    results["maps"] = maps
    print(
        f"\n## mean_attention_weights ({maps['case'].split(', ', 1)[1]}), median wall seconds\n"
        f"previous {maps['median']['previous']:.4f}, engine {maps['median']['engine']:.4f}, previous/engine "
        f"{maps['median']['previous'] / maps['median']['engine']:.2f}; difference {maps['difference'][0]:.2e} "
        f"({maps['difference'][1]:.2e})"
    )
    if memory:
        results["memory"] = memory_lines(threads)
        print("\n## " + "\n".join(results["memory"]))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small cases, 2 runs each (a smoke check)")
    parser.add_argument("--repeats", type=int, help="timed runs per implementation (default 5, 2 with --quick)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--skip-memory", action="store_true", help="leave out the peak-memory part")
    parser.add_argument(
        "--block-sweep", action="store_true", help="instead: the engine's op with CPU query blocks of 16 to 128"
    )
    args = parser.parse_args(argv)
    if args.block_sweep:
        torch.set_num_threads(args.threads)
        print(f"# CPU query blocks of contrasted_attention, 4096 tokens, 8x40, best of {args.repeats or 3} runs")
        block_sweep(args.repeats or 3)
        return 0
    run(args.quick, args.repeats, args.threads, not args.skip_memory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
