"""A transfer from the inversions 04 saved: no images, no inversion."""

from workflow_chain import checkpoint_loader, decode, prompt_nodes
from workflow_files import SAVED_INVERSIONS, SD15_CHECKPOINT
from workflow_graph import Graph

from workflow_specs.sample_inputs import DRAWN_PAIR

NAME = "06 Transfer from saved inversions"
NOTE = (
    "# Transfer from saved inversions\n\nNo images and no inversion: **Load Inversion** reads inversions "
    "saved by **Save Inversion** (run *04 Colour variants* first; it saves `xattn/structure_00001_.safetensors`"
    " and `xattn/appearances_00001_.safetensors` in the output folder, listed with an `[output]` tag). Files "
    "placed in the input folder are listed too.\n\nUse the **same checkpoint** the inversions were made with "
    "(a different latent format is refused). The sampler starts at the inversions' start step; set "
    "`start_step` higher to keep more of the structure."
)


def build(g: Graph) -> None:
    loaders = checkpoint_loader(g, SD15_CHECKPOINT)
    positive, negative = prompt_nodes(g, loaders.clip, DRAWN_PAIR.prompt)  # 04's prompt
    sampler = g.add("XAttnCrossImageSampler", (800, 0))
    for role, saved, title, y in (
        ("structure", SAVED_INVERSIONS[0], "Structure inversion", 440),
        ("appearance", SAVED_INVERSIONS[1], "Appearance inversions", 580),
    ):
        load = g.add("XAttnLoadInversion", (360, y), title, inversion_file=f"{saved} [output]")
        g.link(load, 0, sampler, role)
    g.link_inputs(sampler, model=loaders.model, positive=(positive, 0), negative=(negative, 0))
    result = (sampler, "output")
    decode(g, loaders.vae, result, "SaveImage", (1280, 0), "Transfer result", filename_prefix="xattn/from_saved")
