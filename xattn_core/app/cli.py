"""Command line: ``python -m xattn_core transfer --model <diffusers folder or hub id> ...``, ``batch`` and
``tiny-model``.

Every argument is checked before anything is loaded, so a mistake costs no model load; errors are
one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path

from .cli_common import HelpFormat, PhaseProgress, add_setting_flags, options_from, resolve_device, writable_folder
from .diffusers_pipeline import SAMPLES, ModelLoadError, check_model_name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m xattn_core",
        description="Cross-Image Attention appearance transfer",
        formatter_class=HelpFormat,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "transfer",
        help="transfer the appearance of one image onto the structure of another",
        description="Invert both images, generate the structure with the appearance's look, write the result. "
        "A transfer at the paper's settings takes 491 image-evaluations of the model (272 inverting, 219 "
        "generating).",
        formatter_class=HelpFormat,
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
    from .batch_cli import add_batch_command

    add_batch_command(commands)
    tiny = commands.add_parser(
        "tiny-model",
        help="write a tiny random-weight test pipeline (no download) to try the other commands",
        description="Write a Stable Diffusion 1.5-shaped diffusers pipeline with tiny random weights (about 6 MB), "
        "built in code: the other commands run on it (--model FOLDER) without a model download, to try or time "
        "them. Its images are noise.",
        formatter_class=HelpFormat,
    )
    tiny.add_argument("folder", help="the folder to write it to (created if needed)")
    return parser


def check_output(path: str) -> Path:
    """Refuse an output file whose format is unknown or whose folder cannot be written."""
    from PIL import Image

    out = Path(path)
    if out.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"--out {path!r}: unknown image format {out.suffix!r}; use .png, .jpg or .webp")
    writable_folder(out.parent, "--out")
    return out


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


# transformers' logger for optional packages it misses
TRANSFORMERS_IMPORT_LOGGER = "transformers.utils.import_utils"


def not_about_torchvision(record: logging.LogRecord) -> bool:
    """False for transformers' notices that an image processor falls back to PIL without torchvision (one per
    processor class, CLIP's and SigLIP's, printed when diffusers is imported). The commands use no image processor:
    the SD pipeline's feature extractor only feeds the safety checker, which they leave out."""
    return "requires torchvision (not installed)" not in record.getMessage()


def main(argv: list[str] | None = None) -> int:
    original_format = warnings.formatwarning
    warnings.formatwarning = _one_line_warning  # the engine's warnings (e.g. no object found) read like errors
    # on the logger itself, for this call only: whatever the user's TRANSFORMERS_VERBOSITY, and also when
    # transformers was imported before main() ran
    transformers_notices = logging.getLogger(TRANSFORMERS_IMPORT_LOGGER)
    transformers_notices.addFilter(not_about_torchvision)
    try:
        return _run(argv)
    finally:
        transformers_notices.removeFilter(not_about_torchvision)
        warnings.formatwarning = original_format


def write_tiny_model(folder: str) -> int:
    """``tiny-model FOLDER``: the tiny random-weight pipeline the tests use, for ``--model FOLDER``."""
    path = Path(folder).expanduser()
    try:
        if path.exists() and not path.is_dir():
            raise ValueError(f"{folder!r} is a file, not a folder")
        writable_folder(path, "folder")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from transformers.utils import logging as transformers_logging

    from ..tiny import save_tiny_pipeline

    transformers_logging.disable_progress_bar()  # a "Writing model shards" bar for a few MB
    save_tiny_pipeline(path)
    print(f"wrote {path}: pass --model {path}")
    return 0


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "batch":
        from .batch_cli import run_batch

        return run_batch(args)
    if args.command == "tiny-model":
        return write_tiny_model(args.folder)
    try:
        options = options_from(args)
        device = resolve_device(args.device)
        out = check_output(args.out)
        check_model_name(args.model)
        from .diffusers_pipeline import load_image

        appearance = load_image(args.appearance, options.size)
        structure = load_image(args.structure, options.size)
        if options.object_words:  # the tokenizer alone is small: a misspelt word costs no model load
            from .diffusers_pipeline import load_tokenizer, prompt_object_tokens

            prompt_object_tokens(load_tokenizer(args.model), args.prompt, options.object_words)
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
