"""End-to-end transfer on a diffusers Stable Diffusion pipeline (reference path and command line)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..diffusers_backend import DiffusersBackend
from ..errors import XAttnError
from ..freeu import FreeUSettings
from ..inversion import CacheSettings, Inversion, InversionSettings, invert
from ..schedule import paper_sigmas
from ..segmentation import word_positions
from ..transfer import TransferResult, TransferSettings, transfer

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SAMPLES = Path(__file__).resolve().parents[1] / "samples"

Progress = Callable[[str, int, int], None]
"""``(phase, done, total)`` with phase "invert" or "generate"."""


class ModelLoadError(XAttnError, RuntimeError):
    pass


def first_line(error: BaseException) -> str:
    """An error's message cut to its first line (its type's name when it has none): one line for the user."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _looks_local(model: str) -> bool:
    return model.startswith((".", "/", "~")) or Path(model).suffix != "" or Path(model).expanduser().exists()


def check_model_name(model: str) -> None:
    """Refuse, before anything is loaded, a local path that is not a diffusers model folder."""
    if _looks_local(model) and not (Path(model).expanduser() / "model_index.json").is_file():
        raise ModelLoadError(
            f"{model!r} is not a diffusers model folder (no model_index.json); pass --model with such a folder "
            f"or a hub id such as {DEFAULT_MODEL}"
        )


def _hub_failure(model: str, error: Exception) -> str:
    """What to do when a hub id could not be loaded, in one line (diffusers' own message is long)."""
    text = f"{type(error).__name__}: {error}"
    if "RepositoryNotFound" in text or "404" in text:
        why = "there is no such model on the hub, or it is private"
    elif "Gated" in text or "401" in text or "403" in text:
        why = "the model is gated: accept its licence on the hub and log in (huggingface-cli login)"
    else:
        why = "it is not in the local cache and could not be downloaded (offline, or the hub is unreachable)"
    return (
        f"cannot load {model!r} from the Hugging Face hub: {why}; pass --model with a local diffusers folder "
        "(one with model_index.json)"
    )


def load_pipeline(model: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A diffusers Stable Diffusion pipeline from a local folder or a hub id, or a one-line ModelLoadError."""
    check_model_name(model)
    try:
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import logging as diffusers_logging
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ModelLoadError("the reference path needs diffusers: pip install 'xattn[diffusers]'") from error
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()  # loading bars: noise next to the transfer's own progress
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - diffusers' SD pipeline needs transformers anyway
        pass
    try:
        pipe = StableDiffusionPipeline.from_pretrained(model, dtype=dtype, safety_checker=None)
    except Exception as error:  # noqa: BLE001 - diffusers raises many kinds; all mean "cannot load"
        if not _looks_local(model):
            raise ModelLoadError(_hub_failure(model, error)) from None
        reason = first_line(error)[:200]
        raise ModelLoadError(f"cannot load the diffusers model in {model!r} ({reason})") from None
    return pipe.to(device)


@dataclass(frozen=True)
class TransferOptions:
    """Everything one command-line transfer needs; the defaults are the engine's (the paper's)."""

    inversion: InversionSettings = field(default_factory=InversionSettings)
    transfer: TransferSettings = field(default_factory=TransferSettings)
    size: int = 512  # square working size in px
    freeu: bool = True  # the official FreeU variant, as in the paper
    fast: bool = False  # keep the inversion's attention cache (in RAM) and evaluate only the output row
    object_words: tuple[str, ...] = ()  # the prompt's object word(s): automatic AdaIN masks (the official default)

    def __post_init__(self) -> None:
        if self.size < 64 or self.size % 64:
            raise ValueError(f"size must be a positive multiple of 64 px, got {self.size}")


def load_image(path: str | Path, size: int) -> Image.Image:
    """An image file as RGB at ``size`` x ``size``, or a one-line OSError/ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    except (OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read {path} as an image ({error})") from None


def _to_tensor(image: Image.Image) -> Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]


def _to_image(decoded: Tensor) -> Image.Image:
    array = ((decoded[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def prompt_object_tokens(tokenizer, prompt: str, words: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
    """Where each object word sits in the prompt's tokens (the model's own CLIP tokenizer), or ObjectWordError."""
    ids = tokenizer(prompt, max_length=tokenizer.model_max_length, truncation=True).input_ids
    prompt_tokens = tokenizer.convert_ids_to_tokens(ids)
    return tuple(tuple(word_positions(prompt_tokens, tokenizer.tokenize(word), word)) for word in words)


def load_tokenizer(model: str):
    """The pipeline's CLIP tokenizer alone (small), to check an object word before the model loads."""
    from transformers import CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
        # transformers 5 returns, without an error, a tokenizer of its special tokens alone when the files are
        # neither cached nor downloadable (HF_HUB_OFFLINE): every word would then be "not in the prompt"
        if len(tokenizer) <= len(set(tokenizer.all_special_tokens)):
            raise OSError("no vocabulary was found")
        return tokenizer
    except Exception as error:  # noqa: BLE001 - hub and file errors of many kinds all mean "cannot load"
        if not _looks_local(model):
            raise ModelLoadError(_hub_failure(model, error)) from None
        raise ModelLoadError(f"cannot load the tokenizer of {model!r} ({type(error).__name__})") from None


def mask_image(mask: Tensor, size: int) -> Image.Image:
    """A ``[1, h, w]`` latent-resolution mask as a black-and-white image of ``size`` px."""
    array = (mask[0].float().clamp(0, 1) * 255).round().byte().cpu().numpy()
    return Image.fromarray(array, mode="L").resize((size, size), Image.Resampling.NEAREST)


def encode_prompt(pipe, prompt: str) -> Tensor:
    tokens = pipe.tokenizer(
        prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        return pipe.text_encoder(tokens.input_ids.to(pipe.device))[0]


class PromptEncodings:
    """The pipeline's text encodings, each prompt encoded once however many inversions and transfers use it."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.encoded: dict[str, Tensor] = {}

    def __call__(self, prompt: str) -> tuple[Tensor, Tensor]:
        """The prompt's encoding and the empty negative prompt's (the uncond branch under guidance)."""
        for text in (prompt, ""):
            if text not in self.encoded:
                self.encoded[text] = encode_prompt(self.pipe, text)
        return self.encoded[prompt], self.encoded[""]


def encode_image(pipe, image: Image.Image) -> Tensor:
    with torch.no_grad():
        latent = pipe.vae.encode(_to_tensor(image).to(pipe.device, pipe.vae.dtype)).latent_dist.mean
    return latent.float() * pipe.vae.config.scaling_factor


def decode_latent(pipe, latent: Tensor) -> Image.Image:
    with torch.no_grad():
        return _to_image(pipe.vae.decode((latent / pipe.vae.config.scaling_factor).to(pipe.vae.dtype)).sample)


def sigma_table(pipe) -> Tensor:
    alphas_cumprod = torch.as_tensor(pipe.scheduler.alphas_cumprod, dtype=torch.float64)
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float()


def _freeu(options: TransferOptions) -> FreeUSettings | None:
    return FreeUSettings() if options.freeu else None


def invert_images(
    pipe,
    images: list[Image.Image],
    prompt: str,
    options: TransferOptions = TransferOptions(),
    seed: int | None = None,
    progress: Progress | None = None,
    prompts: PromptEncodings | None = None,
) -> Inversion:
    """Encode ``images`` and invert them as one batch, one model call per step.

    Image ``i`` draws its noise with ``seed + i`` (``seed`` defaults to the options' inversion seed), so an
    image inverted alone with ``seed + i`` gets the same draws. ``prompts`` reuses encodings made before.
    """
    inversion_settings = options.inversion
    table = sigma_table(pipe)
    positive, negative = (prompts or PromptEncodings(pipe))(prompt)
    with DiffusersBackend(pipe.unet, positive, negative, inversion_settings.cfg, table, _freeu(options)) as backend:
        clean = torch.cat([encode_image(pipe, image) for image in images])

        def report_inversion(done: int, total: int) -> None:
            if progress:
                progress("invert", done, total)

        # fast mode keeps the swapping levels' keys/values in RAM, whatever device the model runs on, and the
        # uncond branch only when generation is guided
        branches = frozenset({0}) if options.transfer.cfg == 1.0 else None
        cache = CacheSettings(device="cpu", branches=branches) if options.fast else None
        return invert(
            backend.predict_noise,
            clean,
            paper_sigmas(table, inversion_settings.steps),
            inversion_settings.start_step,
            inversion_settings.seed if seed is None else seed,
            callback=report_inversion,
            cache=cache,
        )


def generate(
    pipe,
    appearance: Inversion,
    structure: Inversion,
    prompt: str,
    options: TransferOptions = TransferOptions(),
    progress: Progress | None = None,
    appearance_mask: Tensor | None = None,
    structure_mask: Tensor | None = None,
    prompts: PromptEncodings | None = None,
) -> tuple[Image.Image, TransferResult]:
    """Run the joint sampler on two inversions of one image each and decode the output (the structure's
    reconstruction is not made: nothing here writes it)."""
    settings = replace(options.transfer, structure_reconstruction=False)
    positive, negative = (prompts or PromptEncodings(pipe))(prompt)
    object_tokens = None
    if options.object_words:
        object_tokens = prompt_object_tokens(pipe.tokenizer, prompt, options.object_words)
    with DiffusersBackend(pipe.unet, positive, negative, settings.cfg, sigma_table(pipe), _freeu(options)) as backend:
        result = transfer(
            backend,
            appearance,
            structure,
            settings,
            appearance_mask,
            structure_mask,
            callback=(lambda done, total, *_: progress("generate", done, total)) if progress else None,
            object_tokens=object_tokens,
        )
    return decode_latent(pipe, result.output[:1]), result


def transfer_images(
    pipe,
    appearance: Image.Image,
    structure: Image.Image,
    prompt: str,
    options: TransferOptions = TransferOptions(),
    progress: Progress | None = None,
) -> tuple[Image.Image, TransferResult]:
    """Invert both images in one batch (the appearance with the seed, the structure with seed + 1), generate;
    the prompt is encoded once for both."""
    prompts = PromptEncodings(pipe)
    both = invert_images(pipe, [appearance, structure], prompt, options, progress=progress, prompts=prompts)
    return generate(pipe, both.select([0]), both.select([1]), prompt, options, progress, prompts=prompts)


def write_transfer(image: Image.Image, result: TransferResult, out: Path, options: TransferOptions) -> list[Path]:
    """Write the output image and, when object words made automatic masks, the masks next to it.

    The masks are ``<out stem>_appearance_mask.png`` and ``<out stem>_structure_mask.png``; returns their paths.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    written = []
    if options.object_words and result.structure_masks is not None and result.appearance_masks is not None:
        for role, masks in (("appearance", result.appearance_masks), ("structure", result.structure_masks)):
            mask_path = out.with_name(f"{out.stem}_{role}_mask.png")
            mask_image(masks[0], options.size).save(mask_path)
            written.append(mask_path)
    return written
