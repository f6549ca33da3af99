"""Measurement tools of the benchmark: clocks, counters, instrumentation and the report's number formatting."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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

    def phase(self, name: str, clock: Clock) -> Phase:
        """The counts with the wall and CPU seconds ``clock`` charged to section ``name``."""
        return Phase(name, self.evaluations, self.calls, clock.wall[name], clock.cpu[name])


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


def progress(phase: str, done: int, total: int) -> None:
    """A progress note on stderr about every tenth of a phase (stdout keeps the report only)."""
    if done == total or done % max(1, total // 10) == 0:
        print(f"[bench] {phase} {done}/{total} ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)


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


def phase_line(label: str, phase: Phase) -> str:
    return (
        f"{label:<20} {phase.evaluations:>11d} {phase.calls:>6d} {phase.wall:>9.1f} {phase.cpu:>9.1f} "
        f"{phase.per_eval:>8.3f}"
    )


def time_interleaved(ops: dict, repeats: int) -> dict[str, list[float]]:
    """Wall seconds of each op, ``repeats`` times, the ops taking turns so they share the machine's load."""
    seconds: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(repeats):
        for name, op in ops.items():
            started = time.perf_counter()
            op()
            seconds[name].append(time.perf_counter() - started)
    return seconds


def peak_allocated(op):
    """The peak of live torch CPU allocations while ``op`` runs (profiler allocation events), and its output."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = op()
    events: list[tuple[int, int]] = []

    def walk(node) -> None:
        if type(node.extra_fields).__name__.endswith("Allocation"):
            events.append((node.start_time_ns, node.extra_fields.alloc_size))  # negative for a free
        for child in node.children:
            walk(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak, out
