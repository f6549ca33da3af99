"""The structure image's Canny edges drive an SD 1.5 ControlNet on the sampler's output prompts."""

from workflow_chain import Transfer, checkpoint_loader
from workflow_files import CONTROLNET_MODEL, SD15_CHECKPOINT
from workflow_graph import Graph

from workflow_specs.sample_inputs import PAPER_PAIR

NAME = "07 Transfer with a ControlNet"
NOTE = (
    "# Transfer with a ControlNet on the output\n\nThe structure image's own edges (core **Canny**, no "
    "preprocessor pack needed) drive an SD 1.5 canny ControlNet applied to the sampler's prompts. The pack "
    "gives such hints to the **output only**: the appearance and structure paths reconstruct their own images "
    "with the plain prompts, so the keys/values the output attends to still describe the appearance image. "
    "The inversions take the plain prompts too.\n\n" + PAPER_PAIR.note + "\n\n**Change:** the ControlNet "
    f"file (`{CONTROLNET_MODEL}` here, any SD 1.x ControlNet in `models/controlnet/`), its **strength** (lower "
    "when the edges fight the appearance) and the Canny thresholds. With a ControlNet the output rows "
    "run once more per step (533 to 601 image-evaluations at the paper's settings)."
)


def build(g: Graph) -> None:
    chain = Transfer(
        g, checkpoint_loader(g, SD15_CHECKPOINT), PAPER_PAIR, 512, "xattn/controlnet_transfer", object_masks=True
    )
    edges = g.add("Canny", (720, 1200), "Structure edges", low_threshold=0.4, high_threshold=0.8)
    g.link(chain.pixels["structure"], 0, edges, "image")
    loader = g.add("ControlNetLoader", (1080, 1200), control_net_name=CONTROLNET_MODEL)
    # below the sampler it feeds, which then sits in the chain's usual column, in the view the workflow opens at
    apply = g.add("ControlNetApplyAdvanced", (1480, 480), "ControlNet on the output", strength=0.8)
    g.link_inputs(
        apply,
        positive=(chain.positive, 0),
        negative=(chain.negative, 0),
        control_net=(loader, 0),
        image=(edges, 0),
        vae=chain.loaders.vae,
    )
    chain.sample(conditioning=((apply, "positive"), (apply, "negative")))
    chain.invert_both()
    chain.save()
    chain.decode((chain.sampler, "structure_reconstruction"), "PreviewImage", (1880, 440), "Structure reconstruction")
