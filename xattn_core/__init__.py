"""Cross-Image Attention engine: pure torch, no ComfyUI import.

Modules (torch, numpy, safetensors and pillow only, unless marked):

- ``settings``: bounded settings fields (each default and its range written once, read by nodes and CLI);
- ``schedule``: the paper's sigma schedule and the DDPM (eta = 1) step in sigma space;
- ``inversion``: edit-friendly DDPM inversion (and fast mode's attention cache);
- ``plan``: what each generation step does (swap levels, K/V source, swap guidance, AdaIN);
- ``calls``: the model calls of each step, as data (rows, capture, swap, recording), and their count;
- ``attention``: where the appearance/structure keys and values are used (``route_attention``);
- ``adain``: AdaIN on latents, plain and masked;
- ``masks``: a mask as per-image weights at latent size (AdaIN's masks, a structure's noise mask);
- ``kmeans``: k-means in plain torch (scikit-learn's algorithm, on the model's device);
- ``segmentation``: the official automatic object masks from attention maps (k-means plus the object word);
- ``freeu``: the official code's FreeU variant;
- ``pairing``: which appearance and structure images meet in each output, and whether two inversions can;
- ``transfer``: the joint three-path generation loop over a small ``Backend`` interface;
- ``inversion_file``: inversions as validated safetensors files;
- ``diffusers_backend``: the ``Backend`` over a diffusers UNet (works on the object; imports no diffusers);
- ``tiny``: tiny random models for tests and benchmarks (**needs diffusers and transformers**);
- ``app``: the reference pipeline, the command line (``python -m xattn_core``), the batch command and its scores,
  which use the engine and are never imported by it.
"""

from .adain import adain
from .attention import CallAttention, KeyValueStore, contrasted_attention, route_attention
from .calls import CallLayout, ModelCall, model_evaluations, step_calls
from .inversion import AttentionCache, CacheSettings, Inversion, invert
from .pairing import check_compatible, pair_rows
from .plan import KeyValueSource, PlanSettings, StepPlan, build_plan
from .schedule import ancestral_split, ddpm_step, paper_sigmas, paper_timesteps
from .transfer import Backend, TransferResult, TransferSettings, transfer

__all__ = [
    "AttentionCache",
    "Backend",
    "CallAttention",
    "CallLayout",
    "CacheSettings",
    "Inversion",
    "KeyValueSource",
    "KeyValueStore",
    "ModelCall",
    "PlanSettings",
    "StepPlan",
    "TransferResult",
    "TransferSettings",
    "adain",
    "ancestral_split",
    "build_plan",
    "check_compatible",
    "contrasted_attention",
    "ddpm_step",
    "invert",
    "model_evaluations",
    "pair_rows",
    "paper_sigmas",
    "paper_timesteps",
    "route_attention",
    "step_calls",
    "transfer",
]
