import pytest
import torch

from xattn_core.diffusers_backend import DiffusersBackend
from xattn_core.inversion import invert
from xattn_core.inversion_file import InversionFileError, load_inversion, save_inversion
from xattn_core.schedule import ancestral_split, ddpm_step, paper_sigmas

STEPS = 12


@pytest.fixture(scope="module")
def clean():
    return torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(7))


def regenerate(predict, inversion, start):
    """From every stored latent x_i (i >= start), one DDPM step with the stored noise map: the latents reached.

    Each step starts from the stored latent, not from the previous step's result: the property is per step
    (the noise map is defined so that the step lands on x_{i+1}), and chaining steps would only add rounding
    that random weights amplify.
    """
    reached = []
    for i in range(start, inversion.steps):
        latent = inversion.latent_at(i)
        sigma, sigma_next = float(inversion.sigmas[i]), float(inversion.sigmas[i + 1])
        prediction = predict(latent, inversion.sigmas[i].expand(latent.shape[0]))
        reached.append(ddpm_step(latent, prediction, sigma, sigma_next, inversion.noise_at(i)))
    return reached


def test_every_step_lands_on_the_next_latent_and_the_last_on_the_clean_one(unet, positive, negative, clean):
    with DiffusersBackend(unet, positive, negative, cfg=3.5) as backend:
        inversion = invert(
            backend.predict_noise, clean, paper_sigmas(steps=STEPS), start_step=0, seed=3, zero_last_noise=False
        )
        reached = regenerate(backend.predict_noise, inversion, 0)
    for i, latent in enumerate(reached):
        assert (latent - inversion.latent_at(i + 1)).abs().max() <= 1e-4, i
    assert (reached[-1] - clean).abs().max() <= 1e-4


def test_official_zero_last_noise_only_changes_the_last_step(unet, positive, negative, clean):
    sigmas = paper_sigmas(steps=STEPS)
    with DiffusersBackend(unet, positive, negative, cfg=3.5) as backend:
        official = invert(backend.predict_noise, clean, sigmas, start_step=4, seed=3)
        exact = invert(backend.predict_noise, clean, sigmas, start_step=4, seed=3, zero_last_noise=False)
        reached = regenerate(backend.predict_noise, official, 4)
    assert torch.count_nonzero(official.noise_at(STEPS - 1)) == 0
    assert torch.count_nonzero(exact.noise_at(STEPS - 1)) > 0
    assert torch.equal(official.noise_maps[:-1], exact.noise_maps[:-1])
    for offset, latent in enumerate(reached[:-1]):
        assert (latent - official.latent_at(5 + offset)).abs().max() <= 1e-4
    # the last step lands on its mean, sigma_up * z short of x0
    _, sigma_up = ancestral_split(float(sigmas[-2]), float(sigmas[-1]))
    assert (reached[-1] - clean).abs().max() > 1e-3
    assert (reached[-1] + sigma_up * exact.noise_at(STEPS - 1) - clean).abs().max() <= 1e-4


def test_skipping_unused_steps_keeps_the_same_noise_maps(unet, positive, negative, clean):
    sigmas = paper_sigmas(steps=STEPS)
    with DiffusersBackend(unet, positive, negative, cfg=3.5) as backend:
        full = invert(backend.predict_noise, clean, sigmas, start_step=0, seed=11)
        calls_before = backend.image_evaluations
        partial = invert(backend.predict_noise, clean, sigmas, start_step=7, seed=11)
        partial_evals = backend.image_evaluations - calls_before
    assert partial_evals == (STEPS - 7) * 2 * 2  # steps x images x (cond + uncond)
    for i in range(7, STEPS):
        assert torch.allclose(partial.noise_at(i), full.noise_at(i), rtol=1e-4, atol=1e-3)
        assert torch.equal(partial.latent_at(i), full.latent_at(i))


def test_inversion_is_seeded():
    predict = lambda x, s, swap=None: 0.1 * x  # noqa: E731
    clean = torch.randn(1, 4, 8, 8)
    first = invert(predict, clean, paper_sigmas(steps=5), seed=1)
    assert torch.equal(first.noise_maps, invert(predict, clean, paper_sigmas(steps=5), seed=1).noise_maps)
    assert not torch.equal(first.noise_maps, invert(predict, clean, paper_sigmas(steps=5), seed=2).noise_maps)


def test_bad_arguments():
    predict = lambda x, s, swap=None: x  # noqa: E731
    with pytest.raises(ValueError, match="start step"):
        invert(predict, torch.zeros(1, 4, 8, 8), paper_sigmas(steps=5), start_step=5)
    with pytest.raises(ValueError, match="empty"):
        invert(predict, torch.zeros(0, 4, 8, 8), paper_sigmas(steps=5))


def small_inversion():
    predict = lambda x, s, swap=None: 0.1 * x  # noqa: E731
    inversion = invert(predict, torch.randn(2, 4, 8, 8), paper_sigmas(steps=6), start_step=2, seed=1)
    inversion.metadata.update(latent_format="SD15", model="abc")
    return inversion


def test_file_round_trip(tmp_path):
    inversion = small_inversion()
    loaded = load_inversion(save_inversion(inversion, tmp_path / "inv.safetensors"))
    assert loaded.start_step == 2 and loaded.metadata == {"latent_format": "SD15", "model": "abc"}
    for name in ("clean", "sigmas", "latents", "noise_maps"):
        assert torch.equal(getattr(loaded, name), getattr(inversion, name))


def test_truncated_file_is_refused(tmp_path):
    path = save_inversion(small_inversion(), tmp_path / "inv.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InversionFileError, match="corrupt or truncated"):
        load_inversion(path)


def test_newer_format_is_refused(tmp_path):
    inversion = small_inversion()
    path = save_inversion(inversion, tmp_path / "inv.safetensors")
    from safetensors.torch import load_file, save_file

    save_file(
        load_file(str(path)),
        str(path),
        metadata={"format": "xattn-inversion", "format_version": "9", "start_step": "2"},
    )
    with pytest.raises(InversionFileError, match="newer"):
        load_inversion(path)


def test_pickle_renamed_is_refused_without_unpickling(tmp_path):
    import pickle

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(InversionFileError, match="not a safetensors"):
        load_inversion(path)


def test_image_i_of_a_batch_draws_the_noise_of_a_single_inversion_with_seed_plus_i():
    predict = lambda x, s, swap=None: 0.1 * x  # noqa: E731
    clean = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    sigmas = paper_sigmas(steps=6)
    batch = invert(predict, clean, sigmas, start_step=2, seed=40)
    for image in range(3):
        alone = invert(predict, clean[image : image + 1], sigmas, start_step=2, seed=40 + image)
        assert torch.equal(batch.latents[:, image : image + 1], alone.latents)
        assert torch.equal(batch.noise_maps[:, image : image + 1], alone.noise_maps)
    top = invert(predict, clean[:2], sigmas, seed=2**64 - 1)  # seeds wrap around like torch's own range
    assert torch.isfinite(top.latents).all()
    wrapped = invert(predict, clean[1:2], sigmas, seed=0)  # image 1 draws with (2**64 - 1) + 1, i.e. 0
    assert torch.equal(top.latents[:, 1:2], wrapped.latents)


def test_noise_mask_survives_the_file_and_old_files_stay_version_1(tmp_path):
    from safetensors import safe_open

    inversion = small_inversion()
    plain = save_inversion(inversion, tmp_path / "plain.safetensors")
    with safe_open(str(plain), "pt") as handle:
        assert handle.metadata()["format_version"] == "1"
    inversion.noise_mask = torch.zeros(1, 1, 8, 8)
    inversion.noise_mask[..., 2:6, 2:6] = 0.5
    masked = load_inversion(save_inversion(inversion, tmp_path / "masked.safetensors"))
    assert torch.equal(masked.noise_mask, inversion.noise_mask)
    assert masked.select([1]).noise_mask.shape == (1, 1, 8, 8)  # one mask for the whole batch
