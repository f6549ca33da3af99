"""The transfer on Z-Image Turbo at its 8 steps, with the Options setting that gives that plan a structure step."""

from workflow_chain import Transfer, single_encoder_loaders
from workflow_files import FLUX_VAE, Z_IMAGE_MODEL, Z_IMAGE_TEXT_ENCODER, model_links
from workflow_graph import Graph

from workflow_specs.sample_inputs import PAPER_PAIR

NAME = "12 Z-Image Turbo transfer"
OLDEST_COMFYUI = "0.9.2"  # Z-Image is not in 0.3.64
# Turbo is step-distilled for about 8 steps at cfg 1; from step 2 (the paper's 32 % start, rounded down)
SCHEDULE = (8, 2)
# at 8 steps the paper's "every 5th step before 40 %" structure rule falls on no swapping step (the sampler warns);
# every 2nd puts one there (the fourth), so that the structure's keys/values hold its layout during the swap
STRUCTURE_KV_EVERY = 2
EVALUATIONS = 32  # at cfg 1: 12 inverting both images + 20 generating (a test recounts it)
SHIFT = 3.0  # ModelSamplingAuraFlow's shift in ComfyUI's Z-Image Turbo template

NOTE = (
    "# Z-Image Turbo transfer\n\nThe same nodes on **Z-Image Turbo**. It needs **ComfyUI 0.9.2** or later "
    "(checked on 0.9.2). The output's image tokens attend to the appearance's in the last third of its 30 layers "
    "(20-29).\n\n"
    + PAPER_PAIR.note
    + "\n\n**Files** (the Missing Models dialog offers them):\n"
    + model_links(Z_IMAGE_MODEL, Z_IMAGE_TEXT_ENCODER, FLUX_VAE)
    + "\n\n(`ae.safetensors` is Flux's autoencoder: workflow *09*'s file.) Z-Image's licence is Apache 2.0.\n\n"
    f"**Settings:** loaded as ComfyUI's Z-Image Turbo template loads it, with its **ModelSamplingAuraFlow** shift "
    f"{SHIFT:g}, which the inversions follow too. Turbo is step-distilled: {SCHEDULE[0]} steps from step "
    f"{SCHEDULE[1]} (the paper's 32 % start) at `cfg` 1 everywhere, {EVALUATIONS} model evaluations per "
    "transfer. At 8 steps the paper's structure rule (every 5th step before 40 %) falls on no swapping step, so "
    "nothing would hold the structure's layout while the output takes the appearance's; the sampler would warn. "
    f"The **Options** node's `structure_kv_every` {STRUCTURE_KV_EVERY} puts one there (the fourth step): keep it "
    "at this schedule. **CLIP Text Encode (Object Word)** finds the object word among Qwen 3's tokens: automatic "
    "object masks, read from layer 10 (a choice by analogy with Flux: preview the sampler's mask outputs).\n\n"
    "Not yet run on the real weights: only a tiny random Z-Image has run this graph."
)


def build(g: Graph) -> None:
    steps, start_step = SCHEDULE
    loaders = single_encoder_loaders(
        g, "Z-Image", Z_IMAGE_MODEL, (Z_IMAGE_TEXT_ENCODER, "lumina2"), FLUX_VAE, shift=SHIFT
    )
    chain = Transfer(g, loaders, PAPER_PAIR, 1024, "xattn/z_image_transfer", object_masks=True, image_row=660)
    sampler = chain.sample_invert_save(
        sampler_values={"cfg": 1.0}, inversion_values={"steps": steps, "start_step": start_step, "cfg": 1.0}
    )
    options = g.add(
        "XAttnOptions", (1480, 460), "Options: a structure step at 8 steps", structure_kv_every=STRUCTURE_KV_EVERY
    )
    g.link(options, 0, sampler, "options")
