"""Benchmark one appearance transfer: the engine against a naive port of the official code.

Run from the repository root, with the project's Python environment active:

    python bench/bench_transfer.py            # paper defaults (the engine's settings), 512 px
    python bench/bench_transfer.py --quick    # smoke run: 20 steps, start 6, 128 px, < 1 minute
    python bench/bench_transfer.py --size 256 --skip-memory   # same steps, 32x32 latent, no memory part
    python bench/memory_worker.py ours|naive rusage|profiler --threads 1   # one attention-op memory JSON line

Files: this outline of the phases; ``naive_port.py`` (the official method, ported naively);
``measure.py`` (clocks, counters, formatting); ``memory_worker.py`` (the attention-op memory, one fresh
subprocess per op); ``report.py`` (the printed report and the targets).

Everything runs on a tiny random SD-1.5-shaped diffusers UNet (``xattn_core.tiny.tiny_unet``:
512 px -> 64x64 latent, decoder self-attention at 64x64 and 32x32 tokens, 8 heads), on CPU.
Per transfer of one appearance + one structure image it measures, in one run:

1. ours: ``xattn_core.inversion.invert`` on both images batched from the start step, then
   ``xattn_core.transfer.transfer`` (the engine as it is, SDPA for ordinary attention);
2. naive: what the official code does (``naive_port.py``): every image inverted separately over all
   steps (2 images x N steps x 2 for cfg), then two full 3-row model calls per generation step (swap
   and no swap) with explicit full-matrix softmax attention, the contrast applied to the whole matrix,
   in every decoder self-attention layer;
3. plain: the same generation steps for one row, no swap, for scale;
4. ours in fast mode: ours' inversion also keeps its predictions and swapping-level keys/values
   (capture only, no extra evaluation), and a second generation replays the appearance and
   structure paths from them, evaluating the output row only. It runs after the interleaved
   phases, on the same backend. At the paper's settings (guided inversion, unguided generation)
   fast mode is an approximation, so its output is compared with ours, not required to equal it.

It also measures the peak memory of the cross-image attention op alone at SD 1.5 level 0
(``contrasted_attention`` against a full-matrix implementation) and prints PASS/FAIL for the
evaluation-count targets: the paper's evaluation budget, scaled to the run's steps (exit status 1
on any FAIL).

Threads: 2 by default, 1 with ``--quick``: on a 2-core machine every OpenMP parallel region waits for
the thread that shares a core with another busy process, which slowed the many small ops of a 128 px
run ~10x (311 s with 2 threads against 25 s with 1, a test suite running beside it). The three paths
are interleaved step by step so that their ratios see the same load. The default run takes ~20 minutes
on 2 idle cores, most of it in the naive generation's 4096 x 4096 attention matrices.
"""

# ruff: noqa: E402 (imports follow the sys.path set-up that lets this file run as a script)

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch

import xattn_core.attention
import xattn_core.diffusers_backend
from bench import naive_port
from bench.measure import Clock, Counted, Phase, attention_kernels, drain, progress, timing_wrapper
from bench.memory_worker import measure_memory
from bench.report import check_targets, print_header, report, report_memory
from xattn_core.diffusers_backend import DiffusersBackend
from xattn_core.freeu import FreeUSettings
from xattn_core.inversion import CacheSettings, Inversion, InversionSettings, invert
from xattn_core.plan import PlanSettings, build_plan
from xattn_core.schedule import paper_sigmas
from xattn_core.tiny import tiny_context, tiny_unet
from xattn_core.transfer import TransferResult, TransferSettings, transfer


@dataclass
class Setup:
    """The models, backends and inputs every phase shares, and the record of what each phase spent."""

    args: argparse.Namespace
    naive_unet: object
    ours: DiffusersBackend
    naive: DiffusersBackend
    plain: DiffusersBackend
    clean: torch.Tensor
    sigmas: torch.Tensor
    plan: list
    settings: TransferSettings
    processors: dict[str, int]
    ours_kernels: dict[str, int]
    run_start: float
    load_start: float
    clock: Clock = field(default_factory=Clock)
    phases: dict[str, Phase] = field(default_factory=dict)

    def record(self, name: str, count: Counted) -> None:
        self.phases[name] = count.phase(name, self.clock)

    def close(self) -> None:
        for backend in (self.ours, self.naive, self.plain):
            backend.close()


@dataclass
class InversionRun:
    ours: Inversion  # both images, with the attention cache fast mode replays
    naive: dict  # the naive inversion's "latents" [N+1, B, C, H, W] and "maps" [N, B, C, H, W]


@dataclass
class GenerationRun:
    ours: TransferResult
    naive_rows: torch.Tensor  # the naive generation's final [output, appearance, structure] rows
    naive_layers: int  # decoder self-attention layers with the naive processor
    naive_kernels: dict[str, int]  # attention aten ops in one naive model call
    attention_seconds: dict  # (clock section, function) -> wall seconds of ours' attention
    attention_calls: dict  # (clock section, function) -> calls
    naive_attention_seconds: float


def parse_args(argv=None) -> argparse.Namespace:
    """The flags; their defaults are the engine's (the paper's), from its settings dataclasses."""
    inversion, transfer_settings, plan = InversionSettings(), TransferSettings(), PlanSettings()
    steps, start = inversion.steps, inversion.start_step
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help=f"schedule length N (default {steps}; quick 20)")
    parser.add_argument("--start", type=int, default=None, help=f"generation start step (default {start}; quick 6)")
    parser.add_argument("--size", type=int, default=None, help="image px, multiple of 64 (default 512; quick 128)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 steps, start 6, 128 px")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default 2; quick 1)")
    parser.add_argument("--seed", type=int, default=inversion.seed)
    parser.add_argument("--inversion-cfg", type=float, default=inversion.cfg)
    parser.add_argument("--cfg", type=float, default=transfer_settings.cfg)
    parser.add_argument("--swap-guidance", type=float, default=plan.swap_guidance)
    parser.add_argument("--contrast", type=float, default=transfer_settings.contrast)
    parser.add_argument("--no-freeu", action="store_true", help="run without the official FreeU variant")
    parser.add_argument("--skip-memory", action="store_true", help="skip the attention-op memory measurement")
    args = parser.parse_args(argv)
    quick = (20, 6, 128) if args.quick else (steps, start, 512)
    args.steps = quick[0] if args.steps is None else args.steps
    args.start = quick[1] if args.start is None else args.start
    args.size = quick[2] if args.size is None else args.size
    args.threads = (1 if args.quick else 2) if args.threads is None else args.threads
    if args.size % 64:
        parser.error(f"--size must be a multiple of 64 px, got {args.size}")
    if not 0 <= args.start < args.steps:
        parser.error(f"--start must be in 0..{args.steps - 1}")
    return args


def prepare(args, argv=None) -> Setup:
    """Print the run's header; build three copies of the tiny UNet, their backends and the inputs; warm up."""
    run_start = time.perf_counter()
    load_start = print_header(args, argv)
    latent = args.size // 8
    # three copies of the same weights, so each measured path keeps its own processors and counters
    ours_unet = tiny_unet(seed=0)
    naive_unet, plain_unet = copy.deepcopy(ours_unet), copy.deepcopy(ours_unet)
    positive, negative = tiny_context(1), tiny_context(2)
    clean = torch.randn(2, 4, latent, latent, generator=torch.Generator().manual_seed(args.seed + 21))
    sigmas = paper_sigmas(steps=args.steps)
    freeu = None if args.no_freeu else FreeUSettings()
    plan_settings = PlanSettings(swap_guidance=args.swap_guidance)
    probe_sigma = float(sigmas[args.start])
    ours = DiffusersBackend(ours_unet, positive, negative, args.inversion_cfg, freeu=freeu)
    naive = DiffusersBackend(naive_unet, positive, negative, args.inversion_cfg, freeu=freeu)
    plain = DiffusersBackend(plain_unet, positive, negative, args.cfg, freeu=freeu)
    processors = dict(Counter(type(processor).__name__ for processor in ours_unet.attn_processors.values()))
    # (untimed) the first call of each path doubles as warm-up
    ours_kernels = attention_kernels(ours, clean, probe_sigma)
    naive.predict_noise(clean[:1], probe_sigma)
    plain.predict_noise(clean[:1], probe_sigma)
    return Setup(
        args=args,
        naive_unet=naive_unet,
        ours=ours,
        naive=naive,
        plain=plain,
        clean=clean,
        sigmas=sigmas,
        plan=build_plan(args.steps, args.start, plan_settings),
        settings=TransferSettings(plan=plan_settings, contrast=args.contrast),
        processors=processors,
        ours_kernels=ours_kernels,
        run_start=run_start,
        load_start=load_start,
    )


def run_inversion(setup: Setup) -> InversionRun:
    """Ours and naive inversion, interleaved call by call so that load changes hit both alike."""
    args, clock, ours, clean, sigmas = setup.args, setup.clock, setup.ours, setup.clean, setup.sigmas
    naive_inverted: dict = {}
    naive_steps = naive_port.naive_inversion(setup.naive, clean, sigmas, args.seed, naive_inverted)
    naive_calls_total, naive_calls_done = 2 * args.steps, 0

    def after_call(done: int, total: int) -> None:
        nonlocal naive_calls_done
        progress("inversion", done, total)
        with clock.section("naive inversion"):
            while naive_calls_done < naive_calls_total * done // total:
                next(naive_steps)
                naive_calls_done += 1

    # kept for fast mode as the CLI keeps it (cond branch only for an unguided generation): no extra evaluation,
    # but the copies out of each call are inside this phase's time
    cache = CacheSettings(branches=frozenset({0}) if args.cfg == 1.0 else None)
    with Counted(ours) as ours_count, Counted(setup.naive) as naive_count:
        with clock.section("ours inversion"):
            both = invert(ours.predict_noise, clean, sigmas, args.start, args.seed, callback=after_call, cache=cache)
        with clock.section("naive inversion"):
            drain(naive_steps)
    setup.record("ours inversion", ours_count)
    setup.record("naive inversion", naive_count)
    assert both.attention is not None
    return InversionRun(both, naive_inverted)


def run_generation(setup: Setup, inversion: InversionRun) -> GenerationRun:
    """Ours, naive and plain generation, interleaved step by step."""
    args, clock, ours, naive, plain = setup.args, setup.clock, setup.ours, setup.naive, setup.plain
    normal = dataclasses.replace(inversion.ours, attention=None)  # the normal mode: no cache
    appearance, structure = normal.select([0]), normal.select([1])
    for backend in (ours, naive):  # the generation's guidance, as xattn_core.app.diffusers_pipeline sets it
        backend.with_guidance(backend.positive, backend.negative, args.cfg)
    state = naive_port.NaiveSwapState(contrast=args.contrast)
    naive_layers = naive_port.install_naive_processors(setup.naive_unet, state)  # naive.close() restores the originals
    probe_sigma = float(setup.sigmas[args.start])
    naive_kernels = attention_kernels(naive, setup.clean[:1], probe_sigma)  # warm-up of the naive processors
    naive_result, plain_result = {}, {}
    latents, maps = inversion.naive["latents"], inversion.naive["maps"]
    naive_steps = naive_port.naive_generation(naive, state, latents, maps, setup.sigmas, setup.plan, naive_result)
    plain_steps = naive_port.plain_generation(plain, structure, setup.sigmas, setup.plan, plain_result)

    def after_generation_step(done: int, total: int, *_latents) -> None:
        progress("generation", done, total)
        with clock.section("naive generation"):
            next(naive_steps)
        with clock.section("plain generation"):
            next(plain_steps)

    seconds, calls = {}, {}  # (clock section, function name) -> wall seconds, calls
    state.attention_seconds = 0.0
    with (
        Counted(ours) as ours_count,
        Counted(naive) as naive_count,
        Counted(plain) as plain_count,
        timing_wrapper(xattn_core.diffusers_backend, "route_attention", clock, seconds, calls),
        timing_wrapper(xattn_core.attention, "contrasted_attention", clock, seconds, calls),
    ):
        with clock.section("ours generation"):
            result = transfer(ours, appearance, structure, setup.settings, callback=after_generation_step)
        with clock.section("naive generation"):
            drain(naive_steps)
        with clock.section("plain generation"):
            drain(plain_steps)
    setup.record("ours generation", ours_count)
    setup.record("naive generation", naive_count)
    setup.record("plain generation", plain_count)
    return GenerationRun(
        ours=result,
        naive_rows=naive_result["rows"],
        naive_layers=naive_layers,
        naive_kernels=naive_kernels,
        attention_seconds=seconds,
        attention_calls=calls,
        naive_attention_seconds=state.attention_seconds,
    )


def run_fast_mode(setup: Setup, inversion: InversionRun) -> TransferResult:
    """Ours in fast mode: output rows only, the paths replayed from the inversion's cache (after the rest)."""
    appearance, structure = inversion.ours.select([0]), inversion.ours.select([1])  # outside the timing

    def after_fast_step(done: int, total: int, *_latents) -> None:
        progress("fast generation", done, total)

    with Counted(setup.ours) as fast_count:
        with setup.clock.section("ours fast generation"):
            fast = transfer(setup.ours, appearance, structure, setup.settings, callback=after_fast_step)
    setup.record("ours fast generation", fast_count)
    return fast


def measure_attention_memory(args) -> bool:
    """Peak memory of the attention op alone, ours and naive, each in a fresh subprocess; True if ours is lower."""
    methods = ("rusage",) if args.quick else ("rusage", "profiler")
    return report_memory(
        {(impl, m): measure_memory(impl, m, args.threads) for m in methods for impl in ("ours", "naive")}
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    setup = prepare(args, argv)
    inversion = run_inversion(setup)
    generation = run_generation(setup, inversion)
    fast = run_fast_mode(setup, inversion)
    setup.close()
    report(setup, inversion, generation, fast)
    memory_ok = None if args.skip_memory else measure_attention_memory(args)
    return check_targets(setup, memory_ok)


if __name__ == "__main__":
    sys.exit(main())
