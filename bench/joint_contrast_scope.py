"""Which weights the paper's contrast sharpens in joint attention: the whole row, or the image keys only.

In a swapped call an output image query takes one softmax over its own text keys and the source's image keys.
``row`` (ContrastScope.ROW) contrasts all of them around 1 / N_keys; ``image`` contrasts the image keys around their
own mean weight and leaves the text's weights as the softmax gives them (the UNet's text attention is a separate
layer the contrast never touches). Two measurements on a tiny random joint-attention model (``--family``: Flux,
Qwen-Image or Z-Image, ``bench/tiny_joint_models.py``) and its sharpened clones, at the paper's contrast:

1. where the attention mass goes: the structure's image queries over its own text keys and a shifted copy's
   image keys, block by block (queries and keys recorded from the model's own calls through ComfyUI's
   ``optimized_attention_override``; Z-Image's caption and noise refiners, which see one kind of token, are left
   out), summed weights of the text (with Z-Image's caption padding) and of the image after the contrast, against
   ordinary attention's;
2. the shifted-copy test of ``bench/flux_rope.py``: the appearance is the structure shifted by some tokens, so a
   swap should hand the structure its own prediction back; relative error of the velocity, per scope.

    COMFYUI_PATH=/path/to/ComfyUI python bench/joint_contrast_scope.py [--family flux|qwen_image|z_image]

Z-Image needs a ComfyUI that has it (0.9 on).
"""

from __future__ import annotations

import argparse
import os

import torch
from flux_rope import SEEDS, SHIFTS, SIGMAS  # the script's folder is on sys.path
from tiny_joint_models import MODELS, SIZE, TinyJointModel, relative_error, sharpened

SHARPNESS = (3.0, 10.0, 30.0, 60.0)  # q/k norm scale factors: attention logits 9 to 3600 times the random ones

OVERRIDE_KEY = "optimized_attention_override"


def recorded_attention(model, spec: TinyJointModel, latent: torch.Tensor, sigma: float, seed: int) -> list[tuple]:
    """(q, k) of every joint attention call of one plain model call, ``[1, heads, tokens, dim]`` with RoPE."""
    import comfy.model_management

    joint_tokens = spec.text_tokens + (SIZE // 2) ** 2
    calls = []

    def record(func, q, k, v, heads, *args, **kwargs):
        if q.shape[2] == joint_tokens:  # not a refiner's call over one kind of token
            calls.append((q.detach().clone(), k.detach().clone()))
        return func(q, k, v, heads, *args, **kwargs)

    comfy.model_management.load_models_gpu([model])
    options = dict(model.model_options.get("transformer_options", {}))
    options[OVERRIDE_KEY] = record
    options["cond_or_uncond"] = [0]
    with torch.no_grad():
        model.model.apply_model(latent, torch.tensor([sigma]), transformer_options=options, **spec.call_inputs(seed))
    return calls


def attention_mass(joint, structure_call, appearance_call, text_tokens: int, contrast: float, scope) -> tuple:
    """Mean summed weight of the text keys and of the source's image keys over the structure's image queries."""
    (query, key), (_, source_key) = structure_call, appearance_call
    queries = query[:, :, text_tokens:]
    text_keys, image_keys = key[:, :, :text_tokens], source_key[:, :, text_tokens:]
    masses = []
    for text_value in (1.0, 0.0):  # one-channel values: 1 on one kind of key, 0 on the other, give its mass
        text_values = torch.full_like(text_keys[..., :1], text_value)
        image_values = torch.full_like(image_keys[..., :1], 1.0 - text_value)
        out = joint.contrasted_joint_attention(
            queries, [(text_keys, text_values)], queries, image_keys, image_values, contrast, 2**26, scope=scope
        )
        masses.append(out.mean().item())
    return tuple(masses)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=list(MODELS), default="flux", help="the tiny model (default: flux)")
    spec = MODELS[parser.parse_args(argv).family]
    from comfyui_support import setup

    ns = setup(os.environ["COMFYUI_PATH"])
    joint = __import__(f"{ns.pack.__name__}.xattn_core.joint_attention", fromlist=["ContrastScope"])
    transfer = __import__(f"{ns.pack.__name__}.xattn_core.transfer", fromlist=["TransferSettings"])
    contrast = transfer.TransferSettings().contrast
    text_tokens = spec.text_tokens
    base = spec.build(ns, seed=0)
    print(f"{spec.name}; contrast {contrast:g}; {text_tokens} text tokens, {(SIZE // 2) ** 2} image tokens")
    for factor in SHARPNESS:
        model = base if factor == 1.0 else sharpened(base, factor, spec)
        print(f"\nq/k norm scale x{factor:g}")
        print("  mass of the output's image queries, mean over blocks, seeds and sigmas (text | source image)")
        totals = {"ordinary": [0.0, 0.0], **{scope.value: [0.0, 0.0] for scope in joint.ContrastScope}}
        count = 0
        for seed in SEEDS:
            structure = spec.latent(seed)
            appearance = structure.roll(2, dims=-1)
            for sigma in SIGMAS:
                own = recorded_attention(model, spec, structure, sigma, seed)
                source = recorded_attention(model, spec, appearance, sigma, seed)
                for structure_call, appearance_call in zip(own, source, strict=True):
                    rows = [("ordinary", 1.0, joint.ContrastScope.ROW)]
                    rows += [(scope.value, contrast, scope) for scope in joint.ContrastScope]
                    for name, row_contrast, scope in rows:
                        masses = attention_mass(
                            joint, structure_call, appearance_call, text_tokens, row_contrast, scope
                        )
                        totals[name][0] += masses[0]
                        totals[name][1] += masses[1]
                    count += 1
        for name, (text_mass, image_mass) in totals.items():
            text_mass, image_mass = text_mass / count, image_mass / count
            share = text_mass / (text_mass + image_mass)
            print(f"    {name:9s} text {text_mass:.4f} | image {image_mass:.4f}   text share {share:.2%}")
        print("  shifted-copy test: |v_swapped - v_structure| / |v_structure|, mean over seeds and sigmas")
        print("    scope     " + "  ".join(f"shift {shift}" for shift in SHIFTS))
        for scope in joint.ContrastScope:
            settings = joint.JointSwapSettings(depth=(0.0, 1.0), contrast_scope=scope)
            errors = []
            for shift in SHIFTS:
                values = [
                    relative_error(ns, model, settings, shift, sigma, seed, contrast, spec)
                    for sigma in SIGMAS
                    for seed in SEEDS
                ]
                errors.append(sum(values) / len(values))
            print(f"    {scope.value:9s} " + "  ".join(f"{error:7.2e}" for error in errors))


if __name__ == "__main__":
    main()
