"""The paper's contrast written out on explicit softmax weights (shared by the unit and ComfyUI tiers)."""

from __future__ import annotations

import torch


def contrasted_weights(weights: torch.Tensor, contrast: float, contrasted: torch.Tensor | slice | None = None):
    """clip(c * A - (c - 1) * m, 0, 1) on the key columns ``contrasted`` (all of them when None), m their mean
    weight per query; the other columns keep their softmax weights. Not renormalised."""
    if contrasted is None:  # the whole row: its weights sum to one, so m = 1 / N_keys
        return (contrast * weights - (contrast - 1) / weights.shape[-1]).clamp(0, 1)
    out = weights.clone()
    part = weights[..., contrasted]
    out[..., contrasted] = (contrast * part - (contrast - 1) * part.mean(-1, keepdim=True)).clamp(0, 1)
    return out
