"""Which RoPE form the appearance keys take in the Flux swap: measured on the tiny random Flux.

Criterion: an appearance image that is the structure image shifted by some tokens carries exactly the
structure's content, so a swap that matches by content should hand the structure its own features back, at any
shift. For each RoPE mode and shift, the swapped velocity prediction (every chosen block swapping, contrast 1,
appearance keys/values captured from the shifted copy) is compared with the structure's own prediction:

    relative error = |v_swapped - v_structure| / |v_structure|

A mode that follows content keeps the error flat as the shift grows; a mode that pulls each query to the same
coordinates of the appearance grows with the shift. Needs COMFYUI_PATH (a ComfyUI checkout):

    COMFYUI_PATH=/path/to/ComfyUI python bench/flux_rope.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "comfyui"))

SHIFTS = (0, 1, 2, 4)  # in tokens (one token = 2 latent cells)
SIZE = 16  # latent cells: 8 x 8 image tokens
SIGMAS = (0.8, 0.5)
SEEDS = (0, 1)
SHARPNESS = (1.0, 3.0)  # q/k norm scale factors (see sharpened)


def sharpened(model, factor: float):
    """A clone whose q/k RMSNorm scales are ``factor`` times larger: attention logits ``factor**2`` larger.

    Random weights give near-uniform attention over the image tokens, whose output a cyclic shift cannot change;
    trained models attend far more peakily. The sharpened clone stands in for that.
    """
    import comfy.model_management

    comfy.model_management.unload_all_models()  # a loaded clone's patches would be read as the base's parameters
    sharp = model.clone()
    for name, parameter in model.model.diffusion_model.named_parameters():
        if name.endswith(("query_norm.scale", "key_norm.scale")):
            sharp.add_object_patch(f"diffusion_model.{name}", torch.nn.Parameter(parameter.detach() * factor))
    return sharp


def relative_error(ns, model, settings, shift: int, sigma: float, seed: int, contrast: float = 1.0) -> float:
    """|v_swapped - v_structure| / |v_structure| for one shifted copy, every block swapping as ``settings`` says
    (a ``JointSwapSettings`` of the loaded pack) with ``contrast``."""
    import comfy.model_management
    from comfyui_support import flux_conditioning

    core = ns.core
    backend = ns.backend
    patched = ns.families.family_of(model).patch(model, None, options={ns.joint.JOINT_OPTIONS_KEY: settings})
    comfy.model_management.load_models_gpu([patched])
    structure = torch.randn(1, 16, SIZE, SIZE, generator=torch.Generator().manual_seed(100 + seed))
    appearance = structure.roll(2 * shift, dims=-1)
    context, extras = flux_conditioning(seed)[0]

    def call(x, swap):
        options = dict(patched.model_options["transformer_options"])
        options[backend.SWAP_KEY] = swap
        options["cond_or_uncond"] = [0]
        with torch.no_grad():
            denoised = patched.model.apply_model(
                x,
                torch.tensor([sigma]),
                c_crossattn=context,
                y=extras["pooled_output"],
                guidance=torch.tensor([3.5]),
                transformer_options=options,
            )
        return (x - denoised) / sigma

    levels = frozenset({0, 1})
    store = core.attention.KeyValueStore()
    call(appearance, core.attention.CallAttention(capture=core.attention.Capture(levels, store)))
    swap = core.attention.CallAttention(swap=core.attention.Swap(levels, (0,), (0,), store, contrast))
    swapped, own = call(structure, swap), call(structure, None)
    return ((swapped - own).norm() / own.norm()).item()


def main() -> None:
    from comfyui_support import setup, tiny_flux

    ns = setup(os.environ["COMFYUI_PATH"])
    joint = __import__(f"{ns.pack.__name__}.xattn_core.joint_attention", fromlist=["RopeMode"])
    base = tiny_flux(ns, seed=0)
    every_block = (0.0, 1.0)
    print("relative error |v_swapped - v_structure| / |v_structure|, mean over seeds and sigmas")
    for factor in SHARPNESS:
        model = base if factor == 1.0 else sharpened(base, factor)
        print(f"q/k norm scale x{factor:g}:  mode    " + "  ".join(f"shift {s}" for s in SHIFTS))
        for mode in joint.RopeMode:
            errors = []
            settings = joint.JointSwapSettings(depth=every_block, rope=mode)
            for shift in SHIFTS:
                values = [relative_error(ns, model, settings, shift, sigma, seed) for sigma in SIGMAS for seed in SEEDS]
                errors.append(sum(values) / len(values))
            print(f"{'':20s}{mode.value:7s} " + "  ".join(f"{error:7.2e}" for error in errors))


if __name__ == "__main__":
    main()
