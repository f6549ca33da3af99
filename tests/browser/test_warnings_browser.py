"""Browser tier: a pack node's run warnings stay readable on the node after the run, in the real front end.

A graph that warns and runs in a moment on the CPU with no model files (Empty Latent Image and an all-zero Solid
Mask into AdaIN Latent Match, whose empty mask warns, then Save Latent) is queued from the page as the Queue
button does (app.queuePrompt). Ten seconds after the job has finished, the warning must be on screen in the
node's warnings box, whole (no scrolling, no clipping) and wrapped between words only; a run that fails in the
node must replace it with a line that says so, and a clean run with "No warnings in the last run.". A pack error
the front end shows (Load Inversion of a file that is no inversion) must name its type xattn.<Name> and no
install path.

Front end: the one ComfyUI pins, or the one under XATTN_FRONT_END_ROOT (passed as --front-end-root, e.g.
/tmp/fe158/comfyui_frontend_package/static for 1.58.1; that needs ComfyUI 0.9.2's /api/jobs). With
XATTN_SCREENSHOTS=<folder> the page with the warned node is saved there, to look at.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import tempfile
from pathlib import Path

import pytest
from browser_devtools import (
    CLOSE_DIALOGS,
    ERROR_REPORT,
    WARNINGS_BOX,
    DevTools,
    build_graph_script,
    page_devtools,
    start_chromium,
)
from comfyui_support import COMFYUI_PATH, load_snapshot_module

REPO = Path(__file__).resolve().parents[2]
FRONT_END_ROOT = os.environ.get("XATTN_FRONT_END_ROOT")
SCREENSHOTS = os.environ.get("XATTN_SCREENSHOTS")  # a folder: the node with its warning is saved there
WINDOW = (1600, 1000)
BATCH = 24  # images in the batch: the warning names each one, long enough to take several lines on the node
WARNING = (
    "Warning: AdaIN: a mask is empty (all zero) for image "
    + ", ".join(str(image) for image in range(BATCH))
    + " of the batch; using unmasked AdaIN there"
)
CLEAN_RUN = "No warnings in the last run."
STOPPED_RUN = "The last run stopped in this node: any warnings of that run are in ComfyUI's log."
BROKEN_INVERSION = "not_an_inversion.safetensors"  # an empty file in the input folder: Load Inversion refuses it
SETTLE_S = 10  # the front end has removed transient text by then (1.58 removes progress text as the job ends)

# Empty Latent Image (a batch) and an all-zero Solid Mask into AdaIN Latent Match, into Save Latent
WARNING_GRAPH = [
    ("latent", "EmptyLatentImage", [40, 140], {"width": 64, "height": 64, "batch_size": BATCH}),
    ("mask", "SolidMask", [40, 420], {"value": 0.0, "width": 64, "height": 64}),
    ("adain", "XAttnAdaINLatentMatch", [420, 140], {}),
    ("save", "SaveLatent", [860, 140], {}),
]
WARNING_LINKS = [
    ("latent", 0, "adain", "content"),
    ("latent", 0, "adain", "style"),
    ("mask", 0, "adain", "content_mask"),
    ("adain", 0, "save", "samples"),
]
ERROR_GRAPH = [
    ("load", "XAttnLoadInversion", [40, 140], {"inversion_file": BROKEN_INVERSION}),
    ("save", "XAttnSaveInversion", [460, 140], {}),
]
ERROR_LINKS = [("load", 0, "save", "inversion")]


async def queue_and_wait(tools: DevTools, server, timeout: float = 240) -> dict:
    """Queue the graph on the page as the Queue button does; the history entry once the job has finished."""
    before = set(server.get("/history"))
    await tools.evaluate("app.queuePrompt(0, 1).then(() => true)")
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        new = set(server.get("/history")) - before
        if new:
            (prompt_id,) = new
            return server.get(f"/history/{prompt_id}")[prompt_id]
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the queued graph did not finish in {timeout} s:\n{server.log_text()[-3000:]}")


async def open_page(tools: DevTools, base: str) -> None:
    await tools.send("Page.navigate", url=base + "/")
    for _ in range(240):
        if await tools.evaluate("!!(window.app && window.app.graph && window.app.canvas && window.LiteGraph)"):
            break
        await asyncio.sleep(0.5)
    else:
        raise TimeoutError("the ComfyUI front end did not come up")
    await asyncio.sleep(3)  # extensions, settings, first draw
    await tools.evaluate(CLOSE_DIALOGS)


async def run_in_front_end(server, port: int) -> dict:
    results = {}
    async with page_devtools(port) as tools:
        await open_page(tools, server.base)
        results["version"] = await tools.evaluate("window.__COMFYUI_FRONTEND_VERSION__ ?? null")
        results["extension"] = await tools.evaluate(
            "app.extensions.some(extension => extension.name === 'xattn.Warnings')"
        )
        ids = await tools.evaluate(build_graph_script(WARNING_GRAPH, WARNING_LINKS))
        adain = ids["adain"]
        results["warned"] = await queue_and_wait(tools, server)
        await asyncio.sleep(SETTLE_S)
        results["warned_box"] = await tools.evaluate(WARNINGS_BOX % adain)
        if SCREENSHOTS:
            shot = await tools.send("Page.captureScreenshot", format="png")
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            (Path(SCREENSHOTS) / f"warnings_{results['version']}.png").write_bytes(base64.b64decode(shot["data"]))
        results["prompt_inputs"] = await tools.evaluate(
            f"app.graphToPrompt().then(prompt => Object.keys(prompt.output[{json.dumps(str(adain))}].inputs))"
        )
        # the same graph with a mask of ones: a clean run replaces the warning
        await tools.evaluate(
            f"(() => {{ const mask = app.graph.getNodeById({ids['mask']});"
            " mask.widgets.find(widget => widget.name === 'value').value = 1.0; return true; })()"
        )
        results["clean"] = await queue_and_wait(tools, server)
        await asyncio.sleep(SETTLE_S)
        results["clean_box"] = await tools.evaluate(WARNINGS_BOX % adain)
        results["console_errors"] = tools.take_errors()
        # a pack error, as the front end shows it on a page opened afresh (1.58 files a run's errors under the
        # graph it ran, and shows them only while that graph is open)
        await open_page(tools, server.base)
        await tools.evaluate(build_graph_script(ERROR_GRAPH, ERROR_LINKS))
        results["failed"] = await queue_and_wait(tools, server)
        await asyncio.sleep(3)
        results["error_shown"] = await tools.evaluate("document.body.innerText")
        results["error_report"] = await tools.evaluate(ERROR_REPORT, timeout=60)
        # the warning graph again on a fresh page (last, so that the checks above run as before), warned, then a
        # style batch of 3 for 24 contents: the node fails, and its box no longer shows the run before's warning
        await open_page(tools, server.base)
        ids = await tools.evaluate(build_graph_script(WARNING_GRAPH, WARNING_LINKS))
        adain = ids["adain"]
        results["warned_again"] = await queue_and_wait(tools, server)
        await asyncio.sleep(SETTLE_S)
        results["warned_again_box"] = await tools.evaluate(WARNINGS_BOX % adain)
        await tools.evaluate(
            "(() => { const latent = LiteGraph.createNode('EmptyLatentImage'); latent.pos = [40, 700];"
            " app.graph.add(latent); latent.widgets.find(widget => widget.name === 'batch_size').value = 3;"
            f" const adain = app.graph.getNodeById({adain});"
            " latent.connect(0, adain, adain.findInputSlot('style')); return latent.id; })()"
        )
        results["stopped"] = await queue_and_wait(tools, server)
        await asyncio.sleep(SETTLE_S)
        results["stopped_box"] = await tools.evaluate(WARNINGS_BOX % adain)
    return results


@pytest.fixture(scope="module")
def front_end(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("comfy-warnings")
    (workdir / "input").mkdir()
    (workdir / "input" / BROKEN_INVERSION).write_bytes(b"")
    # no first-run template dialog; the minimap stays (1.58 shows a run's error in a box that comes with it)
    settings = workdir / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    extra_args = ["--front-end-root", FRONT_END_ROOT] if FRONT_END_ROOT else []
    snapshot = load_snapshot_module()
    with (
        snapshot.comfy_server(COMFYUI_PATH, workdir, extra_args=extra_args) as server,
        tempfile.TemporaryDirectory(prefix="xattn-chromium-", ignore_cleanup_errors=True) as profile,
    ):
        process, port = start_chromium(Path(profile), WINDOW)
        try:
            results = asyncio.run(run_in_front_end(server, port))
        finally:
            snapshot.stop_process(process, grace=20)
        results["workdir"] = str(workdir)
    return results


def test_the_front_end_loads_the_pack_extension(front_end):
    assert front_end["extension"], front_end["version"]
    # the page's own 404s (user.css, subgraph blueprints) are the front end's; none may come from the pack
    assert [error for error in front_end["console_errors"] if "xattn" in error.lower()] == []


def test_the_warning_stays_on_the_node_whole_after_the_run(front_end):
    assert front_end["warned"]["status"]["status_str"] == "success"
    box = front_end["warned_box"]
    assert box is not None, "no warnings box on the node"
    assert box["text"] == WARNING
    assert box["visible"] and box["on_screen"], box
    assert box["first_word_shown"] and box["last_word_shown"], box  # not covered nor clipped by the node
    assert box["scroll_height"] <= box["client_height"] + 1, box  # whole: nothing scrolled or cut off
    assert box["lines"] > 1, box  # the long text wraps
    assert box["split_words"] == [], box  # between words only
    assert box["inside_node"], box  # the node has grown to hold it
    assert not box["progress_text"], box  # the front end's own cut-off box gave way


def test_the_warnings_box_is_not_a_prompt_input(front_end):
    """Not serialized: the queued prompt (and so ComfyUI's cache key) is the same with or without warnings."""
    assert "xattn_warnings" not in front_end["prompt_inputs"]


def test_a_run_that_stops_in_the_node_replaces_the_warning(front_end):
    """An error in the node sends no UI output: the box says the run stopped there, not the run before's warning."""
    assert front_end["warned_again_box"]["text"] == WARNING
    assert front_end["stopped"]["status"]["status_str"] == "error"
    assert front_end["stopped_box"]["text"] == STOPPED_RUN
    assert front_end["stopped_box"]["visible"]


def test_a_clean_run_replaces_the_warning(front_end):
    assert front_end["clean"]["status"]["status_str"] == "success"
    assert front_end["clean_box"]["text"] == CLEAN_RUN
    assert front_end["clean_box"]["visible"]


def test_a_pack_error_shows_its_type_without_an_install_path(front_end):
    """The error as the front end first shows it and the report it opens on request: its Exception Type is the
    pack's xattn.<Name>, and neither it, the message nor the first view names an install path (the report's stack
    trace is ComfyUI's, with file paths, and not looked at)."""
    assert front_end["failed"]["status"]["status_str"] == "error"
    shown, report = front_end["error_shown"], front_end["error_report"]
    assert report["exception_type"] == "xattn.InversionFileError", report
    assert "is not a safetensors inversion file (too short)" in report["exception_message"], report
    for path in ("/custom_nodes/", str(REPO), front_end["workdir"]):
        assert path not in shown, (path, shown[-3000:])
        assert path not in report["exception_type"] + report["exception_message"], (path, report)
