"""Static checks of workflow files against the node-schema snapshots (workflows/schemas/node_schemas-*.json,
one per ComfyUI release the tier runs; core nodes gained inputs and options between them).

``ui_problems`` checks a UI workflow the way the front end loads it (node types, links, widget values in number,
order, type and range); ``to_api`` converts it as the front end's "Export (API)" does; ``api_problems`` checks
an API prompt as the server's validation would. Used by tests/test_workflows_static.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from scripts.workflow_files import (
    CONTROLNET_MODEL,
    FLUX2_MODEL,
    FLUX2_TEXT_ENCODER,
    FLUX2_VAE,
    FLUX_MODEL,
    FLUX_TEXT_ENCODERS,
    FLUX_VAE,
    INPUT_SAMPLES,
    QWEN_IMAGE_MODEL,
    QWEN_IMAGE_TEXT_ENCODER,
    QWEN_IMAGE_VAE,
    SAVED_INVERSIONS,
    SD15_CHECKPOINT,
    SDXL_CHECKPOINT,
    Z_IMAGE_MODEL,
    Z_IMAGE_TEXT_ENCODER,
)

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"
VIRTUAL_NODES = {"Note", "MarkdownNote"}  # front-end only, never sent to the server
SEED_NAMES = {"seed", "noise_seed"}  # the front end adds "control after generate" to these INTs as well
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
# Values of file combos that the pack and the docs provide (the samples it copies into input/, model files).
SHIPPED_FILES = {
    "ckpt_name": {SD15_CHECKPOINT, SDXL_CHECKPOINT},
    "image": set(INPUT_SAMPLES),
    "control_net_name": {CONTROLNET_MODEL},
    "unet_name": {FLUX_MODEL, FLUX2_MODEL, QWEN_IMAGE_MODEL, Z_IMAGE_MODEL},
    "clip_name": {FLUX2_TEXT_ENCODER, QWEN_IMAGE_TEXT_ENCODER, Z_IMAGE_TEXT_ENCODER},
    "clip_name1": {FLUX_TEXT_ENCODERS[0]},
    "clip_name2": {FLUX_TEXT_ENCODERS[1]},
    "vae_name": {FLUX_VAE, FLUX2_VAE, QWEN_IMAGE_VAE},
    "inversion_file": {f"{name} [output]" for name in SAVED_INVERSIONS},
}
# ComfyUI version -> that release's snapshot, oldest first (written by scripts/snapshot_node_schemas.py)
SNAPSHOTS = {
    path.stem.removeprefix("node_schemas-"): json.loads(path.read_text())
    for path in sorted(
        (WORKFLOWS / "schemas").glob("node_schemas-*.json"),
        key=lambda path: tuple(int(part) for part in path.stem.removeprefix("node_schemas-").split(".")),
    )
}
SCHEMAS = next(iter(SNAPSHOTS.values()))  # the oldest release's, where one snapshot is enough


def load(name: str) -> tuple[dict, dict]:
    return (
        json.loads((WORKFLOWS / f"{name}.json").read_text()),
        json.loads((WORKFLOWS / "api" / f"{name}.json").read_text()),
    )


def widget_inputs(schema: dict) -> list[dict]:
    return [spec for spec in schema["inputs"] if spec["widget"]]


def socket_inputs(schema: dict) -> list[dict]:
    return [spec for spec in schema["inputs"] if not spec["widget"]]


def has_control(spec: dict) -> bool:
    return spec["type"] == "INT" and (spec.get("control_after_generate", False) or spec["name"] in SEED_NAMES)


def value_problem(spec: dict, value) -> str | None:
    kind, name = spec["type"], spec["name"]
    if kind == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{name}={value!r} is not an INT"
    elif kind == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{name}={value!r} is not a FLOAT"
    elif kind == "STRING":
        if not isinstance(value, str):
            return f"{name}={value!r} is not a STRING"
    elif kind == "BOOLEAN":
        if not isinstance(value, bool):
            return f"{name}={value!r} is not a BOOLEAN"
    elif kind == "COMBO":
        allowed = SHIPPED_FILES.get(name, set()) if spec["options"] == "dynamic" else spec["options"]
        if value not in allowed:
            return f"{name}={value!r} is not one of {sorted(allowed)}"
    if kind in ("INT", "FLOAT"):
        if "min" in spec and value < spec["min"] or "max" in spec and value > spec["max"]:
            return f"{name}={value} is outside [{spec.get('min')}, {spec.get('max')}]"
    return None


def ui_problems(workflow: dict, schemas: dict = SCHEMAS) -> list[str]:
    """Everything wrong with a UI-format workflow, as the front end and the server would see it."""
    problems = []
    nodes = {node["id"]: node for node in workflow["nodes"]}
    if len(nodes) != len(workflow["nodes"]):
        problems.append("duplicate node ids")
    links = {link[0]: link for link in workflow["links"]}
    if len(links) != len(workflow["links"]):
        problems.append("duplicate link ids")
    if nodes and workflow.get("last_node_id", 0) < max(nodes):
        problems.append("last_node_id is below the highest node id")
    if links and workflow.get("last_link_id", 0) < max(links):
        problems.append("last_link_id is below the highest link id")
    for node in workflow["nodes"]:
        kind, where = node["type"], f"node {node['id']} ({node['type']})"
        if kind in VIRTUAL_NODES:
            if node.get("inputs") or node.get("outputs"):
                problems.append(f"{where}: a note has sockets")
            continue
        schema = schemas.get(kind)
        if schema is None:
            problems.append(f"{where}: unknown node type")
            continue
        sockets = [slot for slot in node.get("inputs", []) if "widget" not in slot]
        expected = socket_inputs(schema)
        if [(slot["name"], slot["type"]) for slot in sockets] != [(spec["name"], spec["type"]) for spec in expected]:
            names = [s["name"] for s in sockets], [s["name"] for s in expected]
            problems.append(f"{where}: sockets {names[0]} != schema {names[1]}")
        for slot, spec in zip(sockets, expected, strict=False):
            if spec["required"] and slot.get("link") is None:
                problems.append(f"{where}: required input {spec['name']} is not connected")
        for slot in node.get("inputs", []):
            if "widget" in slot and slot["widget"]["name"] not in {s["name"] for s in widget_inputs(schema)}:
                problems.append(f"{where}: converted widget {slot['widget']['name']} is not a widget")
        outputs = [(slot["name"], slot["type"]) for slot in node.get("outputs", [])]
        if outputs != [(spec["name"], spec["type"]) for spec in schema["outputs"]]:
            problems.append(f"{where}: outputs {outputs} != schema {schema['outputs']}")
        values = list(node.get("widgets_values", []))
        for spec in widget_inputs(schema):
            if not values:
                problems.append(f"{where}: no widget value for {spec['name']}")
                break
            problem = value_problem(spec, values.pop(0))
            if problem:
                problems.append(f"{where}: {problem}")
            if has_control(spec):
                control = values.pop(0) if values else None
                if control not in CONTROL_VALUES:
                    problems.append(f"{where}: {spec['name']} lacks its 'control after generate' value ({control!r})")
            if spec.get("image_upload"):
                upload = values.pop(0) if values else None
                if upload != "image":
                    problems.append(f"{where}: {spec['name']} lacks its upload widget value ({upload!r})")
        if values:
            problems.append(f"{where}: {len(values)} widget value(s) too many: {values}")
    for link_id, source, source_slot, target, target_slot, kind in workflow["links"]:
        where = f"link {link_id}"
        if source not in nodes or target not in nodes:
            problems.append(f"{where}: joins a missing node")
            continue
        outputs, inputs = nodes[source].get("outputs", []), nodes[target].get("inputs", [])
        if source_slot >= len(outputs) or target_slot >= len(inputs):
            problems.append(f"{where}: slot out of range")
            continue
        out_slot, in_slot = outputs[source_slot], inputs[target_slot]
        if out_slot["type"] != kind or in_slot["type"] not in (kind, "*"):
            problems.append(
                f"{where}: {nodes[source]['type']}.{out_slot['name']} ({out_slot['type']}) -> "
                f"{nodes[target]['type']}.{in_slot['name']} ({in_slot['type']}), link says {kind}"
            )
        if link_id not in (out_slot.get("links") or []):
            problems.append(f"{where}: missing from the source output's links")
        if in_slot.get("link") != link_id:
            problems.append(f"{where}: the target input does not point back to it")
    for node in workflow["nodes"]:
        for slot in node.get("inputs", []):
            if slot.get("link") is not None and slot["link"] not in links:
                problems.append(f"node {node['id']}: input {slot['name']} names missing link {slot['link']}")
        for slot in node.get("outputs", []):
            for link_id in slot.get("links") or []:
                if link_id not in links:
                    problems.append(f"node {node['id']}: output {slot['name']} names missing link {link_id}")
    if not any(schemas.get(node["type"], {}).get("output_node") for node in workflow["nodes"]):
        problems.append("no output node: the server would refuse the prompt")
    return problems


def to_api(workflow: dict, schemas: dict = SCHEMAS) -> dict:
    """The API prompt the front end makes of a UI workflow (widget values by name, links as [id, slot]), with the
    widgets of a release's ``schemas``."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES or node.get("mode", 0) in (2, 4):  # muted / bypassed are not sent
            continue
        schema = schemas[node["type"]]
        values, inputs = list(node.get("widgets_values", [])), {}
        for spec in widget_inputs(schema):
            inputs[spec["name"]] = values.pop(0)
            if has_control(spec):
                values.pop(0)
            if spec.get("image_upload"):
                values.pop(0)
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, source, source_slot, *_ = links[slot["link"]]
                inputs[slot.get("widget", {}).get("name", slot["name"])] = [str(source), source_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def api_problems(prompt: dict, schemas: dict = SCHEMAS) -> list[str]:
    """What ComfyUI's validate_prompt would refuse in an API prompt, as far as it is known without files."""
    problems = []
    for node_id, node in prompt.items():
        where = f"api node {node_id} ({node['class_type']})"
        schema = schemas.get(node["class_type"])
        if schema is None:
            problems.append(f"{where}: unknown class_type")
            continue
        specs = {spec["name"]: spec for spec in schema["inputs"]}
        for name in node["inputs"]:
            if name not in specs:
                problems.append(f"{where}: no input named {name}")
        for name, spec in specs.items():
            value = node["inputs"].get(name)
            if value is None:
                if spec["required"]:
                    problems.append(f"{where}: required input {name} is missing")
                continue
            if isinstance(value, list):
                source = prompt.get(value[0])
                if source is None or source["class_type"] not in schemas:
                    problems.append(f"{where}: {name} links to missing node {value[0]}")
                    continue
                outputs = schemas[source["class_type"]]["outputs"]
                if value[1] >= len(outputs) or outputs[value[1]]["type"] != spec["type"]:
                    got = outputs[value[1]]["type"] if value[1] < len(outputs) else "no such output"
                    problems.append(f"{where}: {name} wants {spec['type']} but gets {got}")
            elif not spec["widget"]:
                problems.append(f"{where}: socket {name} holds a value instead of a link")
            else:
                problem = value_problem(spec, value)
                if problem:
                    problems.append(f"{where}: {problem}")
    if not any(schemas.get(node["class_type"], {}).get("output_node") for node in prompt.values()):
        problems.append("no output node")
    return problems


def strip_meta(prompt: dict) -> dict:
    return {key: {"class_type": node["class_type"], "inputs": node["inputs"]} for key, node in prompt.items()}


def by_type(prompt: dict, class_type: str) -> list[dict]:
    return [node for node in prompt.values() if node["class_type"] == class_type]


TITLE_HEIGHT = 30  # LiteGraph draws a node's title bar above its pos


def node_box(node: dict) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of a node on the canvas, title bar included."""
    (x, y), (width, height) = node["pos"], node["size"]
    return x, y - TITLE_HEIGHT, x + width, y + height


def overlapping_nodes(nodes: list[dict], gap: float = 0) -> list[str]:
    """Every pair of nodes whose boxes (title bars included) come closer than ``gap``, as 'id (title) / id (title)'."""
    found = []
    boxes = [(node, node_box(node)) for node in nodes]
    for index, (first, a) in enumerate(boxes):
        for second, b in boxes[index + 1 :]:
            if a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap:
                names = [f"{node['id']} ({node.get('title') or node['type']})" for node in (first, second)]
                found.append(" / ".join(names))
    return found
