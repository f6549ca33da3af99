"""Command line: ``python -m xattn_core transfer --model <diffusers folder or hub id> ...``.

Every argument is checked before anything is loaded, so a mistake costs no model load; errors are
one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from .diffusers_pipeline import DEFAULT_MODEL, SAMPLES, ModelLoadError, TransferOptions, check_model_name
from .inversion import InversionSettings
from .plan import PlanSettings
from .transfer import TransferSettings

HELP_FORMAT = argparse.ArgumentDefaultsHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m xattn_core",
        description="Cross-Image Attention appearance transfer",
        formatter_class=HELP_FORMAT,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "transfer",
        help="transfer the appearance of one image onto the structure of another",
        description="Invert both images, generate the structure with the appearance's look, write the result. "
        "A transfer at the paper's settings takes 533 image-evaluations of the model (272 inverting, 261 "
        "generating).",
        formatter_class=HELP_FORMAT,
    )
    run.add_argument(
        "--appearance",
        default=str(SAMPLES / "zebra.jpg"),
        help="image giving colours/materials (default: the paper's zebra, from the official repository, MIT licence)",
    )
    run.add_argument(
        "--structure",
        default=str(SAMPLES / "giraffe.jpg"),
        help="image giving the shape to keep (default: the paper's giraffe)",
    )
    run.add_argument("--prompt", default="A photo of an animal", help='prompt, "A photo of a <domain>"')
    run.add_argument("--out", default="out.png", help="where to write the result (.png, .jpg, .webp, ...)")
    run.add_argument(
        "--object-word",
        default=None,
        help="the word naming the object in --prompt (comma-separated for several): automatic object masks for "
        "AdaIN, the official default; the masks are written next to --out as <name>_appearance_mask.png and "
        "<name>_structure_mask.png (default: none, AdaIN over the whole image)",
    )
    add_setting_flags(run)
    return parser


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """The model and transfer settings; defaults come from the engine's settings dataclasses."""
    inversion, transfer, plan = InversionSettings(), TransferSettings(), PlanSettings()
    parser.add_argument("--model", default=DEFAULT_MODEL, help="diffusers SD 1.x/2.x folder or hub id")
    parser.add_argument("--steps", type=int, default=inversion.steps, help="schedule length")
    parser.add_argument("--start-step", type=int, default=inversion.start_step, help="first step generation uses")
    parser.add_argument("--inversion-cfg", type=float, default=inversion.cfg, help="guidance while inverting")
    parser.add_argument("--cfg", type=float, default=transfer.cfg, help="prompt guidance while generating")
    parser.add_argument("--swap-guidance", type=float, default=plan.swap_guidance, help="swap guidance scale")
    parser.add_argument("--contrast", type=float, default=transfer.contrast, help="attention contrast")
    parser.add_argument("--seed", type=int, default=inversion.seed, help="seed of the inversion's noise")
    parser.add_argument("--size", type=int, default=TransferOptions().size, help="square working size in px (x64)")
    parser.add_argument("--no-freeu", action="store_true", help="turn off the official FreeU variant")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="fast mode: keep the inversion's attention keys/values (in RAM, ~1.6 GB per image for SD 1.5 at "
        "512 px in fp16) and evaluate only the output row while generating; exact only when --cfg equals "
        "--inversion-cfg, otherwise an approximation",
    )
    parser.add_argument(
        "--device", default=argparse.SUPPRESS, help="cpu, cuda, cuda:N or mps (default: cuda when available, else cpu)"
    )


def options_from(args: argparse.Namespace) -> TransferOptions:
    """The parsed flags as TransferOptions; ValueError names the first flag out of range."""
    inversion = InversionSettings(steps=args.steps, start_step=args.start_step, cfg=args.inversion_cfg, seed=args.seed)
    transfer = TransferSettings(
        plan=PlanSettings(swap_guidance=args.swap_guidance), contrast=args.contrast, cfg=args.cfg
    )
    words = tuple(word.strip() for word in (getattr(args, "object_word", None) or "").split(",") if word.strip())
    return TransferOptions(
        inversion=inversion,
        transfer=transfer,
        size=args.size,
        freeu=not args.no_freeu,
        fast=args.fast,
        object_words=words,
    )


def available_devices() -> list[str]:
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(name: str | None):
    """``name`` as a torch.device that exists here, or ValueError listing the devices that do."""
    import torch

    available = available_devices()
    if name is None:
        return torch.device("cuda" if len(available) > 1 and available[1].startswith("cuda") else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; this machine has: {', '.join(available)}") from None
    wanted = f"{device.type}:{device.index or 0}" if device.type == "cuda" else device.type
    if wanted not in available:
        raise ValueError(f"device {name!r} is not available on this machine; it has: {', '.join(available)}")
    return device


def check_output(path: str) -> Path:
    """Refuse an output file whose format is unknown or whose folder cannot be written."""
    from PIL import Image

    out = Path(path)
    if out.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"--out {path!r}: unknown image format {out.suffix!r}; use .png, .jpg or .webp")
    folder = out.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ValueError(f"--out {path!r}: cannot write into {folder}")
    return out


class PhaseProgress:
    """One progress display per phase, closed when the phase ends; plain lines when stderr is not a terminal."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream
        self.interactive = stream.isatty()
        self.phase: str | None = None
        self.bar = None
        self.started = 0.0
        self.reported = 0

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase != self.phase:
            self.close()
            self.phase, self.started, self.reported = phase, time.monotonic(), 0
            if self.interactive:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=phase, unit="step", file=self.stream, leave=True)
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        elif done * 10 // total > self.reported * 10 // total or done == total:
            self.reported = done
            print(
                f"{phase}: {done}/{total} steps, {time.monotonic() - self.started:.1f} s", file=self.stream, flush=True
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.phase = None


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    original_format = warnings.formatwarning
    warnings.formatwarning = _one_line_warning  # the engine's warnings (e.g. no object found) read like errors
    try:
        return _run(argv)
    finally:
        warnings.formatwarning = original_format


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # silences import-time notices unrelated to us
    try:
        options = options_from(args)
        device = resolve_device(getattr(args, "device", None))
        out = check_output(args.out)
        check_model_name(args.model)
        from .diffusers_pipeline import load_image

        appearance = load_image(args.appearance, options.size)
        structure = load_image(args.structure, options.size)
        if options.object_words:  # the tokenizer alone is small: a misspelt word costs no model load
            from .diffusers_pipeline import load_tokenizer, object_token_positions

            object_token_positions(load_tokenizer(args.model), args.prompt, options.object_words)
    except (ModelLoadError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from .diffusers_pipeline import load_pipeline, transfer_images, write_transfer

    progress = PhaseProgress()
    try:
        pipe = load_pipeline(args.model, device)
        image, result = transfer_images(pipe, appearance, structure, args.prompt, options, progress)
    except (ModelLoadError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        progress.close()
    masks = write_transfer(image, result, out, options)
    for path in (out, *masks):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
