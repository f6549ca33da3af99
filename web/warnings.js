// Shows a pack node's run warnings on the node, whole, until its next run replaces them.
//
// The nodes return them as their UI output ("xattn_warnings", a list of texts; an empty list for a clean run),
// which ComfyUI keeps and sends to the front end when the node finishes or is taken from the cache. The front
// ends (1.27 to 1.58) draw a UI output's text only on their own preview nodes, so this draws it. The same text
// also comes as progress text while the node runs: 1.27 and 1.36 cut that box after about three lines and break
// words anywhere, 1.58 removes it when the job ends, so it gives way to this box here. A run that stops in the node
// (an error, or Cancel) sends no UI output: the box then says so instead of keeping the previous run's warnings.
import { api } from "../../scripts/api.js";
import { app } from "../../scripts/app.js";

const OUTPUT_KEY = "xattn_warnings"; // nodes/common.py WARNINGS_UI_KEY
const WIDGET_NAME = "xattn_warnings";
const PROGRESS_TEXT_WIDGET = "$$node-text-preview"; // the front end's own box for progress text
const CLEAN_RUN = "No warnings in the last run.";
const STOPPED_RUN = "The last run stopped in this node: any warnings of that run are in ComfyUI's log.";

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

function hasBox(node) {
  return !!node?.widgets?.some((widget) => widget.name === WIDGET_NAME);
}

function showWarnings(node, warnings) {
  if (!warnings.length && !hasBox(node)) return; // a clean run has nothing to replace
  showText(node, warnings.length ? warnings.map((warning) => `Warning: ${warning}`).join("\n") : CLEAN_RUN);
}

function showText(node, text) {
  const widget = warningsBox(node);
  widget.element.textContent = text;
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

// a run that stopped in a node that shows warnings: its box would otherwise still hold the run before's
function onStopped({ detail }) {
  const node = detail?.node_id == null ? null : app.graph?.getNodeById?.(detail.node_id);
  if (hasBox(node)) showText(node, STOPPED_RUN);
}

app.registerExtension({
  name: "xattn.Warnings",
  setup() {
    api.addEventListener("execution_error", onStopped);
    api.addEventListener("execution_interrupted", onStopped);
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name.startsWith("XAttn")) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      if (Array.isArray(output?.[OUTPUT_KEY])) showWarnings(this, output[OUTPUT_KEY]);
    };
  },
});
