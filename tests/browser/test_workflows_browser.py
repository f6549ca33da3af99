"""Browser tier: every shipped UI workflow opens in ComfyUI's real front end (headless Chromium over the
Chrome DevTools protocol) with no missing node types and no console errors, the front end's own UI-to-API
conversion (app.graphToPrompt) gives exactly the shipped API twin, and no node covers another as the front end
draws them. The server has none of the model files, so each workflow must report its own missing files: in the
Missing Models dialog (front ends up to 1.36) or in the Issues panel that 1.58's "View details" opens. The server
starts with an empty input/: the pack copies its sample images there when it loads, and every Load Image node
must show its image. Each workflow must open (its extra.ds) on its Read me note and its transfer sampler(s),
readably. Only the workflows this ComfyUI release has the models for are opened (scripts/workflow_files.py
``workflows_for``). The template browser shows all the pack's cards with their titles and thumbnails, and a node
help page opens (in the node library up to 1.36, in the node's Info panel in 1.58). A screenshot of each loaded
graph is written to docs/graphs/<number>.jpg (the docs show them) with the front end ComfyUI pins only; with
XATTN_SCREENSHOTS=<folder> the template browser, a missing-models report, the help page and (with another front
end) the graphs are saved there too, to look at. XATTN_FRONT_END_ROOT=<a comfyui_frontend_package's static/
folder> runs another front end (ComfyUI's --front-end-root), e.g. 1.58, whose template cards carry a "Node
graph" badge that no card text may be under.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest
from browser_devtools import (
    CLOSE_DIALOGS,
    COMMAND,
    FIT_VIEW,
    FRONT_END_VERSION,
    HELP_PAGE,
    INSPECT,
    ISSUES,
    TEMPLATES,
    page_devtools,
    start_chromium,
    to_jpeg,
)
from comfyui_support import COMFYUI_PATH, load_snapshot_module
from PIL import Image

from scripts.workflow_files import INPUT_SAMPLES, SAVED_INVERSIONS, workflows_for
from tests.workflow_checks import node_box, overlapping_nodes

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
NAMES = sorted(path.stem for path in WORKFLOWS.glob("*.json"))  # every template the server lists
# the ones this release has the models for (Flux.2 and Z-Image need 0.9.2), which the front end opens
OPENED = sorted(workflows_for(load_snapshot_module().comfyui_version(COMFYUI_PATH))) if COMFYUI_PATH else NAMES
MAX_BYTES = 300_000
WINDOW = (2200, 1300)
READABLE_SCALE = 0.6  # below it node text is too small to read
FRONT_END_ROOT = os.environ.get("XATTN_FRONT_END_ROOT")  # another front end than the one ComfyUI pins
GRAPHS = REPO / "docs" / "graphs"
SCREENSHOTS = os.environ.get("XATTN_SCREENSHOTS")
CATEGORY = "Cross-Image Attention"  # locales/en/main.json names the pack's template category
# no network here (1.58 also asks the Comfy registry, api.comfy.org, about the graph's node packs, and ComfyUI's
# Content Security Policy blocks that)
OFFLINE = re.compile(r"huggingface\.co|api\.comfy\.org|ERR_NAME_NOT_RESOLVED|ERR_INTERNET_DISCONNECTED|Failed to fetch")
INVERSIONS = list(SAVED_INVERSIONS)

# the view the front end opened a workflow at: its scale and offset, and the canvas's size in CSS pixels
VIEW = """
(() => {
  const el = app.canvas.canvas;
  return {scale: app.canvas.ds.scale, offset: [...app.canvas.ds.offset], size: [el.clientWidth, el.clientHeight]};
})()
"""
# each Load Image node's file and whether its preview image has loaded (the front end fetches it from input/)
LOAD_IMAGES = """
(async () => {
  const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms));
  const loads = app.graph.nodes.filter(n => n.type === 'LoadImage');
  const shown = (n) => !!(n.imgs && n.imgs[0] && n.imgs[0].complete && n.imgs[0].naturalWidth > 0);
  for (let i = 0; i < 40 && !loads.every(shown); i++) await sleep(250);
  return loads.map(n => ({
    id: n.id, file: n.widgets.find(w => w.name === 'image').value,
    listed: n.widgets.find(w => w.name === 'image').options.values, shown: shown(n),
    natural: n.imgs && n.imgs[0] ? [n.imgs[0].naturalWidth, n.imgs[0].naturalHeight] : null}));
})()
"""
# on the template browser's cards: the box of each card's "Node graph" badge (front end 1.58), in the pixels of the
# card's picture (which is drawn square, as wide as the card), and the picture's drawn width
BADGES = """
(() => Array.from(document.querySelectorAll('[data-testid^="template-workflow-"]')).map(card => {
  const name = card.dataset.testid.replace('template-workflow-', ''), img = card.querySelector('img');
  // the innermost element reading "Node graph" and holding its icon: the badge, not a wrapper around the picture
  const named = Array.from(card.querySelectorAll('div')).filter(element => element.innerText.trim() === 'Node graph');
  const badge = named.find(element => !named.some(other => other !== element && element.contains(other)));
  if (!img || !badge) return {name, badge: null};
  const picture = img.getBoundingClientRect(), box = badge.getBoundingClientRect();
  const scale = img.naturalWidth / picture.width;
  return {name, width: picture.width,
          badge: [box.left - picture.left, box.top - picture.top, box.right - picture.left, box.bottom - picture.top]
                 .map(edge => edge * scale)};
}))()
"""


async def open_workflows(base: str, port: int) -> dict:
    results = {}
    async with page_devtools(port) as tools:
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
        results["_front_end"] = await tools.evaluate(FRONT_END_VERSION)
        results["_startup_errors"] = tools.take_errors()
        # control: a node type nobody registers must be reported by the same checks
        bogus = json.loads((WORKFLOWS / f"{NAMES[0]}.json").read_text())
        bogus["nodes"][-1]["type"] = "XAttnNoSuchNode"
        await tools.evaluate(f"app.loadGraphData({json.dumps(bogus)}, true, true, 'control').then(() => true)")
        await asyncio.sleep(1)
        results["_control"] = await tools.evaluate(INSPECT)
        results["_control"]["issues"] = await tools.evaluate(ISSUES)
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
            info["view"] = await tools.evaluate(VIEW)  # as it opened, before anything moves it
            info["load_images"] = await tools.evaluate(LOAD_IMAGES)
            if name.startswith("07") and SCREENSHOTS:
                shot = await tools.send("Page.captureScreenshot", format="png")
                results["_missing_models_png"] = base64.b64decode(shot["data"])
            info["issues"] = await tools.evaluate(ISSUES)
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
        results["_badges"] = await tools.evaluate(BADGES)
        shot = await tools.send("Page.captureScreenshot", format="png")
        results["_templates_png"] = base64.b64decode(shot["data"])
        with urllib.request.urlopen(base + "/api/workflow_templates", timeout=30) as response:
            results["_listed"] = json.loads(response.read())
        await tools.evaluate(CLOSE_DIALOGS)
        try:
            results["_help"] = await tools.evaluate(HELP_PAGE, timeout=60)
        except RuntimeError as error:  # a front end whose help the script cannot reach: that test fails, not all
            results["_help"] = {"where": None, "open": False, "error": str(error), "shown": ""}
        shot = await tools.send("Page.captureScreenshot", format="png")
        results["_help"]["png"] = base64.b64decode(shot["data"])
        results["_late_errors"] = tools.take_errors()
    return results


@pytest.fixture(scope="module")
def browser_results(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("comfy-browser")
    (workdir / "input").mkdir()  # empty: the pack puts its samples there when ComfyUI loads it
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
        snapshot.comfy_server(
            COMFYUI_PATH,
            workdir,
            models=models,
            extra_args=("--front-end-root", FRONT_END_ROOT) if FRONT_END_ROOT else (),
        ) as server,
        tempfile.TemporaryDirectory(prefix="xattn-chromium-") as profile,
    ):
        process, port = start_chromium(Path(profile), WINDOW)
        try:
            results = asyncio.run(open_workflows(server.base, port))
            results["_input_files"] = sorted(path.name for path in server.input_dir.iterdir() if path.is_file())
        finally:
            snapshot.stop_process(process, grace=20)
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        for key in ("_templates_png", "_missing_models_png"):
            if key in results:
                (Path(SCREENSHOTS) / f"{key.strip('_')[:-4]}.png").write_bytes(results[key])
        (Path(SCREENSHOTS) / "help_page.png").write_bytes(results["_help"]["png"])
    return results


def version(results: dict) -> tuple[int, ...]:
    """The front end's version (window.__COMFYUI_FRONTEND_VERSION__), e.g. (1, 58, 1)."""
    return tuple(int(part) for part in re.findall(r"\d+", results["_front_end"])[:3])


def model_files(workflow: dict, where: str = "dialog") -> list[str]:
    """Every model the workflow's nodes declare as the front end labels it: 'folder / file' in the Missing Models
    dialog (up to 1.36), the file with its folder on the next line in 1.58's Issues panel."""
    label = "{directory} / {name}" if where == "dialog" else "{name}\n{directory}"
    return sorted(
        {label.format(**model) for node in workflow["nodes"] for model in node.get("properties", {}).get("models", [])}
    )


def test_front_end_starts_without_errors_from_the_pack(browser_results):
    assert not [e for e in browser_results["_startup_errors"] if "xattn" in e.lower()], browser_results[
        "_startup_errors"
    ]


def test_the_checks_see_a_missing_node_type(browser_results):
    control = browser_results["_control"]
    assert control["missing"] == ["XAttnNoSuchNode"]
    # named in a dialog (up to 1.36) or in the Issues panel's Missing Node Packs (1.58)
    assert any("XAttnNoSuchNode" in issue["text"] for issue in control["issues"]), control["issues"]


@pytest.mark.parametrize("name", OPENED)
def test_workflow_opens_in_the_front_end(browser_results, name):
    info = browser_results[name]
    workflow = json.loads((WORKFLOWS / f"{name}.json").read_text())
    assert info["count"] == len(workflow["nodes"])
    assert sorted(info["types"]) == sorted(node["type"] for node in workflow["nodes"])
    assert info["missing"] == []
    assert info["errors"] == []  # other than a missing model's (1.58 flags its node: model_flagged)
    assert [error for error in info["console_errors"] if not OFFLINE.search(error)] == [], info["console_errors"]
    # the Missing Models dialog (up to 1.36) or the Issues panel's Missing Models (1.58), with each file the
    # workflow declares and lacks here
    (issue,) = info["issues"]
    assert issue["where"] in ("dialog", "issues panel") and "missing models" in issue["text"].lower(), issue
    expected = model_files(workflow, issue["where"])
    assert expected and all(label in issue["text"] for label in expected), (expected, issue)
    if info["model_flagged"] is not None:  # 1.58: exactly the nodes whose model file is missing are flagged
        declaring = [node["type"] for node in workflow["nodes"] if node.get("properties", {}).get("models")]
        assert sorted(info["model_flagged"]) == sorted(declaring), info["model_flagged"]
    twin = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    assert {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in info["output"].items()} == {
        k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in twin.items()
    }


def test_the_pack_put_its_sample_images_into_the_empty_input_folder(browser_results):
    assert browser_results["_input_files"] == sorted(INPUT_SAMPLES)
    for name, sample in INPUT_SAMPLES.items():
        assert (REPO / "xattn_core" / "samples" / sample).is_file(), name


@pytest.mark.parametrize("name", OPENED)
def test_every_load_image_node_shows_its_sample(browser_results, name):
    """The template opens ready to run: each Load Image node names a file ComfyUI lists and shows it."""
    workflow = json.loads((WORKFLOWS / f"{name}.json").read_text())
    expected = sorted(node["widgets_values"][0] for node in workflow["nodes"] if node["type"] == "LoadImage")
    loads = browser_results[name]["load_images"]
    assert sorted(load["file"] for load in loads) == expected
    for load in loads:
        assert load["file"] in load["listed"], load
        assert load["shown"] and min(load["natural"]) >= 256, load


@pytest.mark.parametrize("name", OPENED)
def test_the_workflow_opens_on_its_note_and_sampler_readably(browser_results, name):
    """As first drawn (before the test fits the view): the Read me note and every transfer sampler lie whole on
    the canvas, at a scale where their text reads."""
    info = browser_results[name]
    view = info["view"]
    scale, (offset_x, offset_y), (width, height) = view["scale"], view["offset"], view["size"]
    assert scale >= READABLE_SCALE, view
    shown = [box for box in info["boxes"] if box["type"] in ("MarkdownNote", "XAttnCrossImageSampler")]
    assert {box["type"] for box in shown} == {"MarkdownNote", "XAttnCrossImageSampler"}
    for box in shown:
        left, top, right, bottom = node_box(box)
        on_screen = [(left + offset_x) * scale, (top + offset_y) * scale]
        on_screen += [(right + offset_x) * scale, (bottom + offset_y) * scale]
        assert 0 <= on_screen[0] and on_screen[2] <= width, (box["title"], on_screen, view)
        assert 0 <= on_screen[1] and on_screen[3] <= height, (box["title"], on_screen, view)


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
    if FRONT_END_ROOT:  # the docs show the pinned front end's drawing: another front end's goes to XATTN_SCREENSHOTS
        if SCREENSHOTS:
            (Path(SCREENSHOTS) / f"graph_{name[:2]}.jpg").write_bytes(jpeg)
        return
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
        if version(browser_results) >= (1, 58):
            # 1.58's cards show the title and tags only (WorkflowTemplateSelectorDialog.vue): no description
            assert card["description"] is None, card
        else:
            # a model's own hyphen (Qwen-Image, Z-Image) reads as a space in the description only
            assert card["description"] == card["name"].replace("-", " "), card
        assert re.fullmatch(r"\d\d [A-Z][\w ,.-]+", card["name"]) and "_" not in card["name"], card  # readable
        assert card["loaded"] and card["natural"] == [512, 512], card  # the card image, not a graph screenshot
        assert card["shown"][0] == card["shown"][1] >= 200, card  # shown square, whole


def test_no_card_text_lies_under_the_front_end_s_badge(browser_results):
    """Front end 1.58 lays a "Node graph" badge over each card picture's top left corner: the title and subtitle
    drawn into the picture (scripts/make_thumbnails.py) stay clear of it, on every card as wide as it is drawn
    here. Older front ends draw no badge; with 1.58 a badge must be found on every card."""
    sys.path.insert(0, str(REPO / "scripts"))
    import make_thumbnails

    cards = {card["name"]: card for card in browser_results["_badges"]}
    assert sorted(cards) == NAMES
    badged = {name: card for name, card in cards.items() if card["badge"]}
    if version(browser_results) >= (1, 58):  # it draws the badge on every card: each is checked
        assert sorted(badged) == NAMES, cards
    for name, card in badged.items():
        badge = card["badge"]
        for left, top, right, bottom in make_thumbnails.heading_boxes(make_thumbnails.CARDS[name]):
            overlaps = left < badge[2] and badge[0] < right and top < badge[3] and badge[1] < bottom
            assert not overlaps, (name, badge, (left, top, right, bottom), card["width"])
        corner = make_thumbnails.BADGE_CORNER  # the layout's allowance covers the badge at this card width
        assert badge[3] <= corner[3] and badge[2] <= corner[2] or card["width"] > make_thumbnails.NARROWEST_CARD


def test_a_node_help_page_opens(browser_results):
    """In the node library up to 1.36; 1.58's node library has no help page and shows it in the right side panel's
    Info tab, for the selected node (browser_devtools.HELP_PAGE)."""
    help_page = browser_results["_help"]
    where = "node info panel" if version(browser_results) >= (1, 58) else "node library"
    assert help_page["where"] == where, help_page
    assert help_page["open"] and help_page["error"] is None
    page = (REPO / "web" / "docs" / "XAttnCrossImageSampler.md").read_text()
    first_sentence = page.split("\n\n")[1].split(". ")[0].replace("\n", " ").replace("*", "")
    assert first_sentence in help_page["shown"].replace("\n", " ")
    # the front end asks for a page per locale first (docs/<node>/en.md) and falls back to docs/<node>.md; 1.58's
    # template browser (opened just before) asks ComfyUI for the core templates' logo index, which the
    # comfyui-workflow-templates package ComfyUI 0.9.2 pins (0.8.11) does not have
    expected = re.compile(r"404 .*(/extensions/[\w-]+/docs/XAttn\w+/\w+\.md|/templates/index_logo\.json)$")
    late = browser_results["_late_errors"]
    assert [error for error in late if not expected.search(error)] == [], late
