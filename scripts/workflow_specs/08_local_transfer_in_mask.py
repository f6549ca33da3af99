"""A transfer inside a noise mask on the structure latent, composited back into the original pixels."""

from workflow_chain import Transfer, checkpoint_loader
from workflow_files import SD15_CHECKPOINT
from workflow_graph import Graph

from workflow_specs.sample_inputs import PAPER_PAIR

NAME = "08 Local transfer inside a mask"
NOTE = (
    "# Local transfer: recolour inside a mask, keep the rest exactly\n\nThe structure latent carries a "
    "**noise mask** (core **Set Latent Noise Mask**), which Invert Image keeps: the transfer happens inside "
    "the mask, and outside it the output follows the structure image's own inversion and ends exactly on "
    "its latent. **Composite** then pastes the result into the original pixels, so the background is the "
    "input's, pixel for pixel.\n\n" + PAPER_PAIR.note + "\n\nThe mask here is a rectangle made with "
    "core mask nodes; for your images paint it in the structure's Load Image node (right click, *Open in "
    "MaskEditor*) and connect its MASK output instead. A noise mask on the appearance image means nothing "
    "(it is ignored, with a warning)."
)


def build(g: Graph) -> None:
    chain = Transfer(
        g, checkpoint_loader(g, SD15_CHECKPOINT), PAPER_PAIR, 512, "xattn/local_transfer", object_masks=True
    )
    background = g.add("SolidMask", (0, 1320), "Keep everything", value=0.0, width=512, height=512)
    region = g.add("SolidMask", (0, 1500), "Region to recolour", value=1.0, width=320, height=400)
    mask = g.add("MaskComposite", (360, 1320), "Mask", x=96, y=64, operation="add")
    g.link_inputs(mask, destination=(background, 0), source=(region, 0))
    sampler = chain.sample()
    masked_latent = g.add("SetLatentNoiseMask", (1080, 1320), "Transfer only inside the mask")
    g.link_inputs(masked_latent, samples=(chain.encode("structure"), 0), mask=(mask, 0))
    chain.invert("structure", masked_latent)
    chain.invert("appearance", chain.encode("appearance"))
    decoder, _ = chain.decode((sampler, "output"), "PreviewImage", (1880, 440), "Transfer (before compositing)")
    composite = g.add("ImageCompositeMasked", (1880, 0), "Paste into the original", x=0, y=0, resize_source=False)
    g.link_inputs(composite, destination=(chain.pixels["structure"], 0), source=(decoder, 0), mask=(mask, 0))
    save = g.add("SaveImage", (2280, 0), "Transfer result", filename_prefix=chain.save_as)
    g.link(composite, 0, save, "images")
    preview = g.add("MaskPreview", (720, 1320), "Mask preview")
    g.link(mask, 0, preview, "mask")
