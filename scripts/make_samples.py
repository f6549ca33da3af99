"""Draw the bundled sample pair (xattn_core/samples/*.png) procedurally.

The images are generated here, so the project may redistribute them under its own licence.
Run: python scripts/make_samples.py
"""

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 512
OUT = Path(__file__).resolve().parents[1] / "xattn_core" / "samples"


def grid() -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    return x, y


def backdrop(top: tuple, bottom: tuple) -> np.ndarray:
    _, y = grid()
    return (np.array(top) * (1 - y[..., None]) + np.array(bottom) * y[..., None]).astype(np.float32)


def vase_mask() -> tuple[np.ndarray, np.ndarray]:
    """A bottle-like silhouette and its horizontal position inside it (-1..1), for shading."""
    x, y = grid()
    profile = 0.10 + 0.16 * np.exp(-((y - 0.62) ** 2) / 0.03) + 0.03 * (y < 0.3)
    inside = (np.abs(x - 0.5) < profile) & (y > 0.12) & (y < 0.9)
    return inside, (x - 0.5) / profile


def structure() -> Image.Image:
    image = backdrop((0.93, 0.93, 0.95), (0.75, 0.76, 0.8))
    inside, across = vase_mask()
    shade = np.clip(1 - across**2, 0, 1) ** 0.5 * 0.8 + 0.2
    colour = np.array([0.85, 0.2, 0.15]) * shade[..., None]
    image[inside] = colour[inside]
    return Image.fromarray((image * 255).astype(np.uint8))


def appearance() -> Image.Image:
    x, y = grid()
    image = backdrop((0.55, 0.7, 0.6), (0.3, 0.4, 0.35))
    inside = ((x - 0.5) / 0.32) ** 2 + ((y - 0.55) / 0.3) ** 2 < 1
    rings = 0.5 + 0.5 * np.sin(40 * np.hypot(x - 0.2, (y - 0.5) * 0.3) + 3 * np.sin(9 * y))
    wood = np.stack([0.55 + 0.25 * rings, 0.35 + 0.15 * rings, 0.15 + 0.08 * rings], axis=-1)
    shade = np.clip(1 - ((x - 0.45) / 0.32) ** 2, 0.2, 1)[..., None]
    image[inside] = (wood * shade)[inside]
    return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    structure().save(OUT / "structure.png", optimize=True)
    appearance().save(OUT / "appearance.png", optimize=True)
    print(f"wrote {OUT}")
