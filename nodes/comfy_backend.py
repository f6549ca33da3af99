"""ComfyUI glue every model family shares: run engine loops inside ComfyUI's sampling machinery.

- A model family (:class:`ModelFamily`; ``unet_family.py``, ``flux_family.py``, ``flux2_family.py``) patches a
  clone of the MODEL so that its swapping layers read the per-call directive :class:`ComfyBackend` puts into
  ``transformer_options``; with none, they are ordinary attention. :func:`family_of` picks the family.
- :func:`run_in_guider` runs an engine loop as a KSAMPLER function through a :class:`TransferGuider` (a
  ``CFGGuider`` whose path calls get the prompts without hints), so model loading/offloading, ControlNet,
  hooks and wrappers behave as in KSampler.
- Fingerprints of the weights and prompts, stored with inversions.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch
from torch import Tensor

from ..xattn_core.attention import CallAttention
from ..xattn_core.errors import XAttnError
from ..xattn_core.freeu import FreeUSettings
from .compat import comfy, comfy_attention  # comfy.samplers, comfy.model_management, comfy.model_sampling

SWAP_KEY = "xattn_swap"  # transformer_options key carrying the CallAttention of a model call
# transformer_options key: the model-space latent shape of a call the pack makes; a transformer counts the image's
# own tokens from it (edit models append reference images' tokens after them)
LATENT_SHAPE_KEY = "xattn_latent_shape"
# ComfyUI >= 0.3.6x routes optimized_attention through transformer_options["optimized_attention_override"]
# (wrap_attn); older versions take no transformer_options argument at all
ATTENTION_TAKES_OPTIONS = hasattr(comfy_attention, "wrap_attn")


class UnsupportedModelError(XAttnError, ValueError):
    pass


def plain_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, options: dict, **kwargs) -> Tensor:
    """ComfyUI's optimized attention, through any ``optimized_attention_override`` another pack set."""
    if ATTENTION_TAKES_OPTIONS:
        kwargs["transformer_options"] = options
    return comfy_attention.optimized_attention(q, k, v, heads, attn_precision=options.get("attn_precision"), **kwargs)


def _no_offset(token_ids: Sequence) -> int:
    return 0


@dataclass(frozen=True)
class ContextTokens:
    """Where a family's text context comes from, for CLIP Text Encode (Object Word): the entry ``key`` of
    ``clip.tokenize()`` (its tokenizer is ``clip.tokenizer.<key>`` or ``clip_<key>``), whose tokens become the
    context one for one, shifted by ``offset(token ids)`` positions (a text encoder that drops a template prefix,
    or a model that pads the context in front)."""

    key: str
    offset: Callable[[Sequence], int] = _no_offset


class ModelFamily(Protocol):
    """What differs between model families: which layers swap and how, the schedule and the inversion step.

    Latent channels come from the MODEL's own latent format for every family.
    """

    name: str  # stored in inversion metadata: an inversion only meets a sampler of its own family
    step_kind: str  # the engine's step (xattn_core.inversion.DDPM or FLOW)
    # the text encoders whose tokens are this family's context, where the Object Word node finds the object word;
    # empty: it warns and the sampler gets no automatic masks
    context_tokens: tuple[ContextTokens, ...]

    def detect(self, model) -> bool: ...

    def input_channels(self, diffusion_model) -> int:
        """The latent channels the network takes in: more than the latent's for a variant that concatenates a
        conditioning image (Flux Fill, Depth, Canny; SD inpainting), which the families refuse."""
        ...

    def patch(self, model, freeu: FreeUSettings | None, records_maps: bool = False, options: dict | None = None):
        """A clone of ``model`` whose swapping layers follow the directive in ``transformer_options``;
        ``records_maps``: also the layers the automatic object masks read (every family has them)."""
        ...

    def default_sigmas(self, model, steps: int, latent_shape: tuple[int, ...]) -> Tensor:
        """The schedule Invert Image uses when no SIGMAS is connected, for latents of ``latent_shape``."""
        ...

    def check_sigmas(self, sigmas: Tensor) -> None:
        """Refuse a SIGMAS input this family's inversion cannot use, saying what to connect."""
        ...

    def cache_form(self, options: dict | None) -> dict[str, str]:
        """What a fast-mode cache made under ``options`` holds that other options may not: written into the
        inversion's metadata by Invert Image."""
        ...

    def cache_mismatch(self, model, options: dict | None, cache, metadata: dict) -> str | None:
        """Why a fast-mode ``cache`` (made as ``metadata`` says) cannot serve a transfer under ``options``, or
        None: checked by the sampler before any model call."""
        ...


def model_fingerprint(model) -> str:
    """A cheap identity of the weights in use: architecture, a sample of tensors, and weight patches (LoRAs)."""
    digest = hashlib.sha256(type(model.model).__name__.encode())
    state = model.model.diffusion_model.state_dict()
    names = sorted(state)
    for name in names[:2] + names[len(names) // 2 : len(names) // 2 + 2] + names[-2:]:
        tensor = state[name].detach().flatten()
        sample = tensor[:: max(1, tensor.numel() // 1024)].float().cpu()
        digest.update(name.encode() + sample.numpy().tobytes())
    for key in sorted(model.patches):
        digest.update(f"{key}:{[p[0] for p in model.patches[key]]}".encode())
    return digest.hexdigest()[:16]


def conditioning_fingerprint(conditioning: list) -> str:
    """A short hash of a CONDITIONING input's tensors (fast mode is exact only under the same prompts)."""
    digest = hashlib.sha256()
    for tensor, extras in conditioning:
        for part in (tensor, extras.get("pooled_output")):
            if isinstance(part, Tensor):
                digest.update(str(tuple(part.shape)).encode() + part.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


# Conditioning entries that steer where and what the model draws (ControlNet / T2I-Adapter, GLIGEN, area and
# mask conds). They are for the output only: the appearance and structure paths reconstruct their own images.
HINT_KEYS = ("control", "gligen", "area", "mask", "mask_strength", "set_area_to_bounds")
PATHS_KEY = "xattn_paths"  # transformer_options flag: this model call's rows are appearance/structure paths


def without_hints(conds: list[dict] | None) -> list[dict] | None:
    """The guider's processed conds with the hint entries removed (the prompts themselves stay)."""
    return None if conds is None else [{k: v for k, v in cond.items() if k not in HINT_KEYS} for cond in conds]


def has_hints(conds: dict[str, list[dict]]) -> bool:
    return any(key in cond for group in conds.values() for cond in group or [] for key in HINT_KEYS)


class TransferGuider(comfy.samplers.CFGGuider):
    """A CFGGuider whose path calls get the prompts without hints; output calls get them as given.

    ComfyUI applies a cond's ControlNet (and other hints) to every model call that carries that cond, so the
    path calls are run through ComfyUI's own ``sampling_function`` on hint-free copies of the processed conds.
    """

    _path_conds: tuple[dict, list[dict] | None, list[dict] | None] | None = None

    def _hint_free_conds(self) -> tuple[list[dict] | None, list[dict] | None]:
        """(negative, positive) without hints, built once per sampling (the guider processes its conds anew
        for every ``sample``, so a new ``self.conds`` means a rebuild)."""
        if self._path_conds is None or self._path_conds[0] is not self.conds:
            negative, positive = without_hints(self.conds.get("negative")), without_hints(self.conds.get("positive"))
            self._path_conds = (self.conds, negative, positive)
        return self._path_conds[1], self._path_conds[2]

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - ComfyUI's signature
        if model_options.get("transformer_options", {}).get(PATHS_KEY):
            negative, positive = self._hint_free_conds()
            return comfy.samplers.sampling_function(
                self.inner_model, x, timestep, negative, positive, self.cfg, model_options=model_options, seed=seed
            )
        return super().predict_noise(x, timestep, model_options, seed)


def has_time_axis(model) -> bool:
    """Whether the MODEL's LATENTs carry a frame axis, ``[batch, channels, frames, height, width]`` (Qwen-Image's
    Wan 2.1 latents); the engine works on one image, ``[batch, channels, height, width]``."""
    return getattr(model.model.latent_format, "latent_dimensions", 2) == 3


def image_latent(samples: Tensor) -> Tensor:
    """A LATENT's samples as the engine takes them: one frame's ``[batch, channels, height, width]``."""
    if samples.dim() == 5:
        if samples.shape[2] != 1:
            raise ValueError(
                f"the latent holds {samples.shape[2]} frames (a video latent); Cross-Image Attention transfers "
                "single images: encode one image"
            )
        return samples[:, :, 0]
    return samples


def model_latent(model, samples: Tensor) -> Tensor:
    """Engine latents ``[batch, channels, height, width]`` as the MODEL's LATENTs (a frame axis where it has one)."""
    return samples.unsqueeze(2) if has_time_axis(model) else samples


class ComfyBackend:
    """The engine's Backend over the k-diffusion model function a KSAMPLER receives."""

    def __init__(self, denoiser, extra_args: dict, output_hints: bool = False, time_axis: bool = False) -> None:
        self.denoiser = denoiser
        self.extra_args = extra_args
        self.output_hints = output_hints  # the output's conds carry hints the paths must not get
        self.time_axis = time_axis  # the model takes [batch, channels, 1, height, width]

    def _call(self, latents: Tensor, sigmas: Tensor, swap: CallAttention | None, paths: bool) -> Tensor:
        comfy.model_management.throw_exception_if_processing_interrupted()
        extra_args = dict(self.extra_args)
        extra_args["denoise_mask"] = None  # our calls can hold other rows than the sampled latent
        model_options = dict(extra_args.get("model_options", {}))
        transformer_options = dict(model_options.get("transformer_options", {}))
        transformer_options[SWAP_KEY] = swap
        transformer_options[LATENT_SHAPE_KEY] = tuple(latents.shape)
        transformer_options[PATHS_KEY] = paths
        model_options["transformer_options"] = transformer_options
        extra_args["model_options"] = model_options
        if self.time_axis:
            denoised = self.denoiser(latents.unsqueeze(2), sigmas, **extra_args).squeeze(2)
        else:
            denoised = self.denoiser(latents, sigmas, **extra_args)
        return (latents - denoised) / sigmas.reshape(-1, 1, 1, 1)

    def predict_noise(
        self, latents: Tensor, sigma: float | Tensor, swap: CallAttention | None = None, paths: bool = False
    ) -> Tensor:
        """``paths``: the rows reconstruct the appearance/structure images, so the prompts come without hints."""
        sigmas = torch.as_tensor(sigma, dtype=torch.float32, device=latents.device).reshape(-1)
        return self._call(latents, sigmas.expand(latents.shape[0]).to(latents.dtype), swap, paths)


Payload = TypeVar("Payload")
LoopFunction = Callable[[ComfyBackend, Tensor, Callable[[int, Tensor, Tensor, float], None]], tuple[Tensor, Payload]]
"""``(backend, model-space latent, preview(step, x, denoised, sigma)) -> (model-space result, payload)``."""


def run_in_guider(
    model, positive, negative, cfg: float, latent: Tensor, sigmas: Tensor, loop: LoopFunction, callback=None
) -> tuple[Tensor, Payload]:
    """Run ``loop`` as a sampler through ``CFGGuider.sample``; returns the (latent-space) result and the payload.

    ``latent`` is a LATENT's samples, in the MODEL's layout; the loop gets it in model space, unchanged (zero
    noise; flow models end their schedules at sigma 0, so ComfyUI's final ``1 / (1 - sigma)`` rescaling is none),
    as one frame ``[batch, channels, height, width]`` where the layout has a frame axis. The loop's payload
    (an inversion, the reconstructed paths, ...) comes back beside the latent, which is all a sampler may
    return to ComfyUI. ``callback`` is ComfyUI's ``(step, x0, x, total)`` preview/progress.
    """
    payloads = []

    time_axis = has_time_axis(model)

    def sampler_function(denoiser, x, _sigmas, extra_args=None, callback=None, disable=None):
        backend = ComfyBackend(denoiser, extra_args or {}, output_hints=has_hints(guider.conds), time_axis=time_axis)
        if isinstance(guider.inner_model.model_sampling, comfy.model_sampling.CONST):
            # flow models scale the start latent by 1 - sigma_0 (zero at sigma 1): hand the loop the latent as is
            x = guider.inner_model.process_latent_in(latent.to(x))

        def preview(step: int, current: Tensor, denoised: Tensor, sigma: float) -> None:
            if callback is not None:
                if time_axis:
                    current, denoised = current.unsqueeze(2), denoised.unsqueeze(2)
                callback({"i": step, "x": current, "denoised": denoised, "sigma": sigma, "sigma_hat": sigma})

        result, payload = loop(backend, image_latent(x), preview)
        payloads.append(payload)
        return result.unsqueeze(2) if time_axis else result

    guider = TransferGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    noise = torch.zeros_like(latent)
    logging.debug("xattn: sampling %s rows over %d sigmas", latent.shape[0], len(sigmas) - 1)
    samples = guider.sample(
        noise, latent, comfy.samplers.KSAMPLER(sampler_function), sigmas, callback=callback, disable_pbar=True
    )
    return samples, payloads[-1]
