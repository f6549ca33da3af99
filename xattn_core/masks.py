"""Masks as the engine uses them: a ComfyUI MASK or any mask tensor, as per-image weights at latent size (AdaIN's
masks, a structure's noise mask)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def resize_mask(mask: Tensor, size: tuple[int, int], batch: int) -> Tensor:
    """A MASK ([H, W], [B, H, W] or [B, 1, H, W], any size, soft) as ``[batch, 1, h, w]`` weights."""
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[:, None]
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"a mask must be [H, W], [B, H, W] or [B, 1, H, W], got shape {tuple(mask.shape)}")
    if torch.isnan(mask).any():
        raise ValueError("the mask contains NaN values; fix the node that produced it")
    mask = mask.float().clamp(0.0, 1.0)
    if mask.shape[-2:] != size:
        mask = F.interpolate(mask, size=size, mode="bilinear", align_corners=False)
    if mask.shape[0] not in (1, batch):
        raise ValueError(f"a mask batch must hold 1 or {batch} masks, got {mask.shape[0]}")
    return mask.expand(batch, -1, -1, -1)
