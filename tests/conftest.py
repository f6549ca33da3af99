import pytest
import torch

from xattn_core.tiny import tiny_context, tiny_unet


@pytest.fixture(scope="session")
def unet():
    model = tiny_unet(seed=0)
    sample = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(5))
    context = tiny_context(1)

    def eps(x, t, c):
        with torch.no_grad():
            return model(x, torch.tensor([t]), encoder_hidden_states=c).sample

    base = eps(sample, 500, context)
    # a vacuous network (zero output layers) would make every comparison pass
    assert 0.5 < base.std().item() < 2.0
    assert (eps(sample * 0.5, 500, context) - base).abs().mean() > 0.05
    assert (eps(sample, 50, context) - base).abs().mean() > 0.05
    assert (eps(sample, 500, tiny_context(2)) - base).abs().mean() > 0.05
    return model


@pytest.fixture
def positive():
    return tiny_context(1)


@pytest.fixture
def negative():
    return tiny_context(2)


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory):
    """A tiny random Stable Diffusion pipeline saved as a diffusers folder (for the command line)."""
    from xattn_core.tiny import save_tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny_pipeline") / "model"
    save_tiny_pipeline(folder)
    return folder
