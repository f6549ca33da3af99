"""Reference backend: a diffusers ``UNet2DConditionModel`` with swapping decoder self-attention.

Installing the backend sets attention processors on the decoder's self-attention layers (attn1
of ``up_blocks``) and, optionally, forward pre-hooks for the official FreeU variant; ``close()``
(or leaving the ``with`` block) restores the UNet exactly as it was.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch
import torch.nn.functional as F
from torch import Tensor

from .attention import CallAttention, merge_heads, record_attention_maps, route_attention, split_heads
from .freeu import FreeUSettings, official_freeu
from .schedule import sd_sigma_table, timestep_for_sigma
from .segmentation import CROSS_MAPS_LEVEL, SELF_MAPS_LEVEL


def _sdpa(heads: int):
    def attend(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        q, k, v = (split_heads(tensor, heads) for tensor in (query, key, value))
        return merge_heads(F.scaled_dot_product_attention(q, k, v))

    return attend


class _CallState:
    """What the processors need to know about the model call in progress."""

    def __init__(self) -> None:
        self.attention: CallAttention | None = None  # what the attention layers do in this call
        self.cond_or_uncond: list[int] = [0]


class SwapAttentionProcessor:
    """Self-attention that lets :func:`route_attention` choose each row's keys and values."""

    def __init__(self, layer: Hashable, level: int, state: _CallState, records_maps: bool = False) -> None:
        self.layer = layer
        self.level = level
        self.state = state
        self.records_maps = records_maps  # the layer whose self-attention maps the automatic masks read

    def __call__(
        self, attn, hidden_states: Tensor, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs
    ):
        if encoder_hidden_states is not None or attention_mask is not None or attn.norm_cross or attn.spatial_norm:
            raise RuntimeError("SwapAttentionProcessor supports plain self-attention layers only")
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        out = route_attention(
            query,
            key,
            value,
            attn.heads,
            self.layer,
            self.level,
            self.state.cond_or_uncond,
            self.state.attention,
            _sdpa(attn.heads),
            self.records_maps,
        )
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


class RecordingCrossAttentionProcessor:
    """The text cross-attention layer whose maps the automatic masks read; its output is left to ``original``."""

    def __init__(self, original, state: _CallState) -> None:
        self.original = original
        self.state = state

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states=None, *args, **kwargs):
        call = self.state.attention
        if call is not None and call.record is not None and encoder_hidden_states is not None:
            context = (
                attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
            )
            query, key = attn.to_q(hidden_states), attn.to_k(context)
            record_attention_maps(query, key, attn.heads, self.state.cond_or_uncond, call, cross=True)
        return self.original(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


def decoder_attention_levels(unet) -> dict[int, int]:
    """Map up-block index -> attention level (0 = the highest-resolution decoder level with attention)."""
    depth = len(unet.up_blocks)
    factors = {b: 2 ** (depth - 1 - b) for b, block in enumerate(unet.up_blocks) if getattr(block, "attentions", None)}
    ranked = sorted(set(factors.values()))
    return {b: ranked.index(f) for b, f in factors.items()}


def decoder_attention_processors(unet, suffix: str) -> dict[str, int]:
    """Map processor name -> attention level for the decoder's processors ending in ``suffix``, in forward order.

    Names as in ``unet.attn_processors``; ``"attn1.processor"`` selects self-attention, ``"attn2.processor"``
    cross-attention.
    """
    names = list(unet.attn_processors)
    selected: dict[str, int] = {}
    for block_index, level in decoder_attention_levels(unet).items():
        for name in names:
            if name.startswith(f"up_blocks.{block_index}.") and name.endswith(suffix):
                selected[name] = level
    return selected


def decoder_self_attention_processors(unet) -> dict[str, int]:
    """The decoder's self-attention layers (attn1 of ``up_blocks``): the layers :class:`DiffusersBackend` swaps in."""
    return decoder_attention_processors(unet, "attn1.processor")


def _last_at_level(layers: dict[str, int], level: int) -> str | None:
    """The last layer (forward order) of ``level``, or None."""
    return ([name for name, layer_level in layers.items() if layer_level == level] or [None])[-1]


class DiffusersBackend:
    """Noise predictions from a diffusers UNet in sigma space, with CFG and attention swapping."""

    def __init__(
        self,
        unet,
        positive: Tensor,
        negative: Tensor | None = None,
        cfg: float = 1.0,
        sigma_table: Tensor | None = None,
        freeu: FreeUSettings | None = None,
    ) -> None:
        self.unet = unet
        self.positive = positive
        self.negative = negative
        self.cfg = cfg
        self.sigma_table = sd_sigma_table() if sigma_table is None else sigma_table
        self.prediction_type = getattr(getattr(unet, "config", None), "prediction_type", None) or "epsilon"
        self.model_calls = 0
        self.image_evaluations = 0
        self._state = _CallState()
        self._original_processors = dict(unet.attn_processors)
        self._hooks = []
        processors = dict(self._original_processors)
        swapping = decoder_self_attention_processors(unet)
        self_maps_layer = _last_at_level(swapping, SELF_MAPS_LEVEL)
        cross_maps_layer = _last_at_level(decoder_attention_processors(unet, "attn2.processor"), CROSS_MAPS_LEVEL)
        for name, level in swapping.items():
            processors[name] = SwapAttentionProcessor(name, level, self._state, name == self_maps_layer)
        if cross_maps_layer is not None:
            processors[cross_maps_layer] = RecordingCrossAttentionProcessor(processors[cross_maps_layer], self._state)
        unet.set_attn_processor(processors)
        if freeu is not None:
            base = unet.config.block_out_channels[0]
            for block in unet.up_blocks:
                self._hooks.append(block.register_forward_pre_hook(_freeu_hook(base, freeu), with_kwargs=True))

    def with_guidance(self, positive: Tensor, negative: Tensor | None, cfg: float) -> None:
        self.positive, self.negative, self.cfg = positive, negative, cfg

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self.unet.set_attn_processor(self._original_processors)

    def __enter__(self) -> DiffusersBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def predict_noise(
        self, latents: Tensor, sigma: float | Tensor, attention: CallAttention | None = None, paths: bool = False
    ) -> Tensor:
        """Guided noise prediction for sigma-space ``latents`` at ``sigma`` (a float or one per row).

        ``paths`` changes nothing here: a diffusers UNet call carries no hints to leave out.
        """
        rows = latents.shape[0]
        sigmas = torch.as_tensor(sigma, dtype=torch.float32, device=latents.device).reshape(-1).expand(rows)
        guided = self.cfg != 1.0 and self.negative is not None
        cond_or_uncond = [1, 0] if guided else [0]
        contexts = [self.negative, self.positive] if guided else [self.positive]
        model_in = (latents / (sigmas**2 + 1).sqrt().reshape(-1, 1, 1, 1)).repeat(len(cond_or_uncond), 1, 1, 1)
        timesteps = timestep_for_sigma(sigmas, self.sigma_table).repeat(len(cond_or_uncond))
        context = torch.cat([c.expand(rows, -1, -1) for c in contexts]).to(latents.device, self.unet.dtype)
        self._state.attention, self._state.cond_or_uncond = attention, cond_or_uncond
        try:
            with torch.no_grad():
                prediction = self.unet(model_in.to(self.unet.dtype), timesteps, encoder_hidden_states=context).sample
        finally:
            self._state.attention, self._state.cond_or_uncond = None, [0]
        self.model_calls += 1
        self.image_evaluations += rows * len(cond_or_uncond)
        prediction = prediction.float()
        if self.prediction_type == "v_prediction":
            sig = sigmas.repeat(len(cond_or_uncond)).reshape(-1, 1, 1, 1)
            alpha = 1 / (sig**2 + 1).sqrt()
            prediction = alpha * prediction + (1 - alpha**2).sqrt() * model_in.float()
        if guided:
            uncond, cond = prediction.chunk(2)
            return uncond + self.cfg * (cond - uncond)
        return prediction


def _freeu_hook(base_channels: int, settings: FreeUSettings):
    def hook(module, args, kwargs):
        if "hidden_states" in kwargs:
            kwargs["hidden_states"] = official_freeu(kwargs["hidden_states"], base_channels, settings)
        elif args:
            args = (official_freeu(args[0], base_channels, settings), *args[1:])
        return args, kwargs

    return hook
