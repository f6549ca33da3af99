"""Stand-ins for the model loaders of the shipped workflows that load separate model files (09-12: Flux.1 dev,
Flux.2 dev, Qwen-Image, Z-Image Turbo), for the ComfyUI tier.

Those files (6-35 GB each) cannot be made on a CI machine. ``stand_in_loaders`` replaces ComfyUI's UNETLoader,
CLIPLoader, DualCLIPLoader and VAELoader, in the calling process only, by subclasses with the same inputs that
return, for the file or text encoder type a workflow names: a tiny random MODEL of that family (built from the
release's own model detection, comfyui_support.py), a text stand-in that gives the CONDITIONING that encoder
gives in shape, and a real comfy.sd.VAE with random weights of that autoencoder's architecture. Every other node
of the workflow runs as shipped. comfy_tasks.py runs the workflows with them (``stood-in-workflows``) and makes
its random checkpoint files with ``random_state`` too.
"""

from __future__ import annotations

import functools
import zlib
from types import SimpleNamespace

import torch
from comfyui_support import (
    flux2_conditioning,
    flux_conditioning,
    qwen_image_conditioning,
    tiny_flux,
    tiny_flux2,
    tiny_qwen_image,
    tiny_z_image,
    z_image_conditioning,
)

import xattn_core.tiny
from scripts.workflow_files import (
    FLUX2_MODEL,
    FLUX2_VAE,
    FLUX_MODEL,
    FLUX_VAE,
    QWEN_IMAGE_MODEL,
    QWEN_IMAGE_VAE,
    Z_IMAGE_MODEL,
)

ENGINE = SimpleNamespace(core=SimpleNamespace(tiny=xattn_core.tiny))  # what the tiny model builders read of a ns
TINY_MODELS = {
    FLUX_MODEL: tiny_flux,
    FLUX2_MODEL: tiny_flux2,
    QWEN_IMAGE_MODEL: tiny_qwen_image,
    Z_IMAGE_MODEL: tiny_z_image,
}
STAND_IN_TOKENS = 6  # the context length of a stand-in without a tokenizer

VAE_CONFIG = {  # SD's autoencoder, as ComfyUI's VAE class reads it from a checkpoint (Flux's: 16 channels)
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}


def random_state(module, prefix: str, seed: int) -> dict:
    """Random fp16 weights for every floating-point tensor of ``module`` (built on the meta device), keyed as a
    checkpoint file keys them; normalisation gains near 1 keep activations finite."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if not value.dtype.is_floating_point:
            continue
        tensor = torch.randn(value.shape, generator=generator) * 0.02
        gain = key.endswith(".weight") and any(part in key for part in (".norm", "norm.weight", "_norm", "ln_"))
        if gain:
            tensor += 1.0
        state[prefix + key] = tensor.to(torch.float16)
    return state


@functools.cache  # workflows 09 and 12 load the same file
def flux_autoencoder_state() -> dict:
    """Random weights of Flux's autoencoder (ae.safetensors: 16 latent channels, no quant convs; Z-Image's too)."""
    from comfy.ldm.modules.diffusionmodules.model import Decoder, Encoder

    config = {**VAE_CONFIG, "z_channels": 16}
    with torch.device("meta"):
        encoder, decoder = Encoder(**config), Decoder(**config)
    return {**random_state(encoder, "encoder.", 11), **random_state(decoder, "decoder.", 12)}


def flux2_autoencoder_state() -> dict:
    """Random weights of Flux.2's autoencoder (flux2-vae.safetensors): 32 channels, patchified 2 x 2 into the
    128-channel latent by its batch norm, whose statistics ComfyUI reads from the file (here mean 0, variance 1)."""
    from comfy.ldm.models.autoencoder import AutoencoderKL

    config = {**VAE_CONFIG, "z_channels": 32, "batch_norm_latent": True}
    with torch.device("meta"):
        autoencoder = AutoencoderKL(ddconfig=config, embed_dim=32)
    state = random_state(autoencoder, "", 13)
    state.update({"bn.running_mean": torch.zeros(128), "bn.running_var": torch.ones(128)})
    return state


def wan_autoencoder_state() -> dict:
    """Random weights of Wan 2.1's autoencoder (qwen_image_vae.safetensors), at the width both releases build it
    with (0.3.64 always 96; 0.9.2 reads the width from the file)."""
    from comfy.ldm.wan.vae import WanVAE

    with torch.device("meta"):
        autoencoder = WanVAE(
            dim=96,
            z_dim=16,
            dim_mult=[1, 2, 4, 4],
            num_res_blocks=2,
            attn_scales=[],
            temperal_downsample=[False, True, True],
        )
    state = random_state(autoencoder, "", 14)
    for key in state:
        if key.endswith(".gamma"):  # its RMS norms' gains, near 1 as well
            state[key] += 1.0
    return state


AUTOENCODERS = {
    FLUX_VAE: flux_autoencoder_state,
    FLUX2_VAE: flux2_autoencoder_state,
    QWEN_IMAGE_VAE: wan_autoencoder_state,
}


class TextStandIn:
    """A CLIP as the text nodes use it (``tokenize``, ``encode_from_tokens_scheduled``), giving its encoder's
    CONDITIONING in shape, with values drawn from the tokens. ``tokenizer``: ComfyUI's own tokenizer of that
    encoder, for the encoders whose tokens the Object Word node reads (Qwen 2.5 VL, Qwen 3), so that it finds the
    word as it would with the real encoder; the context then has one vector per token of the templated prompt (the
    real Qwen-Image encoder drops the template's system part first: a longer context, which changes nothing the
    workflow test checks). Without one (Flux.1's T5, Flux.2 dev's Mistral 3) the tokens are the text."""

    def __init__(self, conditioning, tokenizer=None) -> None:
        self.conditioning, self.tokenizer = conditioning, tokenizer

    def tokenize(self, text: str, **_):
        return self.tokenizer.tokenize_with_weights(text) if self.tokenizer else text

    def encode_from_tokens_scheduled(self, tokens, **_) -> list:
        seed = zlib.crc32(str(tokens).encode())
        if self.tokenizer is None:
            return self.conditioning(seed, STAND_IN_TOKENS)
        (chunks,) = tokens.values()
        return self.conditioning(seed, sum(len(chunk) for chunk in chunks))


def text_stand_in(clip_type: str) -> TextStandIn:
    """The text stand-in of a DualCLIPLoader/CLIPLoader ``type`` the workflows use."""
    if clip_type == "flux":  # CLIP-L's pooled vector and T5's context
        return TextStandIn(lambda seed, tokens: flux_conditioning(seed, guidance=None, tokens=tokens))
    if clip_type == "flux2":  # Mistral 3: its vocabulary is in the encoder's file, so no tokenizer here
        return TextStandIn(lambda seed, tokens: flux2_conditioning(seed, guidance=None, tokens=tokens))
    if clip_type == "qwen_image":
        from comfy.text_encoders.qwen_image import QwenImageTokenizer

        return TextStandIn(qwen_image_conditioning, QwenImageTokenizer())
    if clip_type == "lumina2":  # with Qwen 3 4B's file ComfyUI loads Z-Image's text encoder
        from comfy.text_encoders.z_image import ZImageTokenizer

        return TextStandIn(z_image_conditioning, ZImageTokenizer())
    raise ValueError(f"no text stand-in for CLIP type {clip_type}")


def stand_in_loaders() -> None:
    """Replace ComfyUI's four loaders, in this process only, by the stand-ins (ComfyUI's nodes already loaded)."""
    import comfy.sd

    import nodes

    class TinyModel(nodes.UNETLoader):
        def load_unet(self, unet_name, weight_dtype):
            return (TINY_MODELS[unet_name](ENGINE, seed=0),)

    class TextEncoder(nodes.CLIPLoader):
        def load_clip(self, clip_name, type="stable_diffusion", device="default"):
            return (text_stand_in(type),)

    class TextEncoders(nodes.DualCLIPLoader):
        def load_clip(self, clip_name1, clip_name2, type, device="default"):
            return (text_stand_in(type),)

    class Autoencoder(nodes.VAELoader):
        def load_vae(self, vae_name):
            return (comfy.sd.VAE(sd=AUTOENCODERS[vae_name]()),)

    for name, stand_in in (
        ("UNETLoader", TinyModel),
        ("CLIPLoader", TextEncoder),
        ("DualCLIPLoader", TextEncoders),
        ("VAELoader", Autoencoder),
    ):
        nodes.NODE_CLASS_MAPPINGS[name] = stand_in
