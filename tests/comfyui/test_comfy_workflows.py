"""Integration tier: the shipped workflows in a real ComfyUI (COMFYUI_PATH), on random-weight checkpoints.

- the node schema snapshot of this ComfyUI release (workflows/schemas/node_schemas-VERSION.json) equals what
  ComfyUI + this pack report;
- every API twin, exactly as shipped, passes ComfyUI's own execution.validate_prompt;
- every API twin, shrunk (64 px, 3 schedule steps, start step 1), is POSTed to a real ComfyUI server on
  loopback and produces images, on an SD-1.5-architecture checkpoint with random weights made here.
  The SDXL workflow runs the same way behind @pytest.mark.slow (its random checkpoint is ~7 GB).
- the twins that load separate model files (Flux.1, Flux.2, Qwen-Image, Z-Image Turbo), shrunk, run through
  ComfyUI's own validation and PromptExecutor in one subprocess, their loaders stood in by subclasses that
  return a tiny random model of the family, a text stand-in and a random autoencoder of the family's
  architecture (their files, 6-35 GB each, cannot be made here; workflow_standins.py).

Only the workflows this ComfyUI release has the models for are checked (scripts/workflow_files.py
``workflows_for``: Flux.2 and Z-Image need 0.9.2); the others are not collected on an older release, so nothing
is skipped.

The server and the SD 1.5 checkpoint are the session's (conftest.py); ComfyUI work that needs a fresh import
of ComfyUI runs in a subprocess (comfy_tasks.py).
"""

from __future__ import annotations

import copy
import json
import time
import urllib.parse
from pathlib import Path

import pytest
from comfy_tasks import run_task
from comfyui_support import COMFYUI_PATH, load_snapshot_module
from conftest import SD15_CHECKPOINT

from scripts.workflow_files import (
    CONTROLNET_MODEL,
    MODEL_SOURCES,
    SAVED_INVERSIONS,
    SDXL_CHECKPOINT,
    workflows_for,
)

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
NAMES = sorted(path.stem for path in WORKFLOWS.glob("*.json"))  # every template ComfyUI lists
# the ones this release has the models for (all where no ComfyUI is named: the tier is skipped then)
RUNNABLE = sorted(workflows_for(load_snapshot_module().comfyui_version(COMFYUI_PATH))) if COMFYUI_PATH else NAMES
SIZE = 64  # pixels; the latent is 8 x 8
EXPECTED_IMAGES = {  # SaveImage output: (number of images, width) per workflow after shrink()
    "01 Basic transfer, SD 1.5": (1, SIZE),
    "02 Masks, automatic then edited": (1, SIZE),
    "03 SDXL transfer at 1024 px": (1, SIZE),
    "04 Colour variants": (2, SIZE),
    "05 Transfer, then upscale": (1, SIZE * 3 // 2),
    "06 Transfer from saved inversions": (2, SIZE),  # the saved structure x the two saved appearances of 04
    "07 Transfer with a ControlNet": (1, SIZE),
    "08 Local transfer inside a mask": (1, SIZE),
    "09 Flux transfer": (1, SIZE),
    "10 Flux.2 transfer": (1, SIZE),
    "11 Qwen-Image transfer": (1, SIZE),
    "12 Z-Image Turbo transfer": (1, SIZE),
}
# reconstructions and masks shown in the UI
PREVIEWS = {"01 Basic transfer, SD 1.5": 4, "02 Masks, automatic then edited": 2}
SLOW = {"03 SDXL transfer at 1024 px", "07 Transfer with a ControlNet"}  # full-size random SDXL / ControlNet files
SEPARATE_FILES = ("diffusion_models", "text_encoders", "vae")  # the folders UNETLoader, CLIPLoader, VAELoader read


def api_twin(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


# the workflows that load separate model files (UNETLoader): they run with their loaders stood in
STOOD_IN = [name for name in RUNNABLE if any(node["class_type"] == "UNETLoader" for node in api_twin(name).values())]


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
    committed = json.loads(snapshot_module.snapshot_file(COMFYUI_PATH).read_text())
    assert reported == committed, "stale snapshot: run scripts/snapshot_node_schemas.py"


def test_thumbnails_and_help_pages_are_served_where_the_front_end_asks(server):
    pack = load_snapshot_module().PACK_LINK_NAME
    for name in NAMES:  # the template browser asks /api/workflow_templates/<pack>/<workflow>.jpg
        status, kind, body = server.fetch(f"/api/workflow_templates/{pack}/{urllib.parse.quote(name)}.jpg")
        assert (status, kind) == (200, "image/jpeg") and body == (WORKFLOWS / f"{name}.jpg").read_bytes(), name
    help_pages = sorted((REPO / "web" / "docs").glob("*.md"))
    assert len(help_pages) == 8
    for page in help_pages:  # the node library asks /extensions/<pack>/docs/<node id>.md
        status, _, body = server.fetch(f"/extensions/{pack}/docs/{page.name}")
        assert status == 200 and body == page.read_bytes(), page.name


def listed_models(folder: Path) -> Path:
    """A models/ folder with the separate model files' names the workflows use, empty (the loaders list names;
    nothing reads them)."""
    for kind in (*SEPARATE_FILES, "checkpoints", "controlnet"):
        (folder / kind).mkdir(parents=True, exist_ok=True)
    for name, (kind, _) in MODEL_SOURCES.items():
        if kind in SEPARATE_FILES:
            (folder / kind / name).write_bytes(b"")
    return folder


def test_shipped_api_twins_pass_validate_prompt(models, tmp_path):
    """Each twin exactly as shipped (512 px, 100 steps) through ComfyUI's own execution.validate_prompt."""
    input_dir = tmp_path / "input"
    input_dir.mkdir()  # empty: loading the pack installs the samples the twins load
    listed = listed_models(tmp_path / "models")  # validation only needs the model names to exist
    (listed / "checkpoints" / SD15_CHECKPOINT).symlink_to(models / "checkpoints" / SD15_CHECKPOINT)
    (listed / "checkpoints" / SDXL_CHECKPOINT).write_bytes(b"")
    (listed / "controlnet" / CONTROLNET_MODEL).write_bytes(b"")
    output_dir = tmp_path / "output"  # Load Inversion only checks that the named files exist
    (output_dir / "xattn").mkdir(parents=True)
    for name in SAVED_INVERSIONS:
        (output_dir / name).write_bytes(b"")
    files = [str(WORKFLOWS / "api" / f"{name}.json") for name in RUNNABLE]
    out = run_task("validate", str(input_dir), str(output_dir), str(listed), *files, timeout=300)
    results = json.loads(out.strip().splitlines()[-1])
    for name in RUNNABLE:
        result = results[name]
        assert result["ok"], json.dumps(result, indent=1)[:3000]
        assert result["outputs"]


def test_validation_refuses_a_latent_for_an_inversion(server):
    prompt = shrink(api_twin("01 Basic transfer, SD 1.5"))
    sampler = next(k for k, v in prompt.items() if v["class_type"] == "XAttnCrossImageSampler")
    encode = next(k for k, v in prompt.items() if v["class_type"] == "VAEEncode")
    prompt[sampler]["inputs"]["appearance"] = [encode, 0]
    code, response = server.post("/prompt", {"prompt": prompt})
    assert code == 400
    errors = response["node_errors"][sampler]["errors"]
    assert any(error["type"] == "return_type_mismatch" for error in errors), errors


@pytest.mark.parametrize("name", [n for n in RUNNABLE if n not in SLOW and n not in STOOD_IN])
def test_workflow_runs(server, name):
    import numpy as np

    if name == "06 Transfer from saved inversions":
        run_workflow(server, "04 Colour variants")  # writes the inversions workflow 6 loads
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


@pytest.fixture(scope="module")
def stood_in_runs(tmp_path_factory) -> dict:
    """Every STOOD_IN twin, shrunk, executed by ComfyUI in one subprocess: every node as shipped but the loaders.
    Its result per workflow, and the output folder."""
    folder = tmp_path_factory.mktemp("stood-in")
    input_dir, output_dir = folder / "input", folder / "output"
    input_dir.mkdir()  # empty: loading the pack installs the samples the twins load
    output_dir.mkdir()
    prompts = []
    for name in STOOD_IN:
        prompts.append(folder / f"{name}.json")
        prompts[-1].write_text(json.dumps(shrink(api_twin(name))))
    models = listed_models(folder / "models")
    out = run_task("stood-in-workflows", str(input_dir), str(output_dir), str(models), *map(str, prompts), timeout=900)
    return {"results": json.loads(out.strip().splitlines()[-1]), "output_dir": output_dir}


@pytest.mark.parametrize("name", STOOD_IN)
def test_workflow_runs_on_tiny_random_models_of_its_family(stood_in_runs, name):
    """The shipped twin, shrunk, on a tiny random model of its family (this release's own model detection), a
    text stand-in and a random autoencoder of the family's architecture: it validates, runs and saves an image."""
    import numpy as np
    from PIL import Image

    result = stood_in_runs["results"][name]
    assert result["ok"], json.dumps(result, indent=1)[:3000]
    saved = [item for output in result["outputs"].values() for item in output.get("images", [])]
    saved = [item for item in saved if item["type"] == "output"]
    count, width = EXPECTED_IMAGES[name]
    assert len(saved) == count, result["outputs"]
    for item in saved:
        image = Image.open(stood_in_runs["output_dir"] / item["subfolder"] / item["filename"])
        assert image.size == (width, width)
        assert np.asarray(image.convert("RGB"), dtype=np.float32).std() > 0.5
    print(f"{name}: {result['seconds']} s")


@pytest.mark.slow
def test_controlnet_workflow_runs(server, models):
    """Workflow 7 with a random full-size SD 1.5 ControlNet (~700 MB file): slow tier only."""
    target = models / "controlnet" / CONTROLNET_MODEL
    if not target.exists():
        run_task("controlnet", str(target), timeout=1800)
    history = queue(server, shrink(api_twin("07 Transfer with a ControlNet")), timeout=1800)
    images = saved_images(server, history)
    assert len(images) == 1 and images[0].size == (SIZE, SIZE)


@pytest.mark.slow
def test_sdxl_workflow_runs(server, models):
    """Workflow 3 on a random SDXL-architecture checkpoint (~7 GB file, ~14 GB RAM on CPU): slow tier only."""
    target = models / "checkpoints" / SDXL_CHECKPOINT
    if not target.exists() or target.stat().st_size == 0:
        run_task("checkpoint", "sdxl", str(target), timeout=1800)
    history = queue(server, shrink(api_twin("03 SDXL transfer at 1024 px")), timeout=1800)
    images = saved_images(server, history)
    assert len(images) == 1 and images[0].size == (SIZE, SIZE)


BAD_VALUES = [  # (node, {input: value}, the input ComfyUI must name, the text of the one error it reports)
    ("XAttnInvertImage", {"cfg": -1.0}, "cfg", "Value -1.0 smaller than min of 0.0"),
    ("XAttnInvertImage", {"start_step": -1}, "start_step", "Value -1 smaller than min of 0"),
    ("XAttnInvertImage", {"seed": -5}, "seed", "Value -5 smaller than min of 0"),
    ("XAttnInvertImage", {"steps": 0}, "steps", "Value 0 smaller than min of 2"),
    ("XAttnInvertImage", {"steps": 1}, "steps", "Value 1 smaller than min of 2"),
    ("XAttnInvertImage", {"steps": 1001}, "steps", "Value 1001 bigger than max of 1000"),
    ("XAttnInvertImage", {"freeu": "bogus"}, "freeu", "freeu: 'bogus' not in"),
    ("XAttnInvertImage", {"fast_mode": "bogus"}, "fast_mode", "fast_mode: 'bogus' not in"),
    ("XAttnCrossImageSampler", {"contrast": -5.0}, "contrast", "Value -5.0 smaller than min of 1.0"),
    ("XAttnCrossImageSampler", {"start_step": -2}, "start_step", "Value -2 smaller than min of -1"),
    ("XAttnCrossImageSampler", {"freeu": "bogus"}, "freeu", "freeu: 'bogus' not in"),
    ("XAttnCrossImageSampler", {"adain_masks": "bogus"}, "adain_masks", "adain_masks: 'bogus' not in"),
]


def post_refused(server, prompt: dict) -> list[dict]:
    """The node errors of a prompt /prompt refuses (400), checking that nothing was queued."""
    before = server.get("/history")
    code, response = server.post("/prompt", {"prompt": prompt, "client_id": "xattn-tests"})
    assert code == 400, response
    assert server.get("/history") == before  # nothing was queued
    return response["node_errors"]


@pytest.mark.parametrize("node_type, values, name, expected", BAD_VALUES, ids=lambda value: str(value)[:30])
def test_validation_reports_each_bad_value_once_on_its_input(server, node_type, values, name, expected):
    """An ordinary validation error on the input that has the bad value, never an exception filed elsewhere."""
    prompt = shrink(api_twin("01 Basic transfer, SD 1.5"))
    node_id = next(key for key, node in prompt.items() if node["class_type"] == node_type)
    prompt[node_id]["inputs"].update(values)
    node_errors = post_refused(server, prompt)
    assert list(node_errors) == [node_id], node_errors  # pinned to the node that has the bad value
    errors = node_errors[node_id]["errors"]
    reported = [f"{error['message']}: {error['details']}" for error in errors]
    assert len(errors) == 1 and expected in reported[0], reported
    assert errors[0]["extra_info"]["input_name"] == name, errors
    assert not errors[0]["type"].startswith("exception"), errors


def test_start_step_at_the_end_of_the_schedule_fails_when_invert_image_runs(server):
    """start_step < steps is the one rule between two inputs. ComfyUI files a validate_inputs message under every
    input it names and an exception under the linking node's input, and skips its own range checks for named
    inputs, so the rule is checked when the node runs, first thing: one error naming both values."""
    prompt = shrink(api_twin("01 Basic transfer, SD 1.5"))
    invert = next(key for key, node in prompt.items() if node["class_type"] == "XAttnInvertImage")
    prompt[invert]["inputs"].update(steps=3, start_step=3)
    code, response = server.post("/prompt", {"prompt": prompt, "client_id": "xattn-tests"})
    assert code == 200 and response["node_errors"] == {}, response
    history = server.wait_for(response["prompt_id"], 300)
    assert history["status"]["status_str"] == "error"
    failure = next(message[1] for message in history["status"]["messages"] if message[0] == "execution_error")
    assert failure["node_type"] == "XAttnInvertImage"
    assert failure["exception_message"].strip() == "start_step (3) must be below the number of steps (3)"


def progress_texts(server, prompt: dict, timeout: float = 300) -> tuple[dict, list[tuple[str, str]]]:
    """Queue ``prompt`` while listening on the websocket as the front end does; the history entry and the
    progress texts (node id, text) the server sent meanwhile."""
    import asyncio
    import struct

    import aiohttp

    async def listen():
        texts = []
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(server.base.replace("http", "ws") + "/ws?clientId=xattn-progress") as socket,
        ):
            code, response = server.post("/prompt", {"prompt": prompt, "client_id": "xattn-progress"})
            assert code == 200, response
            prompt_id = response["prompt_id"]
            while True:
                message = await socket.receive(timeout=timeout)
                if message.type == aiohttp.WSMsgType.BINARY and struct.unpack(">I", message.data[:4])[0] == 3:
                    (length,) = struct.unpack(">I", message.data[4:8])
                    texts.append((message.data[8 : 8 + length].decode(), message.data[8 + length :].decode()))
                elif message.type == aiohttp.WSMsgType.TEXT:
                    event = json.loads(message.data)
                    data = event.get("data", {})
                    if event["type"] in ("execution_success", "execution_error") and data["prompt_id"] == prompt_id:
                        break
        return server.wait_for(prompt_id, timeout), texts

    return asyncio.run(listen())


def test_a_transfer_that_swaps_nothing_warns_on_every_run(server):
    """5 steps from start step 4 swap no attention: the output is the structure's reconstruction. Each run says
    so in ComfyUI's log and under the sampler node (Python's warnings filter would have shown it once)."""
    prompt = shrink(api_twin("01 Basic transfer, SD 1.5"))
    sampler = next(key for key, node in prompt.items() if node["class_type"] == "XAttnCrossImageSampler")
    for node in by_class(prompt, "XAttnInvertImage"):
        node["inputs"].update(steps=5, start_step=4)
    warning = "Cross-Image Attention: no generation step swaps attention (5 steps from start step 4)"
    for run, contrast in enumerate((1.67, 1.7)):  # a second run of the sampler in the same process
        prompt[sampler]["inputs"]["contrast"] = contrast
        logged_before = server.log_text().count(warning)
        history, texts = progress_texts(server, prompt)
        assert history["status"]["status_str"] == "success"
        assert server.log_text().count(warning) == logged_before + 1, (run, server.log_text()[-3000:])
        shown = [text for node, text in texts if node == sampler]
        assert len(shown) == 1 and shown[0].startswith("Warning: no generation step swaps attention"), texts
    # a clean run replaces the text the front end still shows under the node (4 steps from 1: the plan swaps and
    # takes the structure's keys/values at a swapping step; 5 from 1 has no such step, which now warns too)
    for node in by_class(prompt, "XAttnInvertImage"):
        node["inputs"].update(steps=4, start_step=1)
    prompt[sampler]["inputs"]["adain_masks"] = "none"  # random weights find no object: that would warn
    _, texts = progress_texts(server, prompt)
    assert [text for node, text in texts if node == sampler] == ["No warnings in the last run."], texts


def test_the_sampler_states_the_choices_it_made(server):
    """Appearance inverted from step 2, structure from step 1, sampler start_step -1: it uses 2, and says so,
    with the masks, FreeU and pairing it chose, once per run."""
    prompt = shrink(api_twin("01 Basic transfer, SD 1.5"))
    inverts = {node["_meta"]["title"]: node for node in by_class(prompt, "XAttnInvertImage")}
    inverts["Invert appearance"]["inputs"].update(steps=4, start_step=2)
    inverts["Invert structure"]["inputs"].update(steps=4, start_step=1)
    before = len(server.log_text())
    queue(server, prompt)
    lines = [line for line in server.log_text()[before:].splitlines() if "Cross-Image Attention Sampler:" in line]
    assert len(lines) == 1, lines
    assert (
        "start step 2 (start_step -1: the later of the inversions' start steps, appearance 2 and structure 1)"
        in (lines[0])
    )
    assert "adain_masks auto: automatic object masks" in lines[0]
    assert "freeu auto: on (an SD 1.x model)" in lines[0]


def by_class(prompt: dict, class_type: str) -> list[dict]:
    return [node for node in prompt.values() if node["class_type"] == class_type]
