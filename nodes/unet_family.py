"""The UNet family (SD 1.x, SD 2.x, SDXL): decoder self-attention levels, the attn1/attn2 patches, FreeU.

:func:`patch_model` clones the ModelPatcher and sets attn1 replace patches on the decoder blocks of the two
highest-resolution attention levels (found from the model's own structure), plus the official FreeU variant
as an output-block patch. The patches read the per-call directive that the backend puts into
``transformer_options``; with none, they are ordinary attention.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..xattn_core.attention import record_attention_maps, route_attention
from ..xattn_core.freeu import FreeUSettings, official_freeu
from ..xattn_core.inversion import DDPM
from ..xattn_core.plan import SWAP_LEVELS
from ..xattn_core.schedule import paper_sigmas
from .comfy_backend import SWAP_KEY, ContextTokens, UnsupportedModelError, plain_attention


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
            "supports SD 1.x, SD 2.x, SDXL and Flux models"
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
            return plain_attention(query, key, value, heads, extra_options)

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
        return plain_attention(q, k, v, heads, extra_options)

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


class UNetFamily:
    """SD 1.x, SD 2.x and SDXL: swaps in decoder self-attention, DDPM inversion on the paper schedule."""

    name = "unet"
    step_kind = DDPM
    # CLIP-L's tokens, or SDXL's second CLIP's (both tokenise alike); 77-token chunks one after another
    context_tokens = (ContextTokens("l"), ContextTokens("g"))

    def detect(self, model) -> bool:
        diffusion_model = model.get_model_object("diffusion_model")
        return hasattr(diffusion_model, "output_blocks") and hasattr(diffusion_model, "input_blocks")

    def input_channels(self, diffusion_model) -> int:
        return diffusion_model.input_blocks[0][0].weight.shape[1]  # the first convolution's (9 on SD inpainting)

    def patch(self, model, freeu: FreeUSettings | None, records_maps: bool = False, options: dict | None = None):
        return patch_model(model, freeu, records_maps)

    def cache_form(self, options: dict | None) -> dict[str, str]:
        return {}  # every decoder level's layers are kept, whatever the options

    def cache_mismatch(self, model, options: dict | None, cache, metadata: dict) -> str | None:
        return None

    def default_sigmas(self, model, steps: int, latent_shape: tuple[int, ...]) -> Tensor:
        """The paper schedule on the model's own sigma table (the same at every latent size)."""
        return paper_sigmas(model.get_model_object("model_sampling").sigmas, steps)

    def check_sigmas(self, sigmas: Tensor) -> None:
        if sigmas[-1] <= 0:
            raise ValueError(
                "the SIGMAS input ends at 0; DDPM inversion needs a last sigma above 0 (the paper schedule ends "
                "at sigma(t=0)). Drop the final 0 (e.g. with SplitSigmas) or leave SIGMAS unconnected"
            )


UNET = UNetFamily()
