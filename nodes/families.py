"""The model families the pack supports, and which one a MODEL belongs to."""

from __future__ import annotations

from .comfy_backend import ModelFamily, UnsupportedModelError
from .flux2_family import FLUX2
from .flux_family import FLUX
from .unet_family import UNET

FAMILIES: tuple[ModelFamily, ...] = (UNET, FLUX, FLUX2)


def family_of(model) -> ModelFamily:
    """The family of ``model`` (a ModelPatcher), or a clear error naming the supported ones."""
    for family in FAMILIES:
        if family.detect(model):
            return family
    name = type(model.get_model_object("diffusion_model")).__name__
    raise UnsupportedModelError(
        f"{name} is not a model family Cross-Image Attention supports: SD 1.x, SD 2.x, SDXL (UNet), Flux.1 and Flux.2"
    )


def family_named(name: str) -> ModelFamily | None:
    return next((family for family in FAMILIES if family.name == name), None)


def patch_model(model, freeu, records_maps: bool = False, options: dict | None = None):
    """A clone of ``model`` patched by its family (see ``ModelFamily.patch``)."""
    return family_of(model).patch(model, freeu, records_maps, options)
