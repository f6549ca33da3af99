"""ComfyUI nodes of the Cross-Image Attention pack (V3 schema; ComfyUI names come through nodes/compat.py)."""

from .adain import XAttnAdaINLatentMatch
from .compat import ComfyExtension, io
from .inversion_files import XAttnLoadInversion, XAttnSaveInversion
from .invert import XAttnInvertImage
from .object_word import XAttnObjectPrompt
from .options import XAttnOptions
from .sampler import XAttnCrossImageSampler
from .select_inversion import XAttnSelectInversion

NODES: list[type[io.ComfyNode]] = [
    XAttnInvertImage,
    XAttnObjectPrompt,
    XAttnCrossImageSampler,
    XAttnOptions,
    XAttnAdaINLatentMatch,
    XAttnSaveInversion,
    XAttnLoadInversion,
    XAttnSelectInversion,
]


class CrossImageAttentionExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> CrossImageAttentionExtension:
    return CrossImageAttentionExtension()
