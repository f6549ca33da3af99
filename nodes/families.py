"""The model families the pack supports, and which one a MODEL belongs to."""

from __future__ import annotations

from .comfy_backend import ContextTokens, ModelFamily, UnsupportedModelError
from .flux2_family import FLUX2
from .flux_family import FLUX
from .qwen_image_family import QWEN_IMAGE
from .unet_family import UNET
from .z_image_family import Z_IMAGE

# the UNet family last: Flux.1's text encoder also tokenises for CLIP-L (its pooled vector), and the object word
# is looked up in the first family's context tokens that a CLIP's tokens hold
FAMILIES: tuple[ModelFamily, ...] = (FLUX, FLUX2, QWEN_IMAGE, Z_IMAGE, UNET)


def family_of(model) -> ModelFamily:
    """The family of ``model`` (a ModelPatcher), or a clear error naming the supported ones; a variant that takes a
    conditioning image beside the latent is refused (each path's rows would need their own)."""
    for family in FAMILIES:
        if family.detect(model):
            diffusion_model = model.get_model_object("diffusion_model")
            taken, latent = family.input_channels(diffusion_model), model.model.latent_format.latent_channels
            if taken > latent:
                raise UnsupportedModelError(
                    f"this {family.name} model takes {taken} input channels for a {latent}-channel latent: a variant "
                    "that concatenates a conditioning image (Flux Fill, Depth or Canny; an inpainting model), which "
                    "Cross-Image Attention does not support: load the base model (for a local transfer, put a noise "
                    "mask on the structure's latent instead)"
                )
            return family
    name = type(model.get_model_object("diffusion_model")).__name__
    raise UnsupportedModelError(
        f"{name} is not a model family Cross-Image Attention supports: SD 1.x, SD 2.x, SDXL (UNet), Flux.1, "
        "Flux.2, Qwen-Image and Z-Image"
    )


def context_tokens_of(tokens: dict) -> ContextTokens | None:
    """The entry of ``clip.tokenize()``'s ``tokens`` that some family's context is made of, or None."""
    return next((source for family in FAMILIES for source in family.context_tokens if source.key in tokens), None)


def family_named(name: str) -> ModelFamily | None:
    return next((family for family in FAMILIES if family.name == name), None)


def patch_model(model, freeu, records_maps: bool = False, options: dict | None = None):
    """A clone of ``model`` patched by its family (see ``ModelFamily.patch``)."""
    return family_of(model).patch(model, freeu, records_maps, options)
