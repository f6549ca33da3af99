"""Draw the template browser's card image of every shipped workflow (workflows/<name>.jpg) with Pillow.

    python scripts/make_thumbnails.py

A card shows what the workflow does, not its graph: its title, the input images it loads (the pack's samples,
xattn_core/samples/) and what it adds (a mask, edges, a second appearance), and where the result goes. The pack
ships no model weights, so it cannot show a real result: the result panel is a labelled placeholder. The front end
(comfyui-frontend-package 1.27) shows custom node cards 256 x 256 CSS pixels, so cards are square and their
text is large. Front end 1.58 lays a "Node graph" badge over each card's top left corner, so no text goes
there (BADGE_CORNER). The output is deterministic (same Pillow, same bytes).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_workflows import DRAWN, GIRAFFE, WORKFLOWS, WORKFLOWS_BUILT, ZEBRA  # noqa: E402
from workflow_files import INPUT_SAMPLES  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "xattn_core" / "samples"
SIZE = 512
BACKGROUND, PANEL, TEXT, MUTED, ACCENT = "#202020", "#2e2e2e", "#f0f0f0", "#a8a8a8", "#7cc4ff"
# Front end 1.58's card: the picture is a square as wide as the card, and cards are at least 15rem (240 CSS px)
# wide; its "Node graph" badge sits 8 px from the top left, 24 px tall and about 96 px wide (Tailwind top-2 left-2
# h-6 px-2, a 12 px icon and 12 px text). On the narrowest card that covers this much of the picture, in its pixels:
NARROWEST_CARD, BADGE = 240, (8, 8, 104, 32)  # CSS px: card width; badge left, top, right, bottom
BADGE_CORNER = tuple(round(edge * SIZE / NARROWEST_CARD) for edge in BADGE)
TITLE_Y, SUBTITLE_Y = 104, 146  # text centres, below the badge's corner (its bottom is at 68)
PANELS_TOP, PANEL_HEIGHT = 170, 160
LOCAL_REGION = (96, 64, 96 + 320, 64 + 400)  # workflow 08's mask rectangle, in its 512 px structure image


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # Pillow's own font: the same on every machine


def sample(name: str) -> Image.Image:
    """The sample image the workflows load as ``name`` in ComfyUI's input/."""
    return Image.open(SAMPLES / INPUT_SAMPLES[name]).convert("RGB")


def edges(image: Image.Image) -> Image.Image:
    """The structure's edges, as workflow 07's Canny node gives them to the ControlNet (Pillow's edge filter)."""
    grey = ImageOps.grayscale(image).filter(ImageFilter.GaussianBlur(2)).filter(ImageFilter.FIND_EDGES)
    return ImageOps.autocontrast(grey.point(lambda value: 255 if value > 12 else 0)).convert("RGB")


def masked_region(image: Image.Image) -> Image.Image:
    """Workflow 08's structure image with its mask rectangle outlined and the kept part dimmed."""
    shown = Image.blend(image, Image.new("RGB", image.size, "black"), 0.55)
    shown.paste(image.crop(LOCAL_REGION), LOCAL_REGION[:2])
    ImageDraw.Draw(shown).rectangle(LOCAL_REGION, outline=ACCENT, width=10)
    return shown


@dataclass
class Card:
    title: str
    subtitle: str
    structure: str
    appearance: str
    extra: tuple[str, str] | None = None  # (what it is, how to draw it: "edges", "mask", "inverted")
    result: str = "result: run it to see"  # the pack ships no weights to render one
    notes: list[str] = field(default_factory=list)


CARDS = {
    "01 Basic transfer, SD 1.5": Card("Basic transfer", "SD 1.5 · the paper's settings", GIRAFFE, ZEBRA),
    "02 Masks, automatic then edited": Card("Masks, edited", "automatic masks, grown, fed back", GIRAFFE, ZEBRA),
    "03 SDXL transfer at 1024 px": Card("SDXL transfer", "SDXL base · 1024 x 1024 px", *DRAWN),
    "04 Colour variants": Card(
        "Colour variants", "1 structure x 2 appearances", *DRAWN, ("inverted", "inverted"), "2 results: run it"
    ),
    "05 Transfer, then upscale": Card("Transfer, upscale", "x 1.5 latent + a KSampler pass", *DRAWN),
    "06 Transfer from saved inversions": Card(
        "From saved inversions", "Load Inversion · no images", *DRAWN, result="result: run 04 first"
    ),
    "07 Transfer with a ControlNet": Card(
        "With a ControlNet", "canny edges guide the output", GIRAFFE, ZEBRA, ("edges", "edges")
    ),
    "08 Local transfer inside a mask": Card("Local transfer", "only inside the mask", GIRAFFE, ZEBRA, ("mask", "mask")),
    "09 Flux transfer": Card("Flux transfer", "Flux.1-dev · 28 steps · 1024 px", GIRAFFE, ZEBRA),
    "10 Flux.2 transfer": Card("Flux.2 transfer", "Flux.2 dev · 28 steps · 1024 px", GIRAFFE, ZEBRA),
    "11 Qwen-Image transfer": Card("Qwen-Image transfer", "Qwen-Image · 20 steps · 1328 px", GIRAFFE, ZEBRA),
    "12 Z-Image Turbo transfer": Card("Z-Image Turbo", "8 steps · cfg 1 · 1024 px", GIRAFFE, ZEBRA),
}


def panel(canvas: Image.Image, image: Image.Image | None, box: tuple[int, int, int, int], label: str) -> None:
    """``image`` fitted into ``box`` with ``label`` on a band along its bottom; None: a dashed placeholder."""
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = box
    if image is None:
        draw.rectangle(box, fill=PANEL)
        for x in range(left, right, 24):  # dashed outline
            draw.line([(x, top), (min(x + 12, right), top)], fill=MUTED, width=3)
            draw.line([(x, bottom), (min(x + 12, right), bottom)], fill=MUTED, width=3)
        for y in range(top, bottom, 24):
            draw.line([(left, y), (left, min(y + 12, bottom))], fill=MUTED, width=3)
            draw.line([(right, y), (right, min(y + 12, bottom))], fill=MUTED, width=3)
        draw.text(((left + right) / 2, (top + bottom) / 2 - 16), "?", fill=MUTED, font=font(56), anchor="mm")
    else:
        canvas.paste(ImageOps.fit(image, (right - left, bottom - top), Image.LANCZOS), (left, top))
    band = font(22)
    draw.rectangle((left, bottom - 34, right, bottom), fill=(0, 0, 0))
    draw.text(((left + right) / 2, bottom - 17), label, fill=TEXT, font=band, anchor="mm")


def heading_boxes(card: Card) -> list[tuple[float, float, float, float]]:
    """Where the card's title and subtitle are drawn (left, top, right, bottom, in the card's pixels)."""
    draw = ImageDraw.Draw(Image.new("RGB", (SIZE, SIZE)))
    return [
        draw.textbbox((SIZE / 2, y), text, font=font(size), anchor="mm")
        for text, y, size in ((card.title, TITLE_Y, 40), (card.subtitle, SUBTITLE_Y, 24))
    ]


def draw_card(card: Card) -> Image.Image:
    canvas = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((SIZE / 2, TITLE_Y), card.title, fill=TEXT, font=font(40), anchor="mm")
    draw.text((SIZE / 2, SUBTITLE_Y), card.subtitle, fill=ACCENT, font=font(24), anchor="mm")
    structure, appearance = sample(card.structure), sample(card.appearance)
    if card.extra and card.extra[1] == "mask":
        structure = masked_region(structure)
    top_row = [(structure, "structure"), (appearance, "appearance")]
    if card.extra and card.extra[1] == "inverted":
        top_row.append((ImageOps.invert(appearance), card.extra[0]))
    elif card.extra and card.extra[1] == "edges":
        top_row.append((edges(sample(card.structure)), card.extra[0]))
    count = len(top_row)
    width = (SIZE - 24 * (count + 1)) // count
    for index, (image, label) in enumerate(top_row):
        left = 24 + index * (width + 24)
        panel(canvas, image, (left, PANELS_TOP, left + width, PANELS_TOP + PANEL_HEIGHT), label)
    # the arrow from the inputs to the result
    middle, arrow_top = SIZE // 2, PANELS_TOP + PANEL_HEIGHT + 8
    draw.line([(middle, arrow_top), (middle, arrow_top + 24)], fill=ACCENT, width=6)
    draw.polygon([(middle - 16, arrow_top + 20), (middle + 16, arrow_top + 20), (middle, arrow_top + 40)], fill=ACCENT)
    panel(canvas, None, (middle - 150, arrow_top + 48, middle + 150, SIZE - 14), card.result)
    return canvas


def main() -> int:
    missing = sorted(set(WORKFLOWS_BUILT) - set(CARDS))
    if missing:
        raise SystemExit(f"no card described for {missing}: add them to CARDS in scripts/make_thumbnails.py")
    for name, card in CARDS.items():
        draw_card(card).save(WORKFLOWS / f"{name}.jpg", quality=88, optimize=True)
        print(f"wrote workflows/{name}.jpg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
