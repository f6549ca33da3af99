"""One structure, a batch of two appearances (the second colour-inverted), both inversions saved for 06."""

from workflow_chain import Transfer, checkpoint_loader
from workflow_files import SAVED_INVERSIONS, SD15_CHECKPOINT
from workflow_graph import Graph

from workflow_specs.sample_inputs import DRAWN_PAIR

NAME = "04 Colour variants"
NOTE = (
    "# Colour variants: one structure x several appearances\n\nThe appearance images are batched (**Batch "
    "Images**) and inverted in one call; the sampler pairs the single structure with every appearance and "
    "outputs one image per appearance.\n\n" + DRAWN_PAIR.note + "\n\nHere the second appearance is the first "
    "one with inverted colours (core **Invert Image**); replace it with another Load Image, and chain more "
    "Batch Images nodes for more variants. Both inversions are saved with **Save Inversion** "
    "(`output/xattn/structure_00001_.safetensors`, `output/xattn/appearances_00001_.safetensors`), so "
    "*06 Transfer from saved inversions* can reuse them without inverting again."
)
FIRST_SAVE = "_00001_.safetensors"  # what ComfyUI appends to a filename_prefix the first time it saves under it


def build(g: Graph) -> None:
    chain = Transfer(
        g, checkpoint_loader(g, SD15_CHECKPOINT), DRAWN_PAIR, 512, "xattn/colour_variants", object_masks=False
    )
    chain.sample()
    inverted = g.add("ImageInvert", (360, 1140), "Second appearance (inverted colours)")
    g.link(chain.pixels["appearance"], 0, inverted, "image")
    batch = g.add("ImageBatch", (600, 1140), "Appearance batch")
    g.link_inputs(batch, image1=(chain.pixels["appearance"], 0), image2=(inverted, 0))
    chain.invert("structure", chain.encode("structure"))
    chain.invert("appearance", chain.encode("appearance", pixels=batch))
    for role, saved, title, y in (
        ("structure", SAVED_INVERSIONS[0], "Save structure inversion", 640),
        ("appearance", SAVED_INVERSIONS[1], "Save appearance inversions", 1000),
    ):
        save = g.add("XAttnSaveInversion", (1400, y), title, filename_prefix=saved.removesuffix(FIRST_SAVE))
        g.link(chain.inversions[role], 0, save, "inversion")
    chain.decode((chain.sampler, "output"), "SaveImage", (1880, 0), "Variants", filename_prefix=chain.save_as)
