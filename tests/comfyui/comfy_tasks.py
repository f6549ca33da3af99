"""ComfyUI work the tests run in a subprocess, with ComfyUI imported there (it parses its own state at import).

python comfy_tasks.py checkpoint sd15|sdxl FILE   # write a random-weight checkpoint
python comfy_tasks.py controlnet FILE              # write a random-weight SD 1.5 ControlNet
python comfy_tasks.py validate INPUT_DIR OUTPUT_DIR CKPT_DIR API_FILE...  # execution.validate_prompt
python comfy_tasks.py flux-workflow INPUT_DIR OUTPUT_DIR MODELS_DIR API_FILE  # run it on a tiny random Flux
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

# imported before ComfyUI's folder goes first on sys.path (its tests/ package would shadow this repository's)
from comfyui_support import flux_conditioning, tiny_flux

REPO = Path(__file__).resolve().parents[2]
COMFYUI_PATH = os.environ.get("COMFYUI_PATH")


def run_task(*args: str, timeout: float = 900) -> str:
    """Run this file with ``args`` in ComfyUI's folder; its stdout (the test fails on a non-zero exit)."""
    result = subprocess.run(
        [sys.executable, __file__, *args], cwd=COMFYUI_PATH, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _import_comfy():
    sys.path.insert(0, COMFYUI_PATH or os.getcwd())
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401  (after args.cpu)


def _random_state(module, prefix: str, seed: int) -> dict:
    import torch

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        if not value.dtype.is_floating_point:
            continue
        tensor = torch.randn(value.shape, generator=generator) * 0.02
        gain = key.endswith(".weight") and any(part in key for part in (".norm", "norm.weight", "_norm", "ln_"))
        if gain:
            tensor += 1.0  # normalisation gains near 1 keep activations finite
        state[prefix + key] = tensor.to(torch.float16)
    return state


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


def make_checkpoint(family: str, path: str) -> None:
    """A random-weight checkpoint that CheckpointLoaderSimple detects as SD 1.5 or SDXL."""
    _import_comfy()
    import comfy.model_base
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.supported_models
    import safetensors.torch
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL

    common = {
        "use_checkpoint": False,
        "image_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 320,
        "use_spatial_transformer": True,
        "legacy": False,
        "dtype": torch.float16,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }
    with torch.device("meta"):
        if family == "sd15":
            unet_config = {
                **common,
                "num_res_blocks": [2, 2, 2, 2],
                "channel_mult": [1, 2, 4, 4],
                "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
                "transformer_depth_middle": 1,
                "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                "context_dim": 768,
                "num_heads": 8,
                "use_linear_in_transformer": False,
                "adm_in_channels": None,
            }
            unet = comfy.model_base.BaseModel(comfy.supported_models.SD15(unet_config)).diffusion_model
            text = {"cond_stage_model.": comfy.sd1_clip.SDClipModel(device="meta")}
        else:
            unet_config = {
                **common,
                "num_res_blocks": [2, 2, 2],
                "channel_mult": [1, 2, 4],
                "transformer_depth": [0, 0, 2, 2, 10, 10],
                "transformer_depth_middle": 10,
                "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
                "context_dim": 2048,
                "num_head_channels": 64,
                "num_heads": -1,
                "use_linear_in_transformer": True,
                "adm_in_channels": 2816,
                "num_classes": "sequential",
            }
            model_config = comfy.supported_models.SDXL(unet_config)
            unet = comfy.model_base.SDXL(model_config).diffusion_model
            text = {
                "clip_l.": comfy.sd1_clip.SDClipModel(device="meta", layer="hidden", layer_idx=-2),
                "clip_g.": comfy.sdxl_clip.SDXLClipG(device="meta"),
            }
        vae = AutoencoderKL(ddconfig=VAE_CONFIG, embed_dim=4)
    state = _random_state(unet, "model.diffusion_model.", 0)
    del unet
    state.update(_random_state(vae, "first_stage_model.", 1))
    text_state = {}
    for seed, (prefix, encoder) in enumerate(text.items(), start=2):
        text_state.update(_random_state(encoder, prefix, seed))
    if family != "sd15":  # ComfyUI's own conversion to the checkpoint layout (OpenCLIP keys for CLIP-G)
        text_state = model_config.process_clip_state_dict_for_saving(text_state)
    state.update(text_state)
    safetensors.torch.save_file(state, path)


MODEL_FOLDERS = ("checkpoints", "controlnet", "diffusion_models", "text_encoders", "vae")


async def _load_nodes(input_dir: str, output_dir: str, models: str) -> None:
    """ComfyUI's nodes and this pack, with these input, output and model folders."""
    _import_comfy()
    # ComfyUI's utils package first, as main.py does: nodes.py puts comfy/ first on sys.path, and comfy/utils.py
    # would then shadow the package that the server module (which the pack's nodes reach) imports
    import folder_paths
    import utils.install_util  # noqa: F401

    import nodes

    folder_paths.set_input_directory(input_dir)
    folder_paths.set_output_directory(output_dir)
    for kind in MODEL_FOLDERS:
        folder_paths.add_model_folder_path(kind, str(Path(models) / kind))
    await nodes.init_extra_nodes(init_custom_nodes=False)
    link = Path(input_dir).parent / "validate_nodes" / "comfyui-xattn"
    link.parent.mkdir(exist_ok=True)
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    assert await nodes.load_custom_node(str(link), ignore=set(), module_parent="custom_nodes")


async def _validate(input_dir: str, output_dir: str, models: str, files: list[str]) -> dict:
    await _load_nodes(input_dir, output_dir, models)
    import execution

    results = {}
    for file in files:
        ok, error, outputs, node_errors = await execution.validate_prompt(
            Path(file).stem, json.loads(Path(file).read_text()), None
        )
        results[Path(file).stem] = {"ok": ok, "error": error, "outputs": sorted(outputs), "node_errors": node_errors}
    return results


def make_controlnet(path: str) -> None:
    """A random-weight SD 1.5 ControlNet (ComfyUI's own ControlNet class, full size) that ControlNetLoader reads."""
    _import_comfy()
    import comfy.cldm.cldm
    import torch

    with torch.device("meta"):
        control = comfy.cldm.cldm.ControlNet(
            image_size=32,
            in_channels=4,
            model_channels=320,
            hint_channels=3,
            num_res_blocks=[2, 2, 2, 2],
            channel_mult=[1, 2, 4, 4],
            transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
            transformer_depth_middle=1,
            context_dim=768,
            num_heads=8,
            use_spatial_transformer=True,
            legacy=False,
            use_linear_in_transformer=False,
            dtype=torch.float16,
        )
    state = {"control_model." + key: value for key, value in _random_state(control, "", 5).items()}
    if path.endswith(".safetensors"):  # ComfyUI reads a file by its extension
        import safetensors.torch

        safetensors.torch.save_file({key: value.contiguous() for key, value in state.items()}, path)
    else:
        torch.save(state, path)


class _TinyFluxText:
    """Stands in for Flux's CLIP-L + T5-XXL (a 9 GB file): each text's CONDITIONING, as the encoders shape it
    (context and pooled output), with values drawn from the text."""

    def tokenize(self, text: str) -> str:
        return text

    def encode_from_tokens_scheduled(self, text: str) -> list:
        import zlib

        return flux_conditioning(zlib.crc32(text.encode()), guidance=None)


def _flux_ae_state() -> dict:
    """Random weights of Flux's autoencoder (ae.safetensors: 16 latent channels, no quant convs)."""
    import torch
    from comfy.ldm.modules.diffusionmodules.model import Decoder, Encoder

    config = {**VAE_CONFIG, "z_channels": 16}
    with torch.device("meta"):
        encoder, decoder = Encoder(**config), Decoder(**config)
    return {**_random_state(encoder, "encoder.", 11), **_random_state(decoder, "decoder.", 12)}


def _stand_in_flux_loaders() -> None:
    """Replace ComfyUI's UNETLoader, DualCLIPLoader and VAELoader, in this process only, by subclasses with the
    same inputs that return a tiny random Flux MODEL, the text stand-in and a random Flux autoencoder (a real
    comfy.sd.VAE). The files Flux.1 ships (12-24 GB each) cannot be made here; every other node runs as shipped."""
    from types import SimpleNamespace

    import comfy.sd

    import nodes
    import xattn_core.tiny

    class FluxModel(nodes.UNETLoader):
        def load_unet(self, unet_name, weight_dtype):
            return (tiny_flux(SimpleNamespace(core=SimpleNamespace(tiny=xattn_core.tiny)), seed=0),)

    class FluxText(nodes.DualCLIPLoader):
        def load_clip(self, clip_name1, clip_name2, type, device="default"):
            assert type == "flux", type
            return (_TinyFluxText(),)

    class FluxAutoencoder(nodes.VAELoader):
        def load_vae(self, vae_name):
            return (comfy.sd.VAE(sd=_flux_ae_state()),)

    for name, stand_in in (("UNETLoader", FluxModel), ("DualCLIPLoader", FluxText), ("VAELoader", FluxAutoencoder)):
        nodes.NODE_CLASS_MAPPINGS[name] = stand_in


def _executor_cache_arguments(executor_class) -> dict:
    """The cache arguments main.py gives this release's PromptExecutor: 0.9.2 reads ``cache_args["ram"]`` when it
    runs (``{"lru", "ram"}`` from the command line); 0.3.64 takes none of them."""
    import inspect

    from comfy.cli_args import args

    if "cache_args" not in inspect.signature(executor_class).parameters:
        return {}
    return {"cache_args": {"lru": args.cache_lru, "ram": args.cache_ram}}


async def _run_flux_workflow(input_dir: str, output_dir: str, models: str, file: str) -> dict:
    """Validate and execute one API prompt with ComfyUI's own PromptExecutor, the Flux loaders stood in."""
    await _load_nodes(input_dir, output_dir, models)
    sys.path.insert(0, str(REPO))
    _stand_in_flux_loaders()
    import execution

    prompt = json.loads(Path(file).read_text())
    ok, error, outputs, node_errors = await execution.validate_prompt("flux", prompt, None)
    if not ok:
        return {"ok": False, "error": error, "node_errors": node_errors}

    class Server:  # what PromptExecutor asks of ComfyUI's PromptServer when no client listens
        client_id = None
        last_node_id = None
        last_prompt_id = None

        def send_sync(self, event, data, sid=None):
            pass

    executor = execution.PromptExecutor(Server(), **_executor_cache_arguments(execution.PromptExecutor))
    await executor.execute_async(prompt, "flux", {}, outputs)
    failures = [data for event, data in executor.status_messages if event == "execution_error"]
    outputs = executor.history_result["outputs"]
    return {"ok": executor.success and not failures, "failures": failures, "outputs": outputs}


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "checkpoint":
        make_checkpoint(sys.argv[2], sys.argv[3])
    elif command == "controlnet":
        make_controlnet(sys.argv[2])
    elif command == "validate":
        print(json.dumps(asyncio.run(_validate(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])), default=str))
    elif command == "flux-workflow":
        print(json.dumps(asyncio.run(_run_flux_workflow(*sys.argv[2:6])), default=str))
    else:
        raise SystemExit(f"unknown command {command}")
