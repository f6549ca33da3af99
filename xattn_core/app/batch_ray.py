"""``batch --ray``: the batch as Ray Data jobs, one model replica per actor (imported only with ``--ray``).

Each actor of a ``map_batches`` actor pool holds one :class:`~.batch.PairRunner` and calls the functions a local
batch calls, so outputs, records, inversion files and resuming are the same. On CUDA each actor takes one GPU.
Actors write into the batch folder themselves: it and the images must have the same paths on every node (a
shared filesystem); the driver shows progress and writes the contact sheet.

Two jobs, so that every image is inverted once however many actors run: first each missing inversion, then
the pairs, whose inversions are then all in the cache. Pairs finished earlier never reach Ray, except to be
scored when ``--dino`` is new to them (their inversions are then made again if they were deleted).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import ray
import ray.data

from .batch import BatchSettings, InversionJob, PairOutcome, PairRunner, inversion_jobs
from .batch_csv import Pair

PACKAGE = Path(__file__).resolve().parents[1]  # xattn_core, engine and app, shipped to the workers


class _Replica:
    """A Ray Data callable class: built once per actor, then called with batches of item indices."""

    def __init__(self, settings: BatchSettings, items: list, force: bool, threads: int | None) -> None:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)  # the CPUs Ray reserved for this actor, not all the node's
        self.runner, self.items, self.force = PairRunner(settings), items, force

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"result": np.array([self.run(self.items[int(index)]) for index in batch["index"]])}

    def run(self, item) -> str:
        raise NotImplementedError


class _Inverter(_Replica):
    def run(self, item: InversionJob) -> str:
        """An empty string, or why the inversion failed (the pairs that need it will then say so)."""
        try:
            self.runner.inversion(item, self.force)
        except (OSError, ValueError, RuntimeError) as error:
            return f"cannot invert {item.image.path}: {error}"
        return ""


class _Transferrer(_Replica):
    def run(self, item: Pair) -> str:
        return self.runner.run_pair(item, self.force, reinvert=False).to_json()  # stage one did the inverting


def _results(items: list, replica: type[_Replica], settings: BatchSettings, force: bool, pool: dict):
    """Each item's result string, as the actors finish them."""
    dataset = ray.data.from_items([{"index": i} for i in range(len(items))], override_num_blocks=len(items))
    threads = None if settings.device == "cuda" else max(1, int(pool["num_cpus"]))
    mapped = dataset.map_batches(
        replica,
        fn_constructor_kwargs=dict(settings=settings, items=items, force=force, threads=threads),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=min(pool["actors"], len(items))),
        num_cpus=pool["num_cpus"],
        num_gpus=pool["num_gpus"],
    )
    for row in mapped.iter_rows():
        yield str(row["result"])


def run_on_ray(
    pairs: list[Pair],
    settings: BatchSettings,
    force: bool,
    report: Callable[[PairOutcome], None],
    actors: int | None = None,
    cpus: float | None = None,
    pick_device: bool = False,
) -> None:
    """Run the batch on the Ray cluster of ``RAY_ADDRESS`` (or one started here), reporting every pair."""
    if not ray.is_initialized():  # ship this pack's code, whatever the nodes have installed
        ray.init(runtime_env={"py_modules": [str(PACKAGE)]})
    ray.data.DataContext.get_current().enable_progress_bars = False  # the pairs bar is the progress shown
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if pick_device:
        settings = replace(settings, device="cuda" if gpus else "cpu")
    on_gpu = settings.device == "cuda"
    actors = actors or (max(gpus, 1) if on_gpu else 1)
    pool = {
        "actors": actors,
        "num_gpus": 1 if on_gpu else 0,
        "num_cpus": cpus or (1 if on_gpu else max(1, int(resources.get("CPU", 1)) // actors)),
    }
    here = PairRunner(settings)  # loads nothing: it only tells finished pairs and cached inversions apart
    todo = []
    for pair in pairs:
        record = here.finished(pair, force)
        if record is not None:
            report(PairOutcome(pair.row, "kept", record))
        else:
            todo.append(pair)
    jobs: dict[str, InversionJob] = {}
    for pair in todo:
        for job in inversion_jobs(pair):
            if force or not job.path(settings).is_file():
                jobs.setdefault(job.key(settings), job)
    if jobs:
        for failure in _results(list(jobs.values()), _Inverter, settings, force, pool):
            if failure:
                warnings.warn(failure, stacklevel=2)
    if todo:
        for result in _results(todo, _Transferrer, settings, force, pool):
            report(PairOutcome.from_json(result))
