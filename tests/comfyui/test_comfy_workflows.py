"""Integration tier: the shipped workflows in a real ComfyUI (COMFYUI_PATH), on random-weight checkpoints.

- the node schema snapshot (workflows/schemas/node_schemas.json) equals what ComfyUI + this pack report;
- every API twin, exactly as shipped, passes ComfyUI's own execution.validate_prompt;
- every API twin, shrunk (64 px, 3 schedule steps, start step 1), is POSTed to a real ComfyUI server on
  loopback and produces images, on an SD-1.5-architecture checkpoint with random weights made here.
  The SDXL workflow runs the same way behind @pytest.mark.slow (its random checkpoint is ~7 GB).

This file is also a small command line run by the tests in subprocesses, with ComfyUI imported there:
    python test_comfy_workflows.py checkpoint sd15|sdxl FILE   # write a random-weight checkpoint
    python test_comfy_workflows.py validate INPUT_DIR OUTPUT_DIR CKPT_DIR API_FILE...  # validate_prompt
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from comfyui_support import COMFYUI_PATH, load_snapshot_module

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
SD15_NAME = "v1-5-pruned-emaonly.safetensors"
SDXL_NAME = "sd_xl_base_1.0.safetensors"
SAMPLES = {"xattn_structure.png": "structure.png", "xattn_appearance.png": "appearance.png"}
NAMES = sorted(path.stem for path in WORKFLOWS.glob("*.json"))
SIZE = 64  # pixels; the latent is 8 x 8
EXPECTED_IMAGES = {  # SaveImage output: (number of images, width) per workflow after shrink()
    "01_basic_sd15_transfer": (1, SIZE),
    "02_masked_transfer": (1, SIZE),
    "03_sdxl_transfer": (1, SIZE),
    "04_colour_variants": (2, SIZE),
    "05_transfer_then_upscale": (1, SIZE * 3 // 2),
    "06_from_saved_inversions": (2, SIZE),  # the saved structure x the two saved appearances of 04
}


def api_twin(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


def shrink(prompt: dict) -> dict:
    """The same graph at CI size: 64 px images, 3-step schedules from step 1 (2 steps run), 1-step second pass."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "ImageScale":
            inputs.update(width=SIZE, height=SIZE)
        elif node["class_type"] == "XAttnInvertImage":
            inputs.update(steps=3, start_step=1)
        elif node["class_type"] == "KSampler":
            inputs.update(steps=1)
    return prompt


# --- run in a subprocess, with ComfyUI imported ----------------------------------------------------------------


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

    vae_config = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                  "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    common = {"use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
              "use_spatial_transformer": True, "legacy": False, "dtype": torch.float16,
              "use_temporal_attention": False, "use_temporal_resblock": False}
    with torch.device("meta"):
        if family == "sd15":
            unet_config = {**common, "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
                           "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
                           "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                           "context_dim": 768, "num_heads": 8, "use_linear_in_transformer": False,
                           "adm_in_channels": None}
            unet = comfy.model_base.BaseModel(comfy.supported_models.SD15(unet_config)).diffusion_model
            text = {"cond_stage_model.": comfy.sd1_clip.SDClipModel(device="meta")}
        else:
            unet_config = {**common, "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
                           "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
                           "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "context_dim": 2048,
                           "num_head_channels": 64, "num_heads": -1, "use_linear_in_transformer": True,
                           "adm_in_channels": 2816, "num_classes": "sequential"}
            model_config = comfy.supported_models.SDXL(unet_config)
            unet = comfy.model_base.SDXL(model_config).diffusion_model
            text = {"clip_l.": comfy.sd1_clip.SDClipModel(device="meta", layer="hidden", layer_idx=-2),
                    "clip_g.": comfy.sdxl_clip.SDXLClipG(device="meta")}
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


async def _validate(input_dir: str, output_dir: str, checkpoints: str, files: list[str]) -> dict:
    _import_comfy()
    import execution
    import folder_paths

    import nodes

    folder_paths.set_input_directory(input_dir)
    folder_paths.set_output_directory(output_dir)
    folder_paths.add_model_folder_path("checkpoints", checkpoints)
    await nodes.init_extra_nodes(init_custom_nodes=False)
    link = Path(input_dir).parent / "validate_nodes" / "comfyui-xattn"
    link.parent.mkdir(exist_ok=True)
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    assert await nodes.load_custom_node(str(link), ignore=set(), module_parent="custom_nodes")
    results = {}
    for file in files:
        ok, error, outputs, node_errors = await execution.validate_prompt(Path(file).stem, json.loads(
            Path(file).read_text()), None)
        results[Path(file).stem] = {"ok": ok, "error": error, "outputs": sorted(outputs), "node_errors": node_errors}
    return results


# --- fixtures ---------------------------------------------------------------------------------------------------


def run_here(*args: str, timeout: float = 900) -> str:
    result = subprocess.run([sys.executable, __file__, *args], cwd=COMFYUI_PATH, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Path:
    """A folder with the SD 1.5 random checkpoint under the name the workflows use (made once per session)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    run_here("checkpoint", "sd15", str(folder / SD15_NAME))
    return folder


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    snapshot_module = load_snapshot_module()
    workdir = tmp_path_factory.mktemp("comfy")
    (workdir / "input").mkdir()
    for name, sample in SAMPLES.items():
        shutil.copy(REPO / "xattn_core" / "samples" / sample, workdir / "input" / name)
    with snapshot_module.comfy_server(COMFYUI_PATH, workdir, checkpoints=checkpoints) as running:
        yield running


def queue(server, prompt: dict, timeout: float = 300) -> dict:
    code, response = server.post("/prompt", {"prompt": prompt, "client_id": "xattn-tests"})
    assert code == 200, json.dumps(response, indent=1)[:3000]
    assert response.get("node_errors") == {}
    history = server.wait_for(response["prompt_id"], timeout)
    assert history["status"]["status_str"] == "success", json.dumps(history["status"], indent=1)[-3000:]
    return history


def saved_images(server, history: dict) -> list:
    from PIL import Image

    images = []
    for node_output in history["outputs"].values():
        for item in node_output.get("images", []):
            if item["type"] == "output":
                images.append(Image.open(server.output_dir / item["subfolder"] / item["filename"]))
    return images


_runs: dict[str, dict] = {}


def run_workflow(server, name: str) -> dict:
    if name not in _runs:
        _runs[name] = queue(server, shrink(api_twin(name)))
    return _runs[name]


# --- tests ------------------------------------------------------------------------------------------------------


def test_pack_loads_and_the_snapshot_is_current(server):
    snapshot_module = load_snapshot_module()
    log = server.log_text()
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line]
    assert not [line for line in failed if "xattn" in line.lower()], failed
    templates = server.get("/workflow_templates")
    assert sorted(templates.get(snapshot_module.PACK_LINK_NAME, [])) == NAMES  # the template browser's list
    reported = snapshot_module.snapshot(server.get("/object_info"))
    committed = json.loads(snapshot_module.SNAPSHOT.read_text())
    assert reported == committed, "stale snapshot: run scripts/snapshot_node_schemas.py"


def test_shipped_api_twins_pass_validate_prompt(checkpoints, tmp_path):
    """Each twin exactly as shipped (512 px, 100 steps) through ComfyUI's own execution.validate_prompt."""
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    for name, sample in SAMPLES.items():
        shutil.copy(REPO / "xattn_core" / "samples" / sample, input_dir / name)
    models = tmp_path / "checkpoints"  # validation only needs the checkpoint names to exist
    models.mkdir()
    (models / SD15_NAME).symlink_to(checkpoints / SD15_NAME)
    (models / SDXL_NAME).write_bytes(b"")
    output_dir = tmp_path / "output"  # Load Inversion only checks that the named files exist
    (output_dir / "xattn").mkdir(parents=True)
    for file in ("structure_00001_.safetensors", "appearances_00001_.safetensors"):
        (output_dir / "xattn" / file).write_bytes(b"")
    files = [str(WORKFLOWS / "api" / f"{name}.json") for name in NAMES]
    out = run_here("validate", str(input_dir), str(output_dir), str(models), *files, timeout=300)
    results = json.loads(out.strip().splitlines()[-1])
    for name in NAMES:
        result = results[name]
        assert result["ok"], json.dumps(result, indent=1)[:3000]
        assert result["outputs"]


def test_validation_refuses_a_latent_for_an_inversion(server):
    prompt = shrink(api_twin("01_basic_sd15_transfer"))
    sampler = next(k for k, v in prompt.items() if v["class_type"] == "XAttnCrossImageSampler")
    encode = next(k for k, v in prompt.items() if v["class_type"] == "VAEEncode")
    prompt[sampler]["inputs"]["appearance"] = [encode, 0]
    code, response = server.post("/prompt", {"prompt": prompt})
    assert code == 400
    errors = response["node_errors"][sampler]["errors"]
    assert any(error["type"] == "return_type_mismatch" for error in errors), errors


@pytest.mark.parametrize("name", [n for n in NAMES if n != "03_sdxl_transfer"])
def test_workflow_runs(server, name):
    import numpy as np

    if name == "06_from_saved_inversions":
        run_workflow(server, "04_colour_variants")  # writes the inversions workflow 6 loads
        for file in ("structure_00001_.safetensors", "appearances_00001_.safetensors"):
            assert (server.output_dir / "xattn" / file).is_file()
    started = time.monotonic()
    history = run_workflow(server, name)
    count, width = EXPECTED_IMAGES[name]
    images = saved_images(server, history)
    assert len(images) == count, history["outputs"]
    for image in images:
        assert image.size == (width, width)
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        assert pixels.std() > 0.5  # not a constant (black or NaN-grey) image
    if name == "01_basic_sd15_transfer":
        previews = [item for output in history["outputs"].values() for item in output.get("images", [])
                    if item["type"] == "temp"]
        assert len(previews) == 2  # the two reconstructions
    print(f"{name}: {time.monotonic() - started:.1f} s")


@pytest.mark.slow
def test_sdxl_workflow_runs(server, checkpoints):
    """Workflow 3 on a random SDXL-architecture checkpoint (~7 GB file, ~14 GB RAM on CPU): slow tier only."""
    target = checkpoints / SDXL_NAME
    if not target.exists() or target.stat().st_size == 0:
        run_here("checkpoint", "sdxl", str(target), timeout=1800)
    history = queue(server, shrink(api_twin("03_sdxl_transfer")), timeout=1800)
    images = saved_images(server, history)
    assert len(images) == 1 and images[0].size == (SIZE, SIZE)


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "checkpoint":
        make_checkpoint(sys.argv[2], sys.argv[3])
    elif command == "validate":
        print(json.dumps(asyncio.run(_validate(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])), default=str))
    else:
        raise SystemExit(f"unknown command {command}")
