"""The Flux.2 family (dev and klein): Flux.1's swap on ComfyUI's Flux.2, with Flux.2's own schedule.

ComfyUI (0.9.2 on) runs Flux.2 with the same transformer class as Flux.1 (``comfy.ldm.flux.model.Flux``) under
``model_base.Flux2``, so the blocks, the ``"dit"`` block patches and the joint attention are Flux.1's
(``flux_transformer.py``). What differs, all read from the model itself rather than written here:

- latents: 128 channels (``latent_formats.Flux2``: the VAE's 32, patchified 2 x 2), patch size 1;
- RoPE: four axes with theta 2000, the text's positions on the fourth; a reference image sits at index
  ``ref_index_scale`` (10) on the first axis, which is what the ``offset`` RoPE mode gives the source keys;
- the text: ComfyUI pads Flux.2's context in front to 512 tokens. klein's Qwen 3 tokenizer already pads its
  templated prompt at the end to 512, so its tokens are the context one for one and the object word is found
  there; dev's Mistral 3 tokenizer reads its vocabulary from the text encoder's file, which no test here can
  load, so on dev the Object Word node warns and automatic masks are off (masks from inputs work);
- the schedule: the one ComfyUI's Flux.2 templates sample with (Flux2Scheduler: a shift that grows with the
  image's token count), for the latent being inverted.

Blocks: the same default depth range as Flux.1 (the last third of the blocks; Flux.2 dev: single blocks 30-47),
for the same reason (the paper swaps in the decoder, the late part of the network), not tuned on Flux.2 weights.
"""

from __future__ import annotations

from torch import Tensor

from .comfy_backend import ContextTokens
from .compat import flux2_schedule
from .flux_transformer import FluxTransformerFamily, is_flux2, is_flux_transformer


class Flux2Family(FluxTransformerFamily):
    """Flux.2 dev (guidance-distilled: cfg 1, FluxGuidance on the prompt) and klein."""

    name = "flux2"
    # klein's Qwen 3 (4B, 8B); not dev's Mistral 3, whose token strings could not be checked (module docstring)
    context_tokens = (ContextTokens("qwen3_4b"), ContextTokens("qwen3_8b"))

    def detect(self, model) -> bool:
        return is_flux_transformer(model) and is_flux2(model)

    def default_sigmas(self, model, steps: int, latent_shape: tuple[int, ...]) -> Tensor:
        """Flux2Scheduler's schedule (1 to 0) for a latent of ``latent_shape``: one image token per latent cell
        (patch size 1), as that node counts them from the image size (16 px a token)."""
        height, width = latent_shape[-2:]
        return flux2_schedule(steps, height * width).float().cpu()


FLUX2 = Flux2Family()
