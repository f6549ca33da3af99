"""The benchmark's printed report: phase table, ratios, attention-op memory and the evaluation-count targets."""

from __future__ import annotations

import os
import platform
import sys
import time

import diffusers
import torch

from bench.measure import engine_revision, phase_line, ratio
from bench.memory_worker import MEMORY_DIM_HEAD, MEMORY_HEADS, MEMORY_TOKENS, MIB
from bench.naive_port import OUT, STRUCT
from xattn_core.attention import DEFAULT_MEMORY_BUDGET
from xattn_core.calls import CallLayout, Rows, model_evaluations
from xattn_core.inversion import InversionSettings
from xattn_core.plan import PlanSettings
from xattn_core.transfer import TransferSettings


def print_header(args, argv=None) -> float:
    """Print the command, versions, machine, model and settings of the run; returns the 1-minute load average."""
    shown = sys.argv[1:] if argv is None else list(argv)
    print("# Cross-Image Attention transfer benchmark")
    print(f"command: {' '.join(['python bench/bench_transfer.py', *shown])}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; engine commit {engine_revision()}")
    print(
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, python {platform.python_version()}, "
        f"{platform.machine()} with {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, device cpu, float32"
    )
    load_start = os.getloadavg()[0]
    latent = args.size // 8
    print(
        f"model: tiny random SD-1.5-shaped UNet (xattn_core.tiny.tiny_unet(seed=0), 8 heads), {args.size} px -> "
        f"{latent}x{latent} latent, decoder self-attention at {latent}x{latent} and {latent // 2}x{latent // 2} tokens"
    )
    print(
        f"settings: {args.steps} steps, start {args.start} ({args.steps - args.start} generation steps), "
        f"inversion cfg {args.inversion_cfg}, generation cfg {args.cfg}, swap guidance {args.swap_guidance}, "
        f"contrast {args.contrast}, official FreeU variant {'off' if args.no_freeu else 'on'}, seed {args.seed}"
    )
    return load_start


def report(setup, inversion, generation, fast) -> None:
    """Print what the attention paths run, then evaluations, times and ratios per phase, and the differences."""
    args, phases, ours, cached = setup.args, setup.phases, generation.ours, inversion.ours.attention
    print(
        f"attention, ours: processors {setup.processors}; SwapAttentionProcessor sends ordinary rows to "
        "F.scaled_dot_product_attention and swapped output rows to contrasted_attention (query blocks)"
    )
    print(f"  aten attention ops in one ours model call (no swap): {setup.ours_kernels}")
    print(
        f"attention, naive generation: NaiveCrossImageProcessor (explicit softmax(QK^T) matrices for all rows) on "
        f"{generation.naive_layers} decoder self-attention layers, SDPA elsewhere; naive inversion runs the same "
        "SDPA path as ours"
    )
    print(f"  aten attention ops in one naive model call: {generation.naive_kernels}")
    print("phases interleaved (after each model call or step of ours, the naive and plain paths catch up)")
    print()
    totals = {
        "ours total": phases["ours inversion"] + phases["ours generation"],
        "ours fast total": phases["ours inversion"] + phases["ours fast generation"],
        "naive total": phases["naive inversion"] + phases["naive generation"],
    }
    print("## model evaluations and time per phase (one transfer: 1 appearance + 1 structure image)")
    print(f"{'phase':<20} {'image-evals':>11} {'calls':>6} {'wall s':>9} {'cpu s':>9} {'s/eval':>8}")
    for name, phase in (*phases.items(), *totals.items()):
        print(phase_line(name, phase))
    print()
    print("## ratios ours / naive (same run)")
    print(f"{'':<12} {'evals':>7} {'wall':>7} {'cpu':>7} {'s/eval':>7}")
    for label, mine, theirs in (
        ("inversion", phases["ours inversion"], phases["naive inversion"]),
        ("generation", phases["ours generation"], phases["naive generation"]),
        ("total", totals["ours total"], totals["naive total"]),
        ("fast gen.", phases["ours fast generation"], phases["naive generation"]),
        ("fast total", totals["ours fast total"], totals["naive total"]),
    ):
        print(
            f"{label:<12} {ratio(mine.evaluations, theirs.evaluations):>7} {ratio(mine.wall, theirs.wall):>7} "
            f"{ratio(mine.cpu, theirs.cpu):>7} {ratio(mine.per_eval, theirs.per_eval):>7}"
        )
    fast_phase, normal_phase = phases["ours fast generation"], phases["ours generation"]
    print(
        f"fast mode / ours generation (run after it, not interleaved): evals "
        f"{ratio(fast_phase.evaluations, normal_phase.evaluations)}, wall {ratio(fast_phase.wall, normal_phase.wall)}; "
        f"cache kept by the inversion {cached.nbytes / MIB:.0f} MiB (float32, 2 images, "
        f"{' + '.join({0: 'cond', 1: 'uncond'}[branch] for branch in sorted(cached.branches))}); output max "
        f"|fast - ours| {max_difference(fast.output, ours.output):.2e} (an approximation unless inversion "
        "cfg == generation cfg, and random weights amplify any difference; tests/test_fast_mode.py asserts equality "
        "under matched cfg)"
    )
    base = phases["plain generation"]
    for name in ("ours generation", "naive generation", "ours fast generation"):
        phase = phases[name]
        print(
            f"{name} / plain sampling of the same steps: evals {ratio(phase.evaluations, base.evaluations)}, "
            f"wall {ratio(phase.wall, base.wall)}"
        )
    seconds, calls = generation.attention_seconds, generation.attention_calls
    ours_gen = ("ours generation", "route_attention")
    contrasted = ("ours generation", "contrasted_attention")
    print(
        f"decoder self-attention wall time in generation: ours {seconds.get(ours_gen, 0.0):.1f} s "
        f"(route_attention, {calls.get(ours_gen, 0)} layer calls; of it contrasted_attention "
        f"{seconds.get(contrasted, 0.0):.1f} s in {calls.get(contrasted, 0)} calls), naive "
        f"{generation.naive_attention_seconds:.1f} s (explicit matrices, all rows), plain "
        f"{seconds.get(('plain generation', 'route_attention'), 0.0):.1f} s (SDPA)"
    )
    rows = generation.naive_rows
    print(
        f"same results: max |z_ours - z_naive| over steps {args.start}..{args.steps - 1}: "
        f"{max_difference(inversion.ours.noise_maps, inversion.naive['maps'][args.start :]):.2e}; final latents "
        f"max |ours - naive|: output {max_difference(ours.output, rows[OUT : OUT + 1]):.2e}, structure path "
        f"{max_difference(ours.structure, rows[STRUCT : STRUCT + 1]):.2e} (output std {ours.output.std().item():.2f})"
    )
    print()


def max_difference(a, b) -> float:
    return (a - b).abs().max().item()


def report_memory(measured: dict) -> bool:
    """Print the attention-op memory section; True when ours peaked below the naive op."""
    print(
        f"## peak memory of the cross-image attention op alone: 1 row, {MEMORY_TOKENS} query and key tokens "
        f"(64x64), {MEMORY_HEADS} heads, head dim {MEMORY_DIM_HEAD} (SD 1.5 level 0), float32"
    )
    print(
        f"one full weight matrix: {MEMORY_HEADS * MEMORY_TOKENS**2 * 4 / MIB:.0f} MiB; ours: contrasted_attention "
        f"with its default budget of {DEFAULT_MEMORY_BUDGET / MIB:.0f} MiB of weights per query chunk"
    )
    methods = [method for method in ("rusage", "profiler") if ("ours", method) in measured]
    print(
        "method rusage: fresh subprocess per op; once its inputs exist the kernel's peak-RSS counter is reset "
        f"(/proc/self/clear_refs); peak = {measured['ours', 'rusage']['counter']} after the op minus RSS before it"
    )
    if "profiler" in methods:
        print(
            "method profiler: fresh subprocess per op, torch.profiler(profile_memory=True) allocation events "
            "replayed in time order (peak of live tensor bytes)"
        )
    for method in methods:
        mine, theirs = measured["ours", method], measured["naive", method]
        notes = "" if mine["conclusive"] and theirs["conclusive"] else "  (INCONCLUSIVE: no new high-water mark)"
        if "seconds" in mine:
            notes = f"; op time ours {mine['seconds']:.2f} s, naive {theirs['seconds']:.2f} s" + notes
        print(
            f"{method:<8} ours {mine['peak_bytes'] / MIB:7.1f} MiB, naive {theirs['peak_bytes'] / MIB:7.1f} MiB, "
            f"ours/naive {ratio(mine['peak_bytes'], theirs['peak_bytes'])}{notes}"
        )
    mine, theirs = measured["ours", "rusage"], measured["naive", "rusage"]
    print(f"outputs agree: sum |out| ours {mine['checksum']:.3f}, naive {theirs['checksum']:.3f}")
    print()
    return mine["peak_bytes"] < theirs["peak_bytes"]


def eval_targets(steps: int, start: int, plan, inversion_cfg: float, cfg: float) -> dict[str, int]:
    """The paper's evaluation budget, scaled to the step counts (the paper defaults give 272, 261, 533, 808, 136).

    Counts are image-evaluations, so a guided phase (cfg != 1: cond + uncond) counts each row twice.
    """
    inversion_chunks, generation_chunks = (1 if value == 1.0 else 2 for value in (inversion_cfg, cfg))
    generation_steps = steps - start
    inversion = 2 * (steps - start) * inversion_chunks
    # the budget: every path's row at every step plus the plain passes, as the engine spent before calls.py
    # shared the output rows with the structure rows (now fewer: see planned_evaluations)
    generation = sum(3 + (step.swap_weight is not None) for step in plan) * generation_chunks
    official = 2 * steps * inversion_chunks + generation_steps * 2 * 3 * generation_chunks
    return {
        "inversion": inversion,
        "generation": generation,
        "total": inversion + generation,
        "official": official,
        "fast generation": 2 * generation_steps * generation_chunks,
    }


def planned_evaluations(plan, cfg: float) -> dict[str, int]:
    """Generation image-evaluations calls.py plans for one transfer (1 appearance + 1 structure image)."""
    chunks = 1 if cfg == 1.0 else 2
    cached = frozenset({Rows.APPEARANCE, Rows.STRUCTURE})
    layouts = {
        "generation": CallLayout.of(1, 1),
        "generation without the structure reconstruction (command line, batch)": CallLayout.of(
            1, 1, structure_reconstruction=False
        ),
        "fast generation": CallLayout.of(1, 1, cached),
    }
    return {name: model_evaluations(plan, layout) * chunks for name, layout in layouts.items()}


def check_targets(setup, memory_ok: bool | None) -> int:
    """Print PASS/FAIL per evaluation-count target (and the memory check unless skipped); 1 on any FAIL."""
    args, phases = setup.args, setup.phases
    targets = eval_targets(args.steps, args.start, setup.plan, args.inversion_cfg, args.cfg)
    engine = InversionSettings()  # the paper's settings are the engine's defaults
    paper_settings = (engine.steps, engine.start_step, engine.cfg, TransferSettings().cfg, PlanSettings().swap_guidance)
    paper = (args.steps, args.start, args.inversion_cfg, args.cfg, args.swap_guidance) == paper_settings
    if paper:
        expected = {"inversion": 272, "generation": 261, "total": 533, "official": 808, "fast generation": 136}
        assert targets == expected, targets
    scaled = f"{args.steps} steps, start {args.start}, cfg {args.inversion_cfg} / {args.cfg}"
    scope = "the paper's evaluation budget" + ("" if paper else f" scaled to {scaled}")
    print(f"## evaluation-count targets ({scope})")
    inversion_evals = phases["ours inversion"].evaluations
    for name, count in planned_evaluations(setup.plan, args.cfg).items():
        print(f"planned {name}: {count} (with the inversion {inversion_evals + count})")
    generation, inversion = phases["ours generation"].evaluations, phases["ours inversion"].evaluations
    total = inversion + generation
    naive_total = phases["naive inversion"].evaluations + phases["naive generation"].evaluations
    fast = phases["ours fast generation"].evaluations
    checks = [
        (f"generation evals {generation} <= {targets['generation']}", generation <= targets["generation"]),
        (f"inversion evals {inversion} <= {targets['inversion']}", inversion <= targets["inversion"]),
        (f"total evals {total} <= {targets['total']} (official {targets['official']})", total <= targets["total"]),
        (
            f"naive baseline spent the official {targets['official']} evals (measured {naive_total})",
            naive_total == targets["official"],
        ),
        (f"fast-mode generation evals {fast} <= {targets['fast generation']}", fast <= targets["fast generation"]),
    ]
    if memory_ok is not None:
        checks.append(("attention-op peak memory of ours below the naive full-matrix op", memory_ok))
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'} {text}")
    load_end = os.getloadavg()[0]
    busy = max(setup.load_start, load_end) > args.threads + 0.5
    warning = "  (other processes competed for the CPUs: absolute times are inflated)" if busy else ""
    print(
        f"load average (1 min) at start {setup.load_start:.2f}, at end {load_end:.2f}{warning}; "
        f"benchmark wall time {time.perf_counter() - setup.run_start:.0f} s"
    )
    return 0 if all(ok for _, ok in checks) else 1
