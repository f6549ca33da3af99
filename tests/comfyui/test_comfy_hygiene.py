"""Nothing leaks: other samplers on the same MODEL are unchanged, and interrupts leave no state behind."""

import pytest
import torch
from comfyui_support import conditioning, counting_clone, interrupted_calls, invert_node, sample_node, tiny_sd15

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


def test_an_interrupt_after_any_model_call_stops_the_chain_before_the_next_and_the_next_run_is_clean(comfy, model):
    """Cancel at every point of a transfer: during inversion and sampling, the next model call is never made."""
    clean = transfer_chain(comfy, model)
    counted, calls = counting_clone(model)
    samples = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    invert_node(comfy, counted, samples, steps=STEPS, start_step=START)
    inversion_calls = len(calls)
    transfer_chain(comfy, counted)
    total = len(calls) - inversion_calls
    assert inversion_calls == STEPS - START and total > 2 * inversion_calls  # both phases are reached below
    for after in range(1, total):
        assert interrupted_calls(model, after, lambda clone: transfer_chain(comfy, clone)) == after, after
        assert "patches_replace" not in model.model_options.get("transformer_options", {})
    assert torch.equal(transfer_chain(comfy, model), clean)
