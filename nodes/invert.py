"""Invert Image (DDPM): edit-friendly DDPM inversion of every image in a latent batch.

Validation: ComfyUI checks each widget against its min/max itself and reports a bad value as an ordinary error
on that input ("Value 0 smaller than min of 2"), but only for inputs that the node's ``validate_inputs`` does not
name; it files a message that ``validate_inputs`` returns under every input named there, and an exception under
the input of the node that links to this one. So the one rule between two inputs, start_step below the number
of steps, is checked when the node runs, before any model evaluation, and ComfyUI keeps its own range checks.
"""

from __future__ import annotations

import logging

import torch

from ..xattn_core.inversion import CacheSettings, InversionSettings, invert
from ..xattn_core.masks import resize_mask
from .comfy_backend import conditioning_fingerprint, image_latent, model_fingerprint, run_in_guider
from .common import (
    CATEGORY,
    CheckedCombo,
    Options,
    freeu_choice,
    freeu_input,
    freeu_settings,
    log_choices,
    reports_warnings,
    setting_input,
)
from .common import Inversion as InversionSocket
from .compat import comfy, io, latent_preview
from .families import family_of


def schedule(model, steps: int, sigmas: torch.Tensor | None, latent_shape: tuple[int, ...]) -> torch.Tensor:
    """The model family's schedule for latents of ``latent_shape`` (UNet: the paper's on the model's own sigma
    table; Flux: its shifted one; Flux.2: its resolution-dependent one), or the SIGMAS given."""
    family = family_of(model)
    if sigmas is not None:
        if sigmas.dim() != 1 or len(sigmas) < 2:
            raise ValueError("the SIGMAS input must hold at least two sigmas")
        family.check_sigmas(sigmas)
        return sigmas.float().cpu()
    return family.default_sigmas(model, steps, latent_shape)


FAST_MODE_BRANCHES = {"on": frozenset({0}), "on + uncond": None}  # cond_or_uncond kept: cond only, or all


def fast_mode_cache(mode: str) -> CacheSettings | None:
    """Keep the cache where ComfyUI keeps intermediate results (RAM unless --gpu-only), within 3/4 of what is free."""
    if mode == "off":
        return None
    device = comfy.model_management.intermediate_device()
    free = comfy.model_management.get_free_memory(device)
    return CacheSettings(device=device, max_bytes=int(free * 0.75), branches=FAST_MODE_BRANCHES[mode])


FAST_MODE_TOOLTIP = (
    "Keep this inversion's attention keys/values and noise predictions so the sampler does not run this image "
    "again: generation then evaluates only the output (about half the model evaluations with both inversions in "
    "fast mode). Exact when the sampler uses the same prompts and cfg as this inversion; otherwise (e.g. the "
    "paper's cfg 3.5 here and 1.0 in the sampler) an approximation that replays this inversion's own trajectory. "
    "'on' keeps the cond branch, all a sampler at cfg 1 uses; 'on + uncond' also keeps the uncond branch for a "
    "sampler with cfg above 1 (twice the memory). Costs RAM: about 1.6 GB per image and branch for SD 1.5 at "
    "512 px, 100 steps from 32, in fp16 (twice that in fp32); SDXL at 1024 px needs ~10x more. Held while ComfyUI "
    "caches this node's output; not written by Save Inversion."
)


class XAttnInvertImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XAttnInvertImage",
            display_name="Invert Image (DDPM)",
            category=CATEGORY,
            description="Edit-friendly DDPM inversion of every image in the latent batch, for Cross-Image "
            "Attention. Only the steps from the start step on are computed; the sampler starts there.",
            inputs=[
                io.Model.Input("model", tooltip="The model to invert with; the transfer must use the same one."),
                io.Latent.Input("latent", tooltip="VAE-encoded image(s); every image in the batch is inverted."),
                io.Conditioning.Input("positive", tooltip='Inversion prompt; the paper uses "A photo of a <domain>".'),
                io.Conditioning.Input("negative", tooltip="Negative prompt for the inversion's CFG (paper: empty)."),
                setting_input(
                    io.Int,
                    InversionSettings,
                    "steps",
                    tooltip="Schedule length (paper: 100). Ignored when SIGMAS is connected.",
                ),
                setting_input(
                    io.Int,
                    InversionSettings,
                    "start_step",
                    tooltip="First step that generation will use "
                    "(paper: 32). Higher keeps more of the structure image; steps before it are skipped.",
                ),
                setting_input(
                    io.Float,
                    InversionSettings,
                    "cfg",
                    step=0.1,
                    round=0.01,
                    tooltip="Guidance during inversion (paper: 3.5).",
                ),
                setting_input(
                    io.Int,
                    InversionSettings,
                    "seed",
                    control_after_generate=True,
                    tooltip="Seed of the inversion's noise draws.",
                ),
                freeu_input(),
                CheckedCombo(
                    "fast_mode", options=["off", *FAST_MODE_BRANCHES], default="off", tooltip=FAST_MODE_TOOLTIP
                ),
                io.Sigmas.Input(
                    "sigmas",
                    optional=True,
                    tooltip="Optional schedule (decreasing, last one above 0) instead of the paper's.",
                ),
                Options.Input(
                    "options",
                    optional=True,
                    tooltip="Fast mode on Flux: connect the Options node the sampler uses, so that the kept "
                    "keys/values are those of its blocks and RoPE mode (the sampler refuses a cache that lacks "
                    "them). Nothing else here reads it.",
                ),
            ],
            outputs=[InversionSocket.Output(display_name="inversion")],
        )

    @classmethod
    @reports_warnings
    def execute(
        cls,
        model,
        latent,
        positive,
        negative,
        steps,
        start_step,
        cfg,
        seed,
        freeu,
        fast_mode="off",
        sigmas=None,
        options=None,
    ):
        samples = image_latent(latent["samples"])  # one frame, where the MODEL's latents have a frame axis
        if samples.shape[0] == 0:
            raise ValueError("the latent batch is empty: connect a VAE Encode output with at least one image")
        if not bool(torch.isfinite(samples).all()):
            raise ValueError(
                "the latent input holds NaN or Inf values: encode the image again (a NaN usually comes from a VAE "
                "run in too low a precision, e.g. SDXL's VAE in fp16)"
            )
        channels = model.model.latent_format.latent_channels
        if samples.dim() != 4 or samples.shape[1] != channels:
            raise ValueError(
                f"the latent has {samples.shape[1] if samples.dim() > 1 else 'no'} channels but this MODEL expects "
                f"{channels}: encode the image with the VAE that belongs to this model"
            )
        full = schedule(model, steps, sigmas, tuple(samples.shape))
        total = len(full) - 1
        if not 0 <= start_step < total:  # checked here, not at validation: see the module's note on validation
            source = "the SIGMAS input's" if sigmas is not None else "the"
            raise ValueError(f"start_step ({start_step}) must be below {source} number of steps ({total})")
        family = family_of(model)
        freeu_on = freeu_settings(freeu, model)
        sigmas_choice = [f"{total} steps from the SIGMAS input (steps = {steps} ignored)"] if sigmas is not None else []
        log_choices("Invert Image", [*sigmas_choice, *freeu_choice(freeu, freeu_on)])
        patched = family.patch(model, freeu_on, options=options)
        preview = latent_preview.prepare_callback(patched, total - start_step)
        cache = fast_mode_cache(fast_mode)

        def loop(backend, clean, report):
            def progress(done, _total):
                report(done - 1, clean, clean, float(full[start_step + done - 1]))

            def predict(latents, sigmas, swap):  # the images reconstruct themselves: prompts without hints
                return backend.predict_noise(latents, sigmas, swap, paths=True)

            inversion = invert(
                predict, clean, full, start_step, seed, callback=progress, cache=cache, kind=family.step_kind
            )
            return clean, inversion

        _, inversion = run_in_guider(
            patched, positive, negative, cfg, latent["samples"], full[start_step:], loop, preview
        )
        if latent.get("noise_mask") is not None:  # SetLatentNoiseMask, VAE Encode (for inpainting): local transfer
            inversion.noise_mask = resize_mask(latent["noise_mask"], samples.shape[-2:], samples.shape[0])
        model_object = model.model
        inversion.metadata.update(
            family=family.name,
            latent_format=type(model_object.latent_format).__name__,
            latent_channels=str(samples.shape[1]),
            model=model_fingerprint(model),
            cfg=str(cfg),
            positive=conditioning_fingerprint(positive),
            negative=conditioning_fingerprint(negative),
            seed=str(seed),
            freeu=str(freeu_on is not None),
        )
        if cache is not None and inversion.attention is not None:
            inversion.metadata.update(family.cache_form(options))
            logging.info(
                "Cross-Image Attention fast mode: kept %.2f GiB of attention keys/values on %s",
                inversion.attention.nbytes / 2**30,
                cache.device,
            )
        return io.NodeOutput(inversion)
