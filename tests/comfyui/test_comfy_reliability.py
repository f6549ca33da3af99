"""Reliability: odd resolutions, half-precision models, a 50-transfer soak, no network, model release."""

import gc
import socket
import weakref

import pytest
import torch
from comfyui_support import invert_node, sample_node, tiny_sd15


def chain(comfy, model, height=16, width=16, steps=6, start=2, seed=0):
    samples = torch.randn(2, 4, height, width, generator=torch.Generator().manual_seed(seed))
    inversion = invert_node(comfy, model, samples, steps=steps, start_step=start, seed=seed)
    output, _, structure, *_ = sample_node(comfy, model, inversion.select([0]), inversion.select([1]))
    return output["samples"], structure["samples"]


def test_resolution_that_is_not_a_multiple_of_64_px_works(comfy):
    model, _ = tiny_sd15(comfy, seed=4)
    output, structure = chain(comfy, model, height=25, width=17)  # 200 x 136 px
    assert output.shape == (1, 4, 25, 17)
    assert torch.isfinite(output).all()
    assert (output - structure).abs().mean() > 1e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_give_finite_results(comfy, dtype):
    model, _ = tiny_sd15(comfy, seed=5, dtype=dtype)
    assert model.model.get_dtype() == dtype
    output, structure = chain(comfy, model)
    assert torch.isfinite(output).all() and torch.isfinite(structure).all()
    assert (output - structure).abs().mean() > 1e-2


def test_no_network_is_needed(comfy, monkeypatch):
    attempts = []  # recorded, so a caller that swallows the error cannot hide the attempt

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("the node chain tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model, _ = tiny_sd15(comfy, seed=6)
    output, _ = chain(comfy, model)
    assert not attempts
    assert torch.isfinite(output).all()


def test_fifty_transfers_do_not_grow_memory_and_the_model_is_released(comfy):
    import comfy.model_management as model_management
    import psutil  # a ComfyUI requirement, absent from the CI tier's environment

    model, _ = tiny_sd15(comfy, seed=7)
    process = psutil.Process()
    for seed in range(5):  # warm-up: allocator pools, lazy imports
        chain(comfy, model, height=8, width=8, steps=4, start=1, seed=seed)
    gc.collect()
    baseline = process.memory_info().rss
    for seed in range(50):
        chain(comfy, model, height=8, width=8, steps=4, start=1, seed=seed)
    gc.collect()
    growth = process.memory_info().rss / baseline - 1
    print(f"\nresident memory growth over 50 transfers: {growth:+.2%}")
    assert growth <= 0.05

    released = weakref.ref(model.model)
    del model
    model_management.unload_all_models()
    model_management.soft_empty_cache()
    gc.collect()
    assert released() is None, "something still holds the model after ComfyUI unloaded it"


def test_an_inpainting_unet_is_refused_before_any_model_call(comfy):
    """An SD inpainting model takes 9 input channels (latent, mask, masked image) for a 4-channel latent: Invert
    Image and the sampler refuse it in one sentence, before any model call."""
    from comfy.model_base import BaseModel, ModelType  # (not "import comfy...": the fixture is named comfy)
    from comfy.model_patcher import ModelPatcher
    from comfy.supported_models import SD15
    from comfyui_support import CPU, _unet_config, counting_clone

    config = {**_unet_config((1, 2), (1, 1), sdxl=False), "in_channels": 9}

    class TinyInpainting(SD15):
        unet_config = config

    model = BaseModel(TinyInpainting(config), model_type=ModelType.EPS, device=CPU)
    inpainting, calls = counting_clone(ModelPatcher(model, load_device=CPU, offload_device=CPU))
    message = "this unet model takes 9 input channels for a 4-channel latent: a variant that concatenates"
    with pytest.raises(ValueError, match=message):
        invert_node(comfy, inpainting, torch.randn(1, 4, 8, 8), steps=3, start_step=1)
    sd15 = tiny_sd15(comfy)[0]
    both = invert_node(comfy, sd15, torch.randn(2, 4, 8, 8), steps=3, start_step=1)
    with pytest.raises(ValueError, match=message):
        sample_node(comfy, inpainting, both.select([0]), both.select([1]))
    assert len(calls) == 0
