"""The basic SD 1.5 transfer at the paper's defaults, with previews of the reconstructions and the masks."""

from workflow_chain import Transfer, checkpoint_loader
from workflow_files import SD15_CHECKPOINT
from workflow_graph import Graph

from workflow_specs.sample_inputs import PAPER_PAIR

NAME = "01 Basic transfer, SD 1.5"
NOTE = (
    "# Cross-Image Attention: basic SD 1.5 transfer\n\nThe **structure** image keeps its shape; the "
    "**appearance** image gives colours and materials.\n\n" + PAPER_PAIR.note + "\n\n**Change:** the checkpoint "
    "(any SD 1.x), the prompt `A photo of a <domain>` and its **object word** (the paper's default: "
    "automatic object masks, so the background's colours stay out of the object's), and the images. "
    "Defaults are the paper's: 100 steps, start step 32, inversion cfg 3.5, transfer cfg 1.0, swap "
    "guidance 3.5, contrast 1.67. Raise **start_step** (both inversions) to keep more of the structure.\n\n"
    "The previews show the reconstructions of the inputs (if they do not resemble the inputs, the inversion "
    "settings or the checkpoint are off) and the masks AdaIN used."
)


def build(g: Graph) -> None:
    chain = Transfer(g, checkpoint_loader(g, SD15_CHECKPOINT), PAPER_PAIR, 512, "xattn/transfer", object_masks=True)
    sampler = chain.sample_invert_save()
    chain.decode((sampler, "appearance_reconstruction"), "PreviewImage", (1880, 440), "Appearance reconstruction")
    chain.decode((sampler, "structure_reconstruction"), "PreviewImage", (1880, 880), "Structure reconstruction")
    chain.preview_masks(sampler, 2640, 440)
