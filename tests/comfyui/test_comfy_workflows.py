"""Integration tier: the shipped workflows in a real ComfyUI (COMFYUI_PATH), on random-weight checkpoints.

- the node schema snapshot (workflows/schemas/node_schemas.json) equals what ComfyUI + this pack report;
- every API twin, exactly as shipped, passes ComfyUI's own execution.validate_prompt;
- every API twin, shrunk (64 px, 3 schedule steps, start step 1), is POSTed to a real ComfyUI server on
  loopback and produces images, on an SD-1.5-architecture checkpoint with random weights made here.
  The SDXL workflow runs the same way behind @pytest.mark.slow (its random checkpoint is ~7 GB).

The server and the SD 1.5 checkpoint are the session's (conftest.py); ComfyUI work that needs a fresh import
of ComfyUI runs in a subprocess (comfy_tasks.py).
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path

import pytest
from comfy_tasks import run_task
from comfyui_support import load_snapshot_module
from conftest import SAMPLE_INPUTS, SD15_CHECKPOINT

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
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


def test_templates_are_listed_and_the_snapshot_is_current(server):
    snapshot_module = load_snapshot_module()
    templates = server.get("/workflow_templates")
    assert sorted(templates.get(snapshot_module.PACK_LINK_NAME, [])) == NAMES  # the template browser's list
    reported = snapshot_module.snapshot(server.get("/object_info"))
    committed = json.loads(snapshot_module.SNAPSHOT.read_text())
    assert reported == committed, "stale snapshot: run scripts/snapshot_node_schemas.py"


def test_shipped_api_twins_pass_validate_prompt(checkpoints, tmp_path):
    """Each twin exactly as shipped (512 px, 100 steps) through ComfyUI's own execution.validate_prompt."""
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    for name, sample in SAMPLE_INPUTS.items():
        shutil.copy(REPO / "xattn_core" / "samples" / sample, input_dir / name)
    models = tmp_path / "checkpoints"  # validation only needs the checkpoint names to exist
    models.mkdir()
    (models / SD15_CHECKPOINT).symlink_to(checkpoints / SD15_CHECKPOINT)
    (models / SDXL_CHECKPOINT).write_bytes(b"")
    output_dir = tmp_path / "output"  # Load Inversion only checks that the named files exist
    (output_dir / "xattn").mkdir(parents=True)
    for file in ("structure_00001_.safetensors", "appearances_00001_.safetensors"):
        (output_dir / "xattn" / file).write_bytes(b"")
    files = [str(WORKFLOWS / "api" / f"{name}.json") for name in NAMES]
    out = run_task("validate", str(input_dir), str(output_dir), str(models), *files, timeout=300)
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
        previews = [
            item
            for output in history["outputs"].values()
            for item in output.get("images", [])
            if item["type"] == "temp"
        ]
        assert len(previews) == 2  # the two reconstructions
    print(f"{name}: {time.monotonic() - started:.1f} s")


@pytest.mark.slow
def test_sdxl_workflow_runs(server, checkpoints):
    """Workflow 3 on a random SDXL-architecture checkpoint (~7 GB file, ~14 GB RAM on CPU): slow tier only."""
    target = checkpoints / SDXL_CHECKPOINT
    if not target.exists() or target.stat().st_size == 0:
        run_task("checkpoint", "sdxl", str(target), timeout=1800)
    history = queue(server, shrink(api_twin("03_sdxl_transfer")), timeout=1800)
    images = saved_images(server, history)
    assert len(images) == 1 and images[0].size == (SIZE, SIZE)
