"""Fast mode through the nodes: Invert Image keeps its cache, the sampler evaluates only the output rows."""

import logging

import pytest
import torch
from comfyui_support import (
    conditioning,
    invert_node,
    sample_node,
    sdxl_conditioning,
    stepwise_inversion_pair,
    tiny_sd15,
    tiny_sdxl,
)

STEPS, START = 10, 2


@pytest.fixture(scope="module")
def sd15(comfy):
    model, _ = tiny_sd15(comfy, seed=3)
    return model


def counting(model):
    """A clone whose UNet calls are counted through ComfyUI's own unet function wrapper."""
    counter = {"rows": 0}

    def wrapper(apply_model, args):
        counter["rows"] += args["input"].shape[0]
        return apply_model(args["input"], args["timestep"], **args["c"])

    counted = model.clone()
    counted.set_model_unet_function_wrapper(wrapper)
    return counted, counter


def invert(comfy, model, cfg, fast_mode="on", cond=conditioning):
    samples = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(12))  # appearance, structure
    return invert_node(
        comfy,
        model,
        samples,
        positive=cond(1),
        negative=cond(2),
        steps=STEPS,
        start_step=START,
        cfg=cfg,
        seed=4,
        fast_mode=fast_mode,
    )


@pytest.fixture(scope="module")
def inverted(comfy, sd15):
    """Inversions of the tiny SD 1.5 model by (cfg, fast_mode), each made once (nothing mutates them)."""
    made = {}

    def get(cfg, fast_mode):
        if (cfg, fast_mode) not in made:
            made[cfg, fast_mode] = invert(comfy, sd15, cfg, fast_mode)
        return made[cfg, fast_mode]

    return get


def transfer(comfy, model, inversion, cfg, positive=1, negative=2, cond=conditioning):
    return sample_node(
        comfy,
        model,
        inversion.select([0]),
        inversion.select([1]),
        positive=cond(positive),
        negative=cond(negative),
        cfg=cfg,
    )


def stepwise_fast_vs_normal(comfy, model, normal, fast, cfg, cond=conditioning) -> list[float]:
    """Normal vs fast mode one step at a time from identical latents, on ComfyUI's own model calls."""
    patched = comfy.families.patch_model(model, comfy.common.freeu_settings("auto", model))
    return stepwise_inversion_pair(comfy, patched, normal, fast, cond(1), cond(2), cfg)


def test_fast_mode_equals_normal_mode_step_by_step_with_matched_guidance(comfy, sd15, inverted, caplog):
    normal_inversion, fast_inversion = inverted(1.0, "off"), inverted(1.0, "on")
    assert normal_inversion.attention is None and fast_inversion.attention is not None
    assert torch.equal(normal_inversion.noise_maps, fast_inversion.noise_maps)
    differences = stepwise_fast_vs_normal(comfy, sd15, normal_inversion, fast_inversion, 1.0)
    print(f"\nComfyUI: per-step max |fast - normal| / max |normal| = {max(differences):.2e}")
    assert len(differences) == STEPS - START and max(differences) <= 1e-4

    counted, counter = counting(sd15)
    normal, _, _, *_ = transfer(comfy, counted, normal_inversion, 1.0)
    normal_rows = counter["rows"]
    counter["rows"] = 0
    with caplog.at_level(logging.INFO):
        fast, _, _, *_ = transfer(comfy, counted, fast_inversion, 1.0)
    plan = comfy.core.plan.build_plan(STEPS, START)
    calls = comfy.core.calls
    assert normal_rows == calls.model_evaluations(plan, calls.CallLayout.of(1, 1))
    cached = frozenset({calls.Rows.APPEARANCE, calls.Rows.STRUCTURE})
    assert counter["rows"] == calls.model_evaluations(plan, calls.CallLayout.of(1, 1, cached))
    assert "appearance path is replayed from its inversion (exact: same prompts and cfg)" in caplog.text
    # loose on purpose: whole trajectories drift apart by amplified rounding; equality is the per-step check
    assert (fast["samples"] - normal["samples"]).abs().max() <= 1e-2


def test_sdxl_shaped_fast_mode_under_guidance_equals_normal_mode_step_by_step(comfy, caplog):
    """SDXL shape (attention at x2/x4, pooled conditioning), cfg 2 both ways, both branches kept."""
    model = tiny_sdxl(comfy, seed=5)
    normal = invert(comfy, model, 2.0, "off", cond=sdxl_conditioning)
    fast = invert(comfy, model, 2.0, "on + uncond", cond=sdxl_conditioning)
    differences = stepwise_fast_vs_normal(comfy, model, normal, fast, 2.0, cond=sdxl_conditioning)
    assert max(differences) <= 1e-4
    with caplog.at_level(logging.INFO):
        transfer(comfy, model, fast, 2.0, cond=sdxl_conditioning)
    assert "exact: same prompts and cfg" in caplog.text


def test_paper_guidance_is_reported_as_an_approximation(comfy, sd15, inverted, caplog):
    inversion = inverted(3.5, "on")  # the paper: cfg 3.5 at inversion, 1.0 in generation
    with caplog.at_level(logging.INFO):
        output, _, _, *_ = transfer(comfy, sd15, inversion, 1.0)
    assert "structure path is replayed from its inversion (approximate: cfg 3.5 at inversion, 1 here)" in caplog.text
    assert torch.isfinite(output["samples"]).all()


def test_prompt_changes_are_reported_and_the_negative_counts_only_under_guidance(comfy, sd15, inverted, caplog):
    inversion = inverted(1.0, "on")
    with caplog.at_level(logging.INFO):
        transfer(comfy, sd15, inversion, 1.0, negative=5)  # unguided: the negative prompt is never used
    assert "(exact: same prompts and cfg)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        transfer(comfy, sd15, inversion, 1.0, positive=5)
    assert "(approximate: other prompts at inversion)" in caplog.text


def test_on_keeps_the_cond_branch_and_on_plus_uncond_both(comfy, sd15, inverted, caplog):
    cond_only, both = inverted(3.5, "on"), inverted(3.5, "on + uncond")
    assert cond_only.attention.branches == {0} and both.attention.branches == {0, 1}
    for step in range(START, STEPS):  # half the keys/values, the same noise predictions
        assert 2 * cond_only.keys_values_at(step).nbytes == both.keys_values_at(step).nbytes
        assert torch.equal(cond_only.prediction_at(step), both.prediction_at(step))
    with caplog.at_level(logging.INFO):
        transfer(comfy, sd15, cond_only, 3.5)
    assert "approximate: no uncond keys/values kept (fast_mode 'on + uncond' keeps them)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        transfer(comfy, sd15, both, 3.5)
    assert "exact: same prompts and cfg" in caplog.text


def test_cache_larger_than_free_memory_is_refused_early(comfy, sd15, monkeypatch):
    import comfy.model_management as model_management

    calls = []
    monkeypatch.setattr(model_management, "get_free_memory", lambda *args, **kwargs: 2**20)  # 1 MiB free
    counted = sd15.clone()
    counted.set_model_unet_function_wrapper(
        lambda apply_model, args: calls.append(1) or apply_model(args["input"], args["timestep"], **args["c"])
    )
    with pytest.raises(MemoryError, match=r"fast mode would keep .* GiB of attention keys/values for 8 steps"):
        invert(comfy, counted, 1.0, "on")
    assert len(calls) == 1  # refused after the first model call, not at the end


def test_save_inversion_drops_the_cache(comfy, inverted, tmp_path, monkeypatch, caplog):
    import folder_paths

    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path))
    with caplog.at_level(logging.INFO):
        comfy.nodes.XAttnSaveInversion.execute(inverted(1.0, "on"), "xattn/fast")
    assert "attention cache is not written" in caplog.text
    comfy.nodes.XAttnSaveInversion.execute(inverted(1.0, "off"), "xattn/normal")
    (fast,), (normal,) = tmp_path.glob("xattn/fast_*.safetensors"), tmp_path.glob("xattn/normal_*.safetensors")
    # latents, noise maps and metadata only (safetensors orders the metadata at random, so compare sizes)
    assert fast.stat().st_size == normal.stat().st_size
