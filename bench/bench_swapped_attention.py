"""Benchmark the swapped (contrasted) attention against ordinary attention (torch SDPA) on the same shapes.

Run from the repository root, with the project's Python environment active:

    python bench/bench_swapped_attention.py            # the cases below, 3 timed runs each, 1 thread and default
    python bench/bench_swapped_attention.py --quick    # small shapes, 1 run: a smoke check (the test runs it)
    python bench/bench_swapped_attention.py --threads 2 --cases "sdxl op" --splits 10x260   # also other splits

Cases, each in float32 and bfloat16, with the engine's contrast and default memory budget (64 MiB):

- ``flux op``: Flux.1-dev's swapped attention of one output row (24 heads of 128): its 4096 image queries over its
  512 text keys and the source's 4096 image keys (``joint_attention.contrasted_joint_attention``), against
  ``F.scaled_dot_product_attention`` of the same queries over the same 4608 keys;
- ``flux route``: one joint-attention call of two rows, the output row swapping with the structure row of the same
  call (``joint_attention.route_joint_attention``, the backend's attention being SDPA), against SDPA over both rows:
  what a swapping block costs over an ordinary one;
- ``sdxl op``: the UNet's ``attention.contrasted_attention`` at SDXL's largest level (4096 tokens, 10 heads of 64),
  against SDPA on the same shapes.

``--splits GxQ ...`` also times the op with the engine's split of the work fixed to G heads per group and Q
queries per block (``attention.head_blocks`` patched for those runs only), in turn with the others.

Ours and SDPA take turns run by run (so they share the machine's load); the ratios ours / SDPA are of the best and
of the median wall time, measured in the same run; the targets (ratio <= 1.5) are checked on the best times, the
runs least disturbed by other processes (the load average is printed at the start and the end).

Memory: the peak of live torch CPU allocations during one call, at each thread count (the allocation and free
events ``torch.profiler`` records with ``profile_memory``, summed in time order; the inputs exist before, the output
is counted). Target: an op's peak at most the budget plus its output; the route's at most SDPA's over the same rows
(it holds the output of the backend's attention, which allocates its own, while writing it into the call's output).
The quick shapes are far below the budget, where the blocks' fixed buffers outweigh SDPA's: their memory lines can
be above it, and the quick run checks no target.
"""

# ruff: noqa: E402 (imports follow the sys.path set-up that lets this file run as a script)

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch
import torch.nn.functional as F
from torch import Tensor

import xattn_core.attention as attention
from bench.measure import engine_revision, peak_allocated, time_interleaved
from xattn_core.attention import DEFAULT_MEMORY_BUDGET, CallAttention, Swap, contrasted_attention, split_heads
from xattn_core.joint_attention import JointBlock, contrasted_joint_attention, route_joint_attention

MIB = 2**20
CONTRAST = 1.67  # TransferSettings().contrast
RATIO_TARGET = 1.5  # ours / SDPA


@dataclass(frozen=True)
class Shapes:
    heads: int
    dim: int
    text: int  # joint cases: text tokens before the image's (0: the UNet's self-attention)
    image: int


FULL = {"flux": Shapes(24, 128, 512, 4096), "sdxl": Shapes(10, 64, 0, 4096)}
QUICK = {"flux": Shapes(4, 32, 16, 256), "sdxl": Shapes(2, 32, 0, 256)}


def sdpa_joint(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """The backend's fused joint attention: ``[rows, heads, tokens, dim]`` in, ``[rows, tokens, heads * dim]`` out."""
    out = F.scaled_dot_product_attention(query, key, value)
    return out.transpose(1, 2).reshape(query.shape[0], query.shape[2], -1)


def randn(*shape: int, dtype: torch.dtype, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def flux_op(shapes: Shapes, dtype: torch.dtype, budget: int) -> dict[str, Callable[[], Tensor]]:
    heads, dim, text, image = shapes.heads, shapes.dim, shapes.text, shapes.image
    queries = randn(1, heads, image, dim, dtype=dtype, seed=0)
    keys = randn(1, heads, text + image, dim, dtype=dtype, seed=1)
    values = randn(1, heads, text + image, dim, dtype=dtype, seed=2)
    context = [(keys[:, :, :text], values[:, :, :text])]
    image_keys, image_values = keys[:, :, text:], values[:, :, text:]
    return {
        "sdpa": lambda: sdpa_joint(queries, keys, values),
        "ours": lambda: contrasted_joint_attention(
            queries, context, queries, image_keys, image_values, CONTRAST, budget
        ),
    }


def flux_route(shapes: Shapes, dtype: torch.dtype, budget: int) -> dict[str, Callable[[], Tensor]]:
    tokens = shapes.text + shapes.image
    query, key, value = (randn(2, shapes.heads, tokens, shapes.dim, dtype=dtype, seed=seed) for seed in range(3))
    block = JointBlock("layer", 0, shapes.text)
    swap = CallAttention(swap=Swap(frozenset({0}), (0,), (1,), None, CONTRAST, budget))  # row 0 reads row 1
    return {
        "sdpa": lambda: sdpa_joint(query, key, value),
        "ours": lambda: route_joint_attention(query, key, value, block, [0], swap, sdpa_joint),
    }


def sdxl_op(shapes: Shapes, dtype: torch.dtype, budget: int) -> dict[str, Callable[[], Tensor]]:
    width = shapes.heads * shapes.dim
    query, key, value = (randn(1, shapes.image, width, dtype=dtype, seed=seed) for seed in range(3))
    heads = [split_heads(tensor, shapes.heads) for tensor in (query, key, value)]
    return {
        "sdpa": lambda: sdpa_joint(*heads),
        "ours": lambda: contrasted_attention(query, key, value, shapes.heads, CONTRAST, budget),
    }


CASES = {"flux op": ("flux", flux_op), "flux route": ("flux", flux_route), "sdxl op": ("sdxl", sdxl_op)}


def with_split(op: Callable[[], Tensor], split: tuple[int, int]) -> Callable[[], Tensor]:
    """``op`` with the engine's head/query split fixed to ``(heads per group, queries per block)``."""

    def run_split() -> Tensor:
        with mock.patch.object(attention, "head_blocks", lambda *args: split):
            return op()

    return run_split


def bench(
    case: str,
    dtype: torch.dtype,
    shapes: Shapes,
    repeats: int,
    budget: int,
    memory: bool,
    splits: Sequence[tuple[int, int]] = (),
) -> dict:
    ops = CASES[case][1](shapes, dtype, budget)
    for split in splits:  # timed with the others, not part of the memory check
        ops[split_name(split)] = with_split(ops["ours"], split)
    outputs = {name: op() for name, op in ops.items()}  # warm-up, and the outputs' sizes
    seconds = time_interleaved(ops, repeats)
    result = {
        "case": case,
        "dtype": str(dtype).removeprefix("torch."),
        "best": {name: min(values) for name, values in seconds.items()},
        "median": {name: statistics.median(values) for name, values in seconds.items()},
        "output_bytes": outputs["ours"].numel() * outputs["ours"].element_size(),
    }
    result["ratio_best"] = result["best"]["ours"] / result["best"]["sdpa"]
    result["ratio_median"] = result["median"]["ours"] / result["median"]["sdpa"]
    if memory:
        result["peak"] = {name: peak_allocated(ops[name])[0] for name in ("sdpa", "ours")}
    return result


def split_name(split: tuple[int, int]) -> str:
    return f"split {split[0]}x{split[1]}"


def run(
    quick: bool = False,
    repeats: int | None = None,
    threads: list[int] | None = None,
    memory: bool = True,
    cases: list[str] | None = None,
    command: str = "python bench/bench_swapped_attention.py",
    splits: Sequence[tuple[int, int]] = (),
):
    """Run the benchmark, print its report; return the figures (per thread count, one dict per case) and the
    failed targets."""
    shapes = QUICK if quick else FULL
    repeats = repeats or (1 if quick else 3)
    threads = threads or [1, torch.get_num_threads()]
    cases = cases or list(CASES)
    budget = DEFAULT_MEMORY_BUDGET
    print("# swapped attention against SDPA, same shapes, same run")
    print(f"command: {command}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; engine commit {engine_revision()}")
    print(
        f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, cpu, "
        f"{os.cpu_count()} cores; contrast {CONTRAST}, budget {budget / MIB:.0f} MiB; {repeats} runs each, "
        f"interleaved; ratio = ours / SDPA; load average at the start {os.getloadavg()[0]:.2f}"
    )
    for name, shape in shapes.items():
        tokens = f"{shape.text} text + {shape.image} image tokens" if shape.text else f"{shape.image} tokens"
        print(f"{name}: {shape.heads} heads of {shape.dim}, {tokens}")
    results: dict[int, list[dict]] = {}
    failures = []
    for count in dict.fromkeys(threads):
        torch.set_num_threads(count)
        print(f"\n## torch threads {count}: wall seconds best / median")
        print(f"{'case':<11} {'dtype':<9} {'sdpa':>15} {'ours':>15} {'ratio best':>10} {'median':>7}")
        results[count] = []
        for case in cases:
            family = CASES[case][0]
            for dtype in (torch.float32, torch.bfloat16):
                result = bench(case, dtype, shapes[family], repeats, budget, memory, splits)
                results[count].append(result)
                best, median = result["best"], result["median"]
                print(
                    f"{case:<11} {result['dtype']:<9} {best['sdpa']:7.3f} {median['sdpa']:7.3f} "
                    f"{best['ours']:7.3f} {median['ours']:7.3f} {result['ratio_best']:10.2f} "
                    f"{result['ratio_median']:7.2f}",
                    flush=True,
                )
                for split in splits:
                    name = split_name(split)
                    print(
                        f"  {name:<18} {'':>15} {best[name]:7.3f} {result['median'][name]:7.3f} "
                        f"{best[name] / best['sdpa']:10.2f} {result['median'][name] / result['median']['sdpa']:7.2f}",
                        flush=True,
                    )
                if not quick and result["ratio_best"] > RATIO_TARGET:  # small shapes: overhead only
                    failures.append(f"{case} {result['dtype']} threads {count}: ratio above {RATIO_TARGET}")
    for count in results if memory else ():
        print(f"\n## peak live torch allocations during one call (threads {count}), MiB")
        print(f"{'case':<11} {'dtype':<9} {'sdpa':>7} {'ours':>7} {'output':>7} {'ours - output':>13}")
        for result in results[count]:
            peak, output = result["peak"], result["output_bytes"]
            print(
                f"{result['case']:<11} {result['dtype']:<9} {peak['sdpa'] / MIB:7.1f} {peak['ours'] / MIB:7.1f} "
                f"{output / MIB:7.1f} {(peak['ours'] - output) / MIB:13.1f}"
            )
            route = result["case"] == "flux route"
            if not quick and peak["ours"] > (peak["sdpa"] if route else budget + output):  # quick: buffers only
                target = "SDPA's" if route else "the budget plus the output"
                failures.append(f"{result['case']} {result['dtype']} threads {count}: peak above {target}")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    print(
        f"targets, full shapes only: ratio of the best times <= {RATIO_TARGET} (the best run is the one least "
        "disturbed by other load); peak <= budget + output (ops), <= SDPA's peak (route), at every thread count"
    )
    print("\n".join(f"FAIL {failure}" for failure in failures) or "PASS all")
    return results, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, 1 run each (a smoke check)")
    parser.add_argument("--repeats", type=int, help="timed runs per op (default 3, 1 with --quick)")
    parser.add_argument(
        "--threads", type=int, nargs="+", help="torch intra-op thread counts (default: 1, then torch's default)"
    )
    parser.add_argument("--skip-memory", action="store_true", help="leave out the peak-memory part")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), help="only these cases (default: all)")
    parser.add_argument(
        "--splits",
        nargs="+",
        default=[],
        metavar="HEADSxQUERIES",
        help="also time the swapped op with these fixed splits (heads per group x queries per block), e.g. 7x250",
    )
    args = parser.parse_args(argv)
    splits = [tuple(int(number) for number in split.split("x")) for split in args.splits]
    command = shlex.join(["python", "bench/bench_swapped_attention.py", *(argv if argv is not None else sys.argv[1:])])
    _, failures = run(args.quick, args.repeats, args.threads, not args.skip_memory, args.cases, command, splits)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
