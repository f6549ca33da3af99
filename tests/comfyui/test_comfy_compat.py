"""On the ComfyUI checkout in use: the import shim took that checkout's own comfy_api module, the classes ComfyUI
checks a pack against are the ones the nodes use, and attention replace patches receive plain tensors."""

import importlib
import sys
from pathlib import Path

import torch
from comfyui_support import COMFYUI_PATH, PACK_NAME, conditioning, tiny_sd15


def shim():
    return importlib.import_module(f"{PACK_NAME}.nodes.compat")


def test_the_shim_imported_the_checkouts_own_api_module(comfy):
    compat = shim()
    api_dir = Path(COMFYUI_PATH) / "comfy_api"
    on_disk = [entry.name for entry in api_dir.iterdir() if (entry / "__init__.py").is_file()]
    assert compat.API_MODULE == "comfy_api." + compat.choose_api_module(on_disk)
    if "v0_0_2" in on_disk:
        assert compat.API_MODULE == "comfy_api.v0_0_2"
    module = sys.modules[compat.API_MODULE]
    assert Path(module.__file__).resolve().is_relative_to(api_dir.resolve())
    assert compat.io is module.io and compat.ComfyExtension is module.ComfyExtension


def test_comfyui_checks_the_pack_against_the_classes_the_shim_gives(comfy):
    import nodes as comfy_nodes  # ComfyUI's nodes.py: load_custom_node tests isinstance(..., ComfyExtension)

    compat = shim()
    assert compat.ComfyExtension is comfy_nodes.ComfyExtension
    assert compat.io.ComfyNode is comfy_nodes.io.ComfyNode
    assert issubclass(comfy.nodes.XAttnCrossImageSampler, comfy_nodes.io.ComfyNode)


def sample_once(comfy, model):
    import nodes as comfy_nodes

    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    (out,) = comfy_nodes.common_ksampler(model, 7, 2, 4.0, "euler", "normal", conditioning(1), conditioning(2), latent)
    return out["samples"]


def test_attention_replace_patches_receive_plain_tensors(comfy):
    """Newer ComfyUI wraps q/k/v in AttentionTensorContainer inside CrossAttention; a replace patch must still get
    the projected tensors, and optimized_attention on them must give what the unpatched layer computes."""
    model, _ = tiny_sd15(comfy, seed=5)
    seen = []

    def replace(q, k, v, extra_options):
        seen.append(tuple(type(t) for t in (q, k, v)))
        return comfy.backend.comfy_attention.optimized_attention(
            q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision")
        )

    patched = model.clone()
    levels, _ = comfy.unet.decoder_levels(model.get_model_object("diffusion_model"))
    for block_id in levels:
        patched.set_model_attn1_replace(replace, "output", block_id)
        patched.set_model_attn2_replace(replace, "output", block_id)
    plain = sample_once(comfy, model)
    replaced = sample_once(comfy, patched)
    assert len(seen) >= 2 * len(levels)  # attn1 and attn2 of every decoder block, every model call
    assert all(all(issubclass(kind, torch.Tensor) for kind in types) for types in seen), set(seen)
    assert torch.equal(plain, replaced)
