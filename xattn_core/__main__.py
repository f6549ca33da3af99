"""Command line: ``python -m xattn_core transfer --model <diffusers folder or hub id> ...``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .diffusers_pipeline import (
    DEFAULT_MODEL,
    SAMPLES,
    ModelLoadError,
    TransferOptions,
    load_image,
    load_pipeline,
    transfer_images,
)


def build_parser() -> argparse.ArgumentParser:
    defaults = TransferOptions()
    parser = argparse.ArgumentParser(
        prog="python -m xattn_core", description="Cross-Image Attention appearance transfer"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("transfer", help="transfer the appearance of one image onto the structure of another")
    run.add_argument("--appearance", default=str(SAMPLES / "appearance.png"), help="image giving colours/materials")
    run.add_argument("--structure", default=str(SAMPLES / "structure.png"), help="image giving the shape to keep")
    run.add_argument("--model", default=DEFAULT_MODEL, help="diffusers SD 1.x/2.x folder or hub id")
    run.add_argument(
        "--prompt", default="A photo of an object", help='inversion/generation prompt, "A photo of a <domain>"'
    )
    run.add_argument("--out", default="out.png", help="where to write the result")
    run.add_argument("--steps", type=int, default=defaults.steps)
    run.add_argument("--start-step", type=int, default=defaults.start_step)
    run.add_argument("--inversion-cfg", type=float, default=defaults.inversion_cfg)
    run.add_argument("--cfg", type=float, default=defaults.cfg)
    run.add_argument("--swap-guidance", type=float, default=defaults.swap_guidance)
    run.add_argument("--contrast", type=float, default=defaults.contrast)
    run.add_argument("--seed", type=int, default=defaults.seed)
    run.add_argument("--size", type=int, default=defaults.size, help="square working size in px (multiple of 64)")
    run.add_argument("--no-freeu", action="store_true", help="turn off the official FreeU variant")
    run.add_argument(
        "--fast",
        action="store_true",
        help="fast mode: keep the inversion's attention keys/values (in RAM, ~1.6 GB per image for SD 1.5 at "
        "512 px in fp16) and evaluate only the output row while generating; exact only when --cfg equals "
        "--inversion-cfg, otherwise an approximation",
    )
    run.add_argument("--device", default="cuda" if _cuda() else "cpu")
    return parser


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = TransferOptions(
        steps=args.steps,
        start_step=args.start_step,
        inversion_cfg=args.inversion_cfg,
        cfg=args.cfg,
        swap_guidance=args.swap_guidance,
        contrast=args.contrast,
        seed=args.seed,
        size=args.size,
        freeu=not args.no_freeu,
        fast=args.fast,
    )
    try:
        appearance = load_image(args.appearance, options.size)
        structure = load_image(args.structure, options.size)
        pipe = load_pipeline(args.model, args.device)
    except (ModelLoadError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from tqdm.auto import tqdm

    bars: dict[str, tqdm] = {}

    def progress(phase: str, done: int, total: int) -> None:
        bar = bars.get(phase) or bars.setdefault(phase, tqdm(total=total, desc=phase, unit="step"))
        bar.update(done - bar.n)

    try:
        image, _ = transfer_images(pipe, appearance, structure, args.prompt, options, progress)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        for bar in bars.values():
            bar.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
