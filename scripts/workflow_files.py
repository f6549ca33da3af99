"""The shipped workflows and the model and inversion files they name: one list, read by the writer
(build_workflows.py) and by every test that checks the workflows (static, in ComfyUI, in the browser)."""

import ast
import importlib.util
from pathlib import Path

# One description per workflow, NN_<what it shows>.py (scripts/workflow_specs/__init__.py says what one holds)
WORKFLOW_SPECS = Path(__file__).resolve().parent / "workflow_specs"


def workflow_spec_files() -> list[Path]:
    """The workflow descriptions, in the workflows' order (their NN_ prefixes)."""
    return sorted(WORKFLOW_SPECS.glob("[0-9][0-9]_*.py"))


def declared_value(spec: Path, variable: str, default=None):
    """The plain literal a workflow description assigns to ``variable`` (``default`` where it assigns none), read
    without importing it (the tests import no builder code); ValueError for a value that must be computed."""
    for statement in ast.parse(spec.read_text()).body:
        if isinstance(statement, ast.Assign) and any(
            getattr(target, "id", "") == variable for target in statement.targets
        ):
            return ast.literal_eval(statement.value)
    return default


def declared_name(spec: Path) -> str:
    """The NAME a workflow description assigns."""
    name = declared_value(spec, "NAME")
    if name is None:
        raise ValueError(f"{spec} assigns no NAME")
    return name


def release(version: str) -> tuple[int, ...]:
    """A ComfyUI version ("0.9.2") in an order that compares releases."""
    return tuple(int(part) for part in version.split("."))


# file names are the template cards' titles: the only thing this front end reads of them
WORKFLOW_NAMES = tuple(declared_name(spec) for spec in workflow_spec_files())
# name -> the oldest ComfyUI release a workflow runs on (its description's OLDEST_COMFYUI), None: every release
OLDEST_COMFYUI = {declared_name(spec): declared_value(spec, "OLDEST_COMFYUI") for spec in workflow_spec_files()}


def workflows_for(comfyui_version: str) -> tuple[str, ...]:
    """The workflows a ComfyUI release has the models for, which the tiers check against it; the others name a
    model (and loader options) that release lacks."""
    return tuple(
        name for name, oldest in OLDEST_COMFYUI.items() if oldest is None or release(comfyui_version) >= release(oldest)
    )


SD15_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
CONTROLNET_MODEL = "control_v11p_sd15_canny_fp16.safetensors"
FLUX_MODEL = "flux1-dev.safetensors"
FLUX_TEXT_ENCODERS = ("clip_l.safetensors", "t5xxl_fp16.safetensors")
FLUX_VAE = "ae.safetensors"  # also Z-Image's autoencoder (the same file)
FLUX2_MODEL = "flux2_dev_fp8mixed.safetensors"
FLUX2_TEXT_ENCODER = "mistral_3_small_flux2_bf16.safetensors"
FLUX2_VAE = "flux2-vae.safetensors"
QWEN_IMAGE_MODEL = "qwen_image_fp8_e4m3fn.safetensors"
QWEN_IMAGE_TEXT_ENCODER = "qwen_2.5_vl_7b_fp8_scaled.safetensors"
QWEN_IMAGE_VAE = "qwen_image_vae.safetensors"
Z_IMAGE_MODEL = "z_image_turbo_bf16.safetensors"
Z_IMAGE_TEXT_ENCODER = "qwen_3_4b.safetensors"
# Where each model file comes from: written into the loader nodes' properties.models, which the front end reads to
# show its Missing Models dialog (file, folder, download link) when a template is opened without them. It
# offers downloads only from huggingface.co or civitai.com, and only of .safetensors files.
MODEL_SOURCES = {  # file name -> (models/ folder, download address)
    SD15_CHECKPOINT: (
        "checkpoints",
        "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors",
    ),
    SDXL_CHECKPOINT: (
        "checkpoints",
        "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors",
    ),
    CONTROLNET_MODEL: (  # ControlNet 1.1 canny (lllyasviel) in fp16 safetensors, as ComfyUI's own examples link it
        "controlnet",
        "https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/"
        "control_v11p_sd15_canny_fp16.safetensors",
    ),
    FLUX_MODEL: (  # gated: accept the licence on the model page first, as for every Flux.1-dev download
        "diffusion_models",
        "https://huggingface.co/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors",
    ),
    FLUX_TEXT_ENCODERS[0]: (
        "text_encoders",
        "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
    ),
    FLUX_TEXT_ENCODERS[1]: (
        "text_encoders",
        "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors",
    ),
    FLUX_VAE: (  # the same autoencoder as Flux.1-dev's, from the ungated schnell repository
        "vae",
        "https://huggingface.co/black-forest-labs/FLUX.1-schnell/resolve/main/ae.safetensors",
    ),
    # Flux.2 dev, Qwen-Image and Z-Image Turbo: the files ComfyUI's own templates for them load, from Comfy-Org's
    # repositories (Z-Image's ae.safetensors is Flux's, linked above)
    FLUX2_MODEL: (
        "diffusion_models",
        "https://huggingface.co/Comfy-Org/flux2-dev/resolve/main/split_files/diffusion_models/"
        "flux2_dev_fp8mixed.safetensors",
    ),
    FLUX2_TEXT_ENCODER: (
        "text_encoders",
        "https://huggingface.co/Comfy-Org/flux2-dev/resolve/main/split_files/text_encoders/"
        "mistral_3_small_flux2_bf16.safetensors",
    ),
    FLUX2_VAE: (
        "vae",
        "https://huggingface.co/Comfy-Org/flux2-dev/resolve/main/split_files/vae/flux2-vae.safetensors",
    ),
    QWEN_IMAGE_MODEL: (
        "diffusion_models",
        "https://huggingface.co/Comfy-Org/Qwen-Image_ComfyUI/resolve/main/split_files/diffusion_models/"
        "qwen_image_fp8_e4m3fn.safetensors",
    ),
    QWEN_IMAGE_TEXT_ENCODER: (
        "text_encoders",
        "https://huggingface.co/Comfy-Org/Qwen-Image_ComfyUI/resolve/main/split_files/text_encoders/"
        "qwen_2.5_vl_7b_fp8_scaled.safetensors",
    ),
    QWEN_IMAGE_VAE: (
        "vae",
        "https://huggingface.co/Comfy-Org/Qwen-Image_ComfyUI/resolve/main/split_files/vae/qwen_image_vae.safetensors",
    ),
    Z_IMAGE_MODEL: (
        "diffusion_models",
        "https://huggingface.co/Comfy-Org/z_image_turbo/resolve/main/split_files/diffusion_models/"
        "z_image_turbo_bf16.safetensors",
    ),
    Z_IMAGE_TEXT_ENCODER: (
        "text_encoders",
        "https://huggingface.co/Comfy-Org/z_image_turbo/resolve/main/split_files/text_encoders/qwen_3_4b.safetensors",
    ),
}


def model_links(*names: str) -> str:
    """A note's Markdown list of model files: each linked to its download, with the folder it goes in."""
    return "\n".join(f"- [`{name}`]({MODEL_SOURCES[name][1]}) in `models/{MODEL_SOURCES[name][0]}/`" for name in names)


def _samples_install():
    """nodes/samples_install.py, read by its path: the nodes package itself needs ComfyUI to import."""
    path = Path(__file__).resolve().parents[1] / "nodes" / "samples_install.py"
    spec = importlib.util.spec_from_file_location("xattn_samples_install", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# the images the pack copies into ComfyUI's input/ when ComfyUI loads it (name there -> file in xattn_core/samples/),
# which the workflows' Load Image nodes name
INPUT_SAMPLES: dict[str, str] = _samples_install().SAMPLE_FILES

# what workflow 04 saves (Save Inversion) and workflow 06 loads, in ComfyUI's output folder
SAVED_INVERSIONS = ("xattn/structure_00001_.safetensors", "xattn/appearances_00001_.safetensors")
