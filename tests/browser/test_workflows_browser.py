"""Browser tier: every shipped UI workflow opens in ComfyUI's real front end (headless Chromium over the
Chrome DevTools protocol) with no missing node types and no console errors, the front end's own UI-to-API
conversion (app.graphToPrompt) gives exactly the shipped API twin, and no node covers another as the front end
draws them. The server has none of the model files, so each workflow must open the Missing Models dialog with
its own files. Only the workflows this ComfyUI release has the models for are opened (scripts/workflow_files.py
``workflows_for``). The template browser shows all the pack's cards with their titles and thumbnails, and a node
help page opens in the node library. A screenshot of each loaded graph is written to docs/graphs/<number>.jpg (the
docs show them); with XATTN_SCREENSHOTS=<folder> the template browser and a Missing Models dialog are saved
there too, to look at.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import shutil
import tempfile
import urllib.request
from pathlib import Path

import pytest
from browser_devtools import (
    CLOSE_DIALOGS,
    COMMAND,
    DIALOGS,
    FIT_VIEW,
    HELP_PAGE,
    INSPECT,
    TEMPLATES,
    DevTools,
    start_chromium,
    to_jpeg,
)
from comfyui_support import COMFYUI_PATH, load_snapshot_module
from PIL import Image

from scripts.workflow_files import SAVED_INVERSIONS, workflows_for
from tests.workflow_checks import overlapping_nodes

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
NAMES = sorted(path.stem for path in WORKFLOWS.glob("*.json"))  # every template the server lists
# the ones this release has the models for (Flux.2 and Z-Image need 0.9.2), which the front end opens
OPENED = sorted(workflows_for(load_snapshot_module().comfyui_version(COMFYUI_PATH))) if COMFYUI_PATH else NAMES
MAX_BYTES = 300_000
WINDOW = (2200, 1300)
SAMPLES = {
    "xattn_structure.png": "structure.png",
    "xattn_appearance.png": "appearance.png",
    "giraffe.jpg": "giraffe.jpg",
    "zebra.jpg": "zebra.jpg",
}
GRAPHS = REPO / "docs" / "graphs"
SCREENSHOTS = os.environ.get("XATTN_SCREENSHOTS")
CATEGORY = "Cross-Image Attention"  # locales/en/main.json names the pack's template category
OFFLINE = re.compile(
    r"huggingface\.co|ERR_NAME_NOT_RESOLVED|ERR_INTERNET_DISCONNECTED|Failed to fetch"
)  # no network here
INVERSIONS = list(SAVED_INVERSIONS)


async def open_workflows(base: str, port: int) -> dict:
    import aiohttp

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
        page = next(t for t in json.loads(response.read()) if t["type"] == "page")
    results = {}
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as socket,
    ):
        tools = DevTools(socket)
        for domain in ("Runtime", "Log", "Page"):
            await tools.send(f"{domain}.enable")
        await tools.send("Page.navigate", url=base + "/")
        for _ in range(240):
            ready = await tools.evaluate(
                "!!(window.app && window.app.graph && window.app.canvas && "
                "window.app.vueAppReady !== false && document.querySelector('canvas'))"
            )
            if ready:
                break
            await asyncio.sleep(0.5)
        else:
            raise TimeoutError("the ComfyUI front end did not come up")
        await asyncio.sleep(3)  # let start-up settle (extensions, settings, first draw)
        await tools.evaluate(CLOSE_DIALOGS)
        results["_startup_errors"] = tools.take_errors()
        # control: a node type nobody registers must be reported by the same checks
        bogus = json.loads((WORKFLOWS / f"{NAMES[0]}.json").read_text())
        bogus["nodes"][-1]["type"] = "XAttnNoSuchNode"
        await tools.evaluate(f"app.loadGraphData({json.dumps(bogus)}, true, true, 'control').then(() => true)")
        await asyncio.sleep(1)
        results["_control"] = await tools.evaluate(INSPECT)
        results["_control"]["dialogs"] = await tools.evaluate(DIALOGS)
        await tools.evaluate(CLOSE_DIALOGS)
        tools.take_errors()
        await tools.evaluate(COMMAND.format(command="Workspace.ToggleFocusMode"))  # the canvas alone on screen
        for name in OPENED:
            workflow = json.loads((WORKFLOWS / f"{name}.json").read_text())
            await tools.evaluate(
                f"app.loadGraphData({json.dumps(workflow)}, true, true, {json.dumps(name)}).then(() => true)"
            )
            await asyncio.sleep(1.5)  # image previews of Load Image, first draw
            info = await tools.evaluate(INSPECT)
            info["dialogs"] = await tools.evaluate(DIALOGS)
            if name.startswith("07") and SCREENSHOTS:
                shot = await tools.send("Page.captureScreenshot", format="png")
                results["_missing_models_png"] = base64.b64decode(shot["data"])
            await tools.evaluate(CLOSE_DIALOGS)
            await tools.evaluate(FIT_VIEW)
            await asyncio.sleep(0.5)
            shot = await tools.send("Page.captureScreenshot", format="png")
            info["png"] = base64.b64decode(shot["data"])
            info["drawn"] = (await tools.evaluate(INSPECT))["boxes"]  # sizes after the front end has drawn it
            info["console_errors"] = tools.take_errors()
            results[name] = info
        await tools.evaluate(COMMAND.format(command="Workspace.ToggleFocusMode"))
        results["_templates"] = await tools.evaluate(TEMPLATES % (json.dumps(CATEGORY), len(NAMES)), timeout=120)
        shot = await tools.send("Page.captureScreenshot", format="png")
        results["_templates_png"] = base64.b64decode(shot["data"])
        with urllib.request.urlopen(base + "/api/workflow_templates", timeout=30) as response:
            results["_listed"] = json.loads(response.read())
        await tools.evaluate(CLOSE_DIALOGS)
        results["_help"] = await tools.evaluate(HELP_PAGE, timeout=60)
        shot = await tools.send("Page.captureScreenshot", format="png")
        results["_help"]["png"] = base64.b64decode(shot["data"])
        results["_late_errors"] = tools.take_errors()
    return results


@pytest.fixture(scope="module")
def browser_results(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("comfy-browser")
    (workdir / "input").mkdir()
    for name, sample in SAMPLES.items():
        shutil.copy(REPO / "xattn_core" / "samples" / sample, workdir / "input" / name)
    models = workdir / "models"  # none of the workflows' model files: each must open the Missing Models dialog
    for folder in ("checkpoints", "controlnet"):
        (models / folder).mkdir(parents=True)
    settings = workdir / "user" / "default" / "comfy.settings.json"  # no first-run template dialog
    settings.parent.mkdir(parents=True)
    settings.write_text(
        json.dumps(
            {
                "Comfy.TutorialCompleted": True,
                "Comfy.Minimap.Visible": False,
                "Comfy.Graph.CanvasInfo": False,
                "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.1,
            }
        )
    )
    for inversion in INVERSIONS:
        (workdir / "output" / inversion).parent.mkdir(parents=True, exist_ok=True)
        (workdir / "output" / inversion).write_bytes(b"")
    snapshot = load_snapshot_module()
    with (
        snapshot.comfy_server(COMFYUI_PATH, workdir, models=models) as server,
        tempfile.TemporaryDirectory(prefix="xattn-chromium-") as profile,
    ):
        process, port = start_chromium(Path(profile), WINDOW)
        try:
            results = asyncio.run(open_workflows(server.base, port))
        finally:
            snapshot.stop_process(process, grace=20)
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        for key in ("_templates_png", "_missing_models_png"):
            if key in results:
                (Path(SCREENSHOTS) / f"{key.strip('_')[:-4]}.png").write_bytes(results[key])
        (Path(SCREENSHOTS) / "help_page.png").write_bytes(results["_help"]["png"])
    return results


def model_files(workflow: dict) -> list[str]:
    """'folder / file' of every model the workflow's nodes declare, as the Missing Models dialog labels them."""
    return sorted(
        {
            f"{model['directory']} / {model['name']}"
            for node in workflow["nodes"]
            for model in node.get("properties", {}).get("models", [])
        }
    )


def test_front_end_starts_without_errors_from_the_pack(browser_results):
    assert not [e for e in browser_results["_startup_errors"] if "xattn" in e.lower()], browser_results[
        "_startup_errors"
    ]


def test_the_checks_see_a_missing_node_type(browser_results):
    control = browser_results["_control"]
    assert control["missing"] == ["XAttnNoSuchNode"]
    assert any("XAttnNoSuchNode" in dialog for dialog in control["dialogs"]), control["dialogs"]


@pytest.mark.parametrize("name", OPENED)
def test_workflow_opens_in_the_front_end(browser_results, name):
    info = browser_results[name]
    workflow = json.loads((WORKFLOWS / f"{name}.json").read_text())
    assert info["count"] == len(workflow["nodes"])
    assert sorted(info["types"]) == sorted(node["type"] for node in workflow["nodes"])
    assert info["missing"] == []
    assert info["errors"] == []
    assert [error for error in info["console_errors"] if not OFFLINE.search(error)] == []
    (dialog,) = info["dialogs"]  # the Missing Models dialog, with each file the workflow declares and lacks here
    assert "missing models" in dialog.lower(), dialog
    expected = model_files(workflow)
    assert expected and all(label in dialog for label in expected), (expected, dialog)
    twin = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    assert {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in info["output"].items()} == {
        k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in twin.items()
    }


@pytest.mark.parametrize("name", OPENED)
def test_no_node_covers_another_as_the_front_end_draws_it(browser_results, name):
    assert overlapping_nodes(browser_results[name]["drawn"]) == []


@pytest.mark.parametrize("name", OPENED)
def test_screenshot_of_the_graph_for_the_docs(browser_results, name):
    """docs/workflows.md shows each graph as the front end draws it (the template cards show what it does)."""
    screenshot = Image.open(io.BytesIO(browser_results[name]["png"])).convert("RGB")
    colours = screenshot.getcolors(maxcolors=1 << 16)  # None: more colours than that
    assert colours is None or len(colours) > 200, f"{name}: the screenshot is nearly blank ({len(colours)} colours)"
    jpeg = to_jpeg(browser_results[name]["png"], MAX_BYTES)
    assert jpeg[:3] == b"\xff\xd8\xff" and len(jpeg) < MAX_BYTES
    GRAPHS.mkdir(exist_ok=True)
    (GRAPHS / f"{name[:2]}.jpg").write_bytes(jpeg)


def test_the_template_browser_shows_the_cards_titled_with_their_thumbnails(browser_results):
    """This front end reads nothing but the file names of a pack's templates: the name is the card's title and,
    with - and _ as spaces, its description; the thumbnail is <name>.jpg, shown in a square. The cards come in
    the order the server lists the files: ComfyUI 0.3.64 lists a folder unsorted (directory order), later versions
    sort the names, and the number each name starts with gives the order the docs use."""
    templates = browser_results["_templates"]
    assert templates["category"] == CATEGORY, templates
    cards = templates["cards"]
    listed = next(names for module, names in browser_results["_listed"].items() if "xattn" in module)
    assert [card["name"] for card in cards] == listed  # the front end keeps the server's order
    assert sorted(card["name"] for card in cards) == NAMES
    for card in cards:
        assert card["title"] == card["name"], card  # e.g. "07 Transfer with a ControlNet"
        # a model's own hyphen (Qwen-Image, Z-Image) reads as a space in the description only
        assert card["description"] == card["name"].replace("-", " "), card
        assert re.fullmatch(r"\d\d [A-Z][\w ,.-]+", card["name"]) and "_" not in card["name"], card  # readable
        assert card["loaded"] and card["natural"] == [512, 512], card  # the card image, not a graph screenshot
        assert card["shown"][0] == card["shown"][1] >= 200, card  # shown square, whole


def test_a_node_help_page_opens_in_the_node_library(browser_results):
    help_page = browser_results["_help"]
    assert help_page["open"] and help_page["error"] is None
    page = (REPO / "web" / "docs" / "XAttnCrossImageSampler.md").read_text()
    first_sentence = page.split("\n\n")[1].split(". ")[0].replace("\n", " ").replace("*", "")
    assert first_sentence in help_page["shown"].replace("\n", " ")
    # the front end asks for a page per locale first (docs/<node>/en.md) and falls back to docs/<node>.md
    expected = re.compile(r"404 .*/extensions/[\w-]+/docs/XAttn\w+/\w+\.md$")
    assert [error for error in browser_results["_late_errors"] if not expected.search(error)] == []
