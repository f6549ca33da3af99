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

from tiny_joint_models import relative_error, sharpened  # the script's folder is on sys.path

SHIFTS = (0, 1, 2, 4)  # in tokens (one token = 2 latent cells)
SIGMAS = (0.8, 0.5)
SEEDS = (0, 1)
SHARPNESS = (1.0, 3.0)  # q/k norm scale factors (see sharpened)


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
