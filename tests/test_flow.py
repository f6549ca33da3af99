"""Rectified-flow inversion (xattn_core/flow.py) with a small random velocity network, no ComfyUI."""

import pytest
import torch

from xattn_core.flow import FLOW, flow_noisy, flow_split, flow_step, flux_sigma, flux_sigmas, linear_sigmas
from xattn_core.inversion import DDPM, invert
from xattn_core.pairing import check_compatible


class Velocity(torch.nn.Module):
    """A random conv net that depends on its input and sigma: enough for the step maths to be exercised."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.first = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.second = torch.nn.Conv2d(32, 16, 3, padding=1)
        for parameter in self.parameters():
            parameter.data = torch.randn(parameter.shape, generator=generator) * 0.1

    def forward(self, latents, sigmas, swap=None):
        hidden = torch.tanh(self.first(latents) + sigmas.reshape(-1, 1, 1, 1))
        return self.second(hidden)


@pytest.fixture(scope="module")
def clean():
    return torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("schedule", [flux_sigmas(12), linear_sigmas(12)], ids=["flux-shifted", "linear"])
def test_regeneration_from_the_noise_maps_lands_on_every_stored_latent(schedule, clean):
    model = Velocity()
    with torch.no_grad():
        inversion = invert(model, clean, schedule, start_step=2, seed=5, kind=FLOW)
        assert inversion.step_kind == FLOW and inversion.metadata == {"step_kind": "flow"}
        for i in range(2, inversion.steps):
            latent = inversion.latent_at(i)
            velocity = model(latent, schedule[i].expand(2))
            reached = flow_step(latent, velocity, float(schedule[i]), float(schedule[i + 1]), inversion.noise_at(i))
            target = inversion.latent_at(i + 1)
            assert ((reached - target).norm() / target.norm()).item() <= 1e-5, i
    assert torch.equal(inversion.latent_at(inversion.steps), clean)  # the last stored latent is the image
    assert torch.count_nonzero(inversion.noise_at(inversion.steps - 1)) > 0  # the residual is kept, not zeroed


def test_noisy_latents_follow_the_flow_parametrisation(clean):
    sigmas = linear_sigmas(4)
    inversion = invert(Velocity(), clean, sigmas, start_step=0, seed=5, kind=FLOW)
    assert torch.equal(inversion.latent_at(4), clean)
    ddpm = invert(Velocity(), clean, torch.tensor([3.0, 2.0, 1.0, 0.5, 0.1]), start_step=0, seed=5)
    # the same seed draws the same n_i for both kinds: DDPM x_i = x0 + sigma_i n_i
    assert torch.allclose(inversion.latent_at(1), flow_noisy(clean, 0.75, (ddpm.latent_at(1) - clean) / 2.0), atol=1e-6)
    assert torch.allclose(inversion.latent_at(0), (ddpm.latent_at(0) - clean) / 3.0, atol=1e-6)  # sigma 1: noise


def test_the_step_with_the_true_velocity_keeps_the_flow_marginals():
    """With v = n - x0 known, one step from sigma to sigma_next gives (1 - sigma_next) x0 + sigma_next * noise."""
    generator = torch.Generator().manual_seed(1)
    clean, noise, fresh = (torch.randn(200_000, generator=generator) for _ in range(3))
    sigma, sigma_next = 0.8, 0.55
    stepped = flow_step(flow_noisy(clean, sigma, noise), noise - clean, sigma, sigma_next, fresh)
    residual = stepped.double() - (1 - sigma_next) * clean.double()
    assert abs(residual.std().item() - sigma_next) < 3e-3
    assert abs(residual.mean().item()) < 3e-3
    assert flow_split(0.3, 0.0) == (0.0, 1.0, 1.0)  # to sigma 0: Euler to the image, residual at weight 1


def test_flux_schedule_is_comfyuis_simple_scheduler_on_the_shifted_table():
    sigmas = flux_sigmas(4)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0 and len(sigmas) == 5
    assert torch.all(sigmas[1:] < sigmas[:-1])
    # shift 1.15 keeps more steps at high noise than the plain schedule
    assert float(sigmas[2]) == pytest.approx(float(flux_sigma(torch.tensor(0.5, dtype=torch.float64))), abs=1e-6)
    assert float(sigmas[2]) > 0.75


def test_flow_and_ddpm_inversions_do_not_meet(clean):
    flow = invert(Velocity(), clean, linear_sigmas(4), start_step=1, seed=0, kind=FLOW)
    ddpm = invert(Velocity(), clean, linear_sigmas(4), start_step=1, seed=0, kind=DDPM)
    with pytest.raises(ValueError, match="flow inversion.*ddpm one"):
        check_compatible(flow, ddpm, None)
    with pytest.raises(ValueError, match="unknown inversion kind"):
        invert(Velocity(), clean, linear_sigmas(4), kind="euler")
