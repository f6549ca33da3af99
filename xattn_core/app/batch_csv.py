"""The batch command's pairs file: one transfer a row, every row checked before any model loads.

A defect of the file itself (unreadable, bad header, no rows) stops the batch with one line; a defect of
one row (a missing or unreadable image, a bad seed, an object word the prompt lacks) only skips that row.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import XAttnError
from ..segmentation import split_words, uses_automatic_masks
from .diffusers_pipeline import TransferOptions, load_image

REQUIRED = ("structure", "appearance", "prompt")
OPTIONAL = ("object_word", "structure_mask", "appearance_mask", "seed")

CSV_HELP = """\
PAIRS.csv: one transfer a row, with a header naming its columns (any order, comma-separated, UTF-8):
  structure        image giving the shape to keep                       (required)
  appearance       image giving the colours and materials               (required)
  prompt           "A photo of a <domain>"                              (required)
  object_word      the word naming the object in the prompt (several: comma-separated, quote the field);
                   turns on the automatic AdaIN masks, as --object-word does for transfer
  structure_mask   a black-and-white image: where AdaIN changes the output (instead of automatic masks:
                   not with object_word on the same row)
  appearance_mask  where AdaIN measures the appearance's colours
  seed             the inversion seed of this row (default: --seed)
Paths are absolute or relative to the CSV's folder. Rows are numbered as a spreadsheet numbers them (the
header is row 1). Example:
  structure,appearance,prompt,object_word
  giraffe.jpg,zebra.jpg,A photo of an animal,animal
"""


class PairsFileError(XAttnError, ValueError):
    """The pairs file cannot be used at all (read error, bad header, no rows)."""


@dataclass(frozen=True)
class InputImage:
    """An input file and the sha256 of its bytes (what the caches are keyed by)."""

    path: Path
    sha256: str

    @property
    def stem(self) -> str:
        """The file name without suffix, reduced to characters safe in any file name."""
        return re.sub(r"[^A-Za-z0-9._-]+", "-", self.path.stem).strip("-.")[:40] or "image"


@dataclass(frozen=True)
class Pair:
    """One checked row of the pairs file."""

    row: int
    structure: InputImage
    appearance: InputImage
    prompt: str
    object_words: tuple[str, ...] = ()
    structure_mask: InputImage | None = None
    appearance_mask: InputImage | None = None
    seed: int = 0

    @property
    def name(self) -> str:
        """The stem of this row's output files: row number, structure, appearance."""
        return f"{self.row:03d}_{self.structure.stem}__{self.appearance.stem}"


@dataclass(frozen=True)
class RowError:
    row: int
    message: str


WordCheck = Callable[[str, tuple[str, ...]], object]
"""``(prompt, object words)``; raises ValueError when a word is not in the prompt."""


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header's column names and the non-blank rows with their spreadsheet row numbers."""
    if not path.is_file():
        raise PairsFileError(f"pairs file not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: spreadsheets often write a BOM
            reader = csv.reader(handle)
            header = next(reader, None)
            rows = [(reader.line_num, row) for row in reader if any(field.strip() for field in row)]
    except UnicodeDecodeError:
        raise PairsFileError(f"{path} is not UTF-8 text; save the pairs file as CSV (UTF-8)") from None
    except csv.Error as error:
        raise PairsFileError(f"{path} is not a readable CSV file ({error})") from None
    if not header:
        raise PairsFileError(f"{path} is empty; its first row must name the columns {', '.join(REQUIRED)}")
    return [name.strip().lower() for name in header], rows


def check_header(columns: list[str], path: Path) -> None:
    """Refuse missing, unknown and repeated column names (a misspelt optional column would be ignored)."""
    missing = [name for name in REQUIRED if name not in columns]
    if missing:
        raise PairsFileError(
            f"{path.name} lacks the column(s) {', '.join(missing)}; its header reads {','.join(columns)!r} and "
            f"must name {', '.join(REQUIRED)} (optional: {', '.join(OPTIONAL)})"
        )
    unknown = [name for name in columns if name not in REQUIRED + OPTIONAL]
    if unknown:
        raise PairsFileError(
            f"{path.name} has unknown column(s) {', '.join(repr(n) for n in unknown)}; the columns are "
            f"{', '.join(REQUIRED + OPTIONAL)}"
        )
    repeated = sorted({name for name in columns if columns.count(name) > 1})
    if repeated:
        raise PairsFileError(f"{path.name} names the column(s) {', '.join(repeated)} more than once")


class _Inputs:
    """Resolves, reads and hashes input files once each, however many rows use them."""

    def __init__(self, folder: Path, size: int) -> None:
        self.folder, self.size = folder, size
        self.checked: dict[Path, InputImage | str] = {}

    def get(self, value: str, column: str) -> InputImage:
        path = Path(value).expanduser()
        path = path if path.is_absolute() else self.folder / path
        if path not in self.checked:
            try:
                load_image(path, self.size)  # a full decode: a truncated file fails here, not mid-batch
                self.checked[path] = InputImage(path, hashlib.sha256(path.read_bytes()).hexdigest())
            except (OSError, ValueError) as error:
                self.checked[path] = str(error)
        found = self.checked[path]
        if isinstance(found, str):
            raise ValueError(f"{column}: {found}")
        return found


def _pair(row: int, values: dict[str, str], inputs: _Inputs, options: TransferOptions, words: WordCheck | None):
    for name in REQUIRED:
        if not values.get(name):
            raise ValueError(f"no {name} given")
    seed = options.inversion.seed
    if values.get("seed"):
        try:
            seed = int(values["seed"])
        except ValueError:
            raise ValueError(f"seed {values['seed']!r} is not a whole number") from None
        replace(options.inversion, seed=seed)  # the settings' own range check
    object_words = split_words(values.get("object_word"))
    if object_words and words is not None:
        words(values["prompt"], object_words)
    masks = {name: inputs.get(values[name], name) for name in ("structure_mask", "appearance_mask") if values.get(name)}
    structure_mask, appearance_mask = masks.get("structure_mask"), masks.get("appearance_mask")
    if object_words and not uses_automatic_masks(object_words, appearance_mask, structure_mask):
        # the transfer would drop the word: say so instead
        raise ValueError(
            f"object_word and {' and '.join(masks)} exclude each other (given masks replace the automatic ones)"
        )
    return Pair(
        row=row,
        structure=inputs.get(values["structure"], "structure"),
        appearance=inputs.get(values["appearance"], "appearance"),
        prompt=values["prompt"],
        object_words=object_words,
        seed=seed,
        **masks,
    )


def read_pairs(
    path: str | Path, options: TransferOptions, words: WordCheck | None = None
) -> tuple[list[Pair], list[RowError]]:
    """The usable pairs of a pairs file and what is wrong with each other row.

    Raises PairsFileError (one line) when the file itself cannot be used. ``words`` checks object words
    against each row's prompt (the model's tokenizer); without it they are not checked.
    """
    path = Path(path)
    columns, rows = _read_rows(path)
    check_header(columns, path)
    if not rows:
        raise PairsFileError(f"{path} has a header but no pairs")
    inputs = _Inputs(path.parent, options.size)
    pairs: list[Pair] = []
    errors: list[RowError] = []
    for row, fields in rows:
        if len(fields) > len(columns):
            errors.append(RowError(row, f"{len(fields)} fields for {len(columns)} columns (quote fields with commas)"))
            continue
        values = {name: value.strip() for name, value in zip(columns, fields, strict=False)}
        try:
            pairs.append(_pair(row, values, inputs, options, words))
        except ValueError as error:
            errors.append(RowError(row, str(error)))
    return pairs, errors
