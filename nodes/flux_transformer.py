"""ComfyUI's Flux transformer (``comfy.ldm.flux.model.Flux``), which Flux.1 and Flux.2 both run: its blocks, RoPE
and variants, for :class:`~.joint_transformer.JointTransformerFamily`. ``flux_family.py`` and ``flux2_family.py``
say what differs between the two.

Blocks, in depth order: the double blocks (text and image in separate streams, level 1 of the plan), then the
single blocks (one ``cat(text, image)`` stream, level 0). The automatic masks read the last double block
(:data:`~xattn_core.joint_attention.MAPS_DOUBLE_BLOCK`).
"""

from __future__ import annotations

from ..xattn_core.joint_attention import DOUBLE_BLOCK_LEVEL, MAPS_DOUBLE_BLOCK, SINGLE_BLOCK_LEVEL
from .comfy_backend import UnsupportedModelError
from .joint_transformer import BlockKind, JointTransformerFamily, RopeAxes


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


class FluxTransformerFamily(JointTransformerFamily):
    """The blocks, RoPE and checks of ComfyUI's Flux transformer. ``cfg``: the dev models are guidance-distilled,
    so use cfg 1 (one model call per row, no negative prompt) and set the distilled guidance with FluxGuidance on
    the prompt (ComfyUI's default when none is set: 3.5)."""

    def block_kinds(self, diffusion_model) -> list[BlockKind]:
        return [
            BlockKind("double_block", len(diffusion_model.double_blocks), DOUBLE_BLOCK_LEVEL),
            BlockKind("single_block", len(diffusion_model.single_blocks), SINGLE_BLOCK_LEVEL),
        ]

    def maps_block(self, diffusion_model) -> tuple[str, int]:
        return "double_block", MAPS_DOUBLE_BLOCK % len(diffusion_model.double_blocks)

    def rope_axes(self, diffusion_model) -> RopeAxes:
        params = diffusion_model.params
        return RopeAxes(tuple(params.axes_dim), params.theta, reference_index(params))

    def check_model(self, diffusion_model) -> None:
        if any(getattr(block, "flipped_img_txt", False) for block in diffusion_model.double_blocks):
            raise UnsupportedModelError("this Flux variant puts the image tokens before the text; it is not supported")
