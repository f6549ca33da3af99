"""Edit-friendly DDPM inversion (Huberman-Spiegelglas et al., eta = 1) in sigma space, and its rectified-flow
analogue (``flow.py``) for flow models such as Flux."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .attention import CallAttention, Capture, KeyValueStore
from .errors import XAttnError
from .flow import FLOW, flow_noise_map, flow_noisy, flow_step
from .plan import SWAP_LEVELS
from .schedule import ddpm_step, noise_map
from .settings import bounded, check_ranges

DDPM = "ddpm"  # the step kind of edit-friendly DDPM inversion (the paper's); see Inversion.step_kind
STEP_KIND_KEY = "step_kind"  # metadata key; inversions without it are DDPM ones
STEP_KINDS = (DDPM, FLOW)

NoisePredictor = Callable[[Tensor, Tensor, CallAttention | None], Tensor]
"""``(latents [R, C, H, W], sigmas [R], swap) -> noise prediction [R, C, H, W]``, guidance included.

The attention directive is None, or (fast mode) one that only captures the swapping levels' keys/values.
"""

StepCallback = Callable[[int, int], None]
"""``(steps done, steps total)``; called after every model call so callers can report and interrupt."""


@dataclass(frozen=True)
class InversionSettings:
    """The paper's inversion (official run.py / config.py): 100 steps, generation from step 32, CFG 3.5."""

    steps: int = bounded(100, 2, 1000)  # schedule length
    start_step: int = bounded(32, 0, 999)  # first step generation uses; earlier ones are never computed
    cfg: float = bounded(3.5, 0.0, 30.0)
    seed: int = bounded(0, 0, 2**64 - 1)

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.start_step >= self.steps:
            raise ValueError(f"start_step ({self.start_step}) must be below steps ({self.steps})")


@dataclass
class AttentionCache:
    """What fast mode takes from the inversion pass instead of running the model again.

    Per stored step: the guided noise prediction (small) and the keys/values of every swapping
    self-attention layer for every image and cond_or_uncond branch (large). Kept in memory only.
    """

    predictions: Tensor  # [steps - start_step, B, C, H, W]
    keys_values: list[KeyValueStore]  # one store per stored step, rows = images

    @property
    def nbytes(self) -> int:
        return self.predictions.nbytes + sum(store.nbytes for store in self.keys_values)

    @property
    def branches(self) -> frozenset[int]:
        """The cond_or_uncond branches whose keys/values were kept (0 = cond, 1 = uncond)."""
        return self.keys_values[0].branches if self.keys_values else frozenset()

    @property
    def layers(self) -> frozenset:
        """The swapping layers whose keys/values were kept."""
        return self.keys_values[0].layers if self.keys_values else frozenset()

    def select(self, rows: list[int]) -> AttentionCache:
        return AttentionCache(self.predictions[:, rows], [store.select(rows) for store in self.keys_values])


@dataclass(frozen=True)
class CacheSettings:
    """Fast mode: which attention levels to keep from the inversion, where, and how much memory is allowed."""

    levels: frozenset[int] = SWAP_LEVELS
    device: torch.device | str | None = None  # None: where the model computes
    max_bytes: int | None = None  # refuse once the first step shows the cache would be larger
    branches: frozenset[int] | None = None  # cond_or_uncond branches to keep (0 = cond, 1 = uncond); None: all


class CacheTooLargeError(XAttnError, MemoryError):
    pass


@dataclass
class Inversion:
    """A batch of images inverted along one schedule, from ``start_step`` on.

    ``latents[j]`` is x at global step ``start_step + j`` (the last one is the clean x0) and
    ``noise_maps[j]`` is the z that takes it to the next one. Steps before ``start_step`` are
    never used by generation, so they are neither computed nor stored.
    """

    clean: Tensor  # [B, C, H, W] model-space clean latent
    sigmas: Tensor  # [steps + 1], the whole schedule
    start_step: int
    latents: Tensor  # [steps + 1 - start_step, B, C, H, W]
    noise_maps: Tensor  # [steps - start_step, B, C, H, W], float64 (see schedule.noise_map)
    metadata: dict[str, str] = field(default_factory=dict)
    attention: AttentionCache | None = None  # fast mode only; never written to inversion files
    noise_mask: Tensor | None = None  # [1 or B, 1, H, W] in 0..1: where a transfer may change this image

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def batch_size(self) -> int:
        return self.clean.shape[0]

    @property
    def step_kind(self) -> str:
        """DDPM (variance-exploding sigma space) or FLOW (rectified flow, sigma from 1 to 0)."""
        return self.metadata.get(STEP_KIND_KEY, DDPM)

    @property
    def stepper(self) -> Callable[[Tensor, Tensor, float, float, Tensor | None], Tensor]:
        """``(latent, prediction, sigma, sigma_next, noise map) -> next latent``: the step of this kind."""
        return flow_step if self.step_kind == FLOW else ddpm_step

    def non_finite_part(self) -> str | None:
        """The first of its tensors that holds NaN or Inf ("clean latent", "noisy latents", "noise maps",
        "sigmas"), or None: one such value makes a whole transfer NaN, with no error of its own."""
        for name, tensor in (
            ("clean latent", self.clean),
            ("noisy latents", self.latents),
            ("noise maps", self.noise_maps),
            ("sigmas", self.sigmas),
        ):
            if not bool(torch.isfinite(tensor).all()):
                return name
        return None

    def latent_at(self, step: int) -> Tensor:
        return self.latents[self._index(step, self.steps)]

    def noise_at(self, step: int) -> Tensor:
        return self.noise_maps[self._index(step, self.steps - 1)]

    def prediction_at(self, step: int) -> Tensor:
        """The inversion's noise prediction at ``step`` (fast mode only)."""
        return self._cache().predictions[self._index(step, self.steps - 1)]

    def keys_values_at(self, step: int) -> KeyValueStore:
        """The swapping layers' keys/values at ``step`` (fast mode only)."""
        return self._cache().keys_values[self._index(step, self.steps - 1)]

    def _cache(self) -> AttentionCache:
        if self.attention is None:
            raise RuntimeError("this inversion holds no attention cache; invert with fast mode on")
        return self.attention

    def _index(self, step: int, last: int) -> int:
        if not self.start_step <= step <= last:
            raise IndexError(f"step {step} is outside this inversion's stored range {self.start_step}..{last}")
        return step - self.start_step

    def to(self, device: torch.device | str) -> Inversion:
        """The same inversion with its latents and noise maps on ``device`` (an attention cache stays put)."""
        return Inversion(
            clean=self.clean.to(device),
            sigmas=self.sigmas,
            start_step=self.start_step,
            latents=self.latents.to(device),
            noise_maps=self.noise_maps.to(device),
            metadata=dict(self.metadata),
            attention=self.attention,
            noise_mask=None if self.noise_mask is None else self.noise_mask.to(device),
        )

    def select(self, rows: list[int]) -> Inversion:
        """The inversion of a subset of the batch's images."""
        return Inversion(
            clean=self.clean[rows],
            sigmas=self.sigmas,
            start_step=self.start_step,
            latents=self.latents[:, rows],
            noise_maps=self.noise_maps[:, rows],
            metadata=dict(self.metadata),
            attention=None if self.attention is None else self.attention.select(rows),
            noise_mask=self.noise_mask
            if self.noise_mask is None or len(self.noise_mask) == 1
            else self.noise_mask[rows],
        )


def draw_noisy_latents(clean: Tensor, sigmas: Tensor, seed: int, kind: str = DDPM) -> list[Tensor]:
    """x_i = x0 + sigma_i * n_i (FLOW: (1 - sigma_i) x0 + sigma_i n_i) with independent n_i for i < N, and x_N = x0.

    Image ``b`` of the batch draws from its own generator seeded ``seed + b`` (ComfyUI's batch-index
    convention), so it gets exactly the noise it gets when inverted alone with that seed. All N draws
    are made in order whatever start step is used later, so an inversion that skips early steps sees
    exactly the same x_i as a full one with the same seed.
    """
    generators = [torch.Generator(device="cpu").manual_seed((seed + b) % 2**64) for b in range(clean.shape[0])]
    noisy = []
    for i in range(len(sigmas) - 1):
        draw = torch.stack([torch.randn(clean.shape[1:], generator=g, dtype=torch.float32) for g in generators])
        draw = draw.to(clean.device, clean.dtype)
        noisy.append(flow_noisy(clean, float(sigmas[i]), draw) if kind == FLOW else clean + float(sigmas[i]) * draw)
    noisy.append(clean.clone())
    return noisy


def invert(
    predict_noise: NoisePredictor,
    clean: Tensor,
    sigmas: Tensor,
    start_step: int = 0,
    seed: int = 0,
    zero_last_noise: bool | None = None,
    callback: StepCallback | None = None,
    cache: CacheSettings | None = None,
    kind: str = DDPM,
) -> Inversion:
    """Invert a batch of clean latents, one model call per step for all images of the batch.

    ``kind`` is DDPM (the paper's) or FLOW (rectified flow, see ``flow.py``). ``zero_last_noise`` (default: for
    DDPM only) reproduces the official code, which zeroes the last noise map; a flow inversion keeps it, so its
    regeneration reconstructs every step exactly. With ``cache`` (fast mode) the predictions and the swapping
    levels' keys/values are kept too.
    """
    if kind not in STEP_KINDS:
        raise ValueError(f"unknown inversion kind {kind!r}; use one of {', '.join(STEP_KINDS)}")
    if zero_last_noise is None:
        zero_last_noise = kind == DDPM
    steps = len(sigmas) - 1
    if not 0 <= start_step < steps:
        raise ValueError(f"start step must be in 0..{steps - 1} for {steps} steps, got {start_step}")
    if clean.shape[0] == 0:
        raise ValueError("cannot invert an empty latent batch")
    noisy = draw_noisy_latents(clean, sigmas, seed, kind)
    map_for = flow_noise_map if kind == FLOW else noise_map
    batch = clean.shape[0]
    todo = range(start_step, steps)
    noise_maps: list[Tensor] = []
    kept_predictions: list[Tensor] = []
    kept_keys_values: list[KeyValueStore] = []
    for done, i in enumerate(todo, start=1):
        captured, capture = None, None
        if cache is not None:
            captured = KeyValueStore(substitute_branches=True)
            capture = CallAttention(capture=Capture(cache.levels, captured))
        prediction = predict_noise(noisy[i], sigmas[i].expand(batch).to(clean.device), capture)
        noise_maps.append(map_for(noisy[i], noisy[i + 1], prediction, float(sigmas[i]), float(sigmas[i + 1])))
        if cache is not None and captured is not None:
            kept_predictions.append(prediction)
            if cache.branches is not None:
                captured = captured.only_branches(cache.branches)
            kept_keys_values.append(captured.to(cache.device).compact())
            if done == 1:  # the first step's size tells the whole cache's
                _check_cache_size(kept_keys_values[0].nbytes * len(todo), len(todo), cache.max_bytes)
        if callback is not None:
            callback(done, len(todo))
    if zero_last_noise:
        noise_maps[-1] = torch.zeros_like(noise_maps[-1])
    attention = None
    if cache is not None:
        attention = AttentionCache(torch.stack(kept_predictions), kept_keys_values)
    return Inversion(
        clean=clean,
        sigmas=sigmas.detach().float().cpu(),
        start_step=start_step,
        latents=torch.stack(noisy[start_step:]),
        noise_maps=torch.stack(noise_maps),
        attention=attention,
        metadata={} if kind == DDPM else {STEP_KIND_KEY: kind},
    )


def _check_cache_size(expected: int, steps: int, max_bytes: int | None) -> None:
    """Stop early, with the numbers, when the whole cache would not fit ``max_bytes``."""
    if max_bytes is not None and expected > max_bytes:
        raise CacheTooLargeError(
            f"fast mode would keep {expected / 2**30:.1f} GiB of attention keys/values for {steps} steps, more "
            f"than the {max_bytes / 2**30:.1f} GiB allowed; turn fast mode off, use fewer steps or a later "
            "start step, or invert fewer images at once"
        )
