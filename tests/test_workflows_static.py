"""CI tier: the shipped workflows, checked statically (no ComfyUI import).

Every UI workflow in workflows/ and its API twin in workflows/api/ is checked against
workflows/schemas/node_schemas.json, a snapshot of the node schemas that a real ComfyUI with this pack
reports (scripts/snapshot_node_schemas.py writes it; tests/comfyui/test_comfy_workflows.py asserts it is
current): node types exist, links type-check, widget values match the widgets in number, order, type and
range, and the API twin is exactly what the UI graph converts to.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"
SNAPSHOT = WORKFLOWS / "schemas" / "node_schemas.json"
VIRTUAL_NODES = {"Note", "MarkdownNote"}  # front-end only, never sent to the server
SEED_NAMES = {"seed", "noise_seed"}  # the front end adds "control after generate" to these INTs as well
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
# Values of file combos that the tests and docs provide (samples copied into input/, random checkpoints).
SHIPPED_FILES = {
    "ckpt_name": {"v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors"},
    "image": {"xattn_structure.png", "xattn_appearance.png", "giraffe.jpg", "zebra.jpg"},
    "control_net_name": {"control_v11p_sd15_canny.pth"},
    "inversion_file": {"xattn/structure_00001_.safetensors [output]", "xattn/appearances_00001_.safetensors [output]"},
}
EXPECTED = [
    "01_basic_sd15_transfer",
    "02_masked_transfer",
    "03_sdxl_transfer",
    "04_colour_variants",
    "05_transfer_then_upscale",
    "06_from_saved_inversions",
    "07_transfer_with_controlnet",
    "08_local_transfer",
]
SCHEMAS = json.loads(SNAPSHOT.read_text())


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


def ui_problems(workflow: dict) -> list[str]:
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
        schema = SCHEMAS.get(kind)
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
    if not any(SCHEMAS.get(node["type"], {}).get("output_node") for node in workflow["nodes"]):
        problems.append("no output node: the server would refuse the prompt")
    return problems


def to_api(workflow: dict) -> dict:
    """The API prompt the front end makes of a UI workflow (widget values by name, links as [id, slot])."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES or node.get("mode", 0) in (2, 4):  # muted / bypassed are not sent
            continue
        schema = SCHEMAS[node["type"]]
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


def api_problems(prompt: dict) -> list[str]:
    """What ComfyUI's validate_prompt would refuse in an API prompt, as far as it is known without files."""
    problems = []
    for node_id, node in prompt.items():
        where = f"api node {node_id} ({node['class_type']})"
        schema = SCHEMAS.get(node["class_type"])
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
                if source is None or source["class_type"] not in SCHEMAS:
                    problems.append(f"{where}: {name} links to missing node {value[0]}")
                    continue
                outputs = SCHEMAS[source["class_type"]]["outputs"]
                if value[1] >= len(outputs) or outputs[value[1]]["type"] != spec["type"]:
                    got = outputs[value[1]]["type"] if value[1] < len(outputs) else "no such output"
                    problems.append(f"{where}: {name} wants {spec['type']} but gets {got}")
            elif not spec["widget"]:
                problems.append(f"{where}: socket {name} holds a value instead of a link")
            else:
                problem = value_problem(spec, value)
                if problem:
                    problems.append(f"{where}: {problem}")
    if not any(SCHEMAS.get(node["class_type"], {}).get("output_node") for node in prompt.values()):
        problems.append("no output node")
    return problems


def strip_meta(prompt: dict) -> dict:
    return {key: {"class_type": node["class_type"], "inputs": node["inputs"]} for key, node in prompt.items()}


def by_type(prompt: dict, class_type: str) -> list[dict]:
    return [node for node in prompt.values() if node["class_type"] == class_type]


# --- the tests ------------------------------------------------------------------------------------------------


def test_the_shipped_set_is_complete():
    assert sorted(path.stem for path in WORKFLOWS.glob("*.json")) == EXPECTED
    assert sorted(path.stem for path in (WORKFLOWS / "api").glob("*.json")) == EXPECTED


def test_snapshot_covers_every_node_of_the_pack():
    """The pack's node ids (read from its source, as written in define_schema) are all in the snapshot."""
    source = "\n".join(path.read_text() for path in sorted((REPO / "nodes").glob("*.py")))
    pack_ids = set(re.findall(r'node_id="(XAttn\w+)"', source))
    assert {"XAttnInvertImage", "XAttnCrossImageSampler", "XAttnLoadInversion", "XAttnSaveInversion"} <= pack_ids
    assert pack_ids == {name for name in SCHEMAS if name.startswith("XAttn")}
    sampler = {spec["name"]: spec for spec in SCHEMAS["XAttnCrossImageSampler"]["inputs"]}
    assert sampler["appearance"]["type"] == sampler["structure"]["type"] == "XATTN_INVERSION"
    assert SCHEMAS["XAttnInvertImage"]["outputs"] == [{"name": "inversion", "type": "XATTN_INVERSION"}]


@pytest.mark.parametrize("name", EXPECTED)
def test_ui_workflow_checks_against_the_schemas(name):
    workflow, _ = load(name)
    assert ui_problems(workflow) == []
    used = {node["type"] for node in workflow["nodes"]} - VIRTUAL_NODES
    assert used <= set(SCHEMAS)
    assert any(kind.startswith("XAttn") for kind in used)


@pytest.mark.parametrize("name", EXPECTED)
def test_api_twin_is_the_ui_graph(name):
    workflow, prompt = load(name)
    assert api_problems(prompt) == []
    assert strip_meta(prompt) == to_api(workflow)


@pytest.mark.parametrize("name", EXPECTED)
def test_thumbnail_is_a_small_jpeg_of_the_same_name(name):
    """The front end asks for <workflow>.jpg beside the workflow (a .png is never shown)."""
    thumbnail = WORKFLOWS / f"{name}.jpg"
    assert thumbnail.is_file(), "run python -m pytest -m browser tests/browser to make the thumbnails"
    data = thumbnail.read_bytes()
    assert data[:3] == b"\xff\xd8\xff"
    assert len(data) < 300_000
    assert not (WORKFLOWS / f"{name}.png").exists()


def test_checker_rejects_a_latent_fed_to_an_inversion_socket():
    workflow, prompt = load("01_basic_sd15_transfer")
    encode = next(node for node in workflow["nodes"] if node["type"] == "VAEEncode")
    sampler = next(node for node in workflow["nodes"] if node["type"] == "XAttnCrossImageSampler")
    slot = next(i for i, s in enumerate(sampler["inputs"]) if s["name"] == "appearance")
    old = sampler["inputs"][slot]["link"]
    broken = copy.deepcopy(workflow)
    for link in broken["links"]:
        if link[0] == old:
            link[1], link[2], link[5] = encode["id"], 0, "LATENT"
    problems = ui_problems(broken)
    assert any("XAttnCrossImageSampler.appearance (XATTN_INVERSION)" in p and "LATENT" in p for p in problems)
    sampler_id = next(key for key, node in prompt.items() if node["class_type"] == "XAttnCrossImageSampler")
    encode_id = str(encode["id"])
    bad_prompt = copy.deepcopy(prompt)
    bad_prompt[sampler_id]["inputs"]["appearance"] = [encode_id, 0]
    assert any("wants XATTN_INVERSION but gets LATENT" in p for p in api_problems(bad_prompt))


def test_checker_rejects_wrong_widget_counts_and_values():
    workflow, prompt = load("01_basic_sd15_transfer")
    invert = next(node for node in workflow["nodes"] if node["type"] == "XAttnInvertImage")
    dropped = copy.deepcopy(workflow)
    target = next(node for node in dropped["nodes"] if node["id"] == invert["id"])
    target["widgets_values"].remove("fixed")  # the seed's "control after generate" value
    assert any("lacks its 'control after generate' value" in p for p in ui_problems(dropped))
    extra = copy.deepcopy(workflow)
    next(node for node in extra["nodes"] if node["id"] == invert["id"])["widgets_values"].append(1)
    assert any("too many" in p for p in ui_problems(extra))
    invert_id = str(invert["id"])
    for key, value, message in (
        ("start_step", 5000, "outside"),
        ("freeu", "maybe", "not one of"),
        ("bogus", 1, "no input named"),
    ):
        bad = copy.deepcopy(prompt)
        bad[invert_id]["inputs"][key] = value
        assert any(message in p for p in api_problems(bad)), key
    missing = copy.deepcopy(prompt)
    del missing[invert_id]["inputs"]["latent"]
    assert any("required input latent is missing" in p for p in api_problems(missing))
    unknown = copy.deepcopy(workflow)
    unknown["nodes"][1]["type"] = "XAttnNoSuchNode"
    assert any("unknown node type" in p for p in ui_problems(unknown))


def test_basic_workflow_uses_the_paper_defaults():
    _, prompt = load("01_basic_sd15_transfer")
    inversions = by_type(prompt, "XAttnInvertImage")
    assert len(inversions) == 2
    for node in inversions:
        assert {k: node["inputs"][k] for k in ("steps", "start_step", "cfg")} == {
            "steps": 100,
            "start_step": 32,
            "cfg": 3.5,
        }
        positive, negative = (prompt[node["inputs"][k][0]] for k in ("positive", "negative"))
        assert positive["class_type"] == "XAttnObjectPrompt"  # automatic masks: the official default
        assert positive["inputs"]["text"] == "A photo of an animal" and positive["inputs"]["object_word"] == "animal"
        assert negative["inputs"]["text"] == ""
    (sampler,) = by_type(prompt, "XAttnCrossImageSampler")
    assert {k: sampler["inputs"][k] for k in ("cfg", "swap_guidance", "contrast")} == {
        "cfg": 1.0,
        "swap_guidance": 3.5,
        "contrast": 1.67,
    }
    assert sampler["inputs"]["adain_masks"] == "auto"
    assert sorted(n["inputs"]["image"] for n in by_type(prompt, "LoadImage")) == ["giraffe.jpg", "zebra.jpg"]
    assert len(by_type(prompt, "SaveImage")) == 1
    previews = by_type(prompt, "PreviewImage")
    decoded = {tuple(prompt[p["inputs"]["images"][0]]["inputs"]["samples"]) for p in previews}
    sampler_id = next(k for k, v in prompt.items() if v["class_type"] == "XAttnCrossImageSampler")
    assert decoded == {(sampler_id, 1), (sampler_id, 2)}  # the two reconstructions
    masks = {tuple(p["inputs"]["mask"]) for p in by_type(prompt, "MaskPreview")}
    assert masks == {(sampler_id, 3), (sampler_id, 4)}  # the masks AdaIN used


def test_masked_workflow_edits_the_automatic_masks_and_feeds_them_back():
    _, prompt = load("02_masked_transfer")
    first, edited = sorted(
        by_type(prompt, "XAttnCrossImageSampler"), key=lambda node: "edited" in node["_meta"]["title"]
    )
    first_id = next(k for k, v in prompt.items() if v is first)
    assert first["inputs"]["adain_masks"] == "auto" and "structure_mask" not in first["inputs"]
    assert edited["inputs"]["adain_masks"] == "from inputs"
    assert edited["inputs"]["appearance_mask"] == [first_id, 3]
    grow = prompt[edited["inputs"]["structure_mask"][0]]
    assert grow["class_type"] == "GrowMask" and grow["inputs"]["mask"] == [first_id, 4]


def test_controlnet_workflow_steers_the_sampler_with_the_structures_edges():
    _, prompt = load("07_transfer_with_controlnet")
    (sampler,) = by_type(prompt, "XAttnCrossImageSampler")
    (apply,) = by_type(prompt, "ControlNetApplyAdvanced")
    apply_id = next(k for k, v in prompt.items() if v is apply)
    assert sampler["inputs"]["positive"] == [apply_id, 0] and sampler["inputs"]["negative"] == [apply_id, 1]
    edges = prompt[apply["inputs"]["image"][0]]
    assert edges["class_type"] == "Canny"
    structure_image = prompt[prompt[edges["inputs"]["image"][0]]["inputs"]["image"][0]]
    assert structure_image["inputs"]["image"] == "giraffe.jpg"
    for inversion in by_type(prompt, "XAttnInvertImage"):  # the inversions take the plain prompts
        assert prompt[inversion["inputs"]["positive"][0]]["class_type"] == "XAttnObjectPrompt"


def test_local_workflow_masks_the_structure_latent_and_composites():
    _, prompt = load("08_local_transfer")
    structure = next(n for n in by_type(prompt, "XAttnInvertImage") if "structure" in n["_meta"]["title"])
    masked = prompt[structure["inputs"]["latent"][0]]
    assert masked["class_type"] == "SetLatentNoiseMask"
    (composite,) = by_type(prompt, "ImageCompositeMasked")
    assert composite["inputs"]["mask"] == masked["inputs"]["mask"]
    assert prompt[composite["inputs"]["destination"][0]]["class_type"] == "ImageScale"  # the original pixels


def test_sdxl_workflow_runs_at_1024():
    _, prompt = load("03_sdxl_transfer")
    assert [n["inputs"]["ckpt_name"] for n in by_type(prompt, "CheckpointLoaderSimple")] == [
        "sd_xl_base_1.0.safetensors"
    ]
    scales = by_type(prompt, "ImageScale")
    assert len(scales) == 2 and all(n["inputs"]["width"] == n["inputs"]["height"] == 1024 for n in scales)
    assert not by_type(prompt, "EmptyLatentImage")


def test_colour_variants_batches_appearances_and_saves_the_structure():
    _, prompt = load("04_colour_variants")
    assert by_type(prompt, "ImageBatch")
    saved = {
        prompt[n["inputs"]["inversion"][0]]["_meta"]["title"]: n["inputs"]["filename_prefix"]
        for n in by_type(prompt, "XAttnSaveInversion")
    }
    assert saved["Invert structure"] == "xattn/structure"
    (sampler,) = by_type(prompt, "XAttnCrossImageSampler")
    assert prompt[sampler["inputs"]["structure"][0]]["_meta"]["title"] == "Invert structure"
    appearance_latent = prompt[prompt[sampler["inputs"]["appearance"][0]]["inputs"]["latent"][0]]
    assert prompt[appearance_latent["inputs"]["pixels"][0]]["class_type"] == "ImageBatch"


def test_upscale_workflow_refines_at_low_denoise():
    _, prompt = load("05_transfer_then_upscale")
    (ksampler,) = by_type(prompt, "KSampler")
    assert 0 < ksampler["inputs"]["denoise"] < 0.6
    upscale = prompt[ksampler["inputs"]["latent_image"][0]]
    assert upscale["class_type"] == "LatentUpscaleBy" and upscale["inputs"]["scale_by"] > 1
    assert prompt[upscale["inputs"]["samples"][0]]["class_type"] == "XAttnCrossImageSampler"


def test_saved_inversions_workflow_needs_no_images():
    _, prompt = load("06_from_saved_inversions")
    assert not by_type(prompt, "LoadImage") and not by_type(prompt, "XAttnInvertImage")
    loads = by_type(prompt, "XAttnLoadInversion")
    assert sorted(n["inputs"]["inversion_file"] for n in loads) == sorted(SHIPPED_FILES["inversion_file"])
    _, variants = load("04_colour_variants")
    saved = {
        n["inputs"]["filename_prefix"] + "_00001_.safetensors [output]" for n in by_type(variants, "XAttnSaveInversion")
    }
    assert saved == SHIPPED_FILES["inversion_file"]  # workflow 4 writes what workflow 6 reads
