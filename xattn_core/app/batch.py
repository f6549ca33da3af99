"""The batch command's work: one model replica inverts each image once and transfers pair after pair.

The batch folder holds:

- ``outputs/<row>_<structure>__<appearance>.png``: each pair's output, with ``_appearance_mask.png`` and
  ``_structure_mask.png`` next to it when object words made automatic masks;
- ``outputs/<same>.json``: the pair's record (its key, seconds, scores), written last: a pair whose record
  matches its current key and whose output exists is finished, so a rerun skips it;
- ``inversions/<key>.safetensors``: each image's inversion (the pack's inversion files), named by a key over
  the image's bytes, the prompt, the seed, the inversion settings, the working size, FreeU and the model;
- ``inputs/``, ``index.html``, ``results.csv``: the contact sheet (:mod:`.contact_sheet`).

A pair inverts its appearance with its seed and its structure with seed + 1, the draws the transfer command's
batch of two gives them, so a pair's output is the transfer command's (see ``tests/test_batch.py`` for how
close). An image used in both roles, or with two seeds or prompts, is inverted once per combination.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..inversion import Inversion
from ..inversion_file import InversionFileError, load_inversion, save_inversion
from .batch_csv import InputImage, Pair
from .diffusers_pipeline import (
    Progress,
    PromptEncodings,
    TransferOptions,
    first_line,
    generate,
    invert_images,
    load_image,
    write_transfer,
)

CACHE_VERSION = 1  # part of every key: raise it when what an inversion or an output depends on changes
OUTPUTS, INVERSIONS = "outputs", "inversions"


@dataclass(frozen=True)
class BatchSettings:
    """What every model replica of a batch needs (plain data, so Ray can ship it to its actors)."""

    model: str
    device: str
    options: TransferOptions
    out_dir: Path
    dino: Path | None = None

    @property
    def model_id(self) -> str:
        """A local model folder by its absolute path, a hub model by its id."""
        local = Path(self.model).expanduser()
        return str(local.resolve()) if local.exists() else self.model


def _digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class InversionJob:
    """One image to invert with one seed and prompt."""

    image: InputImage
    seed: int
    prompt: str

    def key(self, settings: BatchSettings) -> str:
        inversion, options = settings.options.inversion, settings.options
        return _digest(
            {
                "version": CACHE_VERSION,
                "image": self.image.sha256,
                "seed": self.seed,
                "prompt": self.prompt,
                "steps": inversion.steps,
                "start_step": inversion.start_step,
                "cfg": inversion.cfg,
                "size": options.size,
                "freeu": options.freeu,
                "model": settings.model_id,
            }
        )

    def path(self, settings: BatchSettings) -> Path:
        return settings.out_dir / INVERSIONS / f"{self.key(settings)}.safetensors"


def inversion_jobs(pair: Pair) -> tuple[InversionJob, InversionJob]:
    """(appearance, structure) with the seeds the transfer command's batch of two gives them."""
    return InversionJob(pair.appearance, pair.seed, pair.prompt), InversionJob(
        pair.structure, (pair.seed + 1) % 2**64, pair.prompt
    )


def pair_options(pair: Pair, settings: BatchSettings) -> TransferOptions:
    return replace(settings.options, object_words=pair.object_words)


def pair_key(pair: Pair, settings: BatchSettings) -> str:
    """Everything the pair's output depends on: when it changes, a finished pair is computed again."""
    masks = [None if mask is None else mask.sha256 for mask in (pair.structure_mask, pair.appearance_mask)]
    return _digest(
        {
            "version": CACHE_VERSION,
            "options": asdict(pair_options(pair, settings)),
            "inversions": [job.key(settings) for job in inversion_jobs(pair)],
            "masks": masks,
        }
    )


def output_path(pair: Pair, settings: BatchSettings) -> Path:
    return settings.out_dir / OUTPUTS / f"{pair.name}.png"


@dataclass
class PairRecord:
    """What a finished pair leaves next to its output; paths are relative to the batch folder."""

    row: int
    key: str
    output: str
    masks: dict[str, str] = field(default_factory=dict)  # "appearance"/"structure" -> automatic mask image
    seconds: float = 0.0  # inverting what was not cached, generating, writing (not loading the model, not scoring)
    inversions_made: int = 0
    structure_distance: float | None = None
    appearance_similarity: float | None = None
    dino: str | None = None  # the DINO folder the scores came from


@dataclass
class PairOutcome:
    """A pair's fate in this run: "done" (computed now), "kept" (finished before) or "failed"."""

    row: int
    status: str
    record: PairRecord | None = None
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PairOutcome:
        data = json.loads(text)
        record = data.pop("record")
        return cls(**data, record=None if record is None else PairRecord(**record))


def _replace_atomically(path: Path, write) -> None:
    """``write(temporary path)`` then rename: a reader (or a rerun after a crash) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_record(pair: Pair, settings: BatchSettings) -> PairRecord | None:
    """The pair's record when it is finished with its current inputs and settings, else None."""
    path = output_path(pair, settings).with_suffix(".json")
    try:
        record = PairRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    finished = record.key == pair_key(pair, settings) and (settings.out_dir / record.output).is_file()
    return record if finished else None


def _write_record(pair: Pair, settings: BatchSettings, record: PairRecord) -> None:
    text = json.dumps(asdict(record), indent=1)
    _replace_atomically(output_path(pair, settings).with_suffix(".json"), lambda path: path.write_text(text))


def _mask(mask: InputImage | None, device: str) -> torch.Tensor | None:
    if mask is None:
        return None
    with Image.open(mask.path) as image:
        return torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32) / 255.0).to(device)


class PairRunner:
    """One model replica: fills the inversion cache and transfers pairs. Nothing loads until a pair needs it."""

    def __init__(self, settings: BatchSettings, progress: Progress | None = None, scorer=None) -> None:
        self.settings = settings
        self.progress = progress
        self._pipe = None
        self._prompts: PromptEncodings | None = None
        self._scorer = scorer
        self.made: set[str] = set()  # inversions computed by this runner: forcing recomputes each once

    def pipe(self):
        if self._pipe is None:
            from .diffusers_pipeline import load_pipeline

            self._pipe = load_pipeline(self.settings.model, self.settings.device)
        return self._pipe

    def prompts(self) -> PromptEncodings:
        """The pipeline's prompt encodings: each prompt of the batch is encoded once, for all its inversions and
        transfers."""
        if self._prompts is None:
            self._prompts = PromptEncodings(self.pipe())
        return self._prompts

    def scorer(self):
        if self._scorer is None:
            from .scores import DinoScorer

            self._scorer = DinoScorer(self.settings.dino, self.settings.device)
        return self._scorer

    def inversion(self, job: InversionJob, force: bool = False) -> tuple[Inversion, bool]:
        """The job's inversion from the cache, or computed and saved; and whether it was computed."""
        settings, path = self.settings, job.path(self.settings)
        if path.is_file() and not (force and path.stem not in self.made):
            try:
                return load_inversion(path, settings.device), False
            except InversionFileError as error:
                warnings.warn(f"{error}; inverting {job.image.path.name} again", stacklevel=2)
        image = load_image(job.image.path, settings.options.size)
        progress = None
        if self.progress is not None:  # one phase per image, named after it
            progress = lambda phase, done, total: self.progress(f"{phase} {job.image.path.name}", done, total)  # noqa: E731
        inversion = invert_images(
            self.pipe(), [image], job.prompt, settings.options, job.seed, progress, prompts=self.prompts()
        )
        inversion.metadata.update(
            image=job.image.path.name, image_sha256=job.image.sha256, prompt=job.prompt, seed=str(job.seed)
        )
        _replace_atomically(path, lambda temporary: save_inversion(inversion, temporary))
        self.made.add(path.stem)
        # read back, so a pair gets the same tensors (on the same devices) whether its inversions are new or not
        return load_inversion(path, settings.device), True

    def _scored(self, record: PairRecord) -> bool:
        return self.settings.dino is None or record.dino == str(self.settings.dino)

    def finished(self, pair: Pair, force: bool = False) -> PairRecord | None:
        """The pair's record when it needs no work: finished, and scored when this batch scores."""
        record = None if force else read_record(pair, self.settings)
        return record if record is not None and self._scored(record) else None

    def run_pair(self, pair: Pair, force: bool = False, reinvert: bool | None = None) -> PairOutcome:
        """Transfer one pair (inverting what the cache lacks), or keep its earlier result; never raises for
        a pair's own failure. ``force`` recomputes the output, ``reinvert`` (default: ``force``) its inversions."""
        try:
            record = None if force else read_record(pair, self.settings)
            if record is not None:
                if not self._scored(record):  # finished without scores, or scored by another DINO: score only
                    self._score(pair, record)
                    _write_record(pair, self.settings, record)
                return PairOutcome(pair.row, "kept", record)
            return PairOutcome(pair.row, "done", self._transfer(pair, force if reinvert is None else reinvert))
        except (OSError, ValueError, RuntimeError) as error:  # RuntimeError includes running out of memory
            return PairOutcome(pair.row, "failed", error=first_line(error))

    def _transfer(self, pair: Pair, reinvert: bool) -> PairRecord:
        settings, device = self.settings, self.settings.device
        pipe = self.pipe()
        started = time.monotonic()
        (appearance, made_appearance), (structure, made_structure) = (
            self.inversion(job, reinvert) for job in inversion_jobs(pair)
        )
        options = pair_options(pair, settings)
        image, result = generate(
            pipe,
            appearance,
            structure,
            pair.prompt,
            options,
            self.progress,
            appearance_mask=_mask(pair.appearance_mask, device),
            structure_mask=_mask(pair.structure_mask, device),
            prompts=self.prompts(),
        )
        out = output_path(pair, settings)
        masks = write_transfer(image, result, out, options)
        relative = lambda path: path.relative_to(settings.out_dir).as_posix()  # noqa: E731
        record = PairRecord(
            row=pair.row,
            key=pair_key(pair, settings),
            output=relative(out),
            masks={role: relative(path) for role, path in zip(("appearance", "structure"), masks, strict=False)},
            seconds=round(time.monotonic() - started, 3),
            inversions_made=made_appearance + made_structure,
        )
        if settings.dino is not None:
            self._score(pair, record, image)
        _write_record(pair, settings, record)
        return record

    def _score(self, pair: Pair, record: PairRecord, output: Image.Image | None = None) -> None:
        if output is None:
            with Image.open(self.settings.out_dir / record.output) as stored:
                output = stored.convert("RGB")
        with Image.open(pair.structure.path) as structure, Image.open(pair.appearance.path) as appearance:
            scores = self.scorer().score(output, structure.convert("RGB"), appearance.convert("RGB"))
        record.structure_distance = round(scores.structure_distance, 6)
        record.appearance_similarity = round(scores.appearance_similarity, 6)
        record.dino = str(self.settings.dino)
