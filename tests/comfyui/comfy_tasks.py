"""ComfyUI work the tests run in a subprocess, with ComfyUI imported there (it parses its own state at import).

python comfy_tasks.py checkpoint sd15|sdxl FILE   # write a random-weight checkpoint
python comfy_tasks.py controlnet FILE              # write a random-weight SD 1.5 ControlNet
python comfy_tasks.py validate INPUT_DIR OUTPUT_DIR CKPT_DIR API_FILE...  # execution.validate_prompt
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

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

    vae_config = {
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
        vae = AutoencoderKL(ddconfig=vae_config, embed_dim=4)
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


async def _validate(input_dir: str, output_dir: str, models: str, files: list[str]) -> dict:
    _import_comfy()
    import execution
    import folder_paths

    import nodes

    folder_paths.set_input_directory(input_dir)
    folder_paths.set_output_directory(output_dir)
    for kind in ("checkpoints", "controlnet"):
        folder_paths.add_model_folder_path(kind, str(Path(models) / kind))
    await nodes.init_extra_nodes(init_custom_nodes=False)
    link = Path(input_dir).parent / "validate_nodes" / "comfyui-xattn"
    link.parent.mkdir(exist_ok=True)
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    assert await nodes.load_custom_node(str(link), ignore=set(), module_parent="custom_nodes")
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


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "checkpoint":
        make_checkpoint(sys.argv[2], sys.argv[3])
    elif command == "controlnet":
        make_controlnet(sys.argv[2])
    elif command == "validate":
        print(json.dumps(asyncio.run(_validate(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])), default=str))
    else:
        raise SystemExit(f"unknown command {command}")
