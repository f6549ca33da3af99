"""The tiny random joint-attention models the Flux-side benches measure on, one spec a family.

Each spec builds the tests' tiny model (``tests/comfyui/comfyui_support.py``: ComfyUI's own model classes with
random weights), makes a latent of the bench's size and the keyword arguments of one ``apply_model`` call, and
names the q/k RMSNorm weights that :func:`sharpened` scales and the joint sequence's leading text tokens (the
pack's ``JointBlock.text_tokens``: Z-Image pads its caption to a multiple of 32).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests" / "comfyui") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests" / "comfyui"))

SIZE = 16  # latent cells: 8 x 8 image tokens of 2 x 2 cells
TEXT_TOKENS = 6  # the tests' conditionings


@dataclass(frozen=True)
class TinyJointModel:
    name: str
    build: Callable  # (ns, seed) -> ModelPatcher
    latent_shape: tuple[int, ...]
    call_inputs: Callable[[int], dict]  # seed -> apply_model keyword arguments (conditioning)
    norm_weights: tuple[str, ...]  # parameter-name endings of the q/k RMSNorm scales
    text_tokens: int  # leading text tokens of the joint sequence, padding included

    def latent(self, seed: int) -> torch.Tensor:
        return torch.randn(*self.latent_shape, generator=torch.Generator().manual_seed(100 + seed))


def _flux_inputs(seed: int) -> dict:
    from comfyui_support import flux_conditioning

    context, extras = flux_conditioning(seed)[0]
    return {"c_crossattn": context, "y": extras["pooled_output"], "guidance": torch.tensor([3.5])}


def _qwen_image_inputs(seed: int) -> dict:
    from comfyui_support import qwen_image_conditioning

    return {"c_crossattn": qwen_image_conditioning(seed)[0][0]}


def _z_image_inputs(seed: int) -> dict:
    from comfyui_support import z_image_conditioning

    context = z_image_conditioning(seed)[0][0]
    return {"c_crossattn": context, "num_tokens": context.shape[1]}


def _build(name: str) -> Callable:
    def build(ns, seed: int = 0):
        import comfyui_support

        return getattr(comfyui_support, name)(ns, seed=seed)

    return build


MODELS = {
    "flux": TinyJointModel(
        "flux",
        _build("tiny_flux"),
        (1, 16, SIZE, SIZE),
        _flux_inputs,
        ("query_norm.scale", "key_norm.scale"),
        TEXT_TOKENS,
    ),
    "qwen_image": TinyJointModel(
        "qwen_image",
        _build("tiny_qwen_image"),
        (1, 16, 1, SIZE, SIZE),  # Wan 2.1 latents carry a frame axis
        _qwen_image_inputs,
        ("norm_q.weight", "norm_k.weight", "norm_added_q.weight", "norm_added_k.weight"),
        TEXT_TOKENS,
    ),
    "z_image": TinyJointModel(
        "z_image", _build("tiny_z_image"), (1, 16, SIZE, SIZE), _z_image_inputs, ("q_norm.weight", "k_norm.weight"), 32
    ),
}
FLUX = MODELS["flux"]


def sharpened(model, factor: float, spec: TinyJointModel = FLUX):
    """A clone whose q/k RMSNorm scales are ``factor`` times larger: attention logits ``factor**2`` larger.

    Random weights give near-uniform attention over the image tokens, whose output a cyclic shift cannot change;
    trained models attend far more peakily. The sharpened clone stands in for that.
    """
    import comfy.model_management

    comfy.model_management.unload_all_models()  # a loaded clone's patches would be read as the base's parameters
    sharp = model.clone()
    for name, parameter in model.model.diffusion_model.named_parameters():
        if name.endswith(spec.norm_weights):
            sharp.add_object_patch(f"diffusion_model.{name}", torch.nn.Parameter(parameter.detach() * factor))
    return sharp


def relative_error(ns, model, settings, shift: int, sigma: float, seed: int, contrast=1.0, spec=FLUX) -> float:
    """|v_swapped - v_structure| / |v_structure| for one copy of the structure shifted by ``shift`` tokens as the
    appearance, every block swapping as ``settings`` says (a ``JointSwapSettings`` of the loaded pack), with
    ``contrast``."""
    import comfy.model_management

    core, backend = ns.core, ns.backend
    patched = ns.families.family_of(model).patch(model, None, options={ns.joint.JOINT_OPTIONS_KEY: settings})
    comfy.model_management.load_models_gpu([patched])
    structure = spec.latent(seed)
    appearance = structure.roll(2 * shift, dims=-1)
    inputs = spec.call_inputs(seed)

    def call(x, swap):
        options = dict(patched.model_options["transformer_options"])
        options[backend.SWAP_KEY] = swap
        options["cond_or_uncond"] = [0]
        with torch.no_grad():
            denoised = patched.model.apply_model(x, torch.tensor([sigma]), transformer_options=options, **inputs)
        return (x - denoised) / sigma

    levels = frozenset({0, 1})
    store = core.attention.KeyValueStore()
    call(appearance, core.attention.CallAttention(capture=core.attention.Capture(levels, store)))
    swap = core.attention.CallAttention(swap=core.attention.Swap(levels, (0,), (0,), store, contrast))
    swapped, own = call(structure, swap), call(structure, None)
    return ((swapped - own).norm() / own.norm()).item()
