"""The input images the workflows load (the pack's samples, copied into ComfyUI's input/) and what goes with them."""

from workflow_chain import InputPair

PACK_FOLDER = "custom_nodes/comfyui-xattn"  # where the README's clone command puts the pack
GIRAFFE, ZEBRA = "giraffe.jpg", "zebra.jpg"  # the paper's pair, shipped in xattn_core/samples/ (MIT licence)
DRAWN = "xattn_structure.png", "xattn_appearance.png"  # the pack's drawn samples, copied as these names
# ComfyUI has no way for a template to bring its input images (core templates name files the user uploads), so
# each note gives the one command that copies the pack's samples into input/, run from ComfyUI's folder.
PAPER_PAIR = InputPair(
    GIRAFFE,
    ZEBRA,
    "A photo of an animal",
    "animal",
    f"**Inputs:** `cp {PACK_FOLDER}/xattn_core/samples/giraffe.jpg {PACK_FOLDER}/xattn_core/samples/zebra.jpg input/` "
    "(from ComfyUI's folder; the paper's pair, MIT licence), or pick your own images in the Load Image nodes.",
)
DRAWN_PAIR = InputPair(
    *DRAWN,
    "A photo of a vase",
    "vase",
    f"**Inputs:** `cp {PACK_FOLDER}/xattn_core/samples/structure.png input/xattn_structure.png && cp "
    f"{PACK_FOLDER}/xattn_core/samples/appearance.png input/xattn_appearance.png` (from ComfyUI's folder), or pick "
    "your own images in the Load Image nodes.",
)
