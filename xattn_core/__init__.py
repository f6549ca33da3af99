"""Cross-Image Attention engine: pure torch, no ComfyUI import."""

from .adain import adain
from .attention import AttentionSwap, KeyValueStore, contrasted_attention, route_attention
from .inversion import AttentionCache, CacheSettings, Inversion, invert
from .plan import KeyValueSource, PlanSettings, StepPlan, build_plan, model_evaluations
from .sampler import Backend, TransferResult, TransferSettings, pair_rows, transfer
from .schedule import ancestral_split, ddpm_step, paper_sigmas, paper_timesteps

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
