"""Automatic masks from a first sampler, the structure mask grown, both fed into a second sampler."""

from workflow_chain import Transfer, checkpoint_loader
from workflow_files import SD15_CHECKPOINT
from workflow_graph import Graph

from workflow_specs.sample_inputs import PAPER_PAIR

NAME = "02 Masks, automatic then edited"
NOTE = (
    "# Masks: automatic, edited, fed back\n\nThe first sampler finds the object in both images (automatic "
    "masks from the object word, the paper's default) and shows the masks it used. Here the structure mask is "
    "grown a little (**Grow Mask**) and both go into a second sampler set to `adain_masks: from inputs`.\n\n"
    + PAPER_PAIR.note
    + "\n\nAny MASK works as input: paint one in a Load Image node (right click, *Open in "
    "MaskEditor*) or build it with mask nodes; any size, soft edges allowed. Connected masks always win over "
    "the object word."
)


def build(g: Graph) -> None:
    chain = Transfer(
        g, checkpoint_loader(g, SD15_CHECKPOINT), PAPER_PAIR, 512, "xattn/masked_transfer", object_masks=True
    )
    first = chain.sample(title="Sampler (automatic masks)")
    chain.invert_both()
    # the first sampler's masks and their edit below it, the second sampler beside it: both samplers and the note
    # fit the view the workflow opens at
    grow = g.add("GrowMask", (1480, 480), "Grow the structure mask", expand=8, tapered_corners=True)
    g.link(first, "structure_mask", grow, "mask")
    chain.preview_masks(first, 1480, 660)
    edited = chain.sample(x=1880, title="Sampler with the edited masks", adain_masks="from inputs")
    g.link_inputs(
        edited,
        appearance=(chain.inversions["appearance"], 0),
        structure=(chain.inversions["structure"], 0),
        appearance_mask=(first, 3),
        structure_mask=(grow, 0),
    )
    chain.decode((edited, "output"), "SaveImage", (2280, 0), "Transfer result", filename_prefix=chain.save_as)
