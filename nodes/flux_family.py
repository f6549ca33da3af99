"""The Flux.1 family (dev, schnell, Kontext and fine-tunes) on ComfyUI's Flux transformer (``flux_transformer.py``).

What is Flux.1's own: ComfyUI's ``model_base.Flux`` (not its Flux2 subclass) around the transformer. Its
schedule is the joint families' default, KSampler's "simple" on the model's shifted sigmas; its text context is
T5's, where the Object Word node finds the object word. Blocks: the default depth range (``JointSwapSettings``),
which on Flux.1's 19 double and 38 single blocks is the single blocks' second half.
"""

from __future__ import annotations

from .comfy_backend import ContextTokens
from .flux_transformer import FluxTransformerFamily, is_flux2, is_flux_transformer


class FluxFamily(FluxTransformerFamily):
    name = "flux"
    context_tokens = (ContextTokens("t5xxl"),)  # T5's (no start token); CLIP-L gives only the pooled vector

    def detect(self, model) -> bool:
        return is_flux_transformer(model) and not is_flux2(model)


FLUX = FluxFamily()
