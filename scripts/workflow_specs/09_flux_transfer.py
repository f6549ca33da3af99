"""The plain transfer on Flux.1-dev: separate model files, FluxGuidance, cfg 1, a 28-step schedule."""

from workflow_chain import Transfer, flux_loaders
from workflow_files import FLUX_MODEL, FLUX_TEXT_ENCODERS, FLUX_VAE
from workflow_graph import Graph

from workflow_specs.sample_inputs import PAPER_PAIR

# 28 steps (Flux.1-dev's usual length) from step 9, the paper's 32 % start (32 of 100)
FLUX_SCHEDULE = (28, 9)
FLUX_EVALUATIONS = 106  # at cfg 1: 38 inverting both images + 68 generating (README "Flux"; a test recounts it)

NAME = "09 Flux transfer"
NOTE = (
    "# Flux transfer\n\nThe same nodes on **Flux.1** (dev or a fine-tune of it). Flux has no decoder: the "
    "output's image tokens attend to the appearance's image tokens in the second half of the single blocks "
    "(the Options node changes which blocks, and how the keys' positions are treated).\n\n"
    + PAPER_PAIR.note
    + "\n\n**Files** (the Missing Models dialog links them): the model in `models/diffusion_models/`, CLIP-L "
    "and T5-XXL in `models/text_encoders/` (`t5xxl_fp8_e4m3fn.safetensors` needs less memory), the VAE "
    "`ae.safetensors` in `models/vae/`; `weight_dtype` fp8_e4m3fn in the model loader halves its memory. "
    "Flux.1-dev's licence is non-commercial.\n\n**Settings:** `cfg` 1 in "
    "both inversions and the sampler (Flux.1-dev is guidance-distilled: one evaluation per row, the negative "
    "prompt unused); the guidance is **FluxGuidance**'s 3.5. "
    f"{FLUX_SCHEDULE[0]} steps from step {FLUX_SCHEDULE[1]} (the paper's 32 % start, {FLUX_EVALUATIONS} model "
    "evaluations per transfer) on Flux's own shifted schedule. AdaIN matches the whole images here; for automatic "
    "object masks use **CLIP Text Encode (Object Word)** as the positive prompt, as in *01* (on Flux they "
    "are read from the last double block, not yet checked on real weights: preview the sampler's masks)."
)


def build(g: Graph) -> None:
    steps, start_step = FLUX_SCHEDULE
    loaders = flux_loaders(g, FLUX_MODEL, FLUX_TEXT_ENCODERS, FLUX_VAE)
    chain = Transfer(
        g, loaders, PAPER_PAIR, 1024, "xattn/flux_transfer", object_masks=False, guidance=3.5, image_row=520
    )
    chain.sample_invert_save(
        sampler_values={"cfg": 1.0}, inversion_values={"steps": steps, "start_step": start_step, "cfg": 1.0}
    )
