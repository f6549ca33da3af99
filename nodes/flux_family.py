"""The Flux.1 family (dev, schnell, Kontext and fine-tunes) on ComfyUI's Flux transformer (``flux_transformer.py``).

What is Flux.1's own: ComfyUI's ``model_base.Flux`` (not its Flux2 subclass) around the transformer, and the
schedule: KSampler's "simple" on the model's shifted sigmas. Its text context is T5's, where the Object Word
node finds the object word. Blocks: the default depth range (``JointSwapSettings``), which on Flux.1's 19 double
and 38 single blocks is the single blocks' second half.
"""

from __future__ import annotations

from torch import Tensor

from .comfy_backend import ContextTokens
from .compat import comfy
from .flux_transformer import FluxTransformerFamily, is_flux2, is_flux_transformer


class FluxFamily(FluxTransformerFamily):
    name = "flux"
    context_tokens = (ContextTokens("t5xxl"),)  # T5's (no start token); CLIP-L gives only the pooled vector

    def detect(self, model) -> bool:
        return is_flux_transformer(model) and not is_flux2(model)

    def default_sigmas(self, model, steps: int, latent_shape: tuple[int, ...]) -> Tensor:
        """Flux's own shifted schedule, as KSampler's "simple" scheduler makes it (1 to 0)."""
        return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps).float().cpu()


FLUX = FluxFamily()
