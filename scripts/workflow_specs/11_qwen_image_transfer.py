"""The transfer on Qwen-Image with automatic object masks: its three model files, the template's shift, cfg 1."""

from workflow_chain import Transfer, single_encoder_loaders
from workflow_files import QWEN_IMAGE_MODEL, QWEN_IMAGE_TEXT_ENCODER, QWEN_IMAGE_VAE, model_links
from workflow_graph import Graph

from workflow_specs.sample_inputs import PAPER_PAIR

NAME = "11 Qwen-Image transfer"
# 20 steps as ComfyUI's Qwen-Image template samples, from step 6 (the paper's 32 % start, rounded down)
SCHEDULE = (20, 6)
# cfg 1 in the inversions and the sampler, as the paper's sampler (its push comes from swap guidance, not the
# prompt): one evaluation per row. The template's cfg 2.5 evaluates every row twice (cond and uncond).
CFG = 1.0
EVALUATIONS = 78  # at cfg 1: 28 inverting both images + 50 generating (a test recounts it); 156 at cfg 2.5
SHIFT = 3.1  # ModelSamplingAuraFlow's shift in ComfyUI's Qwen-Image template
SIZE = 1328  # the template's image size (a multiple of 16: Wan 2.1's 8 x 8 pixels a latent cell, patches of 2)

NOTE = (
    "# Qwen-Image transfer\n\nThe same nodes on **Qwen-Image** (ComfyUI 0.3.64 and 0.9.2). The output's image "
    "tokens attend to the appearance's in the last third of its 60 blocks (40-59; the Options node changes "
    "which).\n\n"
    + PAPER_PAIR.note
    + "\n\n**Files** (the Missing Models dialog offers them):\n"
    + model_links(QWEN_IMAGE_MODEL, QWEN_IMAGE_TEXT_ENCODER, QWEN_IMAGE_VAE)
    + "\n\nQwen-Image's licence is Apache 2.0.\n\n**Settings:** loaded as ComfyUI's Qwen-Image template loads it, "
    f"with its **ModelSamplingAuraFlow** shift {SHIFT:g}, which the inversions follow too. {SCHEDULE[0]} steps "
    f"(the template's) from step {SCHEDULE[1]} (the paper's 32 % start), {SIZE} x {SIZE} (the template's size). "
    f"`cfg` {CFG:g} in both inversions and the sampler: {EVALUATIONS} model evaluations per transfer. Qwen-Image "
    "is not guidance-distilled (its template samples at cfg 2.5), but here the images come from their "
    "inversions, whose noise maps lead back to each image at the cfg it was inverted with, and the sampler pushes "
    "the output away from a plain reconstruction with **swap_guidance**, as the paper samples at cfg 1. cfg 2.5 "
    f"in all three nodes evaluates every row twice ({2 * EVALUATIONS} evaluations): try it if the output looks "
    "washed out. "
    "**CLIP Text Encode (Object Word)** finds the object word among Qwen 2.5 VL's tokens: automatic object "
    "masks, read from block 19 (a choice by analogy with Flux: preview the sampler's mask outputs).\n\n"
    "Not yet run on the real weights: only a tiny random Qwen-Image has run this graph."
)


def build(g: Graph) -> None:
    steps, start_step = SCHEDULE
    loaders = single_encoder_loaders(
        g, "Qwen-Image", QWEN_IMAGE_MODEL, (QWEN_IMAGE_TEXT_ENCODER, "qwen_image"), QWEN_IMAGE_VAE, shift=SHIFT
    )
    chain = Transfer(g, loaders, PAPER_PAIR, SIZE, "xattn/qwen_image_transfer", object_masks=True, image_row=660)
    chain.sample_invert_save(
        sampler_values={"cfg": CFG}, inversion_values={"steps": steps, "start_step": start_step, "cfg": CFG}
    )
