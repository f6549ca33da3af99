"""CI tier: the shipped workflows, checked statically (no ComfyUI import).

Every UI workflow in workflows/ and its API twin in workflows/api/ is checked against
workflows/schemas/node_schemas-*.json, snapshots of the node schemas that a real ComfyUI with this pack
reports (scripts/snapshot_node_schemas.py writes it; tests/comfyui/test_comfy_workflows.py asserts it is
current): node types exist, links type-check, widget values match the widgets in number, order, type and
range, and the API twin is exactly what the UI graph converts to. A workflow is checked against the releases that
have its model (its description's OLDEST_COMFYUI: Flux.2 and Z-Image need 0.9.2).
"""

from __future__ import annotations

import copy
import re
import sys

import pytest

from scripts.workflow_files import INPUT_SAMPLES, OLDEST_COMFYUI, SDXL_CHECKPOINT, WORKFLOW_NAMES, workflows_for
from tests.workflow_checks import (
    REPO,
    SCHEMAS,
    SHIPPED_FILES,
    SNAPSHOTS,
    VIRTUAL_NODES,
    WORKFLOWS,
    api_problems,
    by_type,
    load,
    node_box,
    overlapping_nodes,
    strip_meta,
    to_api,
    ui_problems,
)

EXPECTED = list(WORKFLOW_NAMES)
# (workflow, release) for each release snapshot and each workflow that release has the model for
CHECKED = [(name, version) for version in SNAPSHOTS for name in workflows_for(version)]


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


def test_there_is_a_snapshot_for_each_comfyui_release_the_tier_runs():
    assert list(SNAPSHOTS) == ["0.3.64", "0.9.2"]


def test_every_workflow_is_checked_on_a_release_the_tiers_run():
    """A workflow's oldest release is one the tiers run (so it is checked somewhere), and the newest release runs
    every workflow."""
    assert {version for version in OLDEST_COMFYUI.values() if version} <= set(SNAPSHOTS)
    assert workflows_for(list(SNAPSHOTS)[-1]) == WORKFLOW_NAMES
    assert {name for name, version in OLDEST_COMFYUI.items() if version} == {
        "10 Flux.2 transfer",
        "12 Z-Image Turbo transfer",
    }


@pytest.mark.parametrize("name, version", CHECKED)
def test_ui_workflow_checks_against_the_schemas(name, version):
    workflow, _ = load(name)
    assert ui_problems(workflow, SNAPSHOTS[version]) == []
    used = {node["type"] for node in workflow["nodes"]} - VIRTUAL_NODES
    assert used <= set(SNAPSHOTS[version])
    assert any(kind.startswith("XAttn") for kind in used)


@pytest.mark.parametrize("name, version", CHECKED)
def test_api_twin_is_the_ui_graph(name, version):
    workflow, prompt = load(name)
    assert api_problems(prompt, SNAPSHOTS[version]) == []
    assert strip_meta(prompt) == to_api(workflow, SNAPSHOTS[version])


def test_flux2_needs_the_release_that_has_it():
    """What makes workflow 10 a 0.9.2 workflow, seen by the checker: 0.3.64's CLIPLoader has no flux2 type."""
    workflow, prompt = load("10 Flux.2 transfer")
    assert any("type='flux2' is not one of" in problem for problem in ui_problems(workflow, SNAPSHOTS["0.3.64"]))
    assert any("type='flux2' is not one of" in problem for problem in api_problems(prompt, SNAPSHOTS["0.3.64"]))


@pytest.mark.parametrize("name", EXPECTED)
def test_thumbnail_is_the_card_the_script_draws(name):
    """The front end asks for <workflow>.jpg beside the workflow (a .png is never shown) and shows it in a square:
    the card scripts/make_thumbnails.py draws, as it draws it now."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(REPO / "scripts"))
    import make_thumbnails

    thumbnail = WORKFLOWS / f"{name}.jpg"
    assert thumbnail.is_file(), "run python scripts/make_thumbnails.py"
    data = thumbnail.read_bytes()
    assert data[:3] == b"\xff\xd8\xff" and len(data) < 300_000
    assert not (WORKFLOWS / f"{name}.png").exists()
    shipped = np.asarray(Image.open(thumbnail).convert("RGB"), dtype=np.float32)
    drawn = np.asarray(make_thumbnails.draw_card(make_thumbnails.CARDS[name]), dtype=np.float32)
    assert shipped.shape == (512, 512, 3)
    assert np.abs(shipped - drawn).mean() < 3, "stale card: run python scripts/make_thumbnails.py"


def test_checker_rejects_a_latent_fed_to_an_inversion_socket():
    workflow, prompt = load("01 Basic transfer, SD 1.5")
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
    workflow, prompt = load("01 Basic transfer, SD 1.5")
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
    _, prompt = load("01 Basic transfer, SD 1.5")
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
    images = sorted(n["inputs"]["image"] for n in by_type(prompt, "LoadImage"))
    assert images == ["xattn_giraffe.jpg", "xattn_zebra.jpg"]
    assert len(by_type(prompt, "SaveImage")) == 1
    previews = by_type(prompt, "PreviewImage")
    decoded = {tuple(prompt[p["inputs"]["images"][0]]["inputs"]["samples"]) for p in previews}
    sampler_id = next(k for k, v in prompt.items() if v["class_type"] == "XAttnCrossImageSampler")
    assert decoded == {(sampler_id, 1), (sampler_id, 2)}  # the two reconstructions
    masks = {tuple(p["inputs"]["mask"]) for p in by_type(prompt, "MaskPreview")}
    assert masks == {(sampler_id, 3), (sampler_id, 4)}  # the masks AdaIN used


def test_masked_workflow_edits_the_automatic_masks_and_feeds_them_back():
    _, prompt = load("02 Masks, automatic then edited")
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
    _, prompt = load("07 Transfer with a ControlNet")
    (sampler,) = by_type(prompt, "XAttnCrossImageSampler")
    (apply,) = by_type(prompt, "ControlNetApplyAdvanced")
    apply_id = next(k for k, v in prompt.items() if v is apply)
    assert sampler["inputs"]["positive"] == [apply_id, 0] and sampler["inputs"]["negative"] == [apply_id, 1]
    edges = prompt[apply["inputs"]["image"][0]]
    assert edges["class_type"] == "Canny"
    structure_image = prompt[prompt[edges["inputs"]["image"][0]]["inputs"]["image"][0]]
    assert structure_image["inputs"]["image"] == "xattn_giraffe.jpg"
    for inversion in by_type(prompt, "XAttnInvertImage"):  # the inversions take the plain prompts
        assert prompt[inversion["inputs"]["positive"][0]]["class_type"] == "XAttnObjectPrompt"


def test_local_workflow_masks_the_structure_latent_and_composites():
    _, prompt = load("08 Local transfer inside a mask")
    structure = next(n for n in by_type(prompt, "XAttnInvertImage") if "structure" in n["_meta"]["title"])
    masked = prompt[structure["inputs"]["latent"][0]]
    assert masked["class_type"] == "SetLatentNoiseMask"
    (composite,) = by_type(prompt, "ImageCompositeMasked")
    assert composite["inputs"]["mask"] == masked["inputs"]["mask"]
    assert prompt[composite["inputs"]["destination"][0]]["class_type"] == "ImageScale"  # the original pixels


def test_sdxl_workflow_runs_at_1024():
    _, prompt = load("03 SDXL transfer at 1024 px")
    assert [n["inputs"]["ckpt_name"] for n in by_type(prompt, "CheckpointLoaderSimple")] == [SDXL_CHECKPOINT]
    scales = by_type(prompt, "ImageScale")
    assert len(scales) == 2 and all(n["inputs"]["width"] == n["inputs"]["height"] == 1024 for n in scales)
    assert not by_type(prompt, "EmptyLatentImage")


def test_colour_variants_batches_appearances_and_saves_the_structure():
    _, prompt = load("04 Colour variants")
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
    _, prompt = load("05 Transfer, then upscale")
    (ksampler,) = by_type(prompt, "KSampler")
    assert 0 < ksampler["inputs"]["denoise"] < 0.6
    upscale = prompt[ksampler["inputs"]["latent_image"][0]]
    assert upscale["class_type"] == "LatentUpscaleBy" and upscale["inputs"]["scale_by"] > 1
    assert prompt[upscale["inputs"]["samples"][0]]["class_type"] == "XAttnCrossImageSampler"


def test_saved_inversions_workflow_needs_no_images():
    _, prompt = load("06 Transfer from saved inversions")
    assert not by_type(prompt, "LoadImage") and not by_type(prompt, "XAttnInvertImage")
    loads = by_type(prompt, "XAttnLoadInversion")
    assert sorted(n["inputs"]["inversion_file"] for n in loads) == sorted(SHIPPED_FILES["inversion_file"])
    _, variants = load("04 Colour variants")
    saved = {
        n["inputs"]["filename_prefix"] + "_00001_.safetensors [output]" for n in by_type(variants, "XAttnSaveInversion")
    }
    assert saved == SHIPPED_FILES["inversion_file"]  # workflow 4 writes what workflow 6 reads


def test_flux_workflow_loads_flux_files_and_runs_guidance_distilled():
    """UNET + two text encoders + VAE, FluxGuidance on the positive prompt only, cfg 1 everywhere, the shared
    28-step schedule; the evaluation count its note states is the engine's count for that schedule."""
    from scripts.build_workflows import FLUX_EVALUATIONS, FLUX_SCHEDULE
    from xattn_core.calls import CallLayout, model_evaluations
    from xattn_core.plan import build_plan

    _, prompt = load("09 Flux transfer")
    assert not by_type(prompt, "CheckpointLoaderSimple")
    (clip,) = by_type(prompt, "DualCLIPLoader")
    assert clip["inputs"]["type"] == "flux"
    (guidance,) = by_type(prompt, "FluxGuidance")
    (sampler,) = by_type(prompt, "XAttnCrossImageSampler")
    inverts = by_type(prompt, "XAttnInvertImage")
    for node in (sampler, *inverts):
        assert prompt[node["inputs"]["positive"][0]] is guidance and node["inputs"]["cfg"] == 1.0
    steps, start_step = FLUX_SCHEDULE
    assert [(n["inputs"]["steps"], n["inputs"]["start_step"]) for n in inverts] == [FLUX_SCHEDULE] * 2
    generation = model_evaluations(build_plan(steps, start_step), CallLayout.of(1, 1))
    assert FLUX_EVALUATIONS == 2 * (steps - start_step) + generation == 106  # cfg 1: one evaluation a row
    workflow, _ = load("09 Flux transfer")
    note = next(node for node in workflow["nodes"] if node["type"] == "MarkdownNote")
    assert f"{FLUX_EVALUATIONS} model evaluations" in note["widgets_values"][0]


def transformer_workflow(name: str) -> tuple[dict, dict, list[dict]]:
    """A workflow's API twin, its sampler and its two inversions."""
    _, prompt = load(name)
    (sampler,) = by_type(prompt, "XAttnCrossImageSampler")
    inverts = by_type(prompt, "XAttnInvertImage")
    assert len(inverts) == 2
    return prompt, sampler, inverts


def loaded_files(prompt: dict) -> dict:
    """The model files the workflow's UNETLoader, CLIPLoader and VAELoader name, and CLIPLoader's type."""
    (unet,), (clip,), (vae,) = (by_type(prompt, kind) for kind in ("UNETLoader", "CLIPLoader", "VAELoader"))
    return {
        "unet": unet["inputs"]["unet_name"],
        "clip": (clip["inputs"]["clip_name"], clip["inputs"]["type"]),
        "vae": vae["inputs"]["vae_name"],
    }


def counted_evaluations(name: str, cfg_branches: int = 1) -> int:
    """The engine's count for a workflow's schedule and Options: one evaluation per image per inversion step, and
    the sampler's call lists (xattn_core.calls), each row once per cfg branch."""
    from scripts.build_workflows import WORKFLOWS_BUILT
    from xattn_core.calls import CallLayout, model_evaluations
    from xattn_core.plan import PlanSettings, build_plan

    spec = WORKFLOWS_BUILT[name]
    steps, start_step = spec.SCHEDULE
    settings = PlanSettings(structure_kv_every=getattr(spec, "STRUCTURE_KV_EVERY", PlanSettings.structure_kv_every))
    generation = model_evaluations(build_plan(steps, start_step, settings), CallLayout.of(1, 1))
    return cfg_branches * (2 * (steps - start_step) + generation)


def note_of(name: str) -> str:
    workflow, _ = load(name)
    return next(node for node in workflow["nodes"] if node["type"] == "MarkdownNote")["widgets_values"][0]


def test_flux2_workflow_loads_flux2_files_and_runs_guidance_distilled():
    """As ComfyUI's Flux.2 templates: UNETLoader, CLIPLoader type flux2, the Flux.2 VAE, FluxGuidance 4 on the
    positive prompt; cfg 1 everywhere, 28 steps from 9 on Flux.2's own schedule (no SIGMAS node), plain prompts
    (the Object Word node cannot read Mistral 3's tokens)."""
    from scripts.build_workflows import WORKFLOWS_BUILT
    from scripts.workflow_files import FLUX2_MODEL, FLUX2_TEXT_ENCODER, FLUX2_VAE

    name = "10 Flux.2 transfer"
    spec = WORKFLOWS_BUILT[name]
    prompt, sampler, inverts = transformer_workflow(name)
    assert loaded_files(prompt) == {"unet": FLUX2_MODEL, "clip": (FLUX2_TEXT_ENCODER, "flux2"), "vae": FLUX2_VAE}
    (guidance,) = by_type(prompt, "FluxGuidance")
    assert guidance["inputs"]["guidance"] == 4.0
    for node in (sampler, *inverts):
        assert prompt[node["inputs"]["positive"][0]] is guidance and node["inputs"]["cfg"] == 1.0
        assert "sigmas" not in node["inputs"]
    assert prompt[guidance["inputs"]["conditioning"][0]]["class_type"] == "CLIPTextEncode"
    assert not by_type(prompt, "XAttnObjectPrompt") and not by_type(prompt, "ModelSamplingAuraFlow")
    assert [(n["inputs"]["steps"], n["inputs"]["start_step"]) for n in inverts] == [spec.SCHEDULE] * 2 == [(28, 9)] * 2
    assert spec.EVALUATIONS == counted_evaluations(name) == 106
    assert f"{spec.EVALUATIONS} model evaluations" in note_of(name)


def test_qwen_image_workflow_shifts_the_model_and_finds_the_object_word():
    """As ComfyUI's Qwen-Image template: UNETLoader, CLIPLoader type qwen_image, its VAE, ModelSamplingAuraFlow 3.1
    on the model every node of the pack takes; the Object Word prompt (automatic masks), cfg 1, 20 steps from 6.
    The note's counts are the engine's, at cfg 1 and at the template's cfg 2.5 (every row twice)."""
    from scripts.build_workflows import WORKFLOWS_BUILT
    from scripts.workflow_files import QWEN_IMAGE_MODEL, QWEN_IMAGE_TEXT_ENCODER, QWEN_IMAGE_VAE

    name = "11 Qwen-Image transfer"
    spec = WORKFLOWS_BUILT[name]
    prompt, sampler, inverts = transformer_workflow(name)
    assert loaded_files(prompt) == {
        "unet": QWEN_IMAGE_MODEL,
        "clip": (QWEN_IMAGE_TEXT_ENCODER, "qwen_image"),
        "vae": QWEN_IMAGE_VAE,
    }
    (shift,) = by_type(prompt, "ModelSamplingAuraFlow")
    assert shift["inputs"]["shift"] == 3.1 and prompt[shift["inputs"]["model"][0]]["class_type"] == "UNETLoader"
    for node in (sampler, *inverts):
        assert prompt[node["inputs"]["model"][0]] is shift and node["inputs"]["cfg"] == spec.CFG == 1.0
        assert prompt[node["inputs"]["positive"][0]]["class_type"] == "XAttnObjectPrompt"
    assert [(n["inputs"]["steps"], n["inputs"]["start_step"]) for n in inverts] == [spec.SCHEDULE] * 2 == [(20, 6)] * 2
    assert spec.EVALUATIONS == counted_evaluations(name) == 78
    assert counted_evaluations(name, cfg_branches=2) == 156
    assert f"{spec.EVALUATIONS} model evaluations" in note_of(name) and "(156 evaluations)" in note_of(name)
    assert all(n["inputs"]["width"] == n["inputs"]["height"] == 1328 for n in by_type(prompt, "ImageScale"))


def test_z_image_workflow_runs_turbo_at_8_steps_with_a_structure_step():
    """As ComfyUI's Z-Image Turbo template: UNETLoader, CLIPLoader type lumina2 (Qwen 3 4B), Flux's ae.safetensors,
    ModelSamplingAuraFlow 3; 8 steps from 2 at cfg 1, the Object Word prompt, and an Options node with
    structure_kv_every 2 on the sampler, with which the plan has a swapping structure step (the paper's every 5th
    has none at 8 steps)."""
    import warnings

    from scripts.build_workflows import WORKFLOWS_BUILT
    from scripts.workflow_files import FLUX_VAE, Z_IMAGE_MODEL, Z_IMAGE_TEXT_ENCODER
    from xattn_core.plan import KeyValueSource, PlanSettings, build_plan

    name = "12 Z-Image Turbo transfer"
    spec = WORKFLOWS_BUILT[name]
    prompt, sampler, inverts = transformer_workflow(name)
    assert loaded_files(prompt) == {"unet": Z_IMAGE_MODEL, "clip": (Z_IMAGE_TEXT_ENCODER, "lumina2"), "vae": FLUX_VAE}
    (shift,) = by_type(prompt, "ModelSamplingAuraFlow")
    assert shift["inputs"]["shift"] == 3.0
    for node in (sampler, *inverts):
        assert prompt[node["inputs"]["model"][0]] is shift and node["inputs"]["cfg"] == 1.0
        assert prompt[node["inputs"]["positive"][0]]["class_type"] == "XAttnObjectPrompt"
    assert [(n["inputs"]["steps"], n["inputs"]["start_step"]) for n in inverts] == [spec.SCHEDULE] * 2 == [(8, 2)] * 2
    options = prompt[sampler["inputs"]["options"][0]]
    assert options["class_type"] == "XAttnOptions" and options["inputs"]["structure_kv_every"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the plan's "no swapping step attends to the structure" warning fails here
        plan = build_plan(*spec.SCHEDULE, PlanSettings(structure_kv_every=2))
    assert [step.index for step in plan if step.swaps and step.kv_source is KeyValueSource.STRUCTURE] == [3]
    with pytest.warns(UserWarning, match="structure_kv_every to 2"):
        build_plan(*spec.SCHEDULE)  # what the Options node fixes
    assert spec.EVALUATIONS == counted_evaluations(name) == 32
    assert f"{spec.EVALUATIONS} model evaluations" in note_of(name)


@pytest.mark.parametrize("name", EXPECTED)
def test_no_two_nodes_overlap(name):
    """With the sizes written in the file (the browser tier checks the sizes the front end draws)."""
    workflow, _ = load(name)
    assert overlapping_nodes(workflow["nodes"], gap=10) == []


@pytest.mark.parametrize("name", EXPECTED)
def test_every_load_image_names_a_sample_the_pack_installs(name):
    """The pack copies these into input/ when ComfyUI loads it (nodes/samples_install.py), so a template opens with
    its images and runs as it is: its note gives no copy command to run first."""
    workflow, _ = load(name)
    images = [node["widgets_values"][0] for node in workflow["nodes"] if node["type"] == "LoadImage"]
    assert all(image in INPUT_SAMPLES and image.startswith("xattn_") for image in images), images
    assert all((REPO / "xattn_core" / "samples" / INPUT_SAMPLES[image]).is_file() for image in images)
    note = next(node for node in workflow["nodes"] if node["type"] == "MarkdownNote")["widgets_values"][0]
    assert "cp " not in note and all(image in note for image in images)


# the view each workflow opens at (scripts/workflow_graph.py): on the canvas of a 1920 x 1080 screen, and readable
FIRST_VIEW_PIXELS, READABLE_SCALE = (1700, 860), 0.6


@pytest.mark.parametrize("name", EXPECTED)
def test_a_workflow_opens_on_its_note_and_sampler_readably(name):
    """extra.ds, which the front end applies on open, shows the Read me note and every transfer sampler whole, at a
    scale where node text reads (the browser tier checks it as drawn)."""
    workflow, _ = load(name)
    view = workflow["extra"]["ds"]
    scale, (offset_x, offset_y) = view["scale"], view["offset"]
    assert READABLE_SCALE <= scale <= 1
    shown = [node for node in workflow["nodes"] if node["type"] in ("MarkdownNote", "XAttnCrossImageSampler")]
    assert len(shown) >= 2
    for node in shown:
        left, top, right, bottom = node_box(node)
        on_screen = [(left + offset_x) * scale, (top + offset_y) * scale]
        on_screen += [(right + offset_x) * scale, (bottom + offset_y) * scale]
        assert 0 <= on_screen[0] < on_screen[2] <= FIRST_VIEW_PIXELS[0], (node["type"], on_screen)
        assert 0 <= on_screen[1] < on_screen[3] <= FIRST_VIEW_PIXELS[1], (node["type"], on_screen)
    note = next(node for node in shown if node["type"] == "MarkdownNote")
    assert min(node_box(node)[0] for node in workflow["nodes"]) == node_box(note)[0]  # the note is leftmost


def test_the_overlap_check_sees_a_title_bar_under_a_node():
    above = {"id": 1, "type": "A", "pos": [0, 0], "size": [300, 312]}
    below = {"id": 2, "type": "B", "pos": [100, 320], "size": [300, 100]}  # its title bar starts at y = 290
    assert overlapping_nodes([above, below]) == ["1 (A) / 2 (B)"]
    below["pos"] = [100, 350]
    assert overlapping_nodes([above, below]) == []


MODEL_WIDGETS = {  # loader -> its file widgets (in widget order) and their models/ folder
    "CheckpointLoaderSimple": (("ckpt_name",), "checkpoints"),
    "ControlNetLoader": (("control_net_name",), "controlnet"),
    "UNETLoader": (("unet_name",), "diffusion_models"),
    "CLIPLoader": (("clip_name",), "text_encoders"),
    "DualCLIPLoader": (("clip_name1", "clip_name2"), "text_encoders"),
    "VAELoader": (("vae_name",), "vae"),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_every_model_file_says_where_to_download_it(name):
    """properties.models, which the front end's Missing Models dialog reads: the file, its folder and an address
    it offers to download (huggingface.co, a .safetensors file)."""
    workflow, _ = load(name)
    loaders = [node for node in workflow["nodes"] if node["type"] in MODEL_WIDGETS]
    assert loaders
    for node in loaders:
        widgets, folder = MODEL_WIDGETS[node["type"]]
        models = node["properties"]["models"]
        assert len(models) == len(widgets)
        for index, (widget, model) in enumerate(zip(widgets, models, strict=True)):
            assert model["name"] == node["widgets_values"][index] and model["name"] in SHIPPED_FILES[widget]
            assert model["directory"] == folder
            assert model["url"].startswith("https://huggingface.co/") and model["url"].endswith("/" + model["name"])
            assert model["name"].endswith(".safetensors")


def test_card_text_stays_clear_of_the_front_end_s_badge_corner():
    """Front end 1.58 lays a "Node graph" badge over the top left of each card picture (scripts/make_thumbnails.py
    BADGE_CORNER, on the narrowest card); the browser tier measures the real badge with XATTN_FRONT_END_ROOT."""
    sys.path.insert(0, str(REPO / "scripts"))
    import make_thumbnails

    corner = make_thumbnails.BADGE_CORNER
    assert corner[3] > 50  # the badge's allowance: about a seventh of the picture's height
    for name, card in make_thumbnails.CARDS.items():
        for left, top, right, bottom in make_thumbnails.heading_boxes(card):
            assert top > corner[3] or left > corner[2], (name, (left, top, right, bottom))
            assert 0 <= left and right <= make_thumbnails.SIZE, (name, card.title)
