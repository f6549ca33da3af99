"""Helpers for the ComfyUI tier: import a real ComfyUI as a library, load this pack, build tiny models."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # also imported by scripts run in ComfyUI's folder, outside pytest's pythonpath
    sys.path.insert(0, str(REPO))

from tests.stepwise import teacher_forced  # noqa: E402  (before ComfyUI's folder, whose tests/ would shadow it)
from xattn_core.tiny import tiny_context  # noqa: E402

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")  # the ComfyUI checkout; unset: these tiers are skipped
CHROMIUM = (
    os.environ.get("CHROMIUM")
    or shutil.which("chromium")
    or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
)
PACK_NAME = "xattn_pack"  # the repo folder may be called anything; ComfyUI imports it by folder name
CPU = torch.device("cpu")
_state: dict = {}


def load_snapshot_module():
    """scripts/snapshot_node_schemas.py as a module: its ComfyServer starts a real ComfyUI on loopback."""
    path = REPO / "scripts" / "snapshot_node_schemas.py"
    spec = importlib.util.spec_from_file_location("snapshot_node_schemas", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def attention_mode() -> str:
    """'pytorch' (SDPA, as --use-pytorch-cross-attention) unless XATTN_COMFY_ATTENTION=default (sub-quadratic)."""
    return os.environ.get("XATTN_COMFY_ATTENTION", "pytorch")


def setup(comfyui_path: str) -> SimpleNamespace:
    if "ns" in _state:
        return _state["ns"]
    if comfyui_path not in sys.path:
        sys.path.insert(0, comfyui_path)
    from comfy.cli_args import args  # ComfyUI parses no argv when imported as a library

    args.cpu = True  # must precede the first import of comfy.model_management
    args.use_pytorch_cross_attention = attention_mode() == "pytorch"
    import comfy.ldm.modules.attention
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    import comfy.utils

    spec = importlib.util.spec_from_file_location(
        PACK_NAME, REPO / "__init__.py", submodule_search_locations=[str(REPO)]
    )
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = pack
    spec.loader.exec_module(pack)
    import importlib as _importlib

    ns = SimpleNamespace(
        pack=pack,
        nodes=_importlib.import_module(f"{PACK_NAME}.nodes"),
        backend=_importlib.import_module(f"{PACK_NAME}.nodes.comfy_backend"),
        families=_importlib.import_module(f"{PACK_NAME}.nodes.families"),
        flux=_importlib.import_module(f"{PACK_NAME}.nodes.flux_transformer"),
        joint=_importlib.import_module(f"{PACK_NAME}.nodes.joint_transformer"),
        unet=_importlib.import_module(f"{PACK_NAME}.nodes.unet_family"),
        common=_importlib.import_module(f"{PACK_NAME}.nodes.common"),
        core=SimpleNamespace(
            **{
                name: _importlib.import_module(f"{PACK_NAME}.xattn_core.{name}")
                for name in (
                    "attention",
                    "calls",
                    "diffusers_backend",
                    "flow",
                    "freeu",
                    "inversion",
                    "joint_attention",
                    "plan",
                    "schedule",
                    "segmentation",
                    "transfer",
                    "tiny",
                )
            }
        ),
        comfy=comfy,
    )
    _state["ns"] = ns
    return ns


def _unet_config(levels: tuple[int, ...], depth: tuple[int, ...], sdxl: bool, dtype=torch.float32) -> dict:
    config = {
        "use_checkpoint": False,
        "image_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 32,
        "num_res_blocks": [1] * len(levels),
        "channel_mult": list(levels),
        "transformer_depth": list(depth),
        "transformer_depth_output": [d for d in depth for _ in range(2)],
        "transformer_depth_middle": 1,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
        "use_linear_in_transformer": sdxl,
        "context_dim": 32,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
        "dtype": dtype,
    }
    if sdxl:
        config.update(num_classes="sequential", adm_in_channels=32 + 6 * 256)
    return config


def tiny_sd15(ns, seed: int = 0, dtype=torch.float32):
    """(ModelPatcher, diffusers UNet) sharing one set of random weights, SD-1.5-shaped (2 levels)."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
    import comfy.utils

    config = _unet_config((1, 2), (1, 1), sdxl=False, dtype=dtype)

    class TinySD15(comfy.supported_models.SD15):
        unet_config = config

    model = comfy.model_base.BaseModel(TinySD15(config), model_type=comfy.model_base.ModelType.EPS, device=CPU)
    unet = ns.core.tiny.tiny_unet(seed)
    mapping = comfy.utils.unet_to_diffusers(model.model_config.unet_config)
    comfy_state = {mapping[key]: value for key, value in unet.state_dict().items()}
    model.diffusion_model.load_state_dict(comfy_state, strict=True)
    return comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU), unet


def tiny_sdxl(ns, seed: int = 0):
    """An SDXL-shaped ModelPatcher: three levels, attention only at x2 and x4 (none at full resolution)."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models

    config = _unet_config((1, 2, 4), (0, 1, 1), sdxl=True)

    class TinySDXL(comfy.supported_models.SDXL):
        unet_config = config
        unet_extra_config = {"num_heads": -1, "num_head_channels": 8}

    model = comfy.model_base.SDXL(TinySDXL(config), model_type=comfy.model_base.ModelType.EPS, device=CPU)
    ns.core.tiny.reinitialise(model.diffusion_model, seed)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed))
    cond = sdxl_conditioning(seed)[0]
    with torch.no_grad():
        y = model.encode_adm(pooled_output=cond[1]["pooled_output"], width=128, height=128, device=CPU)
        denoised = model.apply_model(x, torch.tensor([5.0]), c_crossattn=cond[0], y=y)
        spread = ((x - denoised) / 5.0).std()
        model.diffusion_model.out[2].weight.div_(spread)
        model.diffusion_model.out[2].bias.div_(spread)
    return patcher


def run(node, *args, **kwargs):
    """A V3 node's outputs, called as ComfyUI would (classmethod ``execute``)."""
    return node.execute(*args, **kwargs).result


def invert_node(
    ns,
    model,
    samples,
    *,
    positive=None,
    negative=None,
    steps=8,
    start_step=2,
    cfg=3.5,
    seed=0,
    freeu="auto",
    fast_mode="off",
    **optional,
):
    """Invert Image (DDPM) on a latent batch ``samples``; small test-sized schedule unless told otherwise.

    ``optional`` takes the node's optional inputs (``sigmas``) and extra LATENT entries (``noise_mask``).
    """
    latent = {"samples": samples}
    if "noise_mask" in optional:
        latent["noise_mask"] = optional.pop("noise_mask")
    (inversion,) = run(
        ns.nodes.XAttnInvertImage,
        model=model,
        latent=latent,
        positive=conditioning(1) if positive is None else positive,
        negative=conditioning(2) if negative is None else negative,
        steps=steps,
        start_step=start_step,
        cfg=cfg,
        seed=seed,
        freeu=freeu,
        fast_mode=fast_mode,
        **optional,
    )
    return inversion


def sample_node(ns, model, appearance, structure, *, positive=None, negative=None, **inputs):
    """The Cross-Image Attention Sampler's five outputs: output, appearance and structure reconstructions,
    appearance and structure masks.

    Every widget takes the node's own default unless given in ``inputs``, as a graph would send it.
    """
    widgets = {
        spec.id: spec.default
        for spec in ns.nodes.XAttnCrossImageSampler.define_schema().inputs
        if getattr(spec, "default", None) is not None
    }
    widgets.update(inputs)
    return run(
        ns.nodes.XAttnCrossImageSampler,
        model=model,
        positive=conditioning(1) if positive is None else positive,
        negative=conditioning(2) if negative is None else negative,
        appearance=appearance,
        structure=structure,
        **widgets,
    )


def stepwise_inversion_pair(ns, patched, reference, candidate, positive, negative, cfg: float) -> list[float]:
    """Transfers from two batched inversions (image 0 the appearance, image 1 the structure) compared one step at
    a time from identical latents (tests/stepwise.py), on ComfyUI's own model calls through ``patched``."""

    def loop(backend, x, report):
        samplers = [
            ns.core.transfer.JointSampler(backend, inversion.select([0]), inversion.select([1]))
            for inversion in (reference, candidate)
        ]
        return x, teacher_forced(*samplers)

    start = ns.backend.model_latent(patched, torch.zeros(1, *reference.clean.shape[1:]))  # the MODEL's layout
    sigmas = reference.sigmas[reference.start_step :]
    _, differences = ns.backend.run_in_guider(patched, positive, negative, cfg, start, sigmas, loop)
    return differences


def flow_regeneration_errors(ns, model, inversion, positive, negative) -> list[float]:
    """Per stored step of a flow inversion, the relative error of one flow step with its noise map from the stored
    latent against the next stored latent, on ComfyUI's own model calls (cfg 1)."""
    flow_step = ns.core.flow.flow_step
    sigmas = inversion.sigmas
    patched = ns.families.patch_model(model, None)

    def loop(backend, x, report):
        errors = []
        for i in range(inversion.start_step, inversion.steps):
            latent = inversion.latent_at(i)
            prediction = backend.predict_noise(latent, sigmas[i].expand(latent.shape[0]), None, paths=True)
            reached = flow_step(latent, prediction, float(sigmas[i]), float(sigmas[i + 1]), inversion.noise_at(i))
            target = inversion.latent_at(i + 1)
            errors.append(((reached - target).norm() / target.norm()).item())
        return x, errors

    start = ns.backend.model_latent(patched, torch.zeros(inversion.batch_size, *inversion.clean.shape[1:]))
    sigmas_run = sigmas[inversion.start_step :]
    _, errors = ns.backend.run_in_guider(patched, positive, negative, 1.0, start, sigmas_run, loop)
    return errors


def counting_clone(model, interrupt_after: int | None = None):
    """A clone of ``model`` that counts its model calls and, after call ``interrupt_after``, asks ComfyUI to stop
    as the Cancel button does (``interrupt_current_processing``); returns (clone, list of calls so far).

    Counted at the model call itself: ComfyUI's progress bar hook is throttled in newer releases (0.9.2 sends an
    update at most every 100 ms), so a test that counts hook calls cannot name a step."""
    import comfy.model_management

    calls: list[int] = []

    def wrapper(apply_model, args):
        calls.append(len(calls))
        result = apply_model(args["input"], args["timestep"], **args["c"])
        if len(calls) == interrupt_after:
            comfy.model_management.interrupt_current_processing(True)
        return result

    clone = model.clone()
    clone.set_model_unet_function_wrapper(wrapper)
    return clone, calls


def interrupted_calls(model, interrupt_after: int, chain) -> int:
    """Run ``chain(clone)`` with an interrupt asked for after model call ``interrupt_after``; the model calls made
    in all. Fails unless ComfyUI's InterruptProcessingException came out of the chain."""
    import comfy.model_management
    import pytest

    clone, calls = counting_clone(model, interrupt_after)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            chain(clone)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    return len(calls)


def conditioning(seed: int):
    """CONDITIONING without a CLIP: one random prompt embedding."""
    return [[tiny_context(seed), {}]]


def sdxl_conditioning(seed: int):
    pooled = torch.randn(1, 32, generator=torch.Generator().manual_seed(seed + 100))
    return [[tiny_context(seed), {"pooled_output": pooled}]]


def tiny_clip(ns, seed: int = 0):
    """A real ComfyUI CLIP (SD 1.x tokenizer from ComfyUI's own files) with a tiny random text encoder whose
    context width matches the tiny UNets (32)."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    config = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "projection_dim": 32,
    }
    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    clip = comfy.sd.CLIP(target=target, model_options={"clip_l_model_config": config})
    ns.core.tiny.reinitialise(clip.cond_stage_model, seed)
    return clip


def object_prompt(ns, clip, text: str, object_word: str):
    """CLIP Text Encode (Object Word): CONDITIONING that carries the object word's token positions."""
    (conditioning,) = run(ns.nodes.XAttnObjectPrompt, clip=clip, text=text, object_word=object_word)
    return conditioning


FLUX_WIDTH = 32  # the tiny Flux's text and pooled widths (T5 and CLIP-L are 4096 and 768 in Flux.1)


def tiny_flux_config(guidance_embed: bool = True) -> dict:
    """A Flux.1-shaped transformer: 2 double and 2 single blocks, hidden 64, 2 heads, 16 latent channels."""
    return dict(
        image_model="flux",
        in_channels=16,
        out_channels=16,
        vec_in_dim=FLUX_WIDTH,
        context_in_dim=FLUX_WIDTH,
        hidden_size=64,
        mlp_ratio=2.0,
        num_heads=2,
        depth=2,
        depth_single_blocks=2,
        axes_dim=[8, 12, 12],  # sums to the head width, 32, as Flux.1's [16, 56, 56] sums to 128
        theta=10000,
        patch_size=2,
        qkv_bias=True,
        guidance_embed=guidance_embed,
    )


def version_flux_fields() -> dict:
    """The Flux.1 values of the fields this ComfyUI's FluxParams requires beyond the 0.3.64 set, as its own
    model_detection writes them for a Flux.1 checkpoint (0.9.2: ``txt_ids_dims = []``, the text ids' rotary axes)."""
    import dataclasses

    import comfy.ldm.flux.model

    fields = {field.name for field in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}
    return {"txt_ids_dims": []} if "txt_ids_dims" in fields else {}


def tiny_flux(ns, seed: int = 0, guidance_embed: bool = True):
    """A real ComfyUI Flux MODEL (model_base.Flux in a ModelPatcher) with random weights, velocity std ~1.

    ``guidance_embed`` as Flux.1-dev (guidance-distilled: the guidance value is a model input, taken from the
    conditioning's ``guidance`` key that FluxGuidance sets); without it, as Flux.1-schnell.
    """
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models

    config = tiny_flux_config(guidance_embed)
    config.update(version_flux_fields())

    class TinyFlux(comfy.supported_models.Flux):
        unet_config = config

    model = comfy.model_base.Flux(TinyFlux(config), device=CPU)
    ns.core.tiny.reinitialise(model.diffusion_model, seed)
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(seed))
    context, extras = flux_conditioning(seed)[0]
    with torch.no_grad():
        sigma = torch.tensor([0.5])
        denoised = model.apply_model(x, sigma, c_crossattn=context, y=extras["pooled_output"], guidance=torch.ones(1))
        spread = ((x - denoised) / sigma).std()  # scale the last layer so that the velocity has std ~1
        model.diffusion_model.final_layer.linear.weight.div_(spread)
        model.diffusion_model.final_layer.linear.bias.div_(spread)
    return comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)


FLUX2_HIDDEN = 256  # two heads: Flux.2's rotary width is fixed by its config (4 axes of 32 = 128 per head)
FLUX2_CHANNELS = 128  # the latent's: the Flux.2 VAE's 32 channels, patchified 2 x 2 by the latent format


def has_flux2(comfyui_path: str | None = COMFYUI_PATH) -> bool:
    """Whether that ComfyUI has Flux.2 (0.9 on), read from its source without importing it (for collection)."""
    if not comfyui_path:
        return False
    return "class Flux2(" in (Path(comfyui_path) / "comfy" / "supported_models.py").read_text()


def tiny_flux2_config(guidance_embed: bool = True) -> dict:
    """A Flux.2-shaped transformer config, as this ComfyUI's own model_detection derives it from a checkpoint's
    keys (2 double and 2 single blocks, hidden 256, context width 32): Flux.2's axes, theta, modulation,
    biases, reference index and text positions all come from there, not from this file."""
    import comfy.model_detection

    keys = {
        "img_in.weight": torch.empty(FLUX2_HIDDEN, FLUX2_CHANNELS),
        "txt_in.weight": torch.empty(FLUX2_HIDDEN, FLUX_WIDTH),
        "double_stream_modulation_img.lin.weight": torch.empty(1),
        **{f"double_blocks.{i}.img_attn.norm.key_norm.scale": torch.empty(1) for i in range(2)},
        **{f"single_blocks.{i}.norm.key_norm.scale": torch.empty(1) for i in range(2)},
    }
    if guidance_embed:  # Flux.2 dev is guidance-distilled; klein is not
        keys["guidance_in.in_layer.weight"] = torch.empty(1)
    config = comfy.model_detection.detect_unet_config(keys, "")
    assert config["image_model"] == "flux2", config
    return config


def tiny_flux2(ns, seed: int = 0, guidance_embed: bool = True):
    """A real ComfyUI Flux.2 MODEL (model_base.Flux2 in a ModelPatcher) with random weights, velocity std ~1."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models

    config = tiny_flux2_config(guidance_embed)

    class TinyFlux2(comfy.supported_models.Flux2):
        unet_config = config

    model = comfy.model_base.Flux2(TinyFlux2(config), device=CPU)
    ns.core.tiny.reinitialise(model.diffusion_model, seed)
    x = torch.randn(1, FLUX2_CHANNELS, 8, 8, generator=torch.Generator().manual_seed(seed))
    context, extras = flux2_conditioning(seed)[0]
    with torch.no_grad():
        sigma = torch.tensor([0.5])
        padded = model.extra_conds(cross_attn=context, pooled_output=None)["c_crossattn"].cond  # 512 text tokens
        denoised = model.apply_model(x, sigma, c_crossattn=padded, guidance=torch.ones(1))
        spread = ((x - denoised) / sigma).std()  # scale the last layer so that the velocity has std ~1
        model.diffusion_model.final_layer.linear.weight.div_(spread)
    return comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)


def flux2_conditioning(seed: int, guidance: float | None = 4.0, tokens: int = 6):
    """CONDITIONING as Flux.2's text encoder and FluxGuidance make it: a context, no pooled vector."""
    generator = torch.Generator().manual_seed(seed + 300)
    context = torch.randn(1, tokens, FLUX_WIDTH, generator=generator)
    extras = {"pooled_output": None}
    if guidance is not None:
        extras["guidance"] = guidance
    return [[context, extras]]


def flux_conditioning(seed: int, guidance: float | None = 3.5, tokens: int = 6):
    """CONDITIONING as a Flux text encoder and FluxGuidance make it: T5-like context, pooled CLIP, guidance."""
    generator = torch.Generator().manual_seed(seed + 200)
    context = torch.randn(1, tokens, FLUX_WIDTH, generator=generator)
    extras = {"pooled_output": torch.randn(1, FLUX_WIDTH, generator=generator)}
    if guidance is not None:
        extras["guidance"] = guidance
    return [[context, extras]]


QWEN_HEADS = 2  # Qwen-Image's rotary width fixes the head width (axes 16 + 56 + 56 = 128); 2 heads: hidden 256
QWEN_CHANNELS = 16  # Wan 2.1's latent channels (latent_formats.Wan21), with a frame axis


def tiny_qwen_image(ns, seed: int = 0, blocks: int = 3):
    """A real ComfyUI Qwen-Image MODEL (model_base.QwenImage in a ModelPatcher) with random weights, velocity std
    ~1: this ComfyUI's own model_detection reads the checkpoint's keys (image model, input width, block count);
    the widths are made tiny (2 heads of 128, text width 32)."""
    import comfy.model_base
    import comfy.model_detection
    import comfy.model_patcher
    import comfy.supported_models

    keys = {
        "txt_norm.weight": torch.empty(FLUX_WIDTH),
        "img_in.weight": torch.empty(QWEN_HEADS * 128, QWEN_CHANNELS * 4),
        **{f"transformer_blocks.{index}.attn.to_q.weight": torch.empty(1) for index in range(blocks)},
    }
    config = comfy.model_detection.detect_unet_config(keys, "")
    assert config == {"image_model": "qwen_image", "in_channels": QWEN_CHANNELS * 4, "num_layers": blocks}, config
    config.update(num_attention_heads=QWEN_HEADS, attention_head_dim=128, joint_attention_dim=FLUX_WIDTH)

    class TinyQwenImage(comfy.supported_models.QwenImage):
        unet_config = config

    model = comfy.model_base.QwenImage(TinyQwenImage(config), device=CPU)
    ns.core.tiny.reinitialise(model.diffusion_model, seed)
    x = torch.randn(1, QWEN_CHANNELS, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    context = qwen_image_conditioning(seed)[0][0]
    with torch.no_grad():
        sigma = torch.tensor([0.5])
        denoised = model.apply_model(x, sigma, c_crossattn=context)
        spread = ((x - denoised) / sigma).std()  # scale the last layer so that the velocity has std ~1
        model.diffusion_model.proj_out.weight.div_(spread)
        model.diffusion_model.proj_out.bias.div_(spread)
    return comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)


def qwen_image_conditioning(seed: int, tokens: int = 6):
    """CONDITIONING as Qwen-Image's text encoder makes it: a context, no pooled vector."""
    generator = torch.Generator().manual_seed(seed + 400)
    return [[torch.randn(1, tokens, FLUX_WIDTH, generator=generator), {"pooled_output": None}]]


Z_IMAGE_HIDDEN = 256  # two heads: Z-Image's rotary width fixes the head width (axes 32 + 48 + 48 = 128)


def has_z_image(comfyui_path: str | None = COMFYUI_PATH) -> bool:
    """Whether that ComfyUI has Z-Image (0.9 on), read from its source without importing it (for collection)."""
    if not comfyui_path:
        return False
    return "class ZImage(" in (Path(comfyui_path) / "comfy" / "supported_models.py").read_text()


def tiny_z_image(ns, seed: int = 0, layers: int = 3):
    """A real ComfyUI Z-Image MODEL (model_base.Lumina2 running NextDiT, in a ModelPatcher) with random weights,
    velocity std ~1: this ComfyUI's own model_detection reads a Z-Image checkpoint's keys (its axes, theta,
    modulation, time scale, token padding), then the widths are made tiny (2 heads of 128, caption width 32)."""
    import comfy.model_base
    import comfy.model_detection
    import comfy.model_patcher
    import comfy.supported_models

    keys = {
        "cap_embedder.1.weight": torch.empty(3840, FLUX_WIDTH),  # Z-Image's width is how detection knows it
        "cap_pad_token": torch.empty(1),
        **{f"layers.{index}.attention.qkv.weight": torch.empty(1) for index in range(layers)},
    }
    config = comfy.model_detection.detect_unet_config(keys, "")
    assert config["image_model"] == "lumina2" and config["z_image_modulation"], config
    assert config["pad_tokens_multiple"] == 32 and config["rope_theta"] == 256.0, config
    config.update(dim=Z_IMAGE_HIDDEN, n_heads=2, n_kv_heads=2)

    class TinyZImage(comfy.supported_models.ZImage):
        unet_config = config

    model = TinyZImage(config).get_model({}, device=CPU)
    ns.core.tiny.reinitialise(model.diffusion_model, seed)
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(seed))
    context = z_image_conditioning(seed)[0][0]
    with torch.no_grad():
        sigma = torch.tensor([0.5])
        denoised = model.apply_model(x, sigma, c_crossattn=context, num_tokens=context.shape[1])
        spread = ((x - denoised) / sigma).std()  # scale the last layer so that the velocity has std ~1
        model.diffusion_model.final_layer.linear.weight.div_(spread)
        model.diffusion_model.final_layer.linear.bias.div_(spread)
    return comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)


def z_image_conditioning(seed: int, tokens: int = 6):
    """CONDITIONING as Z-Image's text encoder makes it: a context, no pooled vector."""
    generator = torch.Generator().manual_seed(seed + 500)
    return [[torch.randn(1, tokens, FLUX_WIDTH, generator=generator), {"pooled_output": None}]]
