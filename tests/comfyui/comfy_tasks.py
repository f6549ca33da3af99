"""ComfyUI work the tests run in a subprocess, with ComfyUI imported there (it parses its own state at import).

python comfy_tasks.py checkpoint sd15|sdxl FILE   # write a random-weight checkpoint
python comfy_tasks.py controlnet FILE              # write a random-weight SD 1.5 ControlNet
python comfy_tasks.py validate INPUT_DIR OUTPUT_DIR CKPT_DIR API_FILE...  # execution.validate_prompt
python comfy_tasks.py stood-in-workflows INPUT_DIR OUTPUT_DIR MODELS_DIR API_FILE...  # run them, loaders stood in
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# imported before ComfyUI's folder goes first on sys.path (its tests/ package would shadow this repository's)
from workflow_standins import VAE_CONFIG, random_state, stand_in_loaders

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
    state = random_state(unet, "model.diffusion_model.", 0)
    del unet
    state.update(random_state(vae, "first_stage_model.", 1))
    text_state = {}
    for seed, (prefix, encoder) in enumerate(text.items(), start=2):
        text_state.update(random_state(encoder, prefix, seed))
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
    state = {"control_model." + key: value for key, value in random_state(control, "", 5).items()}
    if path.endswith(".safetensors"):  # ComfyUI reads a file by its extension
        import safetensors.torch

        safetensors.torch.save_file({key: value.contiguous() for key, value in state.items()}, path)
    else:
        torch.save(state, path)


def _executor_cache_arguments(executor_class) -> dict:
    """The cache arguments main.py gives this release's PromptExecutor: 0.9.2 reads ``cache_args["ram"]`` when it
    runs (``{"lru", "ram"}`` from the command line); 0.3.64 takes none of them."""
    import inspect

    from comfy.cli_args import args

    if "cache_args" not in inspect.signature(executor_class).parameters:
        return {}
    return {"cache_args": {"lru": args.cache_lru, "ram": args.cache_ram}}


async def _run_stood_in_workflows(input_dir: str, output_dir: str, models: str, files: list[str]) -> dict:
    """Validate and execute API prompts with ComfyUI's own PromptExecutor, one after another in this process (one
    import of ComfyUI for all), their model loaders stood in by tiny random models (workflow_standins.py)."""
    await _load_nodes(input_dir, output_dir, models)
    sys.path.insert(0, str(REPO))
    stand_in_loaders()
    import execution

    class Server:  # what PromptExecutor asks of ComfyUI's PromptServer when no client listens
        client_id = None
        last_node_id = None
        last_prompt_id = None

        def send_sync(self, event, data, sid=None):
            pass

    results = {}
    for file in files:
        started, name = time.monotonic(), Path(file).stem
        prompt = json.loads(Path(file).read_text())
        ok, error, outputs, node_errors = await execution.validate_prompt(name, prompt, None)
        if not ok:
            results[name] = {"ok": False, "error": error, "node_errors": node_errors}
            continue
        # an executor per workflow: nothing cached from the one before
        executor = execution.PromptExecutor(Server(), **_executor_cache_arguments(execution.PromptExecutor))
        await executor.execute_async(prompt, name, {}, outputs)
        failures = [data for event, data in executor.status_messages if event == "execution_error"]
        results[name] = {
            "ok": executor.success and not failures,
            "failures": failures,
            "outputs": executor.history_result["outputs"],
            "seconds": round(time.monotonic() - started, 1),
        }
    return results


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "checkpoint":
        make_checkpoint(sys.argv[2], sys.argv[3])
    elif command == "controlnet":
        make_controlnet(sys.argv[2])
    elif command == "validate":
        print(json.dumps(asyncio.run(_validate(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])), default=str))
    elif command == "stood-in-workflows":
        print(json.dumps(asyncio.run(_run_stood_in_workflows(*sys.argv[2:5], sys.argv[5:])), default=str))
    else:
        raise SystemExit(f"unknown command {command}")
