"""Write the shipped workflows (workflows/*.json) and their API twins (workflows/api/*.json) from one source.

    COMFYUI_PATH=/path/to/ComfyUI python scripts/build_workflows.py        # reads /object_info from a real ComfyUI
    python scripts/build_workflows.py --object-info object_info.json       # or from a saved /object_info

Afterwards refresh the schema snapshot (scripts/snapshot_node_schemas.py) and the thumbnails and screenshots
(python -m pytest -m browser tests/browser).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workflow_chain import Transfer, checkpoint_loader, flux_loaders  # noqa: E402
from workflow_files import (  # noqa: E402
    CONTROLNET_MODEL,
    FLUX_MODEL,
    FLUX_TEXT_ENCODERS,
    FLUX_VAE,
    SD15_CHECKPOINT,
    SDXL_CHECKPOINT,
    WORKFLOW_NAMES,
)
from workflow_graph import Graph  # noqa: E402

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
SD15, SDXL, CONTROLNET = SD15_CHECKPOINT, SDXL_CHECKPOINT, CONTROLNET_MODEL
# Where each model file comes from: written into the loader nodes' properties.models, which the front end reads to
# show its Missing Models dialog (file, folder, download link) when a template is opened without them. It
# offers downloads only from huggingface.co or civitai.com, and only of .safetensors files.
MODEL_SOURCES = {
    SD15: (
        "checkpoints",
        "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors",
    ),
    SDXL: (
        "checkpoints",
        "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors",
    ),
    CONTROLNET: (  # ControlNet 1.1 canny (lllyasviel) in fp16 safetensors, as ComfyUI's own examples link it
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
# Flux workflow: 28 steps (Flux.1-dev's usual length) from step 9, the paper's 32 % start (32 of 100)
FLUX_SCHEDULE = (28, 9)
FLUX_EVALUATIONS = 106  # at cfg 1: 38 inverting both images + 68 generating (README "Flux"; a test recounts it)
GIRAFFE, ZEBRA = "giraffe.jpg", "zebra.jpg"  # the paper's pair, shipped in xattn_core/samples/ (MIT licence)
DRAWN = "xattn_structure.png", "xattn_appearance.png"  # the pack's drawn samples, copied as these names
PACK_FOLDER = "custom_nodes/comfyui-xattn"  # where the README's clone command puts the pack
# ComfyUI has no way for a template to bring its input images (core templates name files the user uploads), so
# each note gives the one command that copies the pack's samples into input/, run from ComfyUI's folder.
OFFICIAL_INPUTS = (
    f"**Inputs:** `cp {PACK_FOLDER}/xattn_core/samples/giraffe.jpg {PACK_FOLDER}/xattn_core/samples/zebra.jpg input/` "
    "(from ComfyUI's folder; the paper's pair, MIT licence), or pick your own images in the Load Image nodes."
)
DRAWN_INPUTS = (
    f"**Inputs:** `cp {PACK_FOLDER}/xattn_core/samples/structure.png input/xattn_structure.png && cp "
    f"{PACK_FOLDER}/xattn_core/samples/appearance.png input/xattn_appearance.png` (from ComfyUI's folder), or pick "
    "your own images in the Load Image nodes."
)


def basic(g: Graph) -> None:
    g.note(
        "# Cross-Image Attention: basic SD 1.5 transfer\n\nThe **structure** image keeps its shape; the "
        "**appearance** image gives colours and materials.\n\n" + OFFICIAL_INPUTS + "\n\n**Change:** the checkpoint "
        "(any SD 1.x), the prompt `A photo of a <domain>` and its **object word** (the paper's default: "
        "automatic object masks, so the background's colours stay out of the object's), and the images. "
        "Defaults are the paper's: 100 steps, start step 32, inversion cfg 3.5, transfer cfg 1.0, swap "
        "guidance 3.5, contrast 1.67. Raise **start_step** (both inversions) to keep more of the structure.\n\n"
        "The previews show the reconstructions of the inputs (if they do not resemble the inputs, the inversion "
        "settings or the checkpoint are off) and the masks AdaIN used."
    )
    t = Transfer(
        g, checkpoint_loader(g, SD15), (GIRAFFE, ZEBRA), 512, "animal", "A photo of an animal", "xattn/transfer"
    )
    t.sample()
    t.invert_both()
    t.save()
    t.decode((t.sampler, "appearance_reconstruction"), "PreviewImage", (1880, 440), "Appearance reconstruction")
    t.decode((t.sampler, "structure_reconstruction"), "PreviewImage", (1880, 880), "Structure reconstruction")
    t.preview_masks(t.sampler, 2640, 440)


def masked(g: Graph) -> None:
    g.note(
        "# Masks: automatic, edited, fed back\n\nThe first sampler finds the object in both images (automatic "
        "masks from the object word, the paper's default) and shows the masks it used. Here the structure mask is "
        "grown a little (**Grow Mask**) and both go into a second sampler set to `adain_masks: from inputs`.\n\n"
        + OFFICIAL_INPUTS
        + "\n\nAny MASK works as input: paint one in a Load Image node (right click, *Open in "
        "MaskEditor*) or build it with mask nodes; any size, soft edges allowed. Connected masks always win over "
        "the object word."
    )
    t = Transfer(
        g, checkpoint_loader(g, SD15), (GIRAFFE, ZEBRA), 512, "animal", "A photo of an animal", "xattn/masked_transfer"
    )
    first = t.sample(title="Sampler (automatic masks)")
    t.invert_both()
    t.preview_masks(first, 1880, 0)
    grow = g.add("GrowMask", (1880, 800), "Grow the structure mask", expand=8, tapered_corners=True)
    g.link(first, "structure_mask", grow, "mask")
    edited = t.sample(x=2280, title="Sampler with the edited masks", adain_masks="from inputs")
    for name, source in (
        ("appearance", (t.inversions["appearance"], 0)),
        ("structure", (t.inversions["structure"], 0)),
        ("appearance_mask", (first, 3)),
        ("structure_mask", (grow, 0)),
    ):
        g.link(*source, edited, name)
    t.decode((edited, "output"), "SaveImage", (2680, 0), "Transfer result", filename_prefix=t.save_as)


def sdxl(g: Graph) -> None:
    g.note(
        "# SDXL transfer at 1024 x 1024\n\nThe same chain on an SDXL base checkpoint. The images are resized to "
        "1024 x 1024 (any multiple of 64 works; structure and appearance may differ in size).\n\n"
        + DRAWN_INPUTS
        + "\n\n**Change:** the checkpoint (SDXL family), the prompt and object word, the resolution in the two "
        "Resize nodes. `freeu` is `auto`, which turns the paper's SD 1.5 FreeU variant off for SDXL. The "
        "automatic masks read SDXL's first two decoder attention levels (x2 and x4)."
    )
    t = Transfer(g, checkpoint_loader(g, SDXL), DRAWN, 1024, "vase", "A photo of a vase", "xattn/sdxl_transfer")
    t.sample()
    t.invert_both()
    t.save()


def colour_variants(g: Graph) -> None:
    g.note(
        "# Colour variants: one structure x several appearances\n\nThe appearance images are batched (**Batch "
        "Images**) and inverted in one call; the sampler pairs the single structure with every appearance and "
        "outputs one image per appearance.\n\n" + DRAWN_INPUTS + "\n\nHere the second appearance is the first "
        "one with inverted colours (core **Invert Image**); replace it with another Load Image, and chain more "
        "Batch Images nodes for more variants. Both inversions are saved with **Save Inversion** "
        "(`output/xattn/structure_00001_.safetensors`, `output/xattn/appearances_00001_.safetensors`), so "
        "*06 Transfer from saved inversions* can reuse them without inverting again."
    )
    t = Transfer(g, checkpoint_loader(g, SD15), DRAWN, 512, None, "A photo of a vase", "xattn/colour_variants")
    t.sample()
    inverted = g.add("ImageInvert", (360, 1140), "Second appearance (inverted colours)")
    g.link(t.pixels["appearance"], 0, inverted, "image")
    batch = g.add("ImageBatch", (600, 1140), "Appearance batch")
    g.link(t.pixels["appearance"], 0, batch, "image1")
    g.link(inverted, 0, batch, "image2")
    t.invert("structure", t.encode("structure"))
    t.invert("appearance", t.encode("appearance", pixels=batch))
    for role, prefix, y in (("structure", "xattn/structure", 640), ("appearance", "xattn/appearances", 1000)):
        save = g.add(
            "XAttnSaveInversion",
            (1400, y),
            f"Save {role} inversion" + ("s" if role == "appearance" else ""),
            filename_prefix=prefix,
        )
        g.link(t.inversions[role], 0, save, "inversion")
    t.decode((t.sampler, "output"), "SaveImage", (1880, 0), "Variants", filename_prefix=t.save_as)


def upscale(g: Graph) -> None:
    g.note(
        "# Transfer, then upscale with a second pass\n\nThe 512 x 512 transfer is upscaled in latent space "
        "(**Upscale Latent By** 1.5) and refined by a plain **KSampler** at low denoise (0.35), which adds detail "
        "while keeping the transferred colours.\n\n" + DRAWN_INPUTS + "\n\n**Change:** `scale_by`, the "
        "KSampler's `denoise` (lower keeps more of the transfer) and its steps/cfg; a more descriptive positive "
        "prompt helps the second pass."
    )
    t = Transfer(g, checkpoint_loader(g, SD15), DRAWN, 512, None, "A photo of a vase", "xattn/transfer_upscaled")
    t.sample()
    t.invert_both()
    t.decode((t.sampler, "output"), "PreviewImage", (1880, 440), "Transfer (512)")
    upscaled = g.add("LatentUpscaleBy", (1880, 0), upscale_method="bilinear", scale_by=1.5)
    g.link(t.sampler, "output", upscaled, "samples")
    second = g.add(
        "KSampler",
        (2260, 0),
        "Second pass (low denoise)",
        seed=0,
        steps=20,
        cfg=5.0,
        sampler_name="euler",
        scheduler="normal",
        denoise=0.35,
    )
    for name, source in (
        ("model", t.loaders.model),
        ("positive", (t.positive, 0)),
        ("negative", (t.negative, 0)),
        ("latent_image", (upscaled, 0)),
    ):
        g.link(*source, second, name)
    t.decode((second, 0), "SaveImage", (2640, 0), "Upscaled result", filename_prefix=t.save_as)


def from_saved(g: Graph) -> None:
    g.note(
        "# Transfer from saved inversions\n\nNo images and no inversion: **Load Inversion** reads inversions "
        "saved by **Save Inversion** (run *04 Colour variants* first; it saves `xattn/structure_00001_.safetensors`"
        " and `xattn/appearances_00001_.safetensors` in the output folder, listed with an `[output]` tag). Files "
        "placed in the input folder are listed too.\n\nUse the **same checkpoint** the inversions were made with "
        "(a different latent format is refused). The sampler starts at the inversions' start step; set "
        "`start_step` higher to keep more of the structure."
    )
    checkpoint = g.add("CheckpointLoaderSimple", (0, 0), ckpt_name=SD15)
    positive = g.add("CLIPTextEncode", (360, 0), "Prompt (positive)", text="A photo of a vase")
    negative = g.add("CLIPTextEncode", (360, 220), "Prompt (negative)", text="")
    for node in (positive, negative):
        g.link(checkpoint, "CLIP", node, "clip")
    sampler = g.add("XAttnCrossImageSampler", (800, 0))
    for role, name, title, y in (
        ("structure", "xattn/structure_00001_.safetensors [output]", "Structure inversion", 440),
        ("appearance", "xattn/appearances_00001_.safetensors [output]", "Appearance inversions", 580),
    ):
        load = g.add("XAttnLoadInversion", (360, y), title, inversion_file=name)
        g.link(load, 0, sampler, role)
    for name, source in (("model", (checkpoint, "MODEL")), ("positive", (positive, 0)), ("negative", (negative, 0))):
        g.link(*source, sampler, name)
    decode = g.add("VAEDecode", (1280, 0))
    g.link(sampler, "output", decode, "samples")
    g.link(checkpoint, "VAE", decode, "vae")
    save = g.add("SaveImage", (1640, 0), "Transfer result", filename_prefix="xattn/from_saved")
    g.link(decode, 0, save, "images")


def controlnet(g: Graph) -> None:
    g.note(
        "# Transfer with a ControlNet on the output\n\nThe structure image's own edges (core **Canny**, no "
        "preprocessor pack needed) drive an SD 1.5 canny ControlNet applied to the sampler's prompts. The pack "
        "gives such hints to the **output only**: the appearance and structure paths reconstruct their own images "
        "with the plain prompts, so the keys/values the output attends to still describe the appearance image. "
        "The inversions take the plain prompts too.\n\n" + OFFICIAL_INPUTS + "\n\n**Change:** the ControlNet "
        f"file (`{CONTROLNET}` here, any SD 1.x ControlNet in `models/controlnet/`), its **strength** (lower "
        "when the edges fight the appearance) and the Canny thresholds. With a ControlNet the output rows "
        "run once more per step (533 to 601 image-evaluations at the paper's settings)."
    )
    t = Transfer(
        g,
        checkpoint_loader(g, SD15),
        (GIRAFFE, ZEBRA),
        512,
        "animal",
        "A photo of an animal",
        "xattn/controlnet_transfer",
    )
    edges = g.add("Canny", (720, 1200), "Structure edges", low_threshold=0.4, high_threshold=0.8)
    g.link(t.pixels["structure"], 0, edges, "image")
    loader = g.add("ControlNetLoader", (1080, 1200), control_net_name=CONTROLNET)
    apply = g.add("ControlNetApplyAdvanced", (1480, 440), "ControlNet on the output", strength=0.8)
    for name, source in (
        ("positive", (t.positive, 0)),
        ("negative", (t.negative, 0)),
        ("control_net", (loader, 0)),
        ("image", (edges, 0)),
        ("vae", t.loaders.vae),
    ):
        g.link(*source, apply, name)
    t.sample(x=1880, conditioning=((apply, "positive"), (apply, "negative")))
    t.invert_both()
    t.save(x=2280)
    t.decode((t.sampler, "structure_reconstruction"), "PreviewImage", (2280, 440), "Structure reconstruction")


def local(g: Graph) -> None:
    g.note(
        "# Local transfer: recolour inside a mask, keep the rest exactly\n\nThe structure latent carries a "
        "**noise mask** (core **Set Latent Noise Mask**), which Invert Image keeps: the transfer happens inside "
        "the mask, and outside it the output follows the structure image's own inversion and ends exactly on "
        "its latent. **Composite** then pastes the result into the original pixels, so the background is the "
        "input's, pixel for pixel.\n\n" + OFFICIAL_INPUTS + "\n\nThe mask here is a rectangle made with "
        "core mask nodes; for your images paint it in the structure's Load Image node (right click, *Open in "
        "MaskEditor*) and connect its MASK output instead. A noise mask on the appearance image means nothing "
        "(it is ignored, with a warning)."
    )
    t = Transfer(
        g, checkpoint_loader(g, SD15), (GIRAFFE, ZEBRA), 512, "animal", "A photo of an animal", "xattn/local_transfer"
    )
    background = g.add("SolidMask", (0, 1320), "Keep everything", value=0.0, width=512, height=512)
    region = g.add("SolidMask", (0, 1500), "Region to recolour", value=1.0, width=320, height=400)
    mask = g.add("MaskComposite", (360, 1320), "Mask", x=96, y=64, operation="add")
    g.link(background, 0, mask, "destination")
    g.link(region, 0, mask, "source")
    sampler = t.sample()
    masked_latent = g.add("SetLatentNoiseMask", (1080, 1320), "Transfer only inside the mask")
    g.link(t.encode("structure"), 0, masked_latent, "samples")
    g.link(mask, 0, masked_latent, "mask")
    t.invert("structure", masked_latent)
    t.invert("appearance", t.encode("appearance"))
    decode, _ = t.decode((sampler, "output"), "PreviewImage", (1880, 440), "Transfer (before compositing)")
    composite = g.add("ImageCompositeMasked", (1880, 0), "Paste into the original", x=0, y=0, resize_source=False)
    for name, source in (("destination", (t.pixels["structure"], 0)), ("source", (decode, 0)), ("mask", (mask, 0))):
        g.link(*source, composite, name)
    save = g.add("SaveImage", (2280, 0), "Transfer result", filename_prefix=t.save_as)
    g.link(composite, 0, save, "images")
    preview = g.add("MaskPreview", (720, 1320), "Mask preview")
    g.link(mask, 0, preview, "mask")


def flux(g: Graph) -> None:
    steps, start_step = FLUX_SCHEDULE
    g.note(
        "# Flux transfer\n\nThe same nodes on **Flux.1** (dev or a fine-tune of it). Flux has no decoder: the "
        "output's image tokens attend to the appearance's image tokens in the second half of the single blocks "
        "(the Options node changes which blocks, and how the keys' positions are treated).\n\n"
        + OFFICIAL_INPUTS
        + "\n\n**Files** (the Missing Models dialog links them): the model in `models/diffusion_models/`, CLIP-L "
        "and T5-XXL in `models/text_encoders/` (`t5xxl_fp8_e4m3fn.safetensors` needs less memory), the VAE "
        "`ae.safetensors` in `models/vae/`; `weight_dtype` fp8_e4m3fn in the model loader halves its memory. "
        "Flux.1-dev's licence is non-commercial.\n\n**Settings:** `cfg` 1 in "
        "both inversions and the sampler (Flux.1-dev is guidance-distilled: one evaluation per row, the negative "
        "prompt unused); the guidance is **FluxGuidance**'s 3.5. "
        f"{steps} steps from step {start_step} (the paper's 32 % start, {FLUX_EVALUATIONS} model evaluations "
        "per transfer) on Flux's own shifted schedule. AdaIN matches the whole images here; for automatic "
        "object masks use **CLIP Text Encode (Object Word)** as the positive prompt, as in *01* (on Flux they "
        "are read from the last double block, not yet checked on real weights: preview the sampler's masks)."
    )
    loaders = flux_loaders(g, FLUX_MODEL, FLUX_TEXT_ENCODERS, FLUX_VAE)
    t = Transfer(
        g,
        loaders,
        (GIRAFFE, ZEBRA),
        1024,
        None,
        "A photo of an animal",
        "xattn/flux_transfer",
        guidance=3.5,
        image_row=520,
    )
    t.sample(cfg=1.0)
    t.invert_both(steps=steps, start_step=start_step, cfg=1.0)
    t.save()


# one writer per shipped workflow, in WORKFLOW_NAMES's order
WORKFLOWS_BUILT = dict(
    zip(
        WORKFLOW_NAMES,
        (basic, masked, sdxl, colour_variants, upscale, from_saved, controlnet, local, flux),
        strict=True,
    )
)


def object_info(path: str | None) -> dict:
    if path:
        return json.loads(Path(path).read_text())
    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui:
        raise SystemExit("name a ComfyUI checkout with COMFYUI_PATH, or pass --object-info")
    import snapshot_node_schemas

    with (
        tempfile.TemporaryDirectory(prefix="xattn-workflows-") as workdir,
        snapshot_node_schemas.comfy_server(comfyui, Path(workdir)) as server,
    ):
        return server.get("/object_info")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--object-info", help="a saved /object_info JSON instead of starting ComfyUI")
    args = parser.parse_args()
    info = object_info(args.object_info)
    for name, build in WORKFLOWS_BUILT.items():
        graph = Graph(info, MODEL_SOURCES)
        build(graph)
        graph.write(WORKFLOWS, name)
        print(f"wrote workflows/{name}.json and workflows/api/{name}.json ({len(graph.nodes)} nodes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
