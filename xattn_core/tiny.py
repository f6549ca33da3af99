"""Tiny random-weight models shaped like SD 1.5 and DINO, for tests and CPU benchmarks (needs diffusers).

Random weights are enough to check the mechanics, but a freshly constructed diffusers UNet has
zero-initialised output layers and predicts ~0 everywhere; :func:`tiny_unet` re-initialises every
weight and rescales the output so the noise prediction has a standard deviation near 1.
"""

from __future__ import annotations

import torch

TINY_CONTEXT_DIM = 32


def tiny_unet_config(levels: int = 2, plain_levels: int = 0) -> dict:
    """An SD-1.5-shaped UNet: attention at every level, 512 px images -> 64x64 and 32x32 decoder attention.

    ``plain_levels`` highest-resolution levels without attention make it SDXL-shaped (SDXL has none at full
    resolution, so its decoder attention levels are x2 and x4).
    """
    channels = tuple(32 * 2**i for i in range(levels))
    down = ("DownBlock2D",) * plain_levels + ("CrossAttnDownBlock2D",) * (levels - plain_levels)
    return dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        block_out_channels=channels,
        down_block_types=down,
        up_block_types=tuple(reversed(["UpBlock2D" if "Attn" not in kind else "CrossAttnUpBlock2D" for kind in down])),
        layers_per_block=1,
        cross_attention_dim=TINY_CONTEXT_DIM,
        attention_head_dim=8,  # diffusers reads this as the head count: 8 heads, like ComfyUI SD 1.x
        norm_num_groups=32,
    )


def reinitialise(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (fan-in scaled), unit-ish norms, drawn on the module's device."""
    device = next(module.parameters()).device  # a full-size model on a GPU is drawn there, not copied over
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            draw = torch.randn(parameter.shape, generator=generator, device=device)
            if parameter.dim() > 1:
                parameter.copy_(draw / parameter[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                parameter.copy_(1 + 0.1 * draw)
            else:
                parameter.copy_(0.05 * draw)


def tiny_unet(seed: int = 0, levels: int = 2, plain_levels: int = 0):
    """A random SD-1.5-shaped (or, with ``plain_levels``, SDXL-shaped) ``UNet2DConditionModel``, noise std ~1."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**tiny_unet_config(levels, plain_levels))
    reinitialise(unet, seed)
    unet.eval().requires_grad_(False)
    probe_generator = torch.Generator().manual_seed(seed + 1)
    sample = torch.randn(2, 4, 32, 32, generator=probe_generator)
    context = torch.randn(2, 8, TINY_CONTEXT_DIM, generator=probe_generator)
    with torch.no_grad():
        spread = unet(sample, torch.tensor([500, 500]), encoder_hidden_states=context).sample.std()
        unet.conv_out.weight.div_(spread)
        unet.conv_out.bias.div_(spread)
    return unet


def tiny_context(seed: int, tokens: int = 77) -> torch.Tensor:
    """A random prompt embedding ``[1, tokens, TINY_CONTEXT_DIM]``."""
    return torch.randn(1, tokens, TINY_CONTEXT_DIM, generator=torch.Generator().manual_seed(seed))


def _byte_level_vocabulary() -> dict[str, int]:
    """A character-level CLIP vocabulary (no merges), so a tokenizer can be built without downloads."""
    # GPT-2/CLIP byte-level alphabet: printable bytes stand for themselves, the rest are shifted past 255
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    characters = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(shifted))]
    tokens = characters + [c + "</w>" for c in characters] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def save_tiny_pipeline(folder, seed: int = 0) -> None:
    """Write a complete random-weight Stable Diffusion pipeline (UNet, VAE, CLIP, tokenizer) to ``folder``."""
    import json
    from pathlib import Path

    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    vocabulary_dir = folder / "_vocabulary"
    vocabulary_dir.mkdir(parents=True, exist_ok=True)
    vocabulary = _byte_level_vocabulary()
    (vocabulary_dir / "vocab.json").write_text(json.dumps(vocabulary))
    (vocabulary_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(vocabulary_dir / "vocab.json"), str(vocabulary_dir / "merges.txt"), model_max_length=77
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocabulary),
            hidden_size=TINY_CONTEXT_DIM,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=TINY_CONTEXT_DIM,
            bos_token_id=vocabulary["<|startoftext|>"],
            eos_token_id=vocabulary["<|endoftext|>"],
            pad_token_id=vocabulary["<|endoftext|>"],
        )
    )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32,) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
    )
    reinitialise(vae, seed + 2)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=tiny_unet(seed),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder))


def tiny_vit(seed: int):
    """A random DINO-shaped ViT (class token, 224 px input, 14x14 patches of 16 px), small enough for CPU tests."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.ViTConfig(
        image_size=224,
        patch_size=16,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
    )
    return transformers.ViTModel(config, add_pooling_layer=False).eval()
