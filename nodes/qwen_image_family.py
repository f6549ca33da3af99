"""The Qwen-Image family (Qwen-Image, its fine-tunes and edit models) on ComfyUI's ``QwenImageTransformer2DModel``.

Qwen-Image is a text-first MM-DiT like Flux, so the swap is the shared joint-attention one
(``joint_transformer.py``). What is Qwen-Image's own, all read from the model:

- blocks: one kind, 60 double-stream ``transformer_blocks`` (``patches_replace["dit"][("double_block", i)]``),
  which follow level 0 of the plan, as Flux's late single blocks do;
- latents: Wan 2.1's 16 channels with a frame axis (``[batch, 16, 1, h, w]``; the pack works on the one frame),
  patch size 2;
- RoPE: three axes (16, 56, 56), theta 10000; a reference image (the edit models) sits at index 1 on the first
  axis (-1 for the Layered model's negative index), which the ``offset`` RoPE mode gives the source keys;
  reference images' tokens follow the image's and are context, never swapped nor stored;
- the schedule: KSampler's "simple" on the model's own sampling (ModelSamplingAuraFlow's shift where the graph
  applies it, as ComfyUI's Qwen-Image templates do);
- the text: Qwen 2.5 VL's tokens after its template's system part (ComfyUI drops the template up to the user
  turn), where the Object Word node finds the object word.

Blocks: the default depth range, the last third (blocks 40-59), for the reason Flux's is (the paper swaps in the
decoder, the late part of the network); the automatic masks read the block at one third of the depth (block 19),
the depth of Flux.1's last double block. Neither is tuned on real Qwen-Image weights.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..xattn_core.joint_attention import SINGLE_BLOCK_LEVEL
from .comfy_backend import ContextTokens
from .joint_transformer import BlockKind, JointTransformerFamily, RopeAxes

IM_START, USER, NEWLINE = 151644, 872, 198  # Qwen 2.5's token ids of "<|im_start|>", "user", "\n"


def dropped_template(token_ids: Sequence) -> int:
    """How many tokens of the templated prompt ComfyUI's Qwen-Image text encoder drops before the context: up to
    the second "<|im_start|>", and its "user\\n" after it (the rule of ``QwenImageTEModel.encode_token_weights``)."""
    starts = [index for index, token in enumerate(token_ids) if token == IM_START][:2]
    if not starts:
        return 0
    end = starts[-1]
    if len(token_ids) > end + 3 and token_ids[end + 1] == USER and token_ids[end + 2] == NEWLINE:
        end += 3
    return end


class QwenImageFamily(JointTransformerFamily):
    name = "qwen_image"
    context_tokens = (ContextTokens("qwen25_7b", offset=lambda token_ids: -dropped_template(token_ids)),)

    def detect(self, model) -> bool:
        return type(model.get_model_object("diffusion_model")).__name__ == "QwenImageTransformer2DModel"

    def block_kinds(self, diffusion_model) -> list[BlockKind]:
        return [BlockKind("double_block", len(diffusion_model.transformer_blocks), SINGLE_BLOCK_LEVEL)]

    def maps_block(self, diffusion_model) -> tuple[str, int]:
        return "double_block", len(diffusion_model.transformer_blocks) // 3

    def rope_axes(self, diffusion_model) -> RopeAxes:
        embedder = diffusion_model.pe_embedder
        negative = getattr(diffusion_model, "default_ref_method", "index") == "negative_index"
        return RopeAxes(tuple(embedder.axes_dim), float(embedder.theta), -1.0 if negative else 1.0)


QWEN_IMAGE = QwenImageFamily()
