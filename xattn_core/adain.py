"""AdaIN on latents, plain and masked (the official ``utils/adain.py``, applied by ``get_adain_callback`` in
``appearance_transfer_model.py``)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .masks import resize_mask

EPSILON = 1e-5


def _statistics(latent: Tensor, weights: Tensor | None, unmasked_rows: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and sqrt(unbiased variance + eps) over spatial positions, optionally weighted.

    Rows flagged in ``unmasked_rows`` take the unweighted statistics (their mask is empty).
    """
    flat = latent.flatten(2)
    mean, variance = flat.mean(-1, keepdim=True), flat.var(-1, keepdim=True, unbiased=True)
    if weights is not None:
        w = weights.flatten(2)
        total = w.sum(-1, keepdim=True)
        weighted_mean = (flat * w).sum(-1, keepdim=True) / total
        # unbiased (reliability-weighted) variance; for a hard 0/1 mask this is the usual n - 1 form
        correction = total - (w * w).sum(-1, keepdim=True) / total
        weighted_variance = (w * (flat - weighted_mean) ** 2).sum(-1, keepdim=True) / correction.clamp_min(1e-8)
        keep = unmasked_rows.reshape(-1, 1, 1)
        mean = torch.where(keep, mean, weighted_mean)
        variance = torch.where(keep, variance, weighted_variance)
    return mean[..., None], (variance[..., None] + EPSILON).sqrt()


def adain(
    content: Tensor,
    style: Tensor,
    content_mask: Tensor | None = None,
    style_mask: Tensor | None = None,
    strength: float = 1.0,
) -> Tensor:
    """Match each channel's mean/std of ``content`` to ``style`` (both ``[B, C, H, W]``).

    With masks, statistics are taken over the masked regions and the result is blended back
    with the content mask, so unmasked content positions stay untouched. An image whose content or
    style mask is all zero falls back to unmasked AdaIN, with a warning, rather than dividing by
    zero (the official code turns it into NaN); the other images of the batch keep their masks.
    """
    batch = content.shape[0]
    style = style.expand(batch, -1, -1, -1) if style.shape[0] == 1 else style
    if style.shape[0] != batch:
        raise ValueError(f"style batch {style.shape[0]} does not match content batch {batch}")
    weights_c = resize_mask(content_mask, content.shape[-2:], batch).to(content) if content_mask is not None else None
    weights_s = resize_mask(style_mask, style.shape[-2:], batch).to(style) if style_mask is not None else None
    empty = torch.zeros(batch, dtype=torch.bool, device=content.device)
    for weights in (weights_c, weights_s):
        if weights is not None:
            empty |= weights.flatten(1).sum(1) <= 0
    if empty.any():
        images = ", ".join(str(row) for row in empty.nonzero().flatten().tolist())
        warnings.warn(
            f"AdaIN: a mask is empty (all zero) for image {images} of the batch; using unmasked AdaIN there",
            stacklevel=2,
        )
    mean_c, std_c = _statistics(content, weights_c, empty)
    mean_s, std_s = _statistics(style, weights_s, empty)
    matched = (content - mean_c) / std_c * std_s + mean_s
    if weights_c is None:
        return content + (matched - content) * strength
    blend = torch.where(empty.reshape(-1, 1, 1, 1), torch.full_like(weights_c, strength), strength * weights_c)
    return content + (matched - content) * blend
