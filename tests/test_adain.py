import warnings

import pytest
import torch

from xattn_core.adain import adain


def stats(latent, mask=None):
    flat = latent.flatten(2)
    if mask is not None:
        flat = flat[..., mask.flatten().bool()]
    return flat.mean(-1), flat.std(-1)


def test_adain_matches_style_statistics():
    generator = torch.Generator().manual_seed(0)
    content = torch.randn(2, 4, 16, 16, generator=generator)
    style = torch.randn(2, 4, 12, 20, generator=generator) * 3 + 5
    mean, std = stats(adain(content, style))
    style_mean, style_std = stats(style)
    assert torch.allclose(mean, style_mean, atol=1e-4)
    assert torch.allclose(std, style_std, rtol=1e-3)


def test_masked_adain_leaves_unmasked_positions_untouched():
    generator = torch.Generator().manual_seed(1)
    content = torch.randn(1, 4, 16, 16, generator=generator)
    style = torch.randn(1, 4, 16, 16, generator=generator) * 2 - 1
    content_mask = torch.zeros(16, 16)
    content_mask[4:12, 4:12] = 1
    style_mask = torch.zeros(16, 16)
    style_mask[:8] = 1
    out = adain(content, style, content_mask, style_mask)
    outside = content_mask == 0
    assert torch.equal(out[..., outside], content[..., outside])
    mean, std = stats(out, content_mask)
    style_mean, style_std = stats(style, style_mask)
    assert torch.allclose(mean, style_mean, atol=1e-4)
    assert torch.allclose(std, style_std, rtol=1e-3)


def test_masks_of_other_sizes_are_resized():
    content, style = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 8, 8)
    mask = torch.ones(1, 128, 64)
    assert torch.allclose(adain(content, style, mask, torch.ones(32, 32)), adain(content, style), atol=1e-5)


def test_empty_mask_falls_back_to_unmasked_with_warning():
    content, style = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8) + 3
    with pytest.warns(UserWarning, match="empty"):
        out = adain(content, style, torch.zeros(8, 8))
    assert torch.isfinite(out).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.allclose(out, adain(content, style))


def test_nan_mask_is_an_error():
    mask = torch.ones(8, 8)
    mask[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        adain(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), mask)


def test_strength_blends():
    content, style = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8) + 3
    half = adain(content, style, strength=0.5)
    assert torch.allclose(half, 0.5 * content + 0.5 * adain(content, style), atol=1e-6)


def test_mask_batch_is_one_or_one_per_image():
    content, style = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    per_image = torch.ones(2, 8, 8)
    per_image[1, :4] = 0
    out = adain(content, style, per_image)
    assert torch.equal(out[1, :, :4], content[1, :, :4])  # the second image's own mask applies
    shared = adain(content, style, torch.ones(1, 8, 8))
    assert torch.allclose(shared, adain(content, style), atol=1e-5)
    with pytest.raises(ValueError, match="mask batch must hold 1 or 2 masks, got 3"):
        adain(content, style, torch.ones(3, 8, 8))


def test_an_empty_mask_falls_back_for_its_own_image_only():
    generator = torch.Generator().manual_seed(2)
    content = torch.randn(2, 4, 8, 8, generator=generator)
    style = torch.randn(2, 4, 8, 8, generator=generator) + 3
    mask = torch.ones(2, 8, 8)
    mask[0, :4] = 0
    mask[1] = 0
    with pytest.warns(UserWarning, match="empty .* for image 1 of the batch"):
        out = adain(content, style, mask)
    assert torch.equal(out[0, :, :4], content[0, :, :4])  # image 0 keeps its own mask
    assert torch.allclose(out[0:1], adain(content[0:1], style[0:1], mask[0:1]), atol=1e-6)
    assert torch.allclose(out[1:2], adain(content[1:2], style[1:2]), atol=1e-6)  # image 1 unmasked
