"""End-to-end transfer on a diffusers Stable Diffusion pipeline (reference path and command line)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .diffusers_backend import DiffusersBackend
from .freeu import FreeUSettings
from .inversion import CacheSettings, Inversion, invert
from .plan import PlanSettings
from .transfer import TransferResult, TransferSettings, transfer
from .schedule import paper_sigmas

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SAMPLES = Path(__file__).parent / "samples"

Progress = Callable[[str, int, int], None]
"""``(phase, done, total)`` with phase "invert" or "generate"."""


class ModelLoadError(RuntimeError):
    pass


def load_pipeline(model: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """A diffusers Stable Diffusion pipeline from a local folder or a hub id, or a one-line error."""
    try:
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import logging as diffusers_logging
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ModelLoadError("the reference path needs diffusers: pip install 'xattn[diffusers]'") from error
    looks_local = model.startswith((".", "/", "~")) or Path(model).suffix != ""
    if looks_local and not (Path(model).expanduser() / "model_index.json").is_file():
        raise ModelLoadError(
            f"{model!r} is not a diffusers model folder (no model_index.json); pass --model with such a folder "
            f"or a hub id such as {DEFAULT_MODEL}"
        )
    diffusers_logging.set_verbosity_error()
    try:
        pipe = StableDiffusionPipeline.from_pretrained(model, dtype=dtype, safety_checker=None)
    except Exception as error:  # noqa: BLE001 - diffusers raises many kinds; all mean "cannot load"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(
            f"cannot load diffusers model {model!r} ({reason}); pass --model with a local diffusers folder "
            "(one with model_index.json) or a hub id this machine can download"
        ) from None
    return pipe.to(device)


@dataclass(frozen=True)
class TransferOptions:
    """The paper's settings (SPEC 2.7)."""

    steps: int = 100
    start_step: int = 32
    inversion_cfg: float = 3.5
    cfg: float = 1.0
    swap_guidance: float = 3.5
    contrast: float = 1.67
    seed: int = 0
    size: int = 512
    freeu: bool = True
    fast: bool = False  # keep the inversion's attention cache (in RAM) and evaluate only the output row


def load_image(path: str | Path, size: int) -> Image.Image:
    if size % 64:
        raise ValueError(f"image size must be a multiple of 64 px, got {size}")
    return Image.open(path).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


def _to_tensor(image: Image.Image) -> Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]


def _to_image(decoded: Tensor) -> Image.Image:
    array = ((decoded[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def encode_prompt(pipe, prompt: str) -> Tensor:
    tokens = pipe.tokenizer(
        prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        return pipe.text_encoder(tokens.input_ids.to(pipe.device))[0]


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


def transfer_images(
    pipe,
    appearance: Image.Image,
    structure: Image.Image,
    prompt: str,
    options: TransferOptions = TransferOptions(),
    progress: Progress | None = None,
) -> tuple[Image.Image, TransferResult]:
    """Invert both images, run the joint sampler, decode the output."""
    table = sigma_table(pipe)
    sigmas = paper_sigmas(table, options.steps)
    positive = encode_prompt(pipe, prompt)
    negative = encode_prompt(pipe, "")
    freeu = FreeUSettings() if options.freeu else None
    with DiffusersBackend(pipe.unet, positive, negative, options.inversion_cfg, table, freeu) as backend:
        clean = torch.cat([encode_image(pipe, appearance), encode_image(pipe, structure)])

        def report_inversion(done: int, total: int) -> None:
            if progress:
                progress("invert", done, total)

        # fast mode keeps the swapping levels' keys/values in RAM, whatever device the model runs on, and the
        # uncond branch only when generation is guided
        branches = frozenset({0}) if options.cfg == 1.0 else None
        cache = CacheSettings(device="cpu", branches=branches) if options.fast else None
        both: Inversion = invert(
            backend.predict_noise,
            clean,
            sigmas,
            options.start_step,
            options.seed,
            callback=report_inversion,
            cache=cache,
        )
        backend.with_guidance(positive, negative, options.cfg)
        settings = TransferSettings(plan=PlanSettings(swap_guidance=options.swap_guidance), contrast=options.contrast)
        result = transfer(
            backend,
            both.select([0]),
            both.select([1]),
            settings,
            callback=(lambda k, total, *_: progress("generate", k + 1, total)) if progress else None,
        )
    return decode_latent(pipe, result.output[:1]), result
