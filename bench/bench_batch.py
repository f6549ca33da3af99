"""Benchmark the batch command: seconds per pair on the tiny pipeline, locally and as a Ray Data job.

Run from the repository root, with the project's Python environment active (Ray part: pip install -e '.[ray]'):

    python bench/bench_batch.py                    # 4 pairs, 30 steps from 10, 256 px, local then Ray
    python bench/bench_batch.py --no-ray           # local only
    python bench/bench_batch.py --steps 100 --start-step 32 --size 512   # the paper's schedule (slow on CPU)

The pilot set is the four images shipped in ``xattn_core/samples`` as four pairs; an image is inverted once
per role and prompt, 7 inversions in all (the report counts them). Every run writes into a fresh folder, so
every pair inverts and generates; a second run over the same folder measures resuming. Ray runs on a local
cluster with as many CPUs as this process may use, one actor holding one model replica with all of them,
which is what the local run gets too. Its cluster start is timed apart from the job: a cluster is usually
running already.
"""

# ruff: noqa: E402 (imports follow the sys.path set-up that lets this file run as a script)

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from xattn_core.app.cli import main as command_line
from xattn_core.app.diffusers_pipeline import SAMPLES
from xattn_core.tiny import save_tiny_pipeline

PAIRS = [  # structure, appearance, prompt, object word
    ("giraffe.jpg", "zebra.jpg", "A photo of an animal", "animal"),
    ("zebra.jpg", "giraffe.jpg", "A photo of an animal", "animal"),
    ("structure.png", "appearance.png", "A photo of an object", ""),
    ("giraffe.jpg", "appearance.png", "A photo of an animal", ""),
]


def write_pairs(folder: Path) -> Path:
    path = folder / "pairs.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("structure", "appearance", "prompt", "object_word"))
        writer.writerows(
            (SAMPLES / structure, SAMPLES / appearance, prompt, word) for structure, appearance, prompt, word in PAIRS
        )
    return path


def timed_batch(arguments: list[str]) -> float:
    """Seconds of one in-process ``python -m xattn_core batch`` run (its output swallowed; it must succeed)."""
    output = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        code = command_line(arguments)
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"batch failed (exit {code}):\n{output.getvalue()}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--start-step", type=int, default=10)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model = scratch / "tiny"
        save_tiny_pipeline(model)
        pairs = write_pairs(scratch)
        common = ["batch", str(pairs), "--model", str(model), "--device", "cpu", "--steps", str(args.steps)]
        common += ["--start-step", str(args.start_step), "--size", str(args.size)]
        count = len(PAIRS)
        print(f"{count} pairs, {args.steps} steps from {args.start_step}, {args.size} px, tiny pipeline, {cpus} CPUs")
        local = timed_batch([*common, "--out", str(scratch / "local")])
        resumed = timed_batch([*common, "--out", str(scratch / "local")])
        inversions = len(list((scratch / "local" / "inversions").glob("*.safetensors")))
        print(
            f"local: {local:.1f} s, {local / count:.2f} s per pair (model load and {inversions} inversions included); "
            f"rerun {resumed:.2f} s"
        )
        if args.no_ray:
            return
        import ray

        started = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, runtime_env={"py_modules": [str(ROOT / "xattn_core")]})
        start_up = time.perf_counter() - started
        try:
            on_ray = timed_batch([*common, "--out", str(scratch / "ray"), "--ray"])
            ray_resumed = timed_batch([*common, "--out", str(scratch / "ray"), "--ray"])
        finally:
            ray.shutdown()
        print(
            f"ray:   {on_ray:.1f} s, {on_ray / count:.2f} s per pair; rerun {ray_resumed:.2f} s; "
            f"cluster start {start_up:.1f} s"
        )
        print(
            f"ray / local: {on_ray / local:.2f} (overhead {on_ray - local:+.1f} s for {count} pairs, "
            "cluster start apart)"
        )


if __name__ == "__main__":
    main()
