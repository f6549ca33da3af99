"""ComfyUI glue: patch a clone of the MODEL and run engine loops inside ComfyUI's sampling machinery.

- :func:`patch_model` clones the ModelPatcher and sets attn1 replace patches on the decoder
  blocks of the two highest-resolution attention levels (found from the model's own structure),
  plus the official FreeU variant as an output-block patch. The patches read the per-call
  directive that :class:`ComfyBackend` puts into ``transformer_options``; with none, they are
  ordinary attention.
- :func:`run_in_guider` runs an engine loop as a KSAMPLER function through a :class:`TransferGuider` (a
  ``CFGGuider`` whose path calls get the prompts without hints), so model loading/offloading, ControlNet,
  hooks and wrappers behave as in KSampler.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

from ..xattn_core.attention import CallAttention, record_attention_maps, route_attention
from ..xattn_core.freeu import FreeUSettings, official_freeu
from ..xattn_core.plan import SWAP_LEVELS
from .compat import comfy, comfy_attention  # comfy.samplers, comfy.model_management: loaded by the shim

SWAP_KEY = "xattn_swap"  # transformer_options key carrying the CallAttention of a model call


class UnsupportedModelError(ValueError):
    pass


def _class_names(module: torch.nn.Module) -> set[str]:
    return {type(m).__name__ for m in module.modules()}


def decoder_levels(diffusion_model) -> tuple[dict[int, int], set[int]]:
    """(output block id -> attention level, ids of the first output block of each decoder level).

    Level 0 is the highest-resolution decoder level that has self-attention (SD 1.x: full latent
    resolution; SDXL: x2 downsampled, it has no attention at full resolution).
    """
    blocks = getattr(diffusion_model, "output_blocks", None)
    inputs = getattr(diffusion_model, "input_blocks", None)
    if blocks is None or inputs is None:
        raise UnsupportedModelError(
            f"{type(diffusion_model).__name__} is not a UNet with decoder self-attention; Cross-Image Attention "
            "supports SD 1.x, SD 2.x and SDXL models (not DiT/Flux-style transformers)"
        )
    factor = 2 ** sum("Downsample" in _class_names(block) for block in inputs)
    factors: dict[int, int] = {}
    level_starts = {0}
    for block_id, block in enumerate(blocks):
        names = _class_names(block)
        if "SpatialTransformer" in names:
            factors[block_id] = factor
        if "Upsample" in names:
            factor //= 2
            level_starts.add(block_id + 1)
    if not factors:
        raise UnsupportedModelError("this model's decoder has no self-attention blocks, so there is nothing to swap")
    ranked = sorted(set(factors.values()))
    return {block_id: ranked.index(f) for block_id, f in factors.items()}, level_starts


def is_sd1(model) -> bool:
    config = getattr(model.model, "model_config", None)
    return any(cls.__name__ == "SD15" for cls in type(config).__mro__)


def _attention_patch(level: int, existing: Callable | None, records_maps_at: int | None = None):
    """attn1 of one output block; ``records_maps_at`` is the transformer index whose maps the automatic masks
    read, when this block holds that layer."""

    def attn1(q: Tensor, k: Tensor, v: Tensor, extra_options: dict) -> Tensor:
        heads = extra_options["n_heads"]

        def plain(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
            if existing is not None:  # keep another node's attn1 patch for the ordinary rows
                return existing(query, key, value, extra_options)
            return comfy_attention.optimized_attention(
                query, key, value, heads, attn_precision=extra_options.get("attn_precision")
            )

        block_index = extra_options.get("block_index", 0)
        layer = (extra_options.get("block"), block_index)
        cond_or_uncond = list(extra_options.get("cond_or_uncond") or [0])
        swap = extra_options.get(SWAP_KEY)
        records = block_index == records_maps_at
        return route_attention(q, k, v, heads, layer, level, cond_or_uncond, swap, plain, records)

    return attn1


def _cross_recording_patch(existing: Callable | None):
    """attn2 of the cross-attention layer whose maps the automatic masks read; attention itself unchanged."""

    def attn2(q: Tensor, k: Tensor, v: Tensor, extra_options: dict) -> Tensor:
        heads = extra_options["n_heads"]
        cond_or_uncond = list(extra_options.get("cond_or_uncond") or [0])
        record_attention_maps(q, k, heads, cond_or_uncond, extra_options.get(SWAP_KEY), cross=True)
        if existing is not None:  # another node's attn2 patch (e.g. an IPAdapter) keeps computing this layer
            return existing(q, k, v, extra_options)
        return comfy_attention.optimized_attention(q, k, v, heads, attn_precision=extra_options.get("attn_precision"))

    return attn2


def _last_transformer(diffusion_model, levels: dict[int, int], level: int) -> tuple[int, int] | None:
    """(output block id, transformer index) of the last transformer block, in forward order, at ``level``."""
    blocks = [block_id for block_id, block_level in levels.items() if block_level == level]
    if not blocks:
        return None
    last = diffusion_model.output_blocks[max(blocks)]
    transformer = [m for m in last.modules() if type(m).__name__ == "SpatialTransformer"][-1]
    return max(blocks), len(transformer.transformer_blocks) - 1


def _freeu_patch(level_starts: set[int], base_channels: int, settings: FreeUSettings):
    def output_block(h: Tensor, hsp: Tensor, transformer_options: dict):
        block = transformer_options.get("block")
        if block is not None and block[1] in level_starts:
            h = official_freeu(h, base_channels, settings)
        return h, hsp

    return output_block


def patch_model(model, freeu: FreeUSettings | None, records_maps: bool = False):
    """A clone of ``model`` with swapping decoder self-attention (and optionally the FreeU variant).

    ``records_maps`` also marks the two layers the official automatic masks read: the last decoder
    self-attention of level 0 and the last decoder cross-attention of level 1 (an attn2 patch there only).
    """
    diffusion_model = model.get_model_object("diffusion_model")
    levels, level_starts = decoder_levels(diffusion_model)
    patched = model.clone()
    replaced = patched.model_options.get("transformer_options", {}).get("patches_replace", {})
    self_maps_layer = _last_transformer(diffusion_model, levels, 0) if records_maps else None
    for block_id, level in levels.items():
        if level in SWAP_LEVELS:
            previous = replaced.get("attn1", {}).get(("output", block_id))
            records_at = self_maps_layer[1] if self_maps_layer and self_maps_layer[0] == block_id else None
            patched.set_model_attn1_replace(_attention_patch(level, previous, records_at), "output", block_id)
    cross_maps_layer = _last_transformer(diffusion_model, levels, 1) if records_maps else None
    if cross_maps_layer is not None:
        block_id, index = cross_maps_layer
        attn2 = replaced.get("attn2", {})
        previous = attn2.get(("output", block_id, index), attn2.get(("output", block_id)))
        patched.set_model_attn2_replace(_cross_recording_patch(previous), "output", block_id, index)
    if freeu is not None:
        patched.set_model_output_block_patch(_freeu_patch(level_starts, diffusion_model.model_channels, freeu))
    return patched


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

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 - ComfyUI's signature
        if model_options.get("transformer_options", {}).get(PATHS_KEY):
            negative, positive = without_hints(self.conds.get("negative")), without_hints(self.conds.get("positive"))
            return comfy.samplers.sampling_function(
                self.inner_model, x, timestep, negative, positive, self.cfg, model_options=model_options, seed=seed
            )
        return super().predict_noise(x, timestep, model_options, seed)


class ComfyBackend:
    """The engine's Backend over the k-diffusion model function a KSAMPLER receives."""

    def __init__(self, denoiser, extra_args: dict, output_hints: bool = False) -> None:
        self.denoiser = denoiser
        self.extra_args = extra_args
        self.output_hints = output_hints  # the output's conds carry hints the paths must not get

    def _call(self, latents: Tensor, sigmas: Tensor, swap: CallAttention | None, paths: bool) -> Tensor:
        comfy.model_management.throw_exception_if_processing_interrupted()
        extra_args = dict(self.extra_args)
        extra_args["denoise_mask"] = None  # our calls can hold other rows than the sampled latent
        model_options = dict(extra_args.get("model_options", {}))
        transformer_options = dict(model_options.get("transformer_options", {}))
        transformer_options[SWAP_KEY] = swap
        transformer_options[PATHS_KEY] = paths
        model_options["transformer_options"] = transformer_options
        extra_args["model_options"] = model_options
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

    ``latent`` is a LATENT's samples; the guider converts it to model space and hands it to the
    loop unchanged (zero noise). The loop's payload (an inversion, the reconstructed paths, ...) comes
    back beside the latent, which is all a sampler may return to ComfyUI. ``callback`` is ComfyUI's
    ``(step, x0, x, total)`` preview/progress.
    """
    payloads = []

    def sampler_function(denoiser, x, _sigmas, extra_args=None, callback=None, disable=None):
        backend = ComfyBackend(denoiser, extra_args or {}, output_hints=has_hints(guider.conds))

        def preview(step: int, current: Tensor, denoised: Tensor, sigma: float) -> None:
            if callback is not None:
                callback({"i": step, "x": current, "denoised": denoised, "sigma": sigma, "sigma_hat": sigma})

        result, payload = loop(backend, x, preview)
        payloads.append(payload)
        return result

    guider = TransferGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    noise = torch.zeros_like(latent)
    logging.debug("xattn: sampling %s rows over %d sigmas", latent.shape[0], len(sigmas) - 1)
    samples = guider.sample(
        noise, latent, comfy.samplers.KSAMPLER(sampler_function), sigmas, callback=callback, disable_pbar=True
    )
    return samples, payloads[-1]
