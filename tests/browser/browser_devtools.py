"""The browser tier's tools: a minimal Chrome DevTools protocol client, headless Chromium, and the scripts the
tier evaluates in ComfyUI's front end (they reach into its app object and Pinia stores, read from the bundle
of the comfyui-frontend-package that ComfyUI pins)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import urllib.request
from pathlib import Path

from comfyui_support import CHROMIUM


class DevTools:
    """A minimal Chrome DevTools protocol client on one page (aiohttp websocket)."""

    def __init__(self, socket):
        self.socket, self.counter, self.events = socket, 0, []

    async def send(self, method: str, timeout: float = 60, **params):
        self.counter += 1
        ident = self.counter
        await self.socket.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = await self.socket.receive_json(timeout=timeout)
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    async def evaluate(self, expression: str, timeout: float = 60):
        result = await self.send(
            "Runtime.evaluate", timeout=timeout, expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page JS failed: {json.dumps(result['exceptionDetails'])[:2000]}")
        return result["result"].get("value")

    def take_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen since the last call."""
        errors = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append(
                    "console: "
                    + " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                )
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                errors.append("exception: " + str(details.get("exception", {}).get("description", details.get("text"))))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                errors.append(f"log: {entry.get('text')} {entry.get('url', '')}")
        self.events.clear()
        return errors


@contextlib.asynccontextmanager
async def page_devtools(port: int):
    """A :class:`DevTools` on the first page of the Chromium listening on ``port``, its Runtime, Log and Page
    events on."""
    import aiohttp

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
        page = next(target for target in json.loads(response.read()) if target["type"] == "page")
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as socket,
    ):
        tools = DevTools(socket)
        for domain in ("Runtime", "Log", "Page"):
            await tools.send(f"{domain}.enable")
        yield tools


def start_chromium(profile: Path, window: tuple[int, int]) -> tuple[subprocess.Popen, int]:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--window-size={window[0]},{window[1]}",
        "--hide-scrollbars",
        "about:blank",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
        if found:
            return process, int(found.group(1))
    raise RuntimeError("chromium exited before opening its DevTools port")


def to_jpeg(data: bytes, max_bytes: int) -> bytes:
    """The screenshot as a JPEG under ``max_bytes``: full size if it fits, else scaled down step by step."""
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    while True:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85, optimize=True, progressive=True)
        if buffer.tell() < max_bytes:
            return buffer.getvalue()
        image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)


FIT_VIEW = """
(() => {
  const canvas = app.canvas, nodes = app.graph.nodes;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  const el = canvas.canvas, w = el.clientWidth || el.width, h = el.clientHeight || el.height;
  const scale = Math.min(w / (x1 - x0 + 80), h / (y1 - y0 + 80));
  canvas.ds.scale = scale;
  canvas.ds.offset[0] = -x0 + 40 / scale + (w / scale - (x1 - x0 + 80)) / 2;
  canvas.ds.offset[1] = -y0 + 40 / scale + (h / scale - (y1 - y0 + 80)) / 2;
  canvas.setDirty(true, true);
  canvas.draw(true, true);
  return scale;
})()
"""

INSPECT = """
(async () => {
  const nodes = app.graph.nodes;
  const missing = nodes.filter(n => !n.constructor.comfyClass && !["Note", "MarkdownNote"].includes(n.type))
                       .map(n => n.type);
  // newer front ends (1.58) flag a node whose model file is missing as having errors and list it in their
  // missing-model store; older ones open a Missing Models dialog and leave the node unflagged: other errors only
  const pinia = document.querySelector('[data-v-app]').__vue_app__.config.globalProperties.$pinia;
  const missingModels = pinia._s.get('missingModel')?.missingModelNodeIds;
  const modelFlagged = missingModels ? nodes.filter(n => missingModels.has(String(n.id))) : null;
  const errors = nodes.filter(n => n.has_errors && !modelFlagged?.includes(n)).map(n => n.type);
  const prompt = await app.graphToPrompt();
  // where the front end draws each node (its own sizes, after it has laid out the widgets)
  const boxes = nodes.map(n => ({id: n.id, type: n.type, title: n.title, pos: [...n.pos], size: [...n.size]}));
  return {count: nodes.length, types: nodes.map(n => n.type), missing, errors, output: prompt.output, boxes,
          model_flagged: modelFlagged && modelFlagged.map(n => n.type)};
})()
"""

PINIA = "document.querySelector('[data-v-app]').__vue_app__.config.globalProperties.$pinia"
FRONT_END_VERSION = "window.__COMFYUI_FRONTEND_VERSION__ ?? null"

# what the front end tells the user about a graph's missing node types and model files, each as {where, text}:
# up to 1.36 a dialog (Missing Models, missing node types); 1.58 opens none but shows an "N issues found" overlay
# whose "View details" opens the right side panel's Issues tab, with a group per kind (Missing Models: each file
# with its folder on the next line). Both hide in focus mode (the top menu and the side panels): the script leaves
# it for as long as it opens the panel that way, reads its groups, closes the panel and goes back to focus mode
ISSUES = """
(async () => {
  const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms));
  const dialogs = Array.from(document.querySelectorAll('.p-dialog'));
  if (dialogs.length) return dialogs.map(dialog => ({where: 'dialog', text: dialog.innerText.slice(0, 2000)}));
  const workspace = PINIA._s.get('workspace'), focus = workspace.focusMode;
  workspace.focusMode = false;
  try {
    const overlay = () => document.querySelector('[data-testid="error-overlay"]');
    for (let i = 0; i < 12 && !overlay(); i++) await sleep(250);
    if (!overlay()) return [];
    overlay().querySelector('[data-testid="error-overlay-see-errors"]').click();
    const all = () => Array.from(document.querySelectorAll(
      '[data-testid="properties-panel"] [data-testid^="error-group-"]'));
    for (let i = 0; i < 40 && !all().length; i++) await sleep(250);
    await sleep(300);
    const groups = all().filter(group => !group.parentElement.closest('[data-testid^="error-group-"]'));
    const text = groups.map(group => group.innerText).join('\\n\\n');
    PINIA._s.get('rightSidePanel').closePanel();
    return [{where: 'issues panel', text: text.slice(0, 2000)}];
  } finally {
    workspace.focusMode = focus;
    await sleep(300);
  }
})()
""".replace("PINIA", PINIA)
# close the open dialogs: PrimeVue's (up to 1.36) by their close button, 1.58's (role="dialog", e.g. the template
# browser) by theirs, labelled "Close dialog"
CLOSE_DIALOGS = """
(async () => {
  for (const button of document.querySelectorAll('.p-dialog .p-dialog-close-button')) button.click();
  for (const dialog of document.querySelectorAll('[role="dialog"]:not(.p-dialog)'))
    dialog.querySelector('button[aria-label="Close dialog"], button[aria-label="Close"]')?.click();
  await new Promise(resolve => setTimeout(resolve, 300));
  return document.querySelectorAll('.p-dialog, [role="dialog"]').length;
})()
"""


COMMAND = "app.extensionManager.command.execute({command!r}).then(() => true)"

# the template browser: open it, pick this pack's category, wait for its cards; the cards in the order shown, with
# their title, description and thumbnail size once each thumbnail has loaded
TEMPLATES = """
(async () => {
  const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms));
  await app.extensionManager.command.execute('Comfy.BrowseTemplates');
  await sleep(2000);
  const dialog = document.querySelector('.p-dialog') || document.querySelector('[role="dialog"]');
  // the category: an <li> up to 1.27; newer front ends (1.36: "Extensions" in the side navigation) draw it with
  // other elements, so take the innermost element that reads the name (a click there reaches its handler)
  const named = Array.from(dialog.querySelectorAll('*')).filter(element => element.innerText?.trim() === %s);
  const category = named.find(element => !named.some(other => other !== element && element.contains(other)));
  if (!category) return {category: null, dialog: dialog.innerText.slice(0, 2000)};
  const count = %d;
  // (1.58's dialog is no PrimeVue .p-dialog: its cards are looked for inside the dialog found)
  const cards = () => Array.from(dialog.querySelectorAll('[data-testid^="template-workflow-"]'));
  const names = () => cards().map(card => card.dataset.testid).join('\\n');
  const before = names();  // the category it opened on, which may hold as many cards
  category.click();
  for (let i = 0; i < 60 && (cards().length !== count || names() === before); i++) await sleep(500);
  const loaded = (img) => !!img && img.complete && img.naturalWidth > 0;
  // a card draws its thumbnail only while it is in view (1.27 hides it again out of view), and the pack's cards
  // take more rows than the dialog shows: look at each card in turn, scrolled into view
  const shown = [];
  for (const card of cards()) {
    card.scrollIntoView({block: 'nearest'});
    for (let i = 0; i < 60 && !loaded(card.querySelector('img')); i++) await sleep(250);
    const img = card.querySelector('img');
    shown.push({
      name: card.dataset.testid.replace('template-workflow-', ''),
      // 1.58's cards show the title and tags only, no description (null)
      title: card.querySelector('h3')?.innerText, description: card.querySelector('p')?.innerText ?? null,
      loaded: loaded(img),
      natural: img ? [img.naturalWidth, img.naturalHeight] : null,
      shown: img ? [img.clientWidth, img.clientHeight] : null});
  }
  cards()[0]?.scrollIntoView({block: 'nearest'});
  await sleep(500);
  return {category: category.innerText.trim(), cards: shown};
})()
"""

# a node's help page (web/docs/<node>.md) as the front end shows it, for XAttnCrossImageSampler (a node of that
# type must be in the graph): up to 1.36 the node library's help page, opened the way its help button does; 1.58's
# node library (its new design, the default: NodeLibrarySidebarTabV2) has no help page and no nodeHelp store any
# more, and shows a node's help in the right side panel's Info tab instead, which the node's Info button opens for
# the selected node (useSelectionState.openNodeInfo): select the node and open that tab. ``where`` says which;
# ``error`` is the front end's own (up to 1.36), or in the Info tab whether it showed its fallback (the node's
# description and inputs) for want of a page
HELP_PAGE = """
(async () => {
  const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms));
  const pinia = PINIA, sidebar = pinia._s.get('sidebarTab');
  sidebar.toggleSidebarTab('node-library');
  await sleep(1000);
  const help = pinia._s.get('nodeHelp');
  if (help && 'renderedHelpHtml' in help) {
    help.openHelp(pinia._s.get('nodeDef').nodeDefsByName['XAttnCrossImageSampler']);
    for (let i = 0; i < 20 && (help.isLoading || !help.renderedHelpHtml); i++) await sleep(250);
    await sleep(500);
    return {where: 'node library', open: help.isHelpOpen, error: help.error, shown: document.body.innerText};
  }
  sidebar.toggleSidebarTab('node-library');  // close the library again
  const panel = pinia._s.get('rightSidePanel');
  if (!panel) return {where: null, open: false, error: 'no node library help page, no node Info tab', shown: ''};
  const node = app.graph.nodes.find(node => node.type === 'XAttnCrossImageSampler');
  app.canvas.deselectAll();
  app.canvas.select(node);
  await sleep(500);
  panel.openPanel('info');
  const content = () => document.querySelector('[data-testid="properties-panel"] .node-help-content');
  const rendered = () => content()?.querySelector('.comfy-markdown-content')?.innerText;
  for (let i = 0; i < 40 && !rendered(); i++) await sleep(250);
  await sleep(500);
  const fallback = !!content()?.querySelector('.comfy-markdown-content.space-y-6');
  return {where: 'node info panel', open: panel.isOpen && panel.activeTab === 'info' && !!content(),
          error: fallback ? 'the Info tab shows its fallback: no help page came' : null,
          shown: document.querySelector('[data-testid="properties-panel"]')?.innerText ?? ''};
})()
""".replace("PINIA", PINIA)


def build_graph_script(nodes: list[tuple[str, str, list[int], dict]], links: list[tuple[str, int, str, str]]) -> str:
    """A script that replaces the graph on the page by ``nodes`` ((key, type, position, widget values)) joined
    by ``links`` ((from key, output index, to key, input name)), as a user builds it, with the view at scale 1
    from the origin; it returns each key's node id."""
    return (
        "(() => {"
        f"  const nodes = {json.dumps(nodes)}, links = {json.dumps(links)}, ids = {{}}, made = {{}};"
        "  app.graph.clear();"
        "  for (const [key, type, pos, values] of nodes) {"
        "    const node = LiteGraph.createNode(type);"
        "    if (!node) throw new Error('no node type ' + type);"
        "    node.pos = pos;"
        "    app.graph.add(node);"
        "    for (const [name, value] of Object.entries(values)) {"
        "      const widget = node.widgets.find(widget => widget.name === name);"
        "      if (!widget) throw new Error(type + ' has no widget ' + name);"
        "      widget.value = value;"
        "    }"
        "    made[key] = node; ids[key] = node.id;"
        "  }"
        "  for (const [from, output, to, input] of links) {"
        "    const slot = made[to].findInputSlot(input);"
        "    if (slot < 0 || !made[from].connect(output, made[to], slot)) throw new Error('cannot link ' + input);"
        "  }"
        "  app.canvas.ds.scale = 1; app.canvas.ds.offset[0] = 0; app.canvas.ds.offset[1] = 0;"
        "  app.canvas.setDirty(true, true);"
        "  return ids;"
        "})()"
    )


# a node's warnings box (web/warnings.js) as the page shows it: its text; whether it is visible, on screen,
# inside the node as drawn and not covered (the first and the last word are what the page shows at their
# place); its content and box heights (a whole text does not scroll); how many lines the text takes and which
# words are broken across two lines; whether the front end's own progress-text box is still on the node
WARNINGS_BOX = """
(() => {
  const node = app.graph.getNodeById(%s);
  const widget = node?.widgets?.find(widget => widget.name === 'xattn_warnings');
  if (!widget) return null;
  const element = widget.element, text = element.textContent, box = element.getBoundingClientRect();
  const style = getComputedStyle(element);
  const visible = element.isConnected && style.display !== 'none' && style.visibility !== 'hidden'
    && box.width > 0 && box.height > 0;
  const on_screen = box.left >= 0 && box.top >= 0 && box.right <= innerWidth && box.bottom <= innerHeight;
  const words = Array.from(text.matchAll(/\\S+/g)), tops = new Set(), split_words = [];
  const wordRects = (match) => {
    const range = document.createRange();
    range.setStart(element.firstChild, match.index);
    range.setEnd(element.firstChild, match.index + match[0].length);
    return Array.from(range.getClientRects()).filter(rect => rect.width > 0);
  };
  for (const match of words) {
    const rects = wordRects(match), lineTops = new Set(rects.map(rect => Math.round(rect.top)));
    if (lineTops.size > 1) split_words.push(match[0]);
    for (const top of lineTops) tops.add(top);
  }
  const shows = (match) => {
    const rect = wordRects(match).at(-1);
    const hit = rect && document.elementFromPoint(rect.left + rect.width / 2, rect.top + rect.height / 2);
    return !!hit && element.contains(hit);
  };
  const canvas = app.canvas.canvas.getBoundingClientRect(), ds = app.canvas.ds;
  const nodeTop = canvas.top + (node.pos[1] + ds.offset[1]) * ds.scale;
  const nodeBottom = canvas.top + (node.pos[1] + node.size[1] + ds.offset[1]) * ds.scale;
  return {
    text, visible, on_screen, lines: tops.size, split_words,
    scroll_height: element.scrollHeight, client_height: element.clientHeight,
    box: [box.left, box.top, box.right, box.bottom], node_box: [nodeTop, nodeBottom],
    inside_node: box.top >= nodeTop - 2 && box.bottom <= nodeBottom + 2,
    first_word_shown: shows(words[0]), last_word_shown: shows(words.at(-1)),
    progress_text: node.widgets.some(widget => widget.name === '$$node-text-preview'),
  };
})()
"""

# the report the front end opens for a run's error (its "Show Report" button up to 1.36, "View details" in 1.58):
# the Exception Type and Exception Message it states, and the text around them
ERROR_REPORT = """
(async () => {
  const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms));
  const find = () => Array.from(document.querySelectorAll('button'))
    .find(button => /show report|view details/i.test(button.innerText || ''));
  let button = find();
  // a busy machine may show the error box seconds after the job ends
  for (let waited = 0; !button && waited < 20000; waited += 500) { await sleep(500); button = find(); }
  if (button) { button.click(); await sleep(2500); }
  const text = document.body.innerText;
  const stated = (field) => text.split('\\n').find(line => line.includes(field + ':'))
    ?.split(field + ':')[1].replaceAll('*', '').trim() ?? null;
  const at = text.indexOf('Exception Type');
  return {button: !!button, exception_type: stated('Exception Type'), exception_message: stated('Exception Message'),
          excerpt: at < 0 ? text.slice(-2000) : text.slice(Math.max(0, at - 300), at + 500)};
})()
"""
