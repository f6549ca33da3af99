"""A naive port of the official Cross-Image Attention code: the baseline the engine is measured against.

What the official code computes, written plainly: full-matrix softmax attention with the contrast
applied to the whole weight matrix, every image inverted on its own over all steps, and two full
three-row model calls (swap and no swap) per generation step. It reuses the engine's plan, DDPM step
and AdaIN, whose semantics are the official ones. Also here: the plain one-row generation the bench
uses for scale.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from xattn_core.adain import adain
from xattn_core.diffusers_backend import decoder_self_attention_processors
from xattn_core.inversion import draw_noisy_latents
from xattn_core.plan import KeyValueSource
from xattn_core.schedule import ddpm_step, noise_map

OUT, STYLE, STRUCT = 0, 1, 2  # row order of the official three-path batch


def naive_attention(query, key, value, heads: int, contrast: float, contrast_rows=slice(None)):
    """Full-matrix softmax attention of ``[rows, tokens, heads * dim]`` tensors.

    As the official code's attention (``compute_scaled_dot_product_attention`` in utils/attention_utils.py):
    the whole weight matrix is materialised, and the contrast ``(A - mean_keys(A)) * c + mean_keys(A)``,
    clipped to [0, 1], is applied to the rows ``contrast_rows`` selects (an index or a slice; default:
    every row, as the memory measurement's one-row op; None: no row).
    """
    rows, query_tokens, width = query.shape
    dim_head = width // heads
    q, k, v = (t.reshape(rows, -1, heads, dim_head).transpose(1, 2) for t in (query, key, value))
    weights = torch.softmax(q @ k.transpose(-1, -2) * dim_head**-0.5, dim=-1)
    if contrast_rows is not None:
        chosen = weights[contrast_rows]
        mean = chosen.mean(dim=-1, keepdim=True)
        contrasted = ((chosen - mean) * contrast + mean).clamp(0.0, 1.0)
        if contrast_rows == slice(None):  # every row: the new matrix replaces the old one, as in the official op
            weights = contrasted
        else:
            weights[contrast_rows] = contrasted
    out = (weights @ v).transpose(1, 2).reshape(rows, query_tokens, width)
    del weights
    return out


@dataclass
class NaiveSwapState:
    """What the naive processors do during the model call in progress."""

    contrast: float  # attention contrast of the swapped output row (the bench's --contrast)
    levels: frozenset = frozenset()  # decoder attention levels that swap in this call
    source_row: int | None = None  # STYLE or STRUCT: whose keys/values the output row gets
    attention_seconds: float = 0.0  # wall time of the attention maths (after the projections)


class NaiveCrossImageProcessor:
    """Official-style decoder self-attention: explicit weights for every row, in-batch key/value swap."""

    def __init__(self, level: int, state: NaiveSwapState) -> None:
        self.level = level
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None:
            raise RuntimeError("the naive processor handles plain self-attention only")
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        swap = self.level in self.state.levels and self.state.source_row is not None
        if swap:
            key, value = key.clone(), value.clone()
            key[OUT], value[OUT] = key[self.state.source_row], value[self.state.source_row]
        started = time.perf_counter()
        out = naive_attention(query, key, value, attn.heads, self.state.contrast, OUT if swap else None)
        self.state.attention_seconds += time.perf_counter() - started
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def install_naive_processors(unet, state: NaiveSwapState) -> int:
    """Put the naive processor on every decoder self-attention layer; returns how many."""
    processors = dict(unet.attn_processors)
    selected = decoder_self_attention_processors(unet)
    for name, level in selected.items():
        processors[name] = NaiveCrossImageProcessor(level, state)
    unet.set_attn_processor(processors)
    return len(selected)


def naive_inversion(backend, clean, sigmas, seed: int, result: dict):
    """Official inversion: each image on its own, all N steps, z_{N-1} zeroed.

    A generator that yields after every model call (so the caller can interleave it with ours);
    leaves ``result["latents"]`` ``[N+1, B, C, H, W]`` and ``result["maps"]`` ``[N, B, C, H, W]``.
    """
    noisy = draw_noisy_latents(clean, sigmas, seed)  # the same x_i as ours, so the maps are comparable
    steps = len(sigmas) - 1
    per_image = []
    for b in range(clean.shape[0]):
        maps = []
        for i in range(steps):
            x, x_next = noisy[i][b : b + 1], noisy[i + 1][b : b + 1]
            eps = backend.predict_noise(x, float(sigmas[i]))
            maps.append(noise_map(x, x_next, eps, float(sigmas[i]), float(sigmas[i + 1])))
            yield
        maps[-1] = torch.zeros_like(maps[-1])
        per_image.append(torch.stack(maps))
    result["latents"], result["maps"] = torch.stack(noisy), torch.cat(per_image, dim=1)


def official_noise(backend, state: NaiveSwapState, step, rows: torch.Tensor, sigma: float) -> torch.Tensor:
    """The official guided noise of one step for ``rows`` [output, appearance, structure]: a swap and a no-swap
    call, mixed by swap guidance over all rows (appearance/structure rows are equal in both calls)."""
    state.levels = step.swap_levels
    state.source_row = STRUCT if step.kv_source is KeyValueSource.STRUCTURE else STYLE
    eps_swap = backend.predict_noise(rows, sigma)
    state.levels, state.source_row = frozenset(), None
    eps_plain = backend.predict_noise(rows, sigma)
    return eps_swap if step.swap_weight is None else eps_plain + step.swap_weight * (eps_swap - eps_plain)


def official_step(step, rows, eps, sigma: float, sigma_next: float, maps_at_step) -> torch.Tensor:
    """One official step: DDPM on every row with its image's noise map (``maps_at_step`` is [appearance,
    structure]), then AdaIN of the output row towards the appearance row."""
    z = torch.cat([maps_at_step[1:2], maps_at_step[0:1], maps_at_step[1:2]])  # structure's, appearance's, structure's
    x = ddpm_step(rows, eps, sigma, sigma_next, z)
    if step.adain:
        x[OUT : OUT + 1] = adain(x[OUT : OUT + 1], x[STYLE : STYLE + 1])
    return x


def naive_generation(backend, state: NaiveSwapState, latents, maps, sigmas, plan, result: dict):
    """Official generation: rows [output, appearance, structure], swap and no-swap call every step.

    A generator that yields after every step; leaves the final three rows in ``result["rows"]``.
    """
    start = plan[0].global_step
    appearance_x, structure_x = latents[start][0:1], latents[start][1:2]
    x = torch.cat([structure_x, appearance_x, structure_x])
    for step in plan:
        i = step.global_step
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        eps = official_noise(backend, state, step, x, sigma)
        x = official_step(step, x, eps, sigma, sigma_next, maps[i])
        yield
    result["rows"] = x


def plain_generation(backend, structure, sigmas, plan, result: dict):
    """One row, no swap: the structure path alone over the same steps (a generator, one yield per step)."""
    x = structure.latent_at(plan[0].global_step).clone()
    for step in plan:
        i = step.global_step
        eps = backend.predict_noise(x, float(sigmas[i]), None)
        x = ddpm_step(x, eps, float(sigmas[i]), float(sigmas[i + 1]), structure.noise_at(i))
        yield
    result["output"] = x
