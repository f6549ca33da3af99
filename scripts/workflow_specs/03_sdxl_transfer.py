"""The plain transfer on an SDXL base checkpoint at 1024 x 1024."""

from workflow_chain import Transfer, checkpoint_loader
from workflow_files import SDXL_CHECKPOINT
from workflow_graph import Graph

from workflow_specs.sample_inputs import DRAWN_PAIR

NAME = "03 SDXL transfer at 1024 px"
NOTE = (
    "# SDXL transfer at 1024 x 1024\n\nThe same chain on an SDXL base checkpoint. The images are resized to "
    "1024 x 1024 (any multiple of 64 works; structure and appearance may differ in size).\n\n"
    + DRAWN_PAIR.note
    + "\n\n**Change:** the checkpoint (SDXL family), the prompt and object word, the resolution in the two "
    "Resize nodes. `freeu` is `auto`, which turns the paper's SD 1.5 FreeU variant off for SDXL. The "
    "automatic masks read SDXL's first two decoder attention levels (x2 and x4)."
)


def build(g: Graph) -> None:
    chain = Transfer(
        g, checkpoint_loader(g, SDXL_CHECKPOINT), DRAWN_PAIR, 1024, "xattn/sdxl_transfer", object_masks=True
    )
    chain.sample_invert_save()
