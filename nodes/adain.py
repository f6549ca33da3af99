"""AdaIN Latent Match: per-channel mean/std matching of one latent to another."""

from __future__ import annotations

from ..xattn_core.adain import adain
from ..xattn_core.transfer import TransferSettings
from .common import CATEGORY, reports_warnings, setting_input
from .compat import io


class XAttnAdaINLatentMatch(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XAttnAdaINLatentMatch",
            display_name="AdaIN Latent Match",
            category=CATEGORY,
            description="Match each channel's mean and standard deviation of the content latent to the style "
            "latent (AdaIN), optionally only inside masks.",
            inputs=[
                io.Latent.Input("content", tooltip="Latent whose statistics are changed."),
                io.Latent.Input("style", tooltip="Latent whose statistics are taken (batch 1 or the content's)."),
                setting_input(
                    io.Float,
                    TransferSettings,
                    "adain_strength",
                    socket="strength",
                    step=0.01,
                    tooltip="1 = full match, 0 = content unchanged.",
                ),
                io.Mask.Input(
                    "content_mask",
                    optional=True,
                    tooltip="Where the content is changed and measured; "
                    "any size, soft values allowed. An empty mask falls back to no mask.",
                ),
                io.Mask.Input("style_mask", optional=True, tooltip="Where the style statistics are measured."),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    @reports_warnings
    def execute(cls, content, style, strength, content_mask=None, style_mask=None):
        samples = content["samples"]
        if samples.shape[0] == 0 or style["samples"].shape[0] == 0:
            raise ValueError("AdaIN Latent Match got an empty latent batch")
        style_samples = style["samples"].float().to(samples.device)
        matched = adain(samples.float(), style_samples, content_mask, style_mask, strength)
        out = dict(content)
        out["samples"] = matched.to(samples.dtype)
        return io.NodeOutput(out)
