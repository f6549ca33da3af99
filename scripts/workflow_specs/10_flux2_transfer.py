"""The plain transfer on Flux.2 dev: its three model files, FluxGuidance 4, cfg 1, Flux.2's own schedule."""

from workflow_chain import Transfer, single_encoder_loaders
from workflow_files import FLUX2_MODEL, FLUX2_TEXT_ENCODER, FLUX2_VAE, model_links
from workflow_graph import Graph

from workflow_specs.sample_inputs import PAPER_PAIR

NAME = "10 Flux.2 transfer"
OLDEST_COMFYUI = "0.9.2"  # Flux.2 is not in 0.3.64 (CLIPLoader has no flux2 type there)
# 28 steps from step 9 as workflow 09 (the paper's 32 % start): Flux.2 dev is guidance-distilled like Flux.1 dev
SCHEDULE = (28, 9)
EVALUATIONS = 106  # at cfg 1: 38 inverting both images + 68 generating (a test recounts it)
GUIDANCE = 4.0  # FluxGuidance's value in ComfyUI's Flux.2 templates

NOTE = (
    "# Flux.2 transfer\n\nThe same nodes on **Flux.2 dev**. It needs **ComfyUI 0.9.2** or later (checked on "
    "0.9.2). The output's image tokens attend to the appearance's in the last third of the blocks (single blocks "
    "30-47; the Options node changes which).\n\n"
    + PAPER_PAIR.note
    + "\n\n**Files** (the Missing Models dialog offers them):\n"
    + model_links(FLUX2_MODEL, FLUX2_TEXT_ENCODER, FLUX2_VAE)
    + "\n\n`mistral_3_small_flux2_fp8.safetensors` (same folder) needs less memory. Flux.2 dev's licence is "
    "non-commercial.\n\n**Settings:** `cfg` 1 in both inversions and the sampler (Flux.2 dev is guidance-distilled: "
    f"one evaluation per row, the negative prompt unused); the guidance is **FluxGuidance**'s {GUIDANCE:g}, as in "
    f"ComfyUI's Flux.2 templates. {SCHEDULE[0]} steps from step {SCHEDULE[1]} (the paper's 32 % start, "
    f"{EVALUATIONS} model evaluations per transfer) on Flux.2's own schedule (Flux2Scheduler's, for the image's "
    "size: no SIGMAS node needed). AdaIN matches the whole images: the Object Word node cannot read Mistral 3's "
    "tokens (their vocabulary is in the text encoder's file), so it would only warn here; connect masks to the "
    "sampler for masked AdaIN, as in *02*.\n\nNot yet run on the real weights: only a tiny random Flux.2 has run "
    "this graph."
)


def build(g: Graph) -> None:
    steps, start_step = SCHEDULE
    loaders = single_encoder_loaders(g, "Flux.2", FLUX2_MODEL, (FLUX2_TEXT_ENCODER, "flux2"), FLUX2_VAE)
    chain = Transfer(
        g, loaders, PAPER_PAIR, 1024, "xattn/flux2_transfer", object_masks=False, guidance=GUIDANCE, image_row=520
    )
    chain.sample_invert_save(
        sampler_values={"cfg": 1.0}, inversion_values={"steps": steps, "start_step": start_step, "cfg": 1.0}
    )
