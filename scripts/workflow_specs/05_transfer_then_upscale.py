"""The 512 px transfer upscaled in latent space and refined by a plain KSampler at low denoise."""

from workflow_chain import Transfer, checkpoint_loader
from workflow_files import SD15_CHECKPOINT
from workflow_graph import Graph

from workflow_specs.sample_inputs import DRAWN_PAIR

NAME = "05 Transfer, then upscale"
NOTE = (
    "# Transfer, then upscale with a second pass\n\nThe 512 x 512 transfer is upscaled in latent space "
    "(**Upscale Latent By** 1.5) and refined by a plain **KSampler** at low denoise (0.35), which adds detail "
    "while keeping the transferred colours.\n\n" + DRAWN_PAIR.note + "\n\n**Change:** `scale_by`, the "
    "KSampler's `denoise` (lower keeps more of the transfer) and its steps/cfg; a more descriptive positive "
    "prompt helps the second pass."
)


def build(g: Graph) -> None:
    chain = Transfer(
        g, checkpoint_loader(g, SD15_CHECKPOINT), DRAWN_PAIR, 512, "xattn/transfer_upscaled", object_masks=False
    )
    chain.sample()
    chain.invert_both()
    chain.decode((chain.sampler, "output"), "PreviewImage", (1880, 440), "Transfer (512)")
    upscaled = g.add("LatentUpscaleBy", (1880, 0), upscale_method="bilinear", scale_by=1.5)
    g.link(chain.sampler, "output", upscaled, "samples")
    second = g.add(
        "KSampler",
        (2260, 0),
        "Second pass (low denoise)",
        seed=0,
        steps=20,
        cfg=5.0,
        sampler_name="euler",
        scheduler="normal",
        denoise=0.35,
    )
    g.link_inputs(
        second,
        model=chain.loaders.model,
        positive=(chain.positive, 0),
        negative=(chain.negative, 0),
        latent_image=(upscaled, 0),
    )
    chain.decode((second, 0), "SaveImage", (2640, 0), "Upscaled result", filename_prefix=chain.save_as)
