"""Benchmark one appearance transfer: the engine against a naive port of the official code (SPEC 5).

Run from the repository root, with the project's Python environment active:

    python bench/bench_transfer.py            # paper defaults: 100 steps, start 32, 512 px
    python bench/bench_transfer.py --quick    # smoke run: 20 steps, start 6, 128 px, < 1 minute

Everything runs on a tiny random SD-1.5-shaped diffusers UNet (``xattn_core.tiny.tiny_unet``:
512 px -> 64x64 latent, decoder self-attention at 64x64 and 32x32 tokens, 8 heads), on CPU.
Per transfer of one appearance + one structure image it measures, in one run:

1. ours: ``xattn_core.inversion.invert`` on both images batched from the start step, then
   ``xattn_core.transfer.transfer`` (the engine as it is, SDPA for ordinary attention);
2. naive: what the official code does: every image inverted separately over all steps
   (2 images x N steps x 2 for cfg), then two full 3-row model calls per generation step (swap and
   no swap) with explicit full-matrix softmax attention, the contrast applied to the whole matrix,
   in every decoder self-attention layer (processor and loop below, reusing the engine's plan,
   DDPM step and AdaIN, whose semantics are the official ones);
3. plain: the same generation steps for one row, no swap, for scale;
4. ours in fast mode: ours' inversion also keeps its predictions and swapping-level keys/values
   (capture only, no extra evaluation), and a second generation replays the appearance and
   structure paths from them, evaluating the output row only. It runs after the interleaved
   phases, on the same backend. At the paper's settings (inversion cfg 3.5, generation cfg 1) fast
   mode is an approximation, so its output is compared with ours, not required to equal it.

It also measures the peak memory of the cross-image attention op alone at SD 1.5 level 0
(64x64 query and key tokens, 8 heads, head dim 40), ``contrasted_attention`` against a
full-matrix implementation, each in a fresh subprocess, and prints PASS/FAIL for the SPEC 5
evaluation-count targets (exit status 1 on any FAIL).

Threads: the default run uses 2 torch threads. ``--quick`` uses 1: with 2 OpenMP threads on a
2-core machine, every parallel region waits for whichever thread shares a core with another busy
process, and the many small ops of a 128 px smoke run then slow down ~10x (measured: 311 s with
2 threads against 25 s with 1 while a test suite ran beside it). Absolute times from a loaded
machine are inflated either way; the three paths are interleaved step by step so that their
ratios see the same load. The default run takes ~20 minutes on 2 idle cores, most of it in the naive
generation's explicit 4096 x 4096 attention matrices; ``--size 256`` is much faster.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

OUT, STYLE, STRUCT = 0, 1, 2  # row order of the official three-path batch

# the SD 1.5 level-0 decoder self-attention the memory numbers are about
MEMORY_TOKENS, MEMORY_HEADS, MEMORY_DIM_HEAD = 64 * 64, 8, 40
MIB = 2**20


# --------------------------------------------------------------------------------------------
# the naive attention (what the official code computes)
# --------------------------------------------------------------------------------------------


def naive_contrasted_attention(query, key, value, heads: int, contrast: float):
    """Full-matrix softmax attention of ``[rows, tokens, heads * dim]`` tensors, every row contrasted.

    As the official ``my_scaled_dot_product_attention``: the whole weight matrix is materialised
    and the contrast ``(A - mean_keys(A)) * c + mean_keys(A)``, clipped to [0, 1], is applied to it.
    """
    rows, query_tokens, width = query.shape
    dim_head = width // heads
    q, k, v = (t.reshape(rows, -1, heads, dim_head).transpose(1, 2) for t in (query, key, value))
    weights = torch.softmax(q @ k.transpose(-1, -2) * dim_head**-0.5, dim=-1)
    mean = weights.mean(dim=-1, keepdim=True)
    weights = ((weights - mean) * contrast + mean).clamp(0.0, 1.0)
    return (weights @ v).transpose(1, 2).reshape(rows, query_tokens, width)


@dataclass
class NaiveSwapState:
    """What the naive processors do during the model call in progress."""

    levels: frozenset = frozenset()  # decoder attention levels that swap in this call
    source_row: int | None = None  # STYLE or STRUCT: whose keys/values the output row gets
    contrast: float = 1.67
    attention_seconds: float = 0.0  # wall time of the attention maths (after the projections)


class NaiveCrossImageProcessor:
    """Official-style decoder self-attention: explicit weights for every row, in-batch key/value swap."""

    def __init__(self, level: int, state: NaiveSwapState) -> None:
        self.level = level
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise RuntimeError("the naive processor handles plain self-attention only")
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        swap = self.level in self.state.levels and self.state.source_row is not None
        if swap:
            key, value = key.clone(), value.clone()
            key[OUT], value[OUT] = key[self.state.source_row], value[self.state.source_row]
        started = time.perf_counter()
        rows, tokens, width = query.shape
        heads = attn.heads
        dim_head = width // heads
        q, k, v = (t.reshape(rows, -1, heads, dim_head).transpose(1, 2) for t in (query, key, value))
        weights = torch.softmax(q @ k.transpose(-1, -2) * dim_head**-0.5, dim=-1)
        if swap:
            out_weights = weights[OUT]
            mean = out_weights.mean(dim=-1, keepdim=True)
            weights[OUT] = ((out_weights - mean) * self.state.contrast + mean).clamp(0.0, 1.0)
        out = (weights @ v).transpose(1, 2).reshape(rows, tokens, width)
        del weights
        self.state.attention_seconds += time.perf_counter() - started
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def install_naive_processors(unet, state: NaiveSwapState) -> int:
    """Put the naive processor on every decoder self-attention layer; returns how many."""
    from xattn_core.diffusers_backend import decoder_attention_levels

    processors = dict(unet.attn_processors)
    installed = 0
    for block_index, level in decoder_attention_levels(unet).items():
        for name in processors:
            if name.startswith(f"up_blocks.{block_index}.") and name.endswith("attn1.processor"):
                processors[name] = NaiveCrossImageProcessor(level, state)
                installed += 1
    unet.set_attn_processor(processors)
    return installed


# --------------------------------------------------------------------------------------------
# phases
# --------------------------------------------------------------------------------------------


class Clock:
    """Wall and CPU seconds charged to the innermost open section (an inner section pauses the outer)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._stack: list[str] = []
        self._mark = (time.perf_counter(), time.process_time())

    def _charge(self) -> None:
        now = (time.perf_counter(), time.process_time())
        if self._stack:
            label = self._stack[-1]
            self.wall[label] = self.wall.get(label, 0.0) + now[0] - self._mark[0]
            self.cpu[label] = self.cpu.get(label, 0.0) + now[1] - self._mark[1]
        self._mark = now

    @property
    def current(self) -> str | None:
        return self._stack[-1] if self._stack else None

    @contextmanager
    def section(self, label: str):
        self._charge()
        self._stack.append(label)
        try:
            yield
        finally:
            self._charge()
            self._stack.pop()


@dataclass
class Phase:
    name: str
    evaluations: int
    calls: int
    wall: float
    cpu: float

    @property
    def per_eval(self) -> float:
        return self.wall / max(self.evaluations, 1)

    def __add__(self, other: Phase) -> Phase:
        return Phase(
            "",
            self.evaluations + other.evaluations,
            self.calls + other.calls,
            self.wall + other.wall,
            self.cpu + other.cpu,
        )


class Counted:
    """Evaluations and model calls a backend spends inside a ``with`` block."""

    def __init__(self, backend) -> None:
        self.backend = backend

    def __enter__(self) -> Counted:
        self.evals0, self.calls0 = self.backend.image_evaluations, self.backend.model_calls
        return self

    def __exit__(self, *exc) -> None:
        self.evaluations = self.backend.image_evaluations - self.evals0
        self.calls = self.backend.model_calls - self.calls0


@contextmanager
def timing_wrapper(module, name: str, clock: Clock, seconds: dict, calls: dict):
    """Temporarily wrap ``module.name`` to add its wall time and call count to the clock's current section.

    Instrumentation only: the wrapped function is called unchanged.
    """
    original = getattr(module, name)

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            key = (clock.current, name)
            seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - started
            calls[key] = calls.get(key, 0) + 1

    setattr(module, name, timed)
    try:
        yield
    finally:
        setattr(module, name, original)


def naive_inversion(backend, clean, sigmas, seed: int, result: dict):
    """Official inversion: each image on its own, all N steps, z_{N-1} zeroed.

    A generator that yields after every model call (so the caller can interleave it with ours);
    leaves ``result["latents"]`` ``[N+1, B, C, H, W]`` and ``result["maps"]`` ``[N, B, C, H, W]``.
    """
    from xattn_core.inversion import draw_noisy_latents
    from xattn_core.schedule import noise_map

    noisy = draw_noisy_latents(clean, sigmas, seed)  # the same x_i as ours, so the maps are comparable
    steps = len(sigmas) - 1
    per_image = []
    for b in range(clean.shape[0]):
        maps = []
        for i in range(steps):
            x, x_next = noisy[i][b : b + 1], noisy[i + 1][b : b + 1]
            eps = backend.predict_noise(x, float(sigmas[i]))
            maps.append(noise_map(x, x_next, eps, float(sigmas[i]), float(sigmas[i + 1])))
            yield
        maps[-1] = torch.zeros_like(maps[-1])
        per_image.append(torch.stack(maps))
    result["latents"], result["maps"] = torch.stack(noisy), torch.cat(per_image, dim=1)


def naive_generation(backend, state: NaiveSwapState, latents, maps, sigmas, plan, result: dict):
    """Official generation: rows [output, appearance, structure], swap and no-swap call every step.

    A generator that yields after every step; leaves the final three rows in ``result["rows"]``.
    """
    from xattn_core.adain import adain
    from xattn_core.plan import KeyValueSource
    from xattn_core.schedule import ddpm_step

    start = plan[0].global_step
    appearance_x, structure_x = latents[start][0:1], latents[start][1:2]
    x = torch.cat([structure_x, appearance_x, structure_x])
    for step in plan:
        i = step.global_step
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        state.levels = step.swap_levels
        state.source_row = STRUCT if step.kv_source is KeyValueSource.STRUCTURE else STYLE
        eps_swap = backend.predict_noise(x, sigma)
        state.levels, state.source_row = frozenset(), None
        eps_plain = backend.predict_noise(x, sigma)
        # the official guidance covers all rows; appearance/structure rows are equal in both calls
        eps = eps_swap if step.swap_weight is None else eps_plain + step.swap_weight * (eps_swap - eps_plain)
        z = torch.cat([maps[i][1:2], maps[i][0:1], maps[i][1:2]])  # structure's, appearance's, structure's
        x = ddpm_step(x, eps, sigma, sigma_next, z)
        if step.adain:
            x[OUT : OUT + 1] = adain(x[OUT : OUT + 1], x[STYLE : STYLE + 1])
        yield
    result["rows"] = x


def plain_generation(backend, structure, sigmas, plan, result: dict):
    """One row, no swap: the structure path alone over the same steps (a generator, one yield per step)."""
    from xattn_core.schedule import ddpm_step

    x = structure.latent_at(plan[0].global_step).clone()
    for step in plan:
        i = step.global_step
        eps = backend.predict_noise(x, float(sigmas[i]), None)
        x = ddpm_step(x, eps, float(sigmas[i]), float(sigmas[i + 1]), structure.noise_at(i))
        yield
    result["output"] = x


def drain(generator) -> None:
    for _ in generator:
        pass


def attention_kernels(backend, latents, sigma) -> dict[str, int]:
    """Attention-related aten ops one model call of ``backend`` runs (profiled)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        backend.predict_noise(latents, sigma, None)
    counts: dict[str, int] = {}
    for event in prof.key_averages():
        if "scaled_dot_product" in event.key or event.key in ("aten::_softmax", "aten::softmax"):
            counts[event.key] = event.count
    return counts


# --------------------------------------------------------------------------------------------
# memory of the attention op, one fresh subprocess per measurement
# --------------------------------------------------------------------------------------------


def _proc_status_bytes(field: str) -> int | None:
    """``VmRSS`` or ``VmHWM`` of this process from /proc/self/status (Linux), in bytes."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _maxrss_bytes() -> int:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # Linux reports KiB


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def memory_worker(implementation: str, method: str, threads: int) -> None:
    """Run one attention op once and print one JSON line with its peak memory."""
    torch.set_num_threads(threads)
    from xattn_core.attention import DEFAULT_MEMORY_BUDGET, contrasted_attention

    generator = torch.Generator().manual_seed(0)
    width = MEMORY_HEADS * MEMORY_DIM_HEAD
    query, key, value = (torch.randn(1, MEMORY_TOKENS, width, generator=generator) for _ in range(3))
    if implementation == "ours":
        op = lambda: contrasted_attention(query, key, value, MEMORY_HEADS, 1.67, DEFAULT_MEMORY_BUDGET)  # noqa: E731
    else:
        op = lambda: naive_contrasted_attention(query, key, value, MEMORY_HEADS, 1.67)  # noqa: E731
    result: dict = {"implementation": implementation, "method": method}
    if method == "rusage":
        # ru_maxrss of a subprocess starts at its parent's high-water mark (Linux carries it over
        # exec), and importing torch peaks above the current RSS anyway; so the kernel's peak-RSS
        # counter (VmHWM, the value ru_maxrss reports) is reset here, after the inputs are built
        reset = _reset_peak_rss() and _proc_status_bytes("VmHWM") is not None
        rss_before = _proc_status_bytes("VmRSS") if reset else _maxrss_bytes()
        peak_before = _proc_status_bytes("VmHWM") if reset else _maxrss_bytes()
        start = time.perf_counter()
        out = op()
        result["seconds"] = time.perf_counter() - start
        peak_after = _proc_status_bytes("VmHWM") if reset else _maxrss_bytes()
        result["peak_bytes"] = peak_after - rss_before
        result["conclusive"] = peak_after > peak_before  # the op set a new high-water mark
        result["counter"] = "VmHWM after reset" if reset else "ru_maxrss"
    else:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = op()
        events = []

        def walk(node):
            fields = node.extra_fields
            if type(fields).__name__.endswith("Allocation"):
                events.append((node.start_time_ns, fields.alloc_size))
            for child in node.children:
                walk(child)

        for root in prof.profiler.kineto_results.experimental_event_tree():
            walk(root)
        live = peak = 0
        for _, size in sorted(events):
            live += size
            peak = max(peak, live)
        result["peak_bytes"] = peak
        result["conclusive"] = bool(events)
    result["checksum"] = float(out.double().abs().sum())
    print(json.dumps(result))


def measure_memory(implementation: str, method: str, threads: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", implementation, method]
    command += ["--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"memory worker {implementation}/{method} failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])


# --------------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------------


def eval_targets(steps: int, start: int, plan, inversion_cfg: float, cfg: float) -> dict[str, int]:
    """SPEC 5 targets, derived from the step counts (the paper defaults give 272, 261, 533, 808, 136).

    Counts are image-evaluations, so a guided phase (cfg != 1: cond + uncond) counts each row twice.
    """
    from xattn_core.plan import model_evaluations

    inversion_chunks, generation_chunks = (1 if value == 1.0 else 2 for value in (inversion_cfg, cfg))
    generation_steps = steps - start
    inversion = 2 * (steps - start) * inversion_chunks
    generation = model_evaluations(plan) * generation_chunks
    official = 2 * steps * inversion_chunks + generation_steps * 2 * 3 * generation_chunks
    return {
        "inversion": inversion,
        "generation": generation,
        "total": inversion + generation,
        "official": official,
        "fast generation": 2 * generation_steps * generation_chunks,
    }


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="schedule length N (default 100; quick 20)")
    parser.add_argument("--start", type=int, default=None, help="generation start step (default 32; quick 6)")
    parser.add_argument(
        "--size", type=int, default=None, help="image size in px, multiple of 64 (default 512; quick 128)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 steps, start 6, 128 px")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default 2; 1 with --quick, see the module docstring)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inversion-cfg", type=float, default=3.5)
    parser.add_argument("--cfg", type=float, default=1.0)
    parser.add_argument("--swap-guidance", type=float, default=3.5)
    parser.add_argument("--contrast", type=float, default=1.67)
    parser.add_argument("--no-freeu", action="store_true", help="run without the official FreeU variant")
    parser.add_argument("--skip-memory", action="store_true", help="skip the attention-op memory measurement")
    parser.add_argument("--memory-worker", nargs=2, metavar=("IMPL", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = (20, 6, 128) if args.quick else (100, 32, 512)
    args.steps = quick[0] if args.steps is None else args.steps
    args.start = quick[1] if args.start is None else args.start
    args.size = quick[2] if args.size is None else args.size
    args.threads = (1 if args.quick else 2) if args.threads is None else args.threads
    if args.size % 64:
        parser.error(f"--size must be a multiple of 64 px, got {args.size}")
    if not 0 <= args.start < args.steps:
        parser.error(f"--start must be in 0..{args.steps - 1}")
    return args


def engine_revision() -> str:
    """The checkout's commit, flagged when the engine has uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "xattn_core"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + (" with uncommitted changes in xattn_core/" if dirty else "")


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "n/a"


def progress(phase: str, done: int, total: int) -> None:
    """A progress note on stderr about every tenth of a phase (stdout keeps the report only)."""
    if done == total or done % max(1, total // 10) == 0:
        print(f"[bench] {phase} {done}/{total} ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)


def phase_line(label: str, phase: Phase) -> str:
    return (
        f"{label:<20} {phase.evaluations:>11d} {phase.calls:>6d} {phase.wall:>9.1f} {phase.cpu:>9.1f} "
        f"{phase.per_eval:>8.3f}"
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_worker:
        memory_worker(*args.memory_worker, threads=args.threads)
        return 0

    import diffusers

    from xattn_core.diffusers_backend import DiffusersBackend
    from xattn_core.freeu import FreeUSettings
    from xattn_core.inversion import CacheSettings, invert
    from xattn_core.plan import PlanSettings, build_plan
    from xattn_core.schedule import paper_sigmas
    from xattn_core.tiny import tiny_context, tiny_unet
    from xattn_core.transfer import TransferSettings, transfer

    run_start = time.perf_counter()
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
        f"contrast {args.contrast}, "
        f"official FreeU variant {'off' if args.no_freeu else 'on'}, "
        f"seed {args.seed}"
    )

    # three copies of the same weights, so each measured path keeps its own processors and counters
    ours_unet = tiny_unet(seed=0)
    naive_unet, plain_unet = copy.deepcopy(ours_unet), copy.deepcopy(ours_unet)
    positive, negative = tiny_context(1), tiny_context(2)
    clean = torch.randn(2, 4, latent, latent, generator=torch.Generator().manual_seed(args.seed + 21))
    sigmas = paper_sigmas(steps=args.steps)
    freeu = None if args.no_freeu else FreeUSettings()
    plan_settings = PlanSettings(swap_guidance=args.swap_guidance)
    plan = build_plan(args.steps, args.start, plan_settings)
    settings = TransferSettings(plan=plan_settings, contrast=args.contrast)
    probe_sigma = float(sigmas[args.start])
    clock = Clock()
    phases: dict[str, Phase] = {}

    ours = DiffusersBackend(ours_unet, positive, negative, args.inversion_cfg, freeu=freeu)
    naive = DiffusersBackend(naive_unet, positive, negative, args.inversion_cfg, freeu=freeu)
    plain = DiffusersBackend(plain_unet, positive, negative, args.cfg, freeu=freeu)
    processors: dict[str, int] = {}
    for processor in ours_unet.attn_processors.values():
        processors[type(processor).__name__] = processors.get(type(processor).__name__, 0) + 1
    # (untimed) the first call of each path doubles as warm-up
    ours_kernels = attention_kernels(ours, clean, probe_sigma)
    naive.predict_noise(clean[:1], probe_sigma)
    plain.predict_noise(clean[:1], probe_sigma)

    # -- inversion: ours and naive, interleaved call by call so load changes hit both alike ----
    naive_inverted: dict = {}
    naive_steps = naive_inversion(naive, clean, sigmas, args.seed, naive_inverted)
    naive_calls_total, naive_calls_done = 2 * args.steps, 0

    def after_inversion_call(done: int, total: int) -> None:
        nonlocal naive_calls_done
        progress("inversion", done, total)
        with clock.section("naive inversion"):
            while naive_calls_done < naive_calls_total * done // total:
                next(naive_steps)
                naive_calls_done += 1

    with Counted(ours) as ours_count, Counted(naive) as naive_count:
        with clock.section("ours inversion"):
            both = invert(
                ours.predict_noise,
                clean,
                sigmas,
                args.start,
                args.seed,
                callback=after_inversion_call,
                # kept for phase 4 as the CLI keeps it (cond branch only for an unguided generation): no extra
                # evaluation, but the copies out of each call are inside this phase's time
                cache=CacheSettings(branches=frozenset({0}) if args.cfg == 1.0 else None),
            )
        with clock.section("naive inversion"):
            drain(naive_steps)
    for name, count in (("ours inversion", ours_count), ("naive inversion", naive_count)):
        phases[name] = Phase(name, count.evaluations, count.calls, clock.wall[name], clock.cpu[name])
    map_difference = (both.noise_maps - naive_inverted["maps"][args.start :]).abs().max().item()
    cached = both.attention
    assert cached is not None
    fast_appearance, fast_structure = both.select([0]), both.select([1])  # phase 4, selected outside its timing
    normal = dataclasses.replace(both, attention=None)  # phases 1-3: the normal mode
    appearance, structure = normal.select([0]), normal.select([1])

    # -- generation: ours, naive and plain, interleaved step by step ------------------------
    ours.with_guidance(positive, negative, args.cfg)  # as xattn_core.diffusers_pipeline does
    naive.with_guidance(positive, negative, args.cfg)
    state = NaiveSwapState(contrast=args.contrast)
    naive_layers = install_naive_processors(naive_unet, state)  # naive.close() restores the originals
    naive_kernels = attention_kernels(naive, clean[:1], probe_sigma)  # warm-up of the naive processors
    naive_result: dict = {}
    plain_result: dict = {}
    naive_steps = naive_generation(
        naive, state, naive_inverted["latents"], naive_inverted["maps"], sigmas, plan, naive_result
    )
    plain_steps = plain_generation(plain, structure, sigmas, plan, plain_result)

    def after_generation_step(index: int, total: int, *_latents) -> None:
        progress("generation", index + 1, total)
        with clock.section("naive generation"):
            next(naive_steps)
        with clock.section("plain generation"):
            next(plain_steps)

    import xattn_core.attention
    import xattn_core.diffusers_backend

    attention_seconds: dict = {}
    attention_calls: dict = {}
    state.attention_seconds = 0.0
    with (
        Counted(ours) as ours_count,
        Counted(naive) as naive_count,
        Counted(plain) as plain_count,
        timing_wrapper(xattn_core.diffusers_backend, "route_attention", clock, attention_seconds, attention_calls),
        timing_wrapper(xattn_core.attention, "contrasted_attention", clock, attention_seconds, attention_calls),
    ):
        with clock.section("ours generation"):
            result = transfer(ours, appearance, structure, settings, callback=after_generation_step)
        with clock.section("naive generation"):
            drain(naive_steps)
        with clock.section("plain generation"):
            drain(plain_steps)
    for name, count in (
        ("ours generation", ours_count),
        ("naive generation", naive_count),
        ("plain generation", plain_count),
    ):
        phases[name] = Phase(name, count.evaluations, count.calls, clock.wall[name], clock.cpu[name])
    # -- ours in fast mode: output rows only, the paths replayed from the inversion's cache -----
    with Counted(ours) as fast_count:
        with clock.section("ours fast generation"):
            fast = transfer(
                ours,
                fast_appearance,
                fast_structure,
                settings,
                callback=lambda index, total, *_: progress("fast generation", index + 1, total),
            )
    phases["ours fast generation"] = Phase(
        "ours fast generation",
        fast_count.evaluations,
        fast_count.calls,
        clock.wall["ours fast generation"],
        clock.cpu["ours fast generation"],
    )
    cache_branches = " + ".join({0: "cond", 1: "uncond"}[branch] for branch in sorted(cached.branches))
    fast_difference = (fast.output - result.output).abs().max().item()
    for backend in (ours, naive, plain):
        backend.close()
    naive_attention_seconds = state.attention_seconds
    naive_rows = naive_result["rows"]
    output_difference = (result.output - naive_rows[OUT : OUT + 1]).abs().max().item()
    structure_difference = (result.structure - naive_rows[STRUCT : STRUCT + 1]).abs().max().item()

    print(
        f"attention, ours: processors {processors}; SwapAttentionProcessor sends ordinary rows to "
        "F.scaled_dot_product_attention and swapped output rows to contrasted_attention (query blocks)"
    )
    print(f"  aten attention ops in one ours model call (no swap): {ours_kernels}")
    print(
        f"attention, naive generation: NaiveCrossImageProcessor (explicit softmax(QK^T) matrices for all rows) on "
        f"{naive_layers} decoder self-attention layers, SDPA elsewhere; naive inversion runs the same SDPA path as ours"
    )
    print(f"  aten attention ops in one naive model call: {naive_kernels}")
    print("phases interleaved (after each model call or step of ours, the naive and plain paths catch up)")
    print()
    ours_total = phases["ours inversion"] + phases["ours generation"]
    fast_total = phases["ours inversion"] + phases["ours fast generation"]
    naive_total = phases["naive inversion"] + phases["naive generation"]
    print("## model evaluations and time per phase (one transfer: 1 appearance + 1 structure image)")
    print(f"{'phase':<20} {'image-evals':>11} {'calls':>6} {'wall s':>9} {'cpu s':>9} {'s/eval':>8}")
    for name, phase in phases.items():
        print(phase_line(name, phase))
    print(phase_line("ours total", ours_total))
    print(phase_line("ours fast total", fast_total))
    print(phase_line("naive total", naive_total))
    print()
    print("## ratios ours / naive (same run)")
    print(f"{'':<12} {'evals':>7} {'wall':>7} {'cpu':>7} {'s/eval':>7}")
    for label, mine, theirs in (
        ("inversion", phases["ours inversion"], phases["naive inversion"]),
        ("generation", phases["ours generation"], phases["naive generation"]),
        ("total", ours_total, naive_total),
        ("fast gen.", phases["ours fast generation"], phases["naive generation"]),
        ("fast total", fast_total, naive_total),
    ):
        print(
            f"{label:<12} {ratio(mine.evaluations, theirs.evaluations):>7} {ratio(mine.wall, theirs.wall):>7} "
            f"{ratio(mine.cpu, theirs.cpu):>7} {ratio(mine.per_eval, theirs.per_eval):>7}"
        )
    fast_phase, normal_phase = phases["ours fast generation"], phases["ours generation"]
    print(
        f"fast mode / ours generation (run after it, not interleaved): evals "
        f"{ratio(fast_phase.evaluations, normal_phase.evaluations)}, wall {ratio(fast_phase.wall, normal_phase.wall)}; "
        f"cache kept by the inversion {cached.nbytes / MIB:.0f} MiB (float32, 2 images, {cache_branches}); "
        f"output max |fast - ours| {fast_difference:.2e} (an approximation unless inversion cfg == generation cfg, "
        "and random weights amplify any difference; tests/test_fast_mode.py asserts equality under matched cfg)"
    )
    base = phases["plain generation"]
    for name in ("ours generation", "naive generation", "ours fast generation"):
        phase = phases[name]
        print(
            f"{name} / plain sampling of the same steps: evals {ratio(phase.evaluations, base.evaluations)}, "
            f"wall {ratio(phase.wall, base.wall)}"
        )
    ours_gen = ("ours generation", "route_attention")
    contrasted = ("ours generation", "contrasted_attention")
    print(
        f"decoder self-attention wall time in generation: ours {attention_seconds.get(ours_gen, 0.0):.1f} s "
        f"(route_attention, {attention_calls.get(ours_gen, 0)} layer calls; of it contrasted_attention "
        f"{attention_seconds.get(contrasted, 0.0):.1f} s in {attention_calls.get(contrasted, 0)} calls), naive "
        f"{naive_attention_seconds:.1f} s (explicit matrices, all rows), plain "
        f"{attention_seconds.get(('plain generation', 'route_attention'), 0.0):.1f} s (SDPA)"
    )
    print(
        f"same results: max |z_ours - z_naive| over steps {args.start}..{args.steps - 1}: {map_difference:.2e}; "
        f"final latents max |ours - naive|: output {output_difference:.2e}, structure path "
        f"{structure_difference:.2e} (output std {result.output.std().item():.2f})"
    )
    print()

    # -- attention-op memory ------------------------------------------------------------------
    failed = False
    if not args.skip_memory:
        from xattn_core.attention import DEFAULT_MEMORY_BUDGET

        print(
            f"## peak memory of the cross-image attention op alone: 1 row, {MEMORY_TOKENS} query and key tokens "
            f"(64x64), {MEMORY_HEADS} heads, head dim {MEMORY_DIM_HEAD} (SD 1.5 level 0), float32"
        )
        print(
            f"one full weight matrix: {MEMORY_HEADS * MEMORY_TOKENS**2 * 4 / MIB:.0f} MiB; ours: contrasted_attention "
            f"with its default budget of {DEFAULT_MEMORY_BUDGET / MIB:.0f} MiB of weights per query chunk"
        )
        methods = ("rusage",) if args.quick else ("rusage", "profiler")
        measured = {(impl, m): measure_memory(impl, m, args.threads) for m in methods for impl in ("ours", "naive")}
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
        memory_ok = mine["peak_bytes"] < theirs["peak_bytes"]
        print()

    # -- targets ------------------------------------------------------------------------------
    targets = eval_targets(args.steps, args.start, plan, args.inversion_cfg, args.cfg)
    paper = (args.steps, args.start, args.inversion_cfg, args.cfg, args.swap_guidance) == (100, 32, 3.5, 1.0, 3.5)
    if paper:
        expected = {"inversion": 272, "generation": 261, "total": 533, "official": 808, "fast generation": 136}
        assert targets == expected, targets
    scaled = f"{args.steps} steps, start {args.start}, cfg {args.inversion_cfg} / {args.cfg}"
    scope = "SPEC 5" if paper else f"SPEC 5 scaled to {scaled}"
    print(f"## evaluation-count targets ({scope})")
    checks = [
        (
            f"generation evals {phases['ours generation'].evaluations} <= {targets['generation']}",
            phases["ours generation"].evaluations <= targets["generation"],
        ),
        (
            f"inversion evals {phases['ours inversion'].evaluations} <= {targets['inversion']}",
            phases["ours inversion"].evaluations <= targets["inversion"],
        ),
        (
            f"total evals {ours_total.evaluations} <= {targets['total']} (official {targets['official']})",
            ours_total.evaluations <= targets["total"],
        ),
        (
            f"naive baseline spent the official {targets['official']} evals (measured {naive_total.evaluations})",
            naive_total.evaluations == targets["official"],
        ),
        (
            f"fast-mode generation evals {fast_phase.evaluations} <= {targets['fast generation']}",
            fast_phase.evaluations <= targets["fast generation"],
        ),
    ]
    if not args.skip_memory:
        checks.append(("attention-op peak memory of ours below the naive full-matrix op", memory_ok))
    for text, ok in checks:
        failed |= not ok
        print(f"{'PASS' if ok else 'FAIL'} {text}")
    load_end = os.getloadavg()[0]
    busy = max(load_start, load_end) > args.threads + 0.5
    warning = "  (other processes competed for the CPUs: absolute times are inflated)" if busy else ""
    print(
        f"load average (1 min) at start {load_start:.2f}, at end {load_end:.2f}{warning}; "
        f"benchmark wall time {time.perf_counter() - run_start:.0f} s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
