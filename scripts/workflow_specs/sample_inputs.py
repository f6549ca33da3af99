"""The input images the workflows load (the pack's samples, which it copies into ComfyUI's input/ itself when
ComfyUI loads it: nodes/samples_install.py) and what goes with them."""

from workflow_chain import InputPair
from workflow_files import INPUT_SAMPLES

NAME_IN_INPUT = {sample: name for name, sample in INPUT_SAMPLES.items()}  # file in xattn_core/samples/ -> input/
# the paper's pair (MIT licence) and the pack's drawn pair, by their names in input/
GIRAFFE, ZEBRA = NAME_IN_INPUT["giraffe.jpg"], NAME_IN_INPUT["zebra.jpg"]
DRAWN = NAME_IN_INPUT["structure.png"], NAME_IN_INPUT["appearance.png"]
# ComfyUI has no way for a template to bring its input images, so the pack puts them in input/ when it loads (never
# replacing a file of the same name); the note says so, for a user who wonders where they come from
PAPER_PAIR = InputPair(
    GIRAFFE,
    ZEBRA,
    "A photo of an animal",
    "animal",
    f"**Inputs:** the paper's giraffe and zebra (MIT licence), `{GIRAFFE}` and `{ZEBRA}`, which the pack copies "
    "into ComfyUI's input folder when ComfyUI starts. Pick your own images in the two Load Image nodes.",
)
DRAWN_PAIR = InputPair(
    *DRAWN,
    "A photo of a vase",
    "vase",
    f"**Inputs:** the pack's drawn vases, `{DRAWN[0]}` and `{DRAWN[1]}`, which the pack copies into ComfyUI's input "
    "folder when ComfyUI starts. Pick your own images in the two Load Image nodes.",
)
