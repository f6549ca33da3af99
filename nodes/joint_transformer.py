"""Text-first joint-attention transformers (Flux.1, Flux.2, Qwen-Image): the swap in the image stream of chosen
blocks, on ComfyUI's own hooks, and what those families share (:class:`JointTransformerFamily`); each family file
says which blocks it has and where its RoPE and schedule come from.

Each chosen block gets a ``patches_replace["dit"]`` block patch (ComfyUI 0.3.64's Flux passes no block index
in ``transformer_options``, so the patch says which block runs). When the call's directive swaps at the block's
level, the patch runs the block with ``transformer_options["optimized_attention_override"]`` set, so the block's
own ``optimized_attention`` call (queries, keys and values with RoPE applied) comes to
:func:`~xattn_core.joint_attention.route_joint_attention`. Nothing is monkeypatched; another pack's block patch
or attention override keeps running around ours. For the automatic masks the family's maps block gets the
override during the calls that record.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import Tensor

from ..xattn_core.flow import FLOW
from ..xattn_core.freeu import FreeUSettings
from ..xattn_core.joint_attention import (
    JointBlock,
    JointSwapSettings,
    RopeMode,
    index_rotation,
    records,
    route_joint_attention,
    touches,
)
from .comfy_backend import ATTENTION_TAKES_OPTIONS, LATENT_SHAPE_KEY, SWAP_KEY, UnsupportedModelError
from .compat import comfy, text_tokens_of_joint_stream

TEXT_TOKENS_KEY = "xattn_text_tokens"  # set by the double blocks: single blocks see cat(txt, img) without a split
OVERRIDE_KEY = "optimized_attention_override"
JOINT_OPTIONS_KEY = "flux"  # XATTN_OPTIONS entry: a JointSwapSettings (named when Flux was the only such family)


@dataclass(frozen=True)
class BlockKind:
    """One kind of swappable block in a family's transformer, in depth order: its ``"dit"`` patch name, how many
    there are, and the plan level whose step range it follows."""

    name: str
    count: int
    level: int


@dataclass(frozen=True)
class RopeAxes:
    """A transformer's RoPE: per-axis widths and theta, and the first-axis index of a reference image (what the
    ``offset`` RoPE mode gives the source keys)."""

    axes_dim: tuple[int, ...]
    theta: float
    reference_index: float


def _attention_override(block: JointBlock, swap, options: dict, previous):
    """An ``optimized_attention_override`` for one block call: ComfyUI calls it with the raw attention function.
    ``previous``: another pack's override, which keeps computing ordinary attention."""

    def override(func, q: Tensor, k: Tensor, v: Tensor, heads: int, *args, **kwargs):
        def plain(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
            if previous is not None:
                return previous(func, query, key, value, heads, *args, **kwargs)
            return func(query, key, value, heads, *args, **kwargs)

        cond_or_uncond = list(options.get("cond_or_uncond") or [0])
        # an attention mask (Redux's attn_bias, Qwen-Image's text mask) is shaped for whole rows: ordinary attention
        # then runs on whole rows rather than the parts whose result is kept; the swapped part ignores it, as before
        parts = attention_mask(args, kwargs) is None
        if kwargs.get("skip_reshape", False):  # [rows, heads, tokens, dim], as Flux and 0.9.2's Qwen-Image pass
            return route_joint_attention(q, k, v, block, cond_or_uncond, swap, plain, plain_takes_parts=parts)

        # [rows, tokens, heads * dim] (0.3.64's Qwen-Image): route in heads layout, run ordinary attention in this
        def heads_first(tensor: Tensor) -> Tensor:
            return tensor.unflatten(-1, (heads, -1)).transpose(1, 2)

        def tokens_first(tensor: Tensor) -> Tensor:
            return tensor.transpose(1, 2).flatten(2)

        def plain_tokens_first(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
            return plain(tokens_first(query), tokens_first(key), tokens_first(value))

        return route_joint_attention(
            heads_first(q),
            heads_first(k),
            heads_first(v),
            block,
            cond_or_uncond,
            swap,
            plain_tokens_first,
            plain_takes_parts=parts,
        )

    return override


def attention_mask(args: tuple, kwargs: dict) -> Tensor | None:
    """The mask of an ``optimized_attention`` call: its ``mask`` keyword, or the argument after ``heads``
    (``optimized_attention_masked``)."""
    if kwargs.get("mask") is not None:
        return kwargs["mask"]
    return args[0] if args and isinstance(args[0], Tensor) else None


def heads_axis_pe(pe: Tensor) -> Tensor:
    """A block's RoPE as ``[rows, 1, tokens, dim/2, 2, 2]`` (0.3.64's Qwen-Image passes ``[rows, tokens, 1, ...]``)."""
    if pe.dim() == 6 and pe.shape[1] != 1 and pe.shape[2] == 1:
        return pe.movedim(2, 1)
    return pe


def image_tokens(options: dict, patch_size: int) -> int | None:
    """The image's own tokens in a call the pack makes: one per ``patch_size`` square of the latent, padded up as
    the transformer pads it. Reference images' tokens (Kontext, Flux.2 edit) follow these."""
    shape = options.get(LATENT_SHAPE_KEY)
    if shape is None:
        return None
    return -(-shape[-2] // patch_size) * -(-shape[-1] // patch_size)


def _block_patch(
    kind: str,
    index: int,
    level: int | None,
    previous,
    settings: JointSwapSettings,
    offset,
    patch_size: int,
    maps_block: bool = False,
):
    """``patches_replace["dit"][(kind, index)]``; ``level`` None: the block swaps nowhere (it records the text
    length, or, as the maps block, the automatic masks' maps)."""
    layer = (kind, index)

    def block(args: dict, extras: dict) -> dict:
        options = args["transformer_options"]
        if kind == "double_block":  # one dict per forward, shared by all its blocks
            options[TEXT_TOKENS_KEY] = args["txt"].shape[1]
        swap = options.get(SWAP_KEY)
        records_maps = maps_block and records(swap)
        if touches(swap, level) or records_maps:
            text_tokens = text_tokens_of_joint_stream(options, TEXT_TOKENS_KEY)
            if text_tokens is None:
                raise RuntimeError("a single block ran before any double block; cannot find the text tokens")
            block_options = dict(options)
            joint_block = JointBlock(
                layer,
                level,
                text_tokens,
                image_tokens=image_tokens(options, patch_size),
                pe=heads_axis_pe(args["pe"]),
                rope=settings.rope,
                offset=offset,
                contrast_scope=settings.contrast_scope,
                records_maps=records_maps,
            )
            block_options[OVERRIDE_KEY] = _attention_override(joint_block, swap, options, options.get(OVERRIDE_KEY))
            args = {**args, "transformer_options": block_options}
        if previous is not None:
            return previous(args, extras)
        return extras["original_block"](args)

    return block


def swap_settings(options: dict | None) -> JointSwapSettings:
    """The block ranges and RoPE mode an XATTN_OPTIONS asks for (the defaults without one)."""
    return (options or {}).get(JOINT_OPTIONS_KEY) or JointSwapSettings()


def patch_model(family: JointTransformerFamily, model, settings: JointSwapSettings | None, records_maps: bool):
    """A clone of ``model`` whose chosen blocks swap under a directive (see the module docstring);
    ``records_maps`` also patches the family's maps block of the automatic masks."""
    if not ATTENTION_TAKES_OPTIONS:
        raise UnsupportedModelError(
            "this ComfyUI has no optimized_attention_override (0.3.64 has it); transformer models need a newer one"
        )
    settings = settings or JointSwapSettings()
    diffusion_model = model.get_model_object("diffusion_model")
    family.check_model(diffusion_model)
    kinds = family.block_kinds(diffusion_model)
    offset = None
    if settings.rope is RopeMode.OFFSET:
        rope = family.rope_axes(diffusion_model)
        offset = index_rotation(list(rope.axes_dim), rope.theta, rope.reference_index)
    patched = model.clone()
    replaced = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    chosen = settings.chosen([kind.count for kind in kinds])
    maps_block = family.maps_block(diffusion_model) if records_maps else None
    for kind, indices in zip(kinds, chosen, strict=True):
        patched_indices = set(indices)
        if kind.name == "double_block":
            patched_indices.add(0)  # it records the text length for the single blocks
        if maps_block is not None and maps_block[0] == kind.name:
            patched_indices.add(maps_block[1])
        for index in sorted(patched_indices):
            patch = _block_patch(
                kind.name,
                index,
                kind.level if index in indices else None,
                replaced.get((kind.name, index)),
                settings,
                offset,
                diffusion_model.patch_size,
                maps_block=maps_block == (kind.name, index),
            )
            patched.set_model_patch_replace(patch, "dit", kind.name, index)
    logging.debug("xattn: %s swaps in %s", family.name, dict(zip((kind.name for kind in kinds), chosen, strict=True)))
    return patched


class JointTransformerFamily:
    """What every text-first joint-attention family shares: the swap through "dit" block patches, rectified-flow
    inversion, the fast-mode cache's blocks and RoPE form, the flow-schedule check. A family adds its ``name``,
    ``context_tokens``, ``detect``, ``default_sigmas``, and its blocks (:meth:`block_kinds`, :meth:`maps_block`),
    RoPE (:meth:`rope_axes`) and checks (:meth:`check_model`).

    ``cfg`` is the guider's prompt guidance as in KSampler; guidance-distilled models (Flux dev) take cfg 1.
    """

    name: str
    step_kind = FLOW

    def block_kinds(self, diffusion_model) -> list[BlockKind]:
        raise NotImplementedError

    def maps_block(self, diffusion_model) -> tuple[str, int]:
        """The block whose attention the automatic masks read (a double-stream block, text and image apart)."""
        raise NotImplementedError

    def rope_axes(self, diffusion_model) -> RopeAxes:
        raise NotImplementedError

    def check_model(self, diffusion_model) -> None:
        """Refuse a variant of the family the swap cannot serve (UnsupportedModelError)."""

    def input_channels(self, diffusion_model) -> int:
        """The image embedding's input, per patch (Flux and Qwen-Image: ``img_in``; Flux Fill takes 96 per token
        for a 16-channel latent)."""
        return diffusion_model.img_in.weight.shape[1] // diffusion_model.patch_size**2

    def default_sigmas(self, model, steps: int, latent_shape: tuple[int, ...]) -> Tensor:
        """The model's own shifted schedule (1 to 0) as KSampler's "simple" scheduler makes it, through any
        ModelSampling node the graph applied (the same at every latent size)."""
        return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps).float().cpu()

    def patch(self, model, freeu: FreeUSettings | None, records_maps: bool = False, options: dict | None = None):
        if freeu is not None:
            logging.warning("Cross-Image Attention: FreeU applies to UNet decoders only; ignored for %s", self.name)
        return patch_model(self, model, swap_settings(options), records_maps)

    def cache_form(self, options: dict | None) -> dict[str, str]:
        return {"rope": swap_settings(options).rope.value}  # the keys are kept in that RoPE form

    def cache_mismatch(self, model, options: dict | None, cache, metadata: dict) -> str | None:
        settings = swap_settings(options)
        kinds = self.block_kinds(model.get_model_object("diffusion_model"))
        chosen = settings.chosen([kind.count for kind in kinds])
        needed = {(kind.name, index) for kind, indices in zip(kinds, chosen, strict=True) for index in indices}
        missing = sorted(needed - cache.layers)
        kept_rope = metadata.get("rope", RopeMode.KEEP.value)  # inversions made before the field: keep form
        if missing:
            return f"holds no keys/values for {', '.join(f'{kind} {index}' for kind, index in missing)}"
        if kept_rope != settings.rope.value:
            return f"holds keys in RoPE form '{kept_rope}', but these options ask for '{settings.rope.value}'"
        return None

    def check_sigmas(self, sigmas: Tensor) -> None:
        if float(sigmas[0]) > 1.0 or float(sigmas[-1]) != 0.0:
            raise ValueError(
                f"a {self.name} inversion needs a flow schedule from at most 1 down to 0 (as BasicScheduler makes "
                f"for this model), got {float(sigmas[0]):.3g} ... {float(sigmas[-1]):.3g}"
            )
