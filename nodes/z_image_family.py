"""The Z-Image family (Z-Image Turbo, Z-Image and fine-tunes) on ComfyUI's ``NextDiT`` (``comfy/ldm/lumina``).

NextDiT is single-stream: every main layer attends over ``cat(caption, image)``, text first, so the swap is the
shared joint-attention one (:func:`~xattn_core.joint_attention.route_joint_attention`). Its layers have no
``"dit"`` replace hook, so the hooks differ from Flux's; both are ComfyUI's own, set on the clone only:

- ``transformer_options["optimized_attention_override"]``: every attention of the model comes to it with the
  call's ``transformer_options``, where the main loop has set ``block_index``; a chosen main layer routes, every
  other attention (the caption and noise refiners, unchosen layers) runs as it came;
- a ``"noise_refiner"`` model patch: NextDiT calls it after each noise refiner layer with the padded caption
  (``txt``), the padded image tokens (``img``) and the image's RoPE (``pe``); it keeps the token layout for the
  main layers, whose attention sees neither.

What is Z-Image's own, all read from the model: 16-channel latents (Flux.1's format), patch size 2; caption and
image tokens each padded to a multiple of 32 (the image's padding tokens are the row's own context, never
swapped); RoPE axes (32, 48, 48) with theta 256, the image at first-axis position caption length + 1 (the
``offset`` mode moves the source keys one further along that axis; Z-Image has no reference images); the
schedule: KSampler's "simple" on the model's own shifted sigmas (shift 3); the text: Qwen 3 4B's templated prompt,
one context token per token, where the Object Word node finds the object word.

Layers: the default depth range, the last third (of Z-Image's 30: 20-29), for the reason Flux's is; the
automatic masks read the layer at one third of the depth (10). Neither is tuned on real Z-Image weights.
Turbo is step-distilled: about 8 steps at cfg 1 (README "Z-Image" for the plan at 8 steps).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from ..xattn_core.freeu import FreeUSettings
from ..xattn_core.joint_attention import (
    SINGLE_BLOCK_LEVEL,
    JointBlock,
    RopeMode,
    index_rotation,
    records,
    route_joint_attention,
    touches,
)
from .comfy_backend import SWAP_KEY, ContextTokens
from .joint_transformer import (
    OVERRIDE_KEY,
    BlockKind,
    JointTransformerFamily,
    RopeAxes,
    attention_mask,
    image_tokens,
    swap_settings,
)

LAYOUT_KEY = "xattn_z_image_layout"  # transformer_options: (caption tokens, padded image tokens, image RoPE)
LAYER = "layer"


def _keep_layout(args: dict) -> dict:
    """The ``"noise_refiner"`` patch: keep the token layout and the image's RoPE for the main layers."""
    args["transformer_options"][LAYOUT_KEY] = (args["txt"].shape[1], args["img"].shape[1], args["pe"])
    return {}


def _joint_pe(text_tokens: int, image_pe: Tensor) -> Tensor:
    """The RoPE of the whole ``cat(caption, image)`` sequence in heads-first layout ``[rows, 1, tokens, d/2, 2,
    2]``, from the image's ``[rows, image tokens, 1, ...]``: the swap only ever reads the image part, so the
    caption's rotations are identities."""
    image_pe = image_pe.movedim(2, 1)
    identity = torch.eye(2, dtype=image_pe.dtype, device=image_pe.device)
    text_pe = identity.expand(image_pe.shape[0], 1, text_tokens, image_pe.shape[3], 2, 2)
    return torch.cat([text_pe, image_pe], 2)


class ZImageFamily(JointTransformerFamily):
    name = "z_image"
    context_tokens = (ContextTokens("qwen3_4b"),)  # the templated prompt, one context token per token

    def detect(self, model) -> bool:
        return type(model.get_model_object("diffusion_model")).__name__ == "NextDiT"

    def block_kinds(self, diffusion_model) -> list[BlockKind]:
        return [BlockKind(LAYER, len(diffusion_model.layers), SINGLE_BLOCK_LEVEL)]

    def maps_block(self, diffusion_model) -> tuple[str, int]:
        return LAYER, len(diffusion_model.layers) // 3

    def input_channels(self, diffusion_model) -> int:
        return diffusion_model.x_embedder.weight.shape[1] // diffusion_model.patch_size**2

    def rope_axes(self, diffusion_model) -> RopeAxes:
        embedder = diffusion_model.rope_embedder
        return RopeAxes(tuple(embedder.axes_dim), float(embedder.theta), 1.0)

    def patch(self, model, freeu: FreeUSettings | None, records_maps: bool = False, options: dict | None = None):
        if freeu is not None:
            logging.warning("Cross-Image Attention: FreeU applies to UNet decoders only; ignored for %s", self.name)
        settings = swap_settings(options)
        diffusion_model = model.get_model_object("diffusion_model")
        (kind,) = self.block_kinds(diffusion_model)
        (chosen,) = settings.chosen([kind.count])
        maps_layer = self.maps_block(diffusion_model)[1] if records_maps else None
        offset = None
        if settings.rope is RopeMode.OFFSET:
            rope = self.rope_axes(diffusion_model)
            offset = index_rotation(list(rope.axes_dim), rope.theta, rope.reference_index)
        patch_size = diffusion_model.patch_size
        patched = model.clone()
        patched.set_model_patch(_keep_layout, "noise_refiner")
        transformer_options = patched.model_options.setdefault("transformer_options", {})
        previous = transformer_options.get(OVERRIDE_KEY)

        def override(func, q: Tensor, k: Tensor, v: Tensor, heads: int, *args, **kwargs):
            def plain(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
                if previous is not None:
                    return previous(func, query, key, value, heads, *args, **kwargs)
                return func(query, key, value, heads, *args, **kwargs)

            call_options = kwargs.get("transformer_options") or {}
            index, layout = call_options.get("block_index"), call_options.get(LAYOUT_KEY)
            # a main layer sees caption + image; the refiners see one of them (and come before block_index is set)
            if index is None or layout is None or not kwargs.get("skip_reshape", False):
                return plain(q, k, v)
            text_tokens, padded_image_tokens, image_pe = layout
            if q.shape[2] != text_tokens + padded_image_tokens:
                return plain(q, k, v)
            swap = call_options.get(SWAP_KEY)
            level = kind.level if index in chosen else None
            records_maps = index == maps_layer and records(swap)
            if not (touches(swap, level) or records_maps):
                return plain(q, k, v)
            block = JointBlock(
                (LAYER, index),
                level,
                text_tokens,
                image_tokens=image_tokens(call_options, patch_size),
                pe=None if settings.rope is RopeMode.KEEP else _joint_pe(text_tokens, image_pe),
                rope=settings.rope,
                offset=offset,
                contrast_scope=settings.contrast_scope,
                records_maps=records_maps,
            )
            cond_or_uncond = list(call_options.get("cond_or_uncond") or [0])
            parts = attention_mask(args, kwargs) is None  # a mask is shaped for whole rows
            return route_joint_attention(q, k, v, block, cond_or_uncond, swap, plain, plain_takes_parts=parts)

        transformer_options[OVERRIDE_KEY] = override
        return patched


Z_IMAGE = ZImageFamily()
