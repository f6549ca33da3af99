"""What the batch tests share: a drawn pilot set, an in-process command-line run, a spy on the model, an HTML
checker for the contact sheet."""

from __future__ import annotations

import contextlib
import csv
import io
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import xattn_core.app.batch as batch
import xattn_core.app.diffusers_pipeline as diffusers_pipeline
from xattn_core.app.cli import main

# 6 steps from step 2 at 128 px: 4 inversion steps, each one UNet call for one image (CFG in the same call)
TINY = ["--steps", "6", "--start-step", "2", "--size", "128", "--device", "cpu"]
INVERSION_CALLS = 4
PROMPT = "A photo of an animal"
MISSING = 'missing <b>&"x".png'  # a missing file whose name (in the error) must reach the sheet escaped


def draw(path: Path, background, shape, colour, box) -> Path:
    """A small non-square image: a filled shape on a gradient."""
    y, x = np.mgrid[0:80, 0:96]
    pixels = np.clip(np.array(background)[None, None] + np.stack([x, y, x + y], axis=-1) * 0.5, 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8))
    getattr(ImageDraw.Draw(image), shape)(box, fill=colour)
    image.save(path)
    return path


def write_pilot_set(folder: Path) -> Path:
    """Two structures, two appearances, three good pairs (rows 2, 3, 5) and two bad rows (4: not an image,
    6: a missing file); paths relative to the CSV's folder, one absolute."""
    folder.mkdir(parents=True, exist_ok=True)
    draw(folder / "s1.png", (30, 40, 60), "ellipse", (220, 40, 40), (20, 10, 70, 70))
    draw(folder / "s2.png", (60, 50, 30), "rectangle", (40, 200, 60), (30, 20, 80, 60))
    draw(folder / "a1.png", (10, 90, 20), "polygon", (240, 220, 30), [(10, 70), (50, 5), (90, 70)])
    draw(folder / "a2.png", (90, 20, 90), "ellipse", (30, 30, 230), (5, 5, 90, 75))
    (folder / "not_an_image.png").write_text("this is text, not a PNG")
    rows = [
        ("structure", "appearance", "prompt", "object_word"),
        ("s1.png", "a1.png", PROMPT, ""),
        ("s2.png", str(folder / "a1.png"), PROMPT, "animal"),
        ("not_an_image.png", "a1.png", PROMPT, ""),
        ("s1.png", "a2.png", PROMPT, ""),
        (MISSING, "a2.png", PROMPT, ""),
    ]
    path = folder / "pairs.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def run_main(*args) -> Run:
    """``python -m xattn_core ...`` in this process, its output captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(arg) for arg in args])
    return Run(code, out.getvalue(), err.getvalue())


def read_results(folder: Path) -> dict[int, dict[str, str]]:
    with (folder / "results.csv").open(newline="") as handle:
        return {int(row["row"]): row for row in csv.DictReader(handle)}


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


@dataclass
class ModelSpy:
    """Counts pipeline loads, UNet forwards, prompt encodings and the images each inversion was handed (as their
    pixels)."""

    loads: int = 0
    unet_calls: int = 0
    text_encodings: int = 0
    inversions: list[tuple[bytes, ...]] = field(default_factory=list)
    seeds: list[int | None] = field(default_factory=list)

    def install(self, monkeypatch) -> ModelSpy:
        load, invert = diffusers_pipeline.load_pipeline, batch.invert_images

        def counting_load(*args, **kwargs):
            self.loads += 1
            pipe = load(*args, **kwargs)
            pipe.unet.register_forward_pre_hook(lambda *_: setattr(self, "unet_calls", self.unet_calls + 1))
            encoder = pipe.text_encoder
            encoder.register_forward_pre_hook(lambda *_: setattr(self, "text_encodings", self.text_encodings + 1))
            return pipe

        def recording_invert(pipe, images, *args, **kwargs):
            self.inversions.append(tuple(image.tobytes() for image in images))
            self.seeds.append(args[2] if len(args) > 2 else kwargs.get("seed"))
            return invert(pipe, images, *args, **kwargs)

        monkeypatch.setattr(diffusers_pipeline, "load_pipeline", counting_load)
        monkeypatch.setattr(batch, "invert_images", recording_invert)
        return self


class SheetParser(HTMLParser):
    """Collects tags, image sources, text and body rows, and every end tag that closes the wrong element."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.open: list[str] = []
        self.problems: list[str] = []
        self.sources: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.body_rows = 0
        self.in_body = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attributes = dict(attrs)
        if tag == "img":
            self.sources.append(attributes["src"])
        if tag == "tbody":
            self.in_body = True
        if tag == "tr" and self.in_body:
            self.body_rows += 1
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if tag == "tbody":
            self.in_body = False
        if not self.open or self.open.pop() != tag:
            self.problems.append(f"unexpected </{tag}>")

    def handle_data(self, data):
        self.text.append(data)
