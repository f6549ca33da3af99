"""ComfyUI's Flux transformer, which Flux.1 and Flux.2 both run: the swap in the image stream of chosen double
and single blocks, on ComfyUI's own hooks, and what the two families share (:class:`FluxTransformerFamily`);
``flux_family.py`` and ``flux2_family.py`` say what differs.

Each chosen block gets a ``patches_replace["dit"]`` block patch (ComfyUI 0.3.64's Flux passes no block index
in ``transformer_options``, so the patch says which block runs). When the call's directive swaps at the block's
level, the patch runs the block with ``transformer_options["optimized_attention_override"]`` set, so the block's
own ``optimized_attention`` call (queries, keys and values with RoPE applied) comes to
:func:`~xattn_core.joint_attention.route_joint_attention`. Nothing is monkeypatched; another pack's block patch
or attention override keeps running around ours. For the automatic masks the maps block
(:data:`~xattn_core.joint_attention.MAPS_DOUBLE_BLOCK`) gets the override during the calls that record.
"""

from __future__ import annotations

import logging

from torch import Tensor

from ..xattn_core.flow import FLOW
from ..xattn_core.freeu import FreeUSettings
from ..xattn_core.joint_attention import (
    DOUBLE_BLOCK_LEVEL,
    MAPS_DOUBLE_BLOCK,
    SINGLE_BLOCK_LEVEL,
    JointBlock,
    JointSwapSettings,
    RopeMode,
    index_rotation,
    records,
    route_joint_attention,
    touches,
)
from .comfy_backend import ATTENTION_TAKES_OPTIONS, LATENT_SHAPE_KEY, SWAP_KEY, UnsupportedModelError
from .compat import text_tokens_of_joint_stream

TEXT_TOKENS_KEY = "xattn_text_tokens"  # set by the double blocks: single blocks see cat(txt, img) without a split
OVERRIDE_KEY = "optimized_attention_override"
FLUX_OPTIONS_KEY = "flux"  # XATTN_OPTIONS entry: a JointSwapSettings


def _attention_override(block: JointBlock, swap, options: dict, previous):
    """An ``optimized_attention_override`` for one block call: ComfyUI calls it with the raw attention function.
    ``previous``: another pack's override, which keeps computing ordinary attention."""

    def override(func, q: Tensor, k: Tensor, v: Tensor, heads: int, *args, **kwargs):
        def plain(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
            if previous is not None:
                return previous(func, query, key, value, heads, *args, **kwargs)
            return func(query, key, value, heads, *args, **kwargs)

        if not kwargs.get("skip_reshape", False):  # not Flux's layout; leave it alone
            return plain(q, k, v)
        cond_or_uncond = list(options.get("cond_or_uncond") or [0])
        return route_joint_attention(q, k, v, block, cond_or_uncond, swap, plain)

    return override


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
                raise RuntimeError("a Flux single block ran before any double block; cannot find the text tokens")
            block_options = dict(options)
            joint_block = JointBlock(
                layer,
                level,
                text_tokens,
                image_tokens=image_tokens(options, patch_size),
                pe=args["pe"],
                rope=settings.rope,
                offset=offset,
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
    return (options or {}).get(FLUX_OPTIONS_KEY) or JointSwapSettings()


def reference_index(params) -> float:
    """The first RoPE axis index ComfyUI gives a model's first reference image: Flux Kontext's offset method 1,
    Flux.2's index method its ``ref_index_scale`` (10). 0.3.64's FluxParams has neither field (Kontext: 1)."""
    if getattr(params, "default_ref_method", "offset") == "index":
        return float(params.ref_index_scale)
    return 1.0


def is_flux_transformer(model) -> bool:
    """ComfyUI's Flux transformer (comfy.ldm.flux.model.Flux), which Flux.1 and Flux.2 both run."""
    diffusion_model = model.get_model_object("diffusion_model")
    return type(diffusion_model).__name__ == "Flux" and hasattr(diffusion_model, "single_blocks")


def is_flux2(model) -> bool:
    """Flux.2 (dev, klein): ComfyUI's model_base.Flux2 around the same transformer class as Flux.1."""
    return any(cls.__name__ == "Flux2" for cls in type(model.model).__mro__)


def patch_model(model, settings: JointSwapSettings | None = None, records_maps: bool = False):
    """A clone of ``model`` whose chosen blocks swap under a directive (see the module docstring);
    ``records_maps`` also patches the maps block of the automatic masks."""
    if not ATTENTION_TAKES_OPTIONS:
        raise UnsupportedModelError(
            "this ComfyUI has no optimized_attention_override (0.3.64 has it); Flux transfer needs a newer ComfyUI"
        )
    settings = settings or JointSwapSettings()
    diffusion_model = model.get_model_object("diffusion_model")
    if any(getattr(block, "flipped_img_txt", False) for block in diffusion_model.double_blocks):
        raise UnsupportedModelError("this Flux variant puts the image tokens before the text; it is not supported")
    params = diffusion_model.params
    offset = None
    if settings.rope is RopeMode.OFFSET:
        offset = index_rotation(list(params.axes_dim), params.theta, reference_index(params))
    patched = model.clone()
    replaced = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    double_count = len(diffusion_model.double_blocks)
    doubles, singles = settings.chosen([double_count, len(diffusion_model.single_blocks)])
    maps_block = MAPS_DOUBLE_BLOCK % double_count if records_maps else None
    for kind, indices, level in (
        ("double_block", sorted({0, *doubles, *([] if maps_block is None else [maps_block])}), DOUBLE_BLOCK_LEVEL),
        ("single_block", singles, SINGLE_BLOCK_LEVEL),
    ):
        chosen = doubles if kind == "double_block" else singles
        for index in indices:
            patch = _block_patch(
                kind,
                index,
                level if index in chosen else None,
                replaced.get((kind, index)),
                settings,
                offset,
                diffusion_model.patch_size,
                maps_block=kind == "double_block" and index == maps_block,
            )
            patched.set_model_patch_replace(patch, "dit", kind, index)
    logging.debug("xattn: Flux swaps in double blocks %s and single blocks %s", doubles, singles)
    return patched


class FluxTransformerFamily:
    """What every family on ComfyUI's Flux transformer shares: the swap in joint attention through "dit" block
    patches, rectified-flow inversion, the fast-mode cache's blocks and RoPE form, the flow-schedule check.
    A family adds its ``name``, ``detect`` and ``default_sigmas``.

    ``cfg`` is the guider's prompt guidance as in KSampler: the dev models are guidance-distilled, so use cfg 1
    (one model call per row, no negative prompt) and set the distilled guidance with FluxGuidance on the
    prompt (ComfyUI's default when none is set: 3.5).
    """

    step_kind = FLOW

    def patch(self, model, freeu: FreeUSettings | None, records_maps: bool = False, options: dict | None = None):
        if freeu is not None:
            logging.warning("Cross-Image Attention: FreeU applies to UNet decoders only; ignored for this Flux model")
        return patch_model(model, swap_settings(options), records_maps)

    def cache_form(self, options: dict | None) -> dict[str, str]:
        return {"rope": swap_settings(options).rope.value}  # the keys are kept in that RoPE form

    def cache_mismatch(self, model, options: dict | None, cache, metadata: dict) -> str | None:
        settings = swap_settings(options)
        diffusion_model = model.get_model_object("diffusion_model")
        doubles, singles = settings.chosen([len(diffusion_model.double_blocks), len(diffusion_model.single_blocks)])
        needed = {("double_block", index) for index in doubles} | {("single_block", index) for index in singles}
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
                "a Flux inversion needs a flow schedule from at most 1 down to 0 (as BasicScheduler makes for this "
                f"model), got {float(sigmas[0]):.3g} ... {float(sigmas[-1]):.3g}"
            )
