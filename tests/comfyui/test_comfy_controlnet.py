"""ControlNet on the sampler's positive steers the output only: the appearance and structure paths reconstruct
their own images with the prompts alone. A tiny ControlNet matching the tiny SD-1.5-shaped UNet is built from
ComfyUI's own classes and applied with ComfyUI's own ControlNet Apply node."""

import pytest
import torch
from comfyui_support import CPU, conditioning, invert_node, sample_node, tiny_sd15

STEPS, START = 8, 2
LATENT = 32  # 256 px


@pytest.fixture(scope="module")
def sd15(comfy):
    return tiny_sd15(comfy, seed=6)[0]


@pytest.fixture(scope="module")
def controlnet(comfy):
    from comfy.cldm.cldm import ControlNet as ControlNetModel
    from comfy.controlnet import ControlNet

    control_model = ControlNetModel(
        image_size=32,
        in_channels=4,
        model_channels=32,
        hint_channels=3,
        num_res_blocks=[1, 1],
        channel_mult=[1, 2],
        transformer_depth=[1, 1],
        context_dim=32,
        num_heads=8,
        use_spatial_transformer=True,
        legacy=False,
        transformer_depth_middle=1,
        use_linear_in_transformer=False,
        device=CPU,
    )
    comfy.core.tiny.reinitialise(control_model, seed=11)  # ComfyUI leaves weights uninitialised (and zero convs 0)
    return ControlNet(control_model, load_device=CPU, manual_cast_dtype=None)


def with_control(positive, controlnet, strength):
    """ComfyUI's ControlNet Apply on the positive prompt, with a hint image (an edge-like pattern)."""
    import nodes as comfy_nodes

    hint = torch.zeros(1, LATENT * 8, LATENT * 8, 3)
    hint[:, 64:192, 96:104] = 1.0
    hint[:, 120:128, 32:224] = 1.0
    hinted, _ = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(
        positive, conditioning(2), controlnet, hint, strength, 0.0, 1.0
    )
    return hinted


@pytest.fixture(scope="module")
def inversions(comfy, sd15):
    samples = torch.randn(3, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(13))
    return invert_node(comfy, sd15, samples, steps=STEPS, start_step=START)


@pytest.mark.parametrize("cfg, structures", [(1.0, 1), (2.0, 1), (1.0, 2)])
def test_controlnet_steers_the_output_and_leaves_the_reconstructions_alone(
    comfy, sd15, controlnet, inversions, cfg, structures
):
    appearance, structure = inversions.select([0]), inversions.select(list(range(1, 1 + structures)))
    plain = sample_node(comfy, sd15, appearance, structure, cfg=cfg)
    hinted = sample_node(
        comfy, sd15, appearance, structure, positive=with_control(conditioning(1), controlnet, 1.0), cfg=cfg
    )
    assert torch.equal(hinted[1]["samples"], plain[1]["samples"])  # appearance reconstruction
    assert torch.equal(hinted[2]["samples"], plain[2]["samples"])  # structure reconstruction(s)
    difference = (hinted[0]["samples"] - plain[0]["samples"]).abs().max().item()
    print(f"\ncfg {cfg}, 1 x {structures}: max |output with ControlNet - without| = {difference:.3f}")
    assert difference > 1e-2


def test_fast_mode_keeps_the_controlnet_on_the_output(comfy, sd15, controlnet):
    samples = torch.randn(2, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(14))
    inversion = invert_node(comfy, sd15, samples, steps=STEPS, start_step=START, cfg=1.0, fast_mode="on")
    appearance, structure = inversion.select([0]), inversion.select([1])
    plain = sample_node(comfy, sd15, appearance, structure)
    hinted = sample_node(comfy, sd15, appearance, structure, positive=with_control(conditioning(1), controlnet, 1.0))
    assert torch.equal(hinted[2]["samples"], plain[2]["samples"])  # replayed from the inversion either way
    assert (hinted[0]["samples"] - plain[0]["samples"]).abs().max() > 1e-2


def test_inversion_ignores_hints_on_its_prompt(comfy, sd15, controlnet):
    samples = torch.randn(1, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(15))
    plain = invert_node(comfy, sd15, samples, steps=STEPS, start_step=START)
    hinted = invert_node(
        comfy, sd15, samples, steps=STEPS, start_step=START, positive=with_control(conditioning(1), controlnet, 1.0)
    )
    assert torch.equal(plain.noise_maps, hinted.noise_maps)
