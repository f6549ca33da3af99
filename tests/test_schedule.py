import math

import pytest
import torch

from xattn_core.schedule import ancestral_split, ddpm_step, noise_map, paper_sigmas, paper_timesteps, sd_sigma_table


def closed_form_alpha_bar(t: int) -> float:
    betas = [(math.sqrt(0.00085) + (math.sqrt(0.012) - math.sqrt(0.00085)) * i / 999) ** 2 for i in range(1000)]
    return math.prod(1 - b for b in betas[: t + 1])


def test_paper_timesteps_at_100_steps():
    timesteps = paper_timesteps(100)
    assert timesteps[:3] == [991, 981, 971]
    assert timesteps[-3:] == [11, 1, 0]
    assert len(timesteps) == 101


@pytest.mark.parametrize("t", [0, 1, 11, 500, 991])
def test_sigmas_match_closed_form_alpha_bar(t):
    alpha_bar = closed_form_alpha_bar(t)
    assert sd_sigma_table()[t].item() == pytest.approx(math.sqrt((1 - alpha_bar) / alpha_bar), rel=1e-5)


def test_paper_schedule_ends_at_sigma_of_t0_not_zero():
    sigmas = paper_sigmas(steps=100)
    assert len(sigmas) == 101
    assert sigmas[-1].item() == pytest.approx(0.0292, abs=1e-4)
    assert sigmas[0].item() == pytest.approx(sd_sigma_table()[991].item())
    assert torch.all(sigmas[1:] < sigmas[:-1])


def test_ddpm_step_equals_euler_ancestral_step():
    generator = torch.Generator().manual_seed(0)
    latent, eps, noise = (torch.randn(2, 4, 8, 8, generator=generator) for _ in range(3))
    sigma, sigma_next = 7.5, 3.25
    # k-diffusion's Euler-ancestral step, written out independently
    sigma_up = min(sigma_next, (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
    denoised = latent - sigma * eps
    derivative = (latent - denoised) / sigma
    expected = latent + derivative * (sigma_down - sigma) + noise * sigma_up
    assert torch.allclose(ddpm_step(latent, eps, sigma, sigma_next, noise), expected, atol=1e-5)
    assert ancestral_split(sigma, sigma_next) == pytest.approx((sigma_down, sigma_up))


def test_ddpm_step_equals_diffusers_ddim_eta_one():
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        set_alpha_to_one=False,
        steps_offset=1,
        clip_sample=False,
    )
    scheduler.set_timesteps(100)
    alphas = scheduler.alphas_cumprod
    generator = torch.Generator().manual_seed(1)
    for t, t_prev in [(991, 981), (501, 491), (11, 1), (1, 0)]:
        x_ddpm, eps, noise = (torch.randn(1, 4, 8, 8, generator=generator, dtype=torch.float64) for _ in range(3))
        expected = scheduler.step(eps, t, x_ddpm, eta=1.0, variance_noise=noise).prev_sample
        sigma = ((1 - alphas[t]) / alphas[t]).sqrt().item()
        sigma_prev = ((1 - alphas[t_prev]) / alphas[t_prev]).sqrt().item()
        ours = ddpm_step(x_ddpm / alphas[t].sqrt(), eps, sigma, sigma_prev, noise) * alphas[t_prev].sqrt()
        assert torch.allclose(ours, expected, atol=1e-6), (t, (ours - expected).abs().max())


def test_noise_map_inverts_the_step():
    generator = torch.Generator().manual_seed(2)
    latent, eps, target = (torch.randn(1, 4, 8, 8, generator=generator) for _ in range(3))
    z = noise_map(latent, target, eps, 4.0, 2.0)
    assert torch.allclose(ddpm_step(latent, eps, 4.0, 2.0, z), target, atol=1e-5)
