"""The shipped workflows and the model and inversion files they name: one list, read by the writer
(build_workflows.py) and by every test that checks the workflows (static, in ComfyUI, in the browser)."""

WORKFLOW_NAMES = (
    "01_basic_sd15_transfer",
    "02_masked_transfer",
    "03_sdxl_transfer",
    "04_colour_variants",
    "05_transfer_then_upscale",
    "06_from_saved_inversions",
    "07_transfer_with_controlnet",
    "08_local_transfer",
)
SD15_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
CONTROLNET_MODEL = "control_v11p_sd15_canny.pth"
# what 04_colour_variants saves (Save Inversion) and 06_from_saved_inversions loads, in ComfyUI's output folder
SAVED_INVERSIONS = ("xattn/structure_00001_.safetensors", "xattn/appearances_00001_.safetensors")
