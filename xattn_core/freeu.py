"""The official code's FreeU variant (``models/unet_2d_condition.py`` there), as a pure function on a
decoder-level input."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class FreeUSettings:
    """Factors for decoder levels whose backbone has 4x / 2x the model's base channels.

    For SD 1.x that is 1280 and 640 channels: b1 = 1.2, s1 = 0.9 and b2 = 1.4, s2 = 0.2.
    """

    b1: float = 1.2
    b2: float = 1.4
    s1: float = 0.9
    s2: float = 0.2


def fourier_filter(feature: Tensor, threshold: int, scale: float) -> Tensor:
    """Scale the centred ``2*threshold`` square of low spatial frequencies by ``scale``."""
    dtype = feature.dtype
    spectrum = torch.fft.fftshift(torch.fft.fftn(feature.float(), dim=(-2, -1)), dim=(-2, -1))
    height, width = feature.shape[-2:]
    centre_h, centre_w = height // 2, width // 2
    gain = torch.ones(height, width, device=feature.device)
    gain[centre_h - threshold : centre_h + threshold, centre_w - threshold : centre_w + threshold] = scale
    spectrum = torch.fft.ifftshift(spectrum * gain, dim=(-2, -1))
    return torch.fft.ifftn(spectrum, dim=(-2, -1)).real.to(dtype)


def official_freeu(backbone: Tensor, base_channels: int, settings: FreeUSettings = FreeUSettings()) -> Tensor:
    """Apply the variant to the backbone feature entering a decoder level.

    Unlike FreeU proper, only the backbone is changed (the skip features are not filtered): half
    its channels are boosted, then the whole feature is Fourier-filtered. Other widths pass through.
    """
    channels = backbone.shape[1]
    if channels == 4 * base_channels:
        factor, scale = settings.b1, settings.s1
    elif channels == 2 * base_channels:
        factor, scale = settings.b2, settings.s2
    else:
        return backbone
    boosted = backbone.clone()
    boosted[:, : channels // 2] = boosted[:, : channels // 2] * factor
    return fourier_filter(boosted, threshold=1, scale=scale)
