// Shows a pack node's run warnings on the node, whole, until its next run replaces them.
//
// The nodes return them as their UI output ("xattn_warnings", a list of texts; an empty list for a clean run),
// which ComfyUI keeps and sends to the front end when the node finishes or is taken from the cache. The front
// ends (1.27 to 1.58) draw a UI output's text only on their own preview nodes, so this draws it. The same text
// also comes as progress text while the node runs: 1.27 and 1.36 cut that box after about three lines and break
// words anywhere, 1.58 removes it when the job ends, so it gives way to this box here.
import { app } from "../../scripts/app.js";

const OUTPUT_KEY = "xattn_warnings"; // nodes/common.py WARNINGS_UI_KEY
const WIDGET_NAME = "xattn_warnings";
const PROGRESS_TEXT_WIDGET = "$$node-text-preview"; // the front end's own box for progress text
const CLEAN_RUN = "No warnings in the last run.";

function warningsBox(node) {
  const existing = node.widgets?.find((widget) => widget.name === WIDGET_NAME);
  if (existing) return existing;
  const element = document.createElement("div");
  element.className = "xattn-warnings";
  // wrap between words, a word only if it is wider than the box; no scroll bar: the node grows to the text
  Object.assign(element.style, {
    whiteSpace: "pre-wrap",
    overflowWrap: "break-word",
    wordBreak: "normal",
    overflow: "visible",
    fontSize: "12px",
    lineHeight: "1.35",
    padding: "4px 6px",
    boxSizing: "border-box",
    borderRadius: "6px",
    color: "var(--input-text, #ddd)",
    background: "var(--comfy-input-bg, #222)",
  });
  const widget = node.addDOMWidget(WIDGET_NAME, "xattn_warnings", element, {
    serialize: false, // not an input: never in the saved workflow nor the prompt
    hideOnZoom: false,
    getMinHeight: () => widget.textHeight ?? 24,
    getMaxHeight: () => widget.textHeight ?? 24,
  });
  widget.serialize = false;
  return widget;
}

// Grow the node until the box holds the whole text: the box is laid out by the front end after this call, and
// again whenever the node's width changes, so its own content height is read each time it is laid out.
function fitText(node, widget) {
  const element = widget.element;
  const needed = element.scrollHeight;
  if (!element.isConnected || needed <= element.clientHeight + 1) return;
  widget.textHeight = (widget.textHeight ?? 0) + needed - element.clientHeight;
  node.setSize([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
  node.setDirtyCanvas?.(true, true);
}

function showWarnings(node, warnings) {
  const shown = node.widgets?.some((widget) => widget.name === WIDGET_NAME);
  if (!warnings.length && !shown) return; // a clean run has nothing to replace
  const widget = warningsBox(node);
  widget.element.textContent = warnings.length
    ? warnings.map((warning) => `Warning: ${warning}`).join("\n")
    : CLEAN_RUN;
  const progressText = node.widgets.findIndex((candidate) => candidate.name === PROGRESS_TEXT_WIDGET);
  if (progressText > -1) {
    node.widgets[progressText].onRemove?.();
    node.widgets.splice(progressText, 1);
  }
  widget.textHeight = 24;
  if (!widget.resizeObserver) {
    widget.resizeObserver = new ResizeObserver(() => fitText(node, widget));
    widget.resizeObserver.observe(widget.element);
    const onRemove = widget.onRemove;
    widget.onRemove = function () {
      widget.resizeObserver.disconnect();
      return onRemove?.apply(this, arguments);
    };
  }
  node.setSize([node.size[0], Math.max(node.size[1], node.computeSize()[1])]);
  node.setDirtyCanvas?.(true, true);
  requestAnimationFrame(() => fitText(node, widget));
}

app.registerExtension({
  name: "xattn.Warnings",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name.startsWith("XAttn")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      if (Array.isArray(output?.[OUTPUT_KEY])) showWarnings(this, output[OUTPUT_KEY]);
    };
  },
});
