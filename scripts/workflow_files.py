"""The shipped workflows and the model and inversion files they name: one list, read by the writer
(build_workflows.py) and by every test that checks the workflows (static, in ComfyUI, in the browser)."""

WORKFLOW_NAMES = (  # file names are the template cards' titles: the only thing this front end reads of them
    "01 Basic transfer, SD 1.5",
    "02 Masks, automatic then edited",
    "03 SDXL transfer at 1024 px",
    "04 Colour variants",
    "05 Transfer, then upscale",
    "06 Transfer from saved inversions",
    "07 Transfer with a ControlNet",
    "08 Local transfer inside a mask",
    "09 Flux transfer",
)
SD15_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
CONTROLNET_MODEL = "control_v11p_sd15_canny_fp16.safetensors"
FLUX_MODEL = "flux1-dev.safetensors"
FLUX_TEXT_ENCODERS = ("clip_l.safetensors", "t5xxl_fp16.safetensors")
FLUX_VAE = "ae.safetensors"
# what workflow 04 saves (Save Inversion) and workflow 06 loads, in ComfyUI's output folder
SAVED_INVERSIONS = ("xattn/structure_00001_.safetensors", "xattn/appearances_00001_.safetensors")
