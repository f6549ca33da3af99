"""Peak memory of the cross-image attention op alone, one op per fresh process.

    python bench/memory_worker.py ours|naive|previous rusage|profiler --threads N

runs one op once at SD 1.5 level 0 (64x64 query and key tokens, 8 heads, head dim 40, float32) and
prints one JSON line: ``peak_bytes``, whether the measurement is ``conclusive``, the output's
``checksum`` and, for rusage, the op's ``seconds``. ``ours`` is ``xattn_core.attention.contrasted_attention``
with the engine's default contrast and memory budget (``TransferSettings``), ``naive`` the full-matrix op
of ``naive_port`` with the same contrast, ``previous`` the engine's op before its rewrite
(``attention_ops.previous_contrasted_attention``). The benches call
:func:`measure_memory`, which runs this file in a fresh subprocess, so that nothing the bench itself
allocated shows in the peak.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.measure import peak_allocated  # noqa: E402

# the SD 1.5 level-0 decoder self-attention the memory numbers are about
MEMORY_TOKENS, MEMORY_HEADS, MEMORY_DIM_HEAD = 64 * 64, 8, 40
MIB = 2**20


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


def _peak_by_rusage(op, result: dict):
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
    return out


def _peak_by_profiler(op, result: dict):
    peak, out = peak_allocated(op)
    result["peak_bytes"] = peak
    result["conclusive"] = peak > 0
    return out


def memory_worker(implementation: str, method: str, threads: int) -> None:
    """Run one attention op once and print one JSON line with its peak memory."""
    torch.set_num_threads(threads)
    from bench.naive_port import naive_attention
    from xattn_core.attention import contrasted_attention
    from xattn_core.transfer import TransferSettings

    generator = torch.Generator().manual_seed(0)
    width = MEMORY_HEADS * MEMORY_DIM_HEAD
    query, key, value = (torch.randn(1, MEMORY_TOKENS, width, generator=generator) for _ in range(3))
    contrast, budget = TransferSettings().contrast, TransferSettings().memory_budget
    if implementation == "ours":
        op = lambda: contrasted_attention(query, key, value, MEMORY_HEADS, contrast, budget)  # noqa: E731
    elif implementation == "previous":
        from bench.attention_ops import previous_contrasted_attention

        op = lambda: previous_contrasted_attention(query, key, value, MEMORY_HEADS, contrast, budget)  # noqa: E731
    else:
        op = lambda: naive_attention(query, key, value, MEMORY_HEADS, contrast)  # noqa: E731
    result: dict = {"implementation": implementation, "method": method}
    out = (_peak_by_rusage if method == "rusage" else _peak_by_profiler)(op, result)
    result["checksum"] = float(out.double().abs().sum())
    print(json.dumps(result))


def measure_memory(implementation: str, method: str, threads: int) -> dict:
    """Run this file for one op in a fresh subprocess and return its JSON result."""
    command = [sys.executable, str(Path(__file__).resolve()), implementation, method, "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"memory worker {implementation}/{method} failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("implementation", choices=("ours", "naive", "previous"))
    parser.add_argument("method", choices=("rusage", "profiler"))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args(argv)
    memory_worker(args.implementation, args.method, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
