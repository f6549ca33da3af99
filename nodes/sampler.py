"""Cross-Image Attention Sampler: the joint three-path generation on ComfyUI's own MODEL."""

from __future__ import annotations

import dataclasses
import logging

import torch

from ..xattn_core.inversion import Inversion
from ..xattn_core.plan import PlanSettings
from ..xattn_core.transfer import TransferSettings, outline_transfer, transfer
from .comfy_backend import conditioning_fingerprint, model_fingerprint, model_latent, run_in_guider
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
from .compat import io, latent_preview
from .families import family_of
from .object_word import object_tokens


def check_against_model(inversion: Inversion, role: str, model, fingerprint: str) -> None:
    """Refuse an inversion from another latent format; warn when it came from other weights (``fingerprint``:
    :func:`model_fingerprint` of ``model``, computed once per run)."""
    if not isinstance(inversion, Inversion):
        raise TypeError(
            f"the {role} input needs an XATTN_INVERSION from Invert Image (DDPM) or Load Inversion, "
            f"not {type(inversion).__name__}"
        )
    non_finite = inversion.non_finite_part()
    if non_finite is not None:
        raise ValueError(
            f"the {role} inversion has NaN or Inf values in its {non_finite}: invert the image again from a finite "
            "latent (a NaN usually comes from a VAE or model run in too low a precision)"
        )
    family = family_of(model).name
    stored_family = inversion.metadata.get("family") or ("flux" if inversion.step_kind == "flow" else None)
    if stored_family and stored_family != family:
        raise ValueError(
            f"the {role} inversion was made with a {stored_family} model, but this MODEL is a {family} model; "
            "invert the image again with this model"
        )
    latent_format = type(model.model.latent_format).__name__
    stored_format = inversion.metadata.get("latent_format")
    if stored_format and stored_format != latent_format:
        raise ValueError(
            f"the {role} inversion was made for latent format {stored_format}, but this MODEL uses "
            f"{latent_format}; invert the image again with this model"
        )
    channels = model.model.latent_format.latent_channels
    if inversion.clean.shape[1] != channels:
        raise ValueError(
            f"the {role} inversion has {inversion.clean.shape[1]} latent channels but this MODEL "
            f"expects {channels}; invert the image again with this model"
        )
    if not stored_format:  # not made by this pack's Invert Image: all that can be checked is the shape
        table = model.get_model_object("model_sampling").sigmas.float().cpu()
        low, high = float(table.min()) * 0.999, float(table.max()) * 1.001
        if not bool(((inversion.sigmas >= low) & (inversion.sigmas <= high)).all()):
            raise ValueError(
                f"the {role} inversion's noise schedule ({float(inversion.sigmas.min()):.3g}..."
                f"{float(inversion.sigmas.max()):.3g}) lies outside this MODEL's ({low:.3g}...{high:.3g}): it was "
                "made with another model family; invert the image again with this model"
            )
        logging.warning(
            "Cross-Image Attention: the %s inversion carries no model metadata (not made by Invert Image, or by an "
            "older version), so only its channels and noise schedule were checked; an inversion from another "
            "model of the same latent shape (e.g. SDXL into SD 1.5) would pass: invert with this model if unsure",
            role,
        )
    stored_model = inversion.metadata.get("model")
    if stored_model and stored_model != fingerprint:
        logging.warning(
            "Cross-Image Attention: the %s inversion was made with other model weights (or LoRAs); "
            "the transfer proceeds, but results are best when inversion and transfer share the model",
            role,
        )


def report_fast_mode(appearance: Inversion, structure: Inversion, cfg: float, positive: str, negative: str) -> None:
    """Say which paths are replayed from an inversion's cache, and whether that is exact.

    ``positive`` and ``negative`` are the sampler's conditioning fingerprints; the negative prompt
    matters only under guidance.
    """
    for role, inversion in (("appearance", appearance), ("structure", structure)):
        if inversion.attention is None:
            continue
        differences = []
        metadata = inversion.metadata
        inverted_cfg = float(metadata.get("cfg", "nan"))
        if inverted_cfg != cfg:
            differences.append(f"cfg {inverted_cfg:g} at inversion, {cfg:g} here")
        if metadata.get("positive") != positive or (cfg != 1.0 and metadata.get("negative") != negative):
            differences.append("other prompts at inversion")
        if cfg != 1.0 and 1 not in inversion.attention.branches:
            differences.append("no uncond keys/values kept (fast_mode 'on + uncond' keeps them)")
        how = "approximate: " + ", ".join(differences) if differences else "exact: same prompts and cfg"
        logging.info("Cross-Image Attention fast mode: the %s path is replayed from its inversion (%s)", role, how)


ADAIN_MASK_MODES = ["auto", "from inputs", "none"]
VAE_SCALE = 8  # pixels per latent cell for the SD 1.x/2.x/SDXL VAEs the pack supports


def mask_output(masks: torch.Tensor | None, inversion: Inversion) -> torch.Tensor:
    """The masks given or found, one per image of ``inversion``, at pixel size, so they can be previewed, edited
    with mask nodes and fed back: all ones when AdaIN was unmasked, all zero where the automatic masks found no
    object (AdaIN then ran unmasked for the outputs of that image)."""
    if masks is None:
        masks = torch.ones(inversion.batch_size, 1, *inversion.clean.shape[-2:])
    return torch.nn.functional.interpolate(masks.float().cpu(), scale_factor=VAE_SCALE, mode="nearest")[:, 0]


def start_choice(asked: int, start: int, appearance: Inversion, structure: Inversion) -> list[str]:
    """The start step that -1 resolved to, for the run's log line."""
    if asked >= 0:
        return []
    if appearance.start_step == structure.start_step:
        return [f"start step {start} (start_step -1: the inversions' start step)"]
    return [
        f"start step {start} (start_step -1: the later of the inversions' start steps, appearance "
        f"{appearance.start_step} and structure {structure.start_step})"
    ]


def pairing_choice(appearances: int, structures: int) -> list[str]:
    """How the two batches were paired (nothing for one image each)."""
    if appearances == structures == 1:
        return []
    if appearances == structures:
        return [f"{appearances} appearances and {structures} structures paired one to one: {appearances} outputs"]
    if structures == 1:
        return [f"1 structure with each of {appearances} appearances: {appearances} outputs"]
    return [f"each of {structures} structures with 1 appearance: {structures} outputs"]


def mask_choice(mode: str, appearance_mask, structure_mask, words) -> list[str]:
    """Where AdaIN matches colours, and why, when the user did not say it outright."""
    connected = [
        name for name, mask in (("appearance", appearance_mask), ("structure", structure_mask)) if mask is not None
    ]
    if mode == "none":
        return []
    if connected:
        whole = {"appearance", "structure"} - set(connected)
        rest = f", the whole {whole.pop()} image" if whole else ""
        return [
            f"adain_masks {mode}: the connected {' and '.join(connected)} mask{'s' if len(connected) > 1 else ''}{rest}"
        ]
    if mode == "from inputs":
        return ["adain_masks from inputs: no mask connected, so AdaIN matches whole images"]
    if words is not None:
        return ["adain_masks auto: automatic object masks (the positive prompt marks an object word)"]
    return [
        "adain_masks auto: whole images (no mask connected, and the positive prompt marks no object word: use CLIP "
        "Text Encode (Object Word) for automatic masks)"
    ]


class XAttnCrossImageSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XAttnCrossImageSampler",
            display_name="Cross-Image Attention Sampler",
            category=CATEGORY,
            description="Generate the structure image with the appearance image's colours and materials: the "
            "output's decoder self-attention queries keep the structure while keys/values come from the "
            "appearance (Alaluf et al., Cross-Image Attention, 2023).",
            inputs=[
                io.Model.Input("model", tooltip="The model both inversions were made with."),
                io.Conditioning.Input("positive", tooltip='Prompt for generation, e.g. "A photo of a <domain>".'),
                io.Conditioning.Input("negative", tooltip="Used only when cfg is above 1."),
                InversionSocket.Input("appearance", tooltip="Inversion of the image(s) giving colours/materials."),
                InversionSocket.Input(
                    "structure",
                    tooltip="Inversion of the image(s) giving the shape to keep. "
                    "Batches: 1 structure x N appearances, N x 1, or N x N paired.",
                ),
                setting_input(
                    io.Float,
                    TransferSettings,
                    "cfg",
                    step=0.1,
                    round=0.01,
                    tooltip="Prompt guidance during generation (paper: 1.0, i.e. none).",
                ),
                setting_input(
                    io.Float,
                    PlanSettings,
                    "swap_guidance",
                    step=0.05,
                    tooltip="Pushes the output away from a plain reconstruction of the structure. Raise "
                    "if the output looks like the structure input; lower if it loses the structure. "
                    "1 or below turns it off (and saves one model call per step).",
                ),
                setting_input(
                    io.Float,
                    TransferSettings,
                    "contrast",
                    step=0.01,
                    tooltip="Sharpens the cross-image attention weights. Raise for crisper texture "
                    "from the appearance; lower for smoother, blended results.",
                ),
                io.Int.Input(
                    "start_step",
                    default=-1,
                    min=-1,
                    max=999,
                    tooltip="-1 = the inversions' start step. A later step keeps more of the structure.",
                ),
                setting_input(
                    io.Float,
                    TransferSettings,
                    "adain_strength",
                    step=0.01,
                    tooltip="How strongly the output's colour statistics are pulled to the appearance.",
                ),
                freeu_input(),
                CheckedCombo(
                    "adain_masks",
                    options=ADAIN_MASK_MODES,
                    default="auto",
                    tooltip="Where AdaIN matches colours. auto: connected masks if any, else automatic object "
                    "masks when the positive prompt comes from CLIP Text Encode (Object Word) (the paper's "
                    "default), else the whole image. from inputs: the connected masks only. none: whole images.",
                ),
                io.Mask.Input(
                    "appearance_mask",
                    optional=True,
                    tooltip="Region of the appearance image to take "
                    "colours from (masked AdaIN). Any size, soft allowed.",
                ),
                io.Mask.Input(
                    "structure_mask",
                    optional=True,
                    tooltip="Region of the structure image to recolour "
                    "(masked AdaIN); outside it AdaIN leaves the output alone.",
                ),
                Options.Input("options", optional=True, tooltip="Advanced step ranges from the Options node."),
            ],
            outputs=[
                io.Latent.Output(display_name="output"),
                io.Latent.Output(display_name="appearance_reconstruction"),
                io.Latent.Output(display_name="structure_reconstruction"),
                io.Mask.Output(display_name="appearance_mask"),
                io.Mask.Output(display_name="structure_mask"),
            ],
        )

    @classmethod
    @reports_warnings
    def execute(
        cls,
        model,
        positive,
        negative,
        appearance,
        structure,
        cfg,
        swap_guidance,
        contrast,
        start_step,
        adain_strength,
        freeu,
        adain_masks="auto",
        appearance_mask=None,
        structure_mask=None,
        options=None,
    ):
        fingerprint = model_fingerprint(model)
        check_against_model(appearance, "appearance", model, fingerprint)
        check_against_model(structure, "structure", model, fingerprint)
        report_fast_mode(
            appearance, structure, cfg, conditioning_fingerprint(positive), conditioning_fingerprint(negative)
        )
        options = options or {}
        settings = TransferSettings(
            plan=dataclasses.replace(options.get("plan", PlanSettings()), swap_guidance=swap_guidance),
            contrast=contrast,
            cfg=cfg,
            start_step=None if start_step < 0 else start_step,
            adain_strength=adain_strength,
            memory_budget=options.get("memory_budget", TransferSettings().memory_budget),
        )
        if adain_masks == "none":
            appearance_mask = structure_mask = None
        tokens = object_tokens(positive) if adain_masks == "auto" else None  # the object word's, if the prompt has it
        family = family_of(model)
        for role, inversion in (("appearance", appearance), ("structure", structure)):
            if inversion.attention is not None:
                mismatch = family.cache_mismatch(model, options, inversion.attention, inversion.metadata)
                if mismatch:
                    raise ValueError(
                        f"the {role} inversion's fast-mode cache {mismatch}: connect the Options node this "
                        "sampler uses to Invert Image as well and invert again, or invert with fast_mode off"
                    )
        outline = outline_transfer(appearance, structure, settings, appearance_mask, structure_mask, tokens)
        freeu_on = freeu_settings(freeu, model)
        log_choices(
            "Sampler",
            [
                *start_choice(start_step, outline.start, appearance, structure),
                *pairing_choice(appearance.batch_size, structure.batch_size),
                *mask_choice(adain_masks, appearance_mask, structure_mask, tokens),
                *freeu_choice(freeu, freeu_on),
            ],
        )
        patched = family.patch(model, freeu_on, records_maps=outline.records_maps, options=options)
        generation_sigmas = appearance.sigmas[outline.start :]
        preview = latent_preview.prepare_callback(patched, len(generation_sigmas) - 1)
        output_shape = (len(outline.pairs), *structure.clean.shape[1:])

        def loop(backend, x, report):
            device = x.device

            def progress(done, _total, output, denoised):
                report(done - 1, output, denoised, float(generation_sigmas[done - 1]))

            result = transfer(
                backend,
                appearance.to(device),
                structure.to(device),
                settings,
                appearance_mask,
                structure_mask,
                callback=progress,
                object_tokens=tokens,
                outline=outline,
            )
            return result.output.to(x.dtype), result

        samples, result = run_in_guider(
            patched,
            positive,
            negative,
            cfg,
            model_latent(model, torch.zeros(output_shape)),
            generation_sigmas,
            loop,
            preview,
        )
        # the paths' reconstructions as LATENTs in the MODEL's layout (a frame axis where it has one)
        appearance_latent = model.model.process_latent_out(model_latent(model, result.appearance.float().cpu()))
        structure_latent = model.model.process_latent_out(model_latent(model, result.structure.float().cpu()))
        return io.NodeOutput(
            {"samples": samples},
            {"samples": appearance_latent},
            {"samples": structure_latent},
            mask_output(result.appearance_masks, appearance),
            mask_output(result.structure_masks, structure),
        )
