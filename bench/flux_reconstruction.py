"""How exactly Flux inversions reconstruct: the README "Flux" figures, on the tiny random Flux.

For 6 steps from 2 and 28 steps from 9, on Flux's shifted schedule and on a linear one, prints
- the largest relative error of one flow step with its stored noise map against the next stored latent;
- the relative error of the sampler's appearance and structure reconstructions against the images, over a
  whole transfer. Needs COMFYUI_PATH (a ComfyUI checkout):

    COMFYUI_PATH=/path/to/ComfyUI python bench/flux_reconstruction.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "comfyui"))

SCHEDULES = ((6, 2), (28, 9))


def relative(latent: torch.Tensor, target: torch.Tensor) -> float:
    return ((latent - target).norm() / target.norm()).item()


def main() -> None:
    if not os.environ.get("COMFYUI_PATH"):
        raise SystemExit("set COMFYUI_PATH to a ComfyUI checkout")
    from comfyui_support import (
        COMFYUI_PATH,
        flow_regeneration_errors,
        flux_conditioning,
        invert_node,
        sample_node,
        setup,
        tiny_flux,
    )

    ns = setup(COMFYUI_PATH)
    flux = tiny_flux(ns, seed=0)
    positive, negative = flux_conditioning(1), flux_conditioning(2)
    images = torch.cat([torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(seed)) for seed in (3, 4)])
    print("steps  start  schedule  regeneration (max)  appearance path  structure path")
    for steps, start in SCHEDULES:
        for name, sigmas in (("flux", None), ("linear", ns.core.flow.linear_sigmas(steps))):
            extra = {} if sigmas is None else {"sigmas": sigmas}
            inversion = invert_node(
                ns, flux, images, steps=steps, start_step=start, cfg=1.0, positive=positive, negative=negative, **extra
            )
            regeneration = max(flow_regeneration_errors(ns, flux, inversion, positive, negative))
            appearance, structure = inversion.select([0]), inversion.select([1])
            _, appearance_out, structure_out, *_ = sample_node(
                ns, flux, appearance, structure, positive=positive, negative=negative
            )
            paths = [
                relative(path["samples"], flux.model.process_latent_out(source.clean))
                for path, source in ((appearance_out, appearance), (structure_out, structure))
            ]
            print(f"{steps:5d}  {start:5d}  {name:8s}  {regeneration:18.2e}  {paths[0]:15.2e}  {paths[1]:14.2e}")


if __name__ == "__main__":
    main()
