"""Nothing leaks: other samplers on the same MODEL are unchanged, and interrupts leave no state behind."""

import pytest
import torch
from comfyui_support import conditioning, invert_node, sample_node, tiny_sd15

STEPS, START = 8, 2


def plain_ksampler(model):
    import nodes as comfy_nodes  # ComfyUI's own nodes.py

    latent = {"samples": torch.zeros(1, 4, 32, 32)}
    (out,) = comfy_nodes.common_ksampler(
        model, 42, 4, 5.0, "euler_ancestral", "normal", conditioning(1), conditioning(2), latent
    )
    return out["samples"]


def options_snapshot(model):
    """What a later node would see of the MODEL: its options (the repr names patch functions by identity) and
    weight patches."""
    return repr(model.model_options), dict(model.patches), model.patches_uuid


def transfer_chain(comfy, model, seed=0):
    samples = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(seed))
    inversion = invert_node(comfy, model, samples, steps=STEPS, start_step=START)
    return sample_node(comfy, model, inversion.select([0]), inversion.select([1]))[0]["samples"]


@pytest.fixture(scope="module")
def model(comfy):
    return tiny_sd15(comfy, seed=3)[0]


def test_plain_ksampler_is_bit_identical_after_a_transfer(comfy, model):
    before_options = options_snapshot(model)
    before = plain_ksampler(model)
    transfer_chain(comfy, model)
    after = plain_ksampler(model)
    assert torch.equal(before, after)
    assert options_snapshot(model) == before_options
    assert "patches_replace" not in model.model_options.get("transformer_options", {})


@pytest.mark.parametrize("phase", ["inversion", "sampling"])
def test_interrupt_raises_comfy_interrupt_and_the_next_run_is_clean(comfy, model, phase):
    import comfy.model_management as model_management
    import comfy.utils as comfy_utils

    clean = transfer_chain(comfy, model)
    calls = {"n": 0}

    def hook(value, total, preview, node_id=None):
        calls["n"] += 1
        # the inversion reports STEPS - START updates first; then the sampler's steps
        if (phase == "inversion" and calls["n"] == 2) or (phase == "sampling" and calls["n"] == STEPS - START + 2):
            model_management.interrupt_current_processing(True)

    comfy_utils.set_progress_bar_global_hook(hook)
    try:
        with pytest.raises(model_management.InterruptProcessingException):
            transfer_chain(comfy, model)
    finally:
        comfy_utils.set_progress_bar_global_hook(None)
        model_management.interrupt_current_processing(False)
    assert calls["n"] < 2 * (STEPS - START)  # it stopped early
    assert "patches_replace" not in model.model_options.get("transformer_options", {})
    assert torch.equal(transfer_chain(comfy, model), clean)
