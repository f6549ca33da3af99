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

from scripts.workflow_files import CONTROLNET_MODEL, SAVED_INVERSIONS, SDXL_CHECKPOINT

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
NAMES = sorted(path.stem for path in WORKFLOWS.glob("*.json"))
SIZE = 64  # pixels; the latent is 8 x 8
EXPECTED_IMAGES = {  # SaveImage output: (number of images, width) per workflow after shrink()
    "01_basic_sd15_transfer": (1, SIZE),
    "02_masked_transfer": (1, SIZE),
    "03_sdxl_transfer": (1, SIZE),
    "04_colour_variants": (2, SIZE),
    "05_transfer_then_upscale": (1, SIZE * 3 // 2),
    "06_from_saved_inversions": (2, SIZE),  # the saved structure x the two saved appearances of 04
    "07_transfer_with_controlnet": (1, SIZE),
    "08_local_transfer": (1, SIZE),
}
PREVIEWS = {"01_basic_sd15_transfer": 4, "02_masked_transfer": 2}  # reconstructions and masks shown in the UI
SLOW = {"03_sdxl_transfer", "07_transfer_with_controlnet"}  # full-size random SDXL / ControlNet files


def api_twin(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


def shrink(prompt: dict) -> dict:
    """The same graph at CI size: 64 px images (and masks), 3-step schedules from step 1 (2 steps run), 1-step
    second pass."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "ImageScale":
            inputs.update(width=SIZE, height=SIZE)
        elif node["class_type"] in ("SolidMask", "MaskComposite"):  # drawn for 512 px images
            inputs.update({key: inputs[key] * SIZE // 512 for key in ("width", "height", "x", "y") if key in inputs})
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


def test_thumbnails_and_help_pages_are_served_where_the_front_end_asks(server):
    pack = load_snapshot_module().PACK_LINK_NAME
    for name in NAMES:  # the template browser asks /api/workflow_templates/<pack>/<workflow>.jpg
        status, kind, body = server.fetch(f"/api/workflow_templates/{pack}/{name}.jpg")
        assert (status, kind) == (200, "image/jpeg") and body == (WORKFLOWS / f"{name}.jpg").read_bytes(), name
    help_pages = sorted((REPO / "web" / "docs").glob("*.md"))
    assert len(help_pages) == 8
    for page in help_pages:  # the node library asks /extensions/<pack>/docs/<node id>.md
        status, _, body = server.fetch(f"/extensions/{pack}/docs/{page.name}")
        assert status == 200 and body == page.read_bytes(), page.name


def test_shipped_api_twins_pass_validate_prompt(models, tmp_path):
    """Each twin exactly as shipped (512 px, 100 steps) through ComfyUI's own execution.validate_prompt."""
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    for name, sample in SAMPLE_INPUTS.items():
        shutil.copy(REPO / "xattn_core" / "samples" / sample, input_dir / name)
    listed = tmp_path / "models"  # validation only needs the model names to exist
    (listed / "checkpoints").mkdir(parents=True)
    (listed / "controlnet").mkdir()
    (listed / "checkpoints" / SD15_CHECKPOINT).symlink_to(models / "checkpoints" / SD15_CHECKPOINT)
    (listed / "checkpoints" / SDXL_CHECKPOINT).write_bytes(b"")
    (listed / "controlnet" / CONTROLNET_MODEL).write_bytes(b"")
    output_dir = tmp_path / "output"  # Load Inversion only checks that the named files exist
    (output_dir / "xattn").mkdir(parents=True)
    for name in SAVED_INVERSIONS:
        (output_dir / name).write_bytes(b"")
    files = [str(WORKFLOWS / "api" / f"{name}.json") for name in NAMES]
    out = run_task("validate", str(input_dir), str(output_dir), str(listed), *files, timeout=300)
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


@pytest.mark.parametrize("name", [n for n in NAMES if n not in SLOW])
def test_workflow_runs(server, name):
    import numpy as np

    if name == "06_from_saved_inversions":
        run_workflow(server, "04_colour_variants")  # writes the inversions workflow 6 loads
        for saved in SAVED_INVERSIONS:
            assert (server.output_dir / saved).is_file()
    started = time.monotonic()
    history = run_workflow(server, name)
    count, width = EXPECTED_IMAGES[name]
    images = saved_images(server, history)
    assert len(images) == count, history["outputs"]
    for image in images:
        assert image.size == (width, width)
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        assert pixels.std() > 0.5  # not a constant (black or NaN-grey) image
    previews = [
        item for output in history["outputs"].values() for item in output.get("images", []) if item["type"] == "temp"
    ]
    assert len(previews) == PREVIEWS.get(name, len(previews))
    print(f"{name}: {time.monotonic() - started:.1f} s")


@pytest.mark.slow
def test_controlnet_workflow_runs(server, models):
    """Workflow 7 with a random full-size SD 1.5 ControlNet (~700 MB file): slow tier only."""
    target = models / "controlnet" / CONTROLNET_MODEL
    if not target.exists():
        run_task("controlnet", str(target), timeout=1800)
    history = queue(server, shrink(api_twin("07_transfer_with_controlnet")), timeout=1800)
    images = saved_images(server, history)
    assert len(images) == 1 and images[0].size == (SIZE, SIZE)


@pytest.mark.slow
def test_sdxl_workflow_runs(server, models):
    """Workflow 3 on a random SDXL-architecture checkpoint (~7 GB file, ~14 GB RAM on CPU): slow tier only."""
    target = models / "checkpoints" / SDXL_CHECKPOINT
    if not target.exists() or target.stat().st_size == 0:
        run_task("checkpoint", "sdxl", str(target), timeout=1800)
    history = queue(server, shrink(api_twin("03_sdxl_transfer")), timeout=1800)
    images = saved_images(server, history)
    assert len(images) == 1 and images[0].size == (SIZE, SIZE)


BAD_VALUES = [  # (node, {input: value}, the text of the one error ComfyUI must report)
    ("XAttnInvertImage", {"cfg": -1.0}, "Value -1.0 smaller than min of 0.0"),
    ("XAttnInvertImage", {"start_step": -1}, "start_step must be in 0..999, got -1"),
    ("XAttnInvertImage", {"seed": -5}, "Value -5 smaller than min of 0"),
    ("XAttnInvertImage", {"steps": 1}, "steps must be in 2..1000, got 1"),
    ("XAttnInvertImage", {"steps": 3, "start_step": 3}, "start_step (3) must be below steps (3)"),
    ("XAttnInvertImage", {"freeu": "bogus"}, "freeu: 'bogus' not in"),
    ("XAttnInvertImage", {"fast_mode": "bogus"}, "fast_mode: 'bogus' not in"),
    ("XAttnCrossImageSampler", {"freeu": "bogus"}, "freeu: 'bogus' not in"),
    ("XAttnCrossImageSampler", {"adain_masks": "bogus"}, "adain_masks: 'bogus' not in"),
]


@pytest.mark.parametrize("node_type, values, expected", BAD_VALUES, ids=lambda value: str(value)[:30])
def test_validation_reports_each_bad_value_once_and_runs_nothing(server, node_type, values, expected):
    prompt = shrink(api_twin("01_basic_sd15_transfer"))
    node_id = next(key for key, node in prompt.items() if node["class_type"] == node_type)
    prompt[node_id]["inputs"].update(values)
    before = server.get("/history")
    code, response = server.post("/prompt", {"prompt": prompt, "client_id": "xattn-tests"})
    assert code == 400, response
    reported = [
        f"{error['message']}: {error['details']}"
        for entry in response["node_errors"].values()
        for error in entry["errors"]
    ]
    assert sum(expected in text for text in reported) == 1, reported
    assert list(response["node_errors"]) == [node_id], reported  # pinned to the node that has the bad value
    assert server.get("/history") == before  # nothing was queued
