"""The shipped workflows and the model and inversion files they name: one list, read by the writer
(build_workflows.py) and by every test that checks the workflows (static, in ComfyUI, in the browser)."""

import ast
from pathlib import Path

# One description per workflow, NN_<what it shows>.py (scripts/workflow_specs/__init__.py says what one holds)
WORKFLOW_SPECS = Path(__file__).resolve().parent / "workflow_specs"


def workflow_spec_files() -> list[Path]:
    """The workflow descriptions, in the workflows' order (their NN_ prefixes)."""
    return sorted(WORKFLOW_SPECS.glob("[0-9][0-9]_*.py"))


def declared_name(spec: Path) -> str:
    """The NAME a workflow description assigns, read without importing it (the tests import no builder code)."""
    for statement in ast.parse(spec.read_text()).body:
        if isinstance(statement, ast.Assign) and any(
            getattr(target, "id", "") == "NAME" for target in statement.targets
        ):
            return ast.literal_eval(statement.value)
    raise ValueError(f"{spec} assigns no NAME")


# file names are the template cards' titles: the only thing this front end reads of them
WORKFLOW_NAMES = tuple(declared_name(spec) for spec in workflow_spec_files())
SD15_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
CONTROLNET_MODEL = "control_v11p_sd15_canny_fp16.safetensors"
FLUX_MODEL = "flux1-dev.safetensors"
FLUX_TEXT_ENCODERS = ("clip_l.safetensors", "t5xxl_fp16.safetensors")
FLUX_VAE = "ae.safetensors"
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
}
# what workflow 04 saves (Save Inversion) and workflow 06 loads, in ComfyUI's output folder
SAVED_INVERSIONS = ("xattn/structure_00001_.safetensors", "xattn/appearances_00001_.safetensors")
