"""AdaIN on latents, plain and masked (SPEC 2.5)."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

EPSILON = 1e-5


def _statistics(latent: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per-channel mean and sqrt(unbiased variance + eps) over spatial positions, optionally weighted."""
    flat = latent.flatten(2)
    if weights is None:
        mean, variance = flat.mean(-1, keepdim=True), flat.var(-1, keepdim=True, unbiased=True)
        return mean[..., None], (variance[..., None] + EPSILON).sqrt()
    w = weights.flatten(2)
    total = w.sum(-1, keepdim=True)
    mean = (flat * w).sum(-1, keepdim=True) / total
    # unbiased (reliability-weighted) variance; for a hard 0/1 mask this is the usual n - 1 form
    correction = total - (w * w).sum(-1, keepdim=True) / total
    variance = (w * (flat - mean) ** 2).sum(-1, keepdim=True) / correction.clamp_min(1e-8)
    return mean[..., None], (variance[..., None] + EPSILON).sqrt()


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


def adain(
    content: Tensor,
    style: Tensor,
    content_mask: Tensor | None = None,
    style_mask: Tensor | None = None,
    strength: float = 1.0,
) -> Tensor:
    """Match each channel's mean/std of ``content`` to ``style`` (both ``[B, C, H, W]``).

    With masks, statistics are taken over the masked regions and the result is blended back
    with the content mask, so unmasked content positions stay untouched. An all-zero mask falls
    back to unmasked AdaIN with a warning rather than dividing by zero.
    """
    batch = content.shape[0]
    style = style.expand(batch, -1, -1, -1) if style.shape[0] == 1 else style
    if style.shape[0] != batch:
        raise ValueError(f"style batch {style.shape[0]} does not match content batch {batch}")
    weights_c = resize_mask(content_mask, content.shape[-2:], batch).to(content) if content_mask is not None else None
    weights_s = resize_mask(style_mask, style.shape[-2:], batch).to(style) if style_mask is not None else None
    if (weights_c is not None and (weights_c.flatten(1).sum(1) <= 0).any()) or (
        weights_s is not None and (weights_s.flatten(1).sum(1) <= 0).any()
    ):
        warnings.warn("AdaIN: a mask is empty (all zero); using unmasked AdaIN instead", stacklevel=2)
        weights_c = weights_s = None
    mean_c, std_c = _statistics(content, weights_c)
    mean_s, std_s = _statistics(style, weights_s)
    matched = (content - mean_c) / std_c * std_s + mean_s
    blend = strength if weights_c is None else strength * weights_c
    return content + (matched - content) * blend
