"""``python -m xattn_core batch PAIRS.csv --out DIR``: many pairs, a contact sheet, optional scores, optional Ray.

Everything is checked before the model loads: the pairs file's header (a bad one is a one-line error, exit
status 2), every row's files, seeds and object words (a bad row is reported and skipped), the DINO folder.
Exit status 0 when every row finished, 1 when some were skipped or failed (they are listed in the summary).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .batch import BatchSettings, PairOutcome, PairRunner
from .batch_csv import CSV_HELP, PairsFileError, read_pairs
from .cli_common import HelpFormat, PhaseProgress, add_setting_flags, options_from, resolve_device, writable_folder
from .contact_sheet import sheet_rows, write_index, write_results_csv
from .diffusers_pipeline import ModelLoadError, TransferOptions, check_model_name


class _HelpFormat(HelpFormat, argparse.RawDescriptionHelpFormatter):
    """The command line's help format, with the pairs-file description kept as written."""


def add_batch_command(commands) -> None:
    run = commands.add_parser(
        "batch",
        help="many pairs from a CSV file: outputs, a contact sheet (index.html), results.csv, optional scores",
        description="Transfer every pair of PAIRS.csv into DIR. Each image is inverted once and its inversion "
        "saved in DIR/inversions; finished pairs are skipped, so a rerun continues where the last one stopped.",
        epilog=CSV_HELP,
        formatter_class=_HelpFormat,
    )
    run.add_argument("pairs", metavar="PAIRS.csv", help="the pairs file (described below)")
    run.add_argument("--out", required=True, metavar="DIR", help="the batch folder (created if needed)")
    run.add_argument(
        "--dino",
        metavar="PATH",
        default=None,
        help="a local DINO ViT folder in transformers format (e.g. dino-vitb8 saved with save_pretrained): "
        "adds structure distance and appearance similarity scores (default: no scores)",
    )
    run.add_argument("--force", action="store_true", help="redo every pair and inversion, even finished ones")
    run.add_argument(
        "--ray",
        action="store_true",
        help="run the pairs as a Ray Data job, one model replica per actor (pip install 'xattn[ray]'; connects "
        "to RAY_ADDRESS or starts Ray here); DIR and the images must have the same paths on every node",
    )
    run.add_argument(
        "--ray-actors", type=int, default=None, help="with --ray: model replicas (default: the cluster's GPUs, or 1)"
    )
    run.add_argument(
        "--ray-cpus",
        type=float,
        default=None,
        help="with --ray: CPUs per actor (default: 1 on GPUs; on CPU the cluster's CPUs shared among the actors)",
    )
    add_setting_flags(run, fast=False)


def _device(args: argparse.Namespace) -> str | None:
    name = args.device
    if not args.ray:
        if args.ray_actors is not None or args.ray_cpus is not None:
            raise ValueError("--ray-actors and --ray-cpus need --ray")
        return str(resolve_device(name))
    if (args.ray_actors is not None and args.ray_actors < 1) or (args.ray_cpus is not None and args.ray_cpus <= 0):
        raise ValueError("--ray-actors must be at least 1 and --ray-cpus above 0")
    # Ray gives each actor its own GPU, so only the kind of device is ours to choose (None: Ray's cluster decides)
    if name not in (None, "cpu", "cuda"):
        raise ValueError(f"with --ray, --device is cpu or cuda (Ray assigns each actor its GPU), got {name!r}")
    return name


def _check_folder(path: str) -> Path:
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {path!r} is a file, not a folder")
    writable_folder(folder, "--out")
    return folder.resolve()


def _word_check(model: str):
    """Checks object words with the model's tokenizer alone, loaded at the first row that has any."""
    from .diffusers_pipeline import load_tokenizer, prompt_object_tokens

    tokenizer = []

    def check(prompt: str, words: tuple[str, ...]) -> None:
        if not tokenizer:
            tokenizer.append(load_tokenizer(model))
        prompt_object_tokens(tokenizer[0], prompt, words)

    return check


def describe(model: str, options: TransferOptions) -> str:
    inversion, transfer = options.inversion, options.transfer
    return (
        f"Model {model}; {inversion.steps} steps from step {inversion.start_step}, {options.size} px, inversion cfg "
        f"{inversion.cfg:g}, cfg {transfer.cfg:g}, swap guidance {transfer.plan.swap_guidance:g}, contrast "
        f"{transfer.contrast:g}, FreeU {'on' if options.freeu else 'off'}, seed {inversion.seed} unless a row sets one."
    )


class PairsProgress:
    """The bar over pairs, with a line per pair; plain lines only when stderr is not a terminal."""

    def __init__(self, total: int, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.total, self.count, self.bar = total, 0, None
        if self.stream.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="pairs", unit="pair", file=self.stream, position=0)

    def __call__(self, outcome: PairOutcome) -> None:
        self.count += 1
        record = outcome.record
        if outcome.status == "failed":
            line = f"row {outcome.row} failed: {outcome.error}"
        elif outcome.status == "kept":
            line = f"row {outcome.row}: finished by an earlier run ({record.output})"
        else:
            made = f", {record.inversions_made} inversion(s) made" if record.inversions_made else ""
            line = f"row {outcome.row}: {record.output} in {record.seconds:.1f} s{made}"
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
            self.bar.update(1)
        else:
            print(f"pair {self.count}/{self.total}, {line}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_local(pairs, settings: BatchSettings, force: bool, scorer, report) -> None:
    """Every pair in order on one model replica, here."""
    phases = PhaseProgress(position=1 if sys.stderr.isatty() else None)
    runner = PairRunner(settings, progress=phases, scorer=scorer)
    for pair in pairs:
        outcome = runner.run_pair(pair, force)
        phases.close()
        report(outcome)


def run_batch(args: argparse.Namespace) -> int:
    try:
        options = options_from(args)
        device = _device(args)
        out_dir = _check_folder(args.out)
        check_model_name(args.model)
        pairs, errors = read_pairs(args.pairs, options, _word_check(args.model))
        dino = Path(args.dino).expanduser().resolve() if args.dino else None
        scorer = None
        if dino is not None:  # loading it checks it before the model loads (Ray's actors load their own)
            from .scores import DinoScorer

            scorer = DinoScorer(dino, "cpu" if args.ray else device)
    except (ModelLoadError, PairsFileError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for error in errors:
        print(f"row {error.row} skipped: {error.message}", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = BatchSettings(args.model, device or "cpu", options, out_dir, dino)
    outcomes: dict[int, PairOutcome] = {}
    progress = PairsProgress(len(pairs))

    def report(outcome: PairOutcome) -> None:
        outcomes[outcome.row] = outcome
        progress(outcome)

    try:
        if args.ray:
            from .batch_ray import run_on_ray

            run_on_ray(pairs, settings, args.force, report, args.ray_actors, args.ray_cpus, device is None)
        else:
            run_local(pairs, settings, args.force, scorer, report)
    finally:  # also when interrupted: the sheet shows what finished
        progress.close()
        rows = sheet_rows(pairs, outcomes, errors)
        write_results_csv(out_dir, rows)
        index = write_index(out_dir, rows, f"Pilot set: {Path(args.pairs).name}", describe(args.model, options))
    return _summary(rows, index)


def _summary(rows, index: Path) -> int:
    by_status: dict[str, list[int]] = {}
    for row in rows:
        by_status.setdefault(row.status, []).append(row.row)
    counts = ", ".join(f"{len(numbers)} {status}" for status, numbers in by_status.items())
    print(f"{len(rows)} rows: {counts}; wrote {index} and {index.with_name('results.csv')}")
    troubled = {status: by_status[status] for status in ("skipped", "failed") if status in by_status}
    for status, numbers in troubled.items():
        print(f"{status}: rows {', '.join(map(str, numbers))}", file=sys.stderr)
    return 1 if troubled else 0
