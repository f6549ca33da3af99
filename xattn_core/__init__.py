"""Cross-Image Attention engine: pure torch, no ComfyUI import.

Modules (torch, numpy, safetensors and pillow only, unless marked):

- ``schedule``: the paper's sigma schedule and the DDPM (eta = 1) step in sigma space;
- ``inversion``: edit-friendly DDPM inversion (and fast mode's attention cache);
- ``plan``: what each generation step does (swap levels, K/V source, swap guidance, AdaIN);
- ``attention``: where the appearance/structure keys and values are used (``route_attention``);
- ``adain``: AdaIN on latents, plain and masked;
- ``freeu``: the official code's FreeU variant;
- ``transfer``: the joint three-path generation loop over a small ``Backend`` interface;
- ``inversion_file``: inversions as validated safetensors files;
- ``diffusers_backend``: the ``Backend`` over a diffusers UNet (works on the object; imports no diffusers);
- ``diffusers_pipeline``, ``__main__``: the reference pipeline and command line (**need diffusers**);
- ``tiny``: tiny random models for tests and benchmarks (**needs diffusers and transformers**).
"""

from .adain import adain
from .attention import AttentionSwap, KeyValueStore, contrasted_attention, route_attention
from .inversion import AttentionCache, CacheSettings, Inversion, invert
from .plan import KeyValueSource, PlanSettings, StepPlan, build_plan, model_evaluations
from .schedule import ancestral_split, ddpm_step, paper_sigmas, paper_timesteps
from .transfer import Backend, TransferResult, TransferSettings, pair_rows, transfer

__all__ = [
    "AttentionCache",
    "AttentionSwap",
    "Backend",
    "CacheSettings",
    "Inversion",
    "KeyValueSource",
    "KeyValueStore",
    "PlanSettings",
    "StepPlan",
    "TransferResult",
    "TransferSettings",
    "adain",
    "ancestral_split",
    "build_plan",
    "contrasted_attention",
    "ddpm_step",
    "invert",
    "model_evaluations",
    "pair_rows",
    "paper_sigmas",
    "paper_timesteps",
    "route_attention",
    "transfer",
]
