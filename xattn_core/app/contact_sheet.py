"""The batch's contact sheet (``index.html``, opened from disk with no server) and ``results.csv``.

Both list every row of the pairs file with the same numbers. The sheet links only files inside the batch folder
(outputs, masks, and small JPEG copies of the inputs in ``inputs/``), by relative paths, so the folder can be
moved or zipped whole.
"""

from __future__ import annotations

import csv
import html
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from .batch import PairOutcome, PairRecord
from .batch_csv import InputImage, Pair, RowError

THUMBNAIL_PX = 256
COLUMNS = (
    "row",
    "status",
    "structure",
    "appearance",
    "prompt",
    "object_word",
    "seed",
    "output",
    "appearance_mask",
    "structure_mask",
    "structure_distance",
    "appearance_similarity",
    "seconds",
    "error",
)
SCORES_NOTE = (
    "Scores (with --dino): <b>structure distance</b> is Splice's structure loss, the mean squared difference "
    "between the output's and the structure image's self-similarity matrices of the DINO ViT's last-block keys "
    "(lower: the layout is kept); <b>appearance similarity</b> is the cosine similarity of the last layer's class "
    "tokens of the output and the appearance image (higher: more of the look is taken). Images are resized to "
    "512&times;512, then to 224&times;224, with ImageNet normalisation. For scale: Ctrl-X reports 0.145 and 0.651 "
    "for Cross-Image Attention on natural pairs with DINO ViT-B/8; other DINO sizes and a few pilot pairs are not "
    "directly comparable."
)
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; font-size: 13px; }
th { background: #f2f2f2; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
img { width: 160px; height: auto; display: block; }
.masks img { width: 76px; display: inline-block; }
.failed, .skipped, .not-run { background: #fff1f0; }
p.note { max-width: 60em; font-size: 13px; }
"""


@dataclass(frozen=True)
class SheetRow:
    """One row of the pairs file as the sheet shows it."""

    row: int
    status: str  # done, kept (finished by an earlier run), failed, skipped (a bad row), not run (interrupted)
    pair: Pair | None = None
    record: PairRecord | None = None
    error: str | None = None


def sheet_rows(pairs: list[Pair], outcomes: dict[int, PairOutcome], errors: list[RowError]) -> list[SheetRow]:
    rows = [SheetRow(error.row, "skipped", error=error.message) for error in errors]
    for pair in pairs:
        outcome = outcomes.get(pair.row) or PairOutcome(pair.row, "not run")
        rows.append(SheetRow(pair.row, outcome.status, pair, outcome.record, outcome.error))
    return sorted(rows, key=lambda row: row.row)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def csv_fields(row: SheetRow) -> dict[str, str]:
    pair, record = row.pair, row.record
    fields = dict.fromkeys(COLUMNS, "")
    fields.update(row=str(row.row), status=row.status, error=row.error or "")
    if pair is not None:
        fields.update(
            structure=str(pair.structure.path),
            appearance=str(pair.appearance.path),
            prompt=pair.prompt,
            object_word=",".join(pair.object_words),
            seed=str(pair.seed),
        )
    if record is not None:
        fields.update(
            output=record.output,
            appearance_mask=record.masks.get("appearance", ""),
            structure_mask=record.masks.get("structure", ""),
            structure_distance=_number(record.structure_distance),
            appearance_similarity=_number(record.appearance_similarity),
            seconds=f"{record.seconds:.2f}",
        )
    return fields


def write_results_csv(out_dir: Path, rows: list[SheetRow]) -> Path:
    path = out_dir / "results.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(csv_fields(row) for row in rows)
    return path


def thumbnail(out_dir: Path, image: InputImage) -> str:
    """A small JPEG copy of an input inside the batch folder (written once), as a relative path."""
    relative = f"inputs/{image.sha256[:12]}_{image.stem}.jpg"
    target = out_dir / relative
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(image.path) as source:
            small = source.convert("RGB")
            small.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            small.save(target, quality=85)
    return relative


def _image(relative: str, alt: str) -> str:
    return f'<img src="{html.escape(quote(relative))}" alt="{html.escape(alt)}" title="{html.escape(alt)}">'


def _masks_cell(out_dir: Path, row: SheetRow) -> str:
    if row.record is not None and row.record.masks:
        return "".join(_image(path, f"automatic {role} mask") for role, path in row.record.masks.items())
    given = [(role, getattr(row.pair, f"{role}_mask", None)) for role in ("appearance", "structure")]
    return "".join(_image(thumbnail(out_dir, mask), f"given {role} mask") for role, mask in given if mask)


def _table_row(out_dir: Path, row: SheetRow) -> str:
    fields = csv_fields(row)
    cells = [f'<td class="number">{row.row}</td>']
    if row.pair is None:
        cells.append(f'<td colspan="8">{html.escape(row.error or "")}</td>')
    else:
        cells += [
            f"<td>{_image(thumbnail(out_dir, row.pair.structure), row.pair.structure.path.name)}</td>",
            f"<td>{_image(thumbnail(out_dir, row.pair.appearance), row.pair.appearance.path.name)}</td>",
            f"<td>{_image(row.record.output, 'output') if row.record else html.escape(row.error or '')}</td>",
            f'<td class="masks">{_masks_cell(out_dir, row)}</td>',
            f"<td>{html.escape(row.pair.prompt)}<br>seed {row.pair.seed}</td>",
        ]
        cells += [f'<td class="number">{fields[name]}</td>' for name in COLUMNS[-4:-1]]
    css = row.status.replace(" ", "-")
    return f'<tr class="{css}">{"".join(cells)}<td>{html.escape(row.status)}</td></tr>'


def _means(rows: list[SheetRow]) -> str:
    scored = [row.record for row in rows if row.record is not None and row.record.structure_distance is not None]
    if not scored:
        return ""
    distance = sum(record.structure_distance for record in scored) / len(scored)
    similarity = sum(record.appearance_similarity for record in scored) / len(scored)
    return (
        f"<p>Mean over {len(scored)} scored pairs: structure distance <b>{distance:.4f}</b>, appearance "
        f"similarity <b>{similarity:.4f}</b>.</p>"
    )


def write_index(out_dir: Path, rows: list[SheetRow], title: str, settings: str) -> Path:
    """``index.html``: one table row per row of the pairs file; everything user-given is escaped."""
    summary = ", ".join(f"{count} {status}" for status, count in Counter(row.status for row in rows).items())
    header = "".join(
        f"<th>{name}</th>"
        for name in (
            "row",
            "structure",
            "appearance",
            "output",
            "masks",
            "prompt",
            "structure distance &darr;",
            "appearance similarity &uarr;",
            "seconds",
            "status",
        )
    )
    body = "\n".join(_table_row(out_dir, row) for row in rows)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p>{len(rows)} rows: {html.escape(summary)}. {html.escape(settings)}</p>
{_means(rows)}
<table>
<thead><tr>{header}</tr></thead>
<tbody>
{body}
</tbody>
</table>
<p class="note">{SCORES_NOTE} Seconds: inverting what was not cached, generating and writing one pair.</p>
</body>
</html>
"""
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
