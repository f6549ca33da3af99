"""GPU benchmark: one transfer at the paper's settings on random-weight full-size SD 1.5 and SDXL UNets.

    bash bench/gpu.sh                                   # both models on CUDA in float16: SD 1.5 at 512 px, SDXL at 1024
    python bench/bench_gpu.py --models sd15             # one of them
    python bench/bench_gpu.py --tiny                    # the same code on CPU, tiny UNets of the same block layout

The UNets are built in code from their configs (written out below; no download) and given random weights
(``xattn_core.tiny.reinitialise``): random weights do not change what an evaluation costs. Each transfer is
the command line's (``xattn_core.diffusers_pipeline``) without the text encoder and VAE: both images (random
latents) inverted in one batch with the engine's ``invert``, then ``transfer`` on the two inversions, through
the engine's ``DiffusersBackend``, with the automatic-mask maps recorded as for an object word. For each phase
it prints the image-evaluations and model calls the backend counted, the wall time (the device synchronised
at both ends) and the peak memory (CUDA: the allocator's peak, weights included; CPU: the process's peak
resident memory), then the official code's figure and the issue's targets (#24).

SDXL: the engine's diffusers backend calls the UNet with the prompt embedding alone, as SD 1.x needs; SDXL
also needs its added conditions (pooled text embedding, size and crop ids), which ``AddedConditions`` passes
on every call here. Both CFG branches get the same random pooled embedding, which costs the same as two.
"""

# ruff: noqa: E402 (imports follow the sys.path set-up that lets this file run as a script)

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch
from torch import Tensor

from bench.measure import Clock, Counted, Phase, engine_revision
from bench.memory_worker import _proc_status_bytes, _reset_peak_rss
from xattn_core.calls import CallLayout, model_evaluations
from xattn_core.diffusers_backend import DiffusersBackend
from xattn_core.freeu import FreeUSettings
from xattn_core.inversion import InversionSettings, invert
from xattn_core.plan import build_plan
from xattn_core.schedule import paper_sigmas
from xattn_core.tiny import reinitialise
from xattn_core.transfer import TransferSettings, transfer

GIB = 2**30

# diffusers UNet2DConditionModel configs of the released checkpoints' unet/config.json (the keys that differ
# from diffusers' defaults): stable-diffusion-v1-5 and stable-diffusion-xl-base-1.0
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # pooled text (1280) + 6 size/crop ids x 256
    norm_num_groups=32,
)


@dataclass(frozen=True)
class Model:
    name: str
    title: str
    config: dict
    tiny: dict  # what --tiny changes in the config: the same blocks, narrow and shallow
    size: int  # image px of the run
    parameters: int  # of the full-size UNet
    official: tuple[float, float] | None = None  # the official code's (seconds, GiB), where published
    official_source: str = ""
    target: tuple[float, float] = (0.0, 0.0)  # the (seconds, GiB)

    def unet_config(self, tiny: bool) -> dict:
        return {**self.config, **self.tiny} if tiny else dict(self.config)


MODELS = {
    "sd15": Model(
        "sd15",
        "SD 1.5",
        SD15_UNET,
        dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1, cross_attention_dim=32),
        size=512,
        parameters=859_520_964,
        official=(42.8, 8.85),
        official_source="Ctrl-X paper, the official code on an H100, SD 1.5 at 512 px",
        target=(6.0, 4.0),
    ),
    "sdxl": Model(
        "sdxl",
        "SDXL",
        SDXL_UNET,
        dict(
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            transformer_layers_per_block=(1, 1, 2),
            attention_head_dim=(2, 4, 4),
            cross_attention_dim=32,
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=32 + 6 * 8,
        ),
        size=1024,
        parameters=2_567_463_684,
        target=(30.0, 12.0),
    ),
}


class AddedConditions:
    """An SDXL UNet callable as the backend calls an SD 1.x one: its added conditions go with every call.

    Everything else (processors, blocks, config, dtype) is the wrapped UNet's own.
    """

    def __init__(self, unet, text_embeds: Tensor, time_ids: Tensor) -> None:
        self.unet, self.text_embeds, self.time_ids = unet, text_embeds, time_ids

    def __getattr__(self, name: str):
        return getattr(self.unet, name)

    def __call__(self, sample: Tensor, timestep: Tensor, encoder_hidden_states: Tensor):
        rows = sample.shape[0]
        added = {"text_embeds": self.text_embeds.expand(rows, -1), "time_ids": self.time_ids.expand(rows, -1)}
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added)


@dataclass
class ModelRun:
    model: str
    device: str
    dtype: str
    size: int
    parameters: int
    weights_bytes: int
    phases: dict[str, Phase] = field(default_factory=dict)
    peak_bytes: dict[str, int] = field(default_factory=dict)
    expected_evaluations: dict[str, int] = field(default_factory=dict)  # from the engine's plan
    finite: bool = True


def build_unet(config: dict, device: torch.device, dtype: torch.dtype, seed: int):
    """A random-weight UNet of ``config``, built on ``device`` (no copy of a full-size model through the host)."""
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        unet = UNet2DConditionModel(**config)
    reinitialise(unet, seed)
    return unet.to(dtype).eval().requires_grad_(False)


class PeakMemory:
    """The peak memory of what runs inside ``with``: CUDA's allocator peak, or the process's peak RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.reset = _reset_peak_rss()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = (_proc_status_bytes("VmHWM") or 0) if self.reset else 0


def run_model(model: Model, args, device: torch.device, dtype: torch.dtype) -> ModelRun:
    """One transfer (inversion of both images in one batch, then generation), timed and measured per phase."""
    config, size = model.unet_config(args.tiny), args.size or (128 if args.tiny else model.size)
    unet = build_unet(config, device, dtype, args.seed)
    generator = torch.Generator(device).manual_seed(args.seed + 1)
    random = lambda *shape: torch.randn(*shape, generator=generator, device=device)  # noqa: E731
    positive, negative = random(1, 77, config["cross_attention_dim"]), random(1, 77, config["cross_attention_dim"])
    backend_unet = unet
    if config.get("addition_embed_type") == "text_time":  # SDXL: a pooled text embedding and 6 size/crop ids
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        time_ids = torch.tensor([[size, size, 0, 0, size, size]], device=device, dtype=dtype)  # original, crop, target
        backend_unet = AddedConditions(unet, random(1, pooled).to(dtype), time_ids)
    latent = size // 8
    clean = random(2, 4, latent, latent)  # appearance and structure latents
    defaults = InversionSettings()
    inversion_settings = InversionSettings(
        steps=defaults.steps if args.steps is None else args.steps,
        start_step=defaults.start_step if args.start is None else args.start,
    )
    # as the command line runs it: no structure reconstruction is returned, so that path stops early
    settings = TransferSettings(structure_reconstruction=False)
    sigmas = paper_sigmas(steps=inversion_settings.steps)
    run = ModelRun(
        model.name,
        str(device),
        str(dtype).removeprefix("torch."),
        size,
        sum(p.numel() for p in unet.parameters()),
        sum(p.numel() * p.element_size() for p in unet.parameters()),
    )
    generation_steps = inversion_settings.steps - inversion_settings.start_step
    run.expected_evaluations = {
        "inversion": 2 * 2 * generation_steps,  # two images, both CFG branches, every step from the start
        "generation": model_evaluations(
            build_plan(inversion_settings.steps, inversion_settings.start_step),
            CallLayout.of(1, 1, structure_reconstruction=settings.structure_reconstruction),
            automatic_masks=True,
        ),
    }
    clock = Clock()
    freeu = None if args.no_freeu else FreeUSettings()
    with DiffusersBackend(backend_unet, positive, negative, inversion_settings.cfg, freeu=freeu) as backend:
        backend.predict_noise(clean, float(sigmas[inversion_settings.start_step]))  # untimed warm-up
        with Counted(backend) as count, PeakMemory(device) as memory, clock.section("inversion"):
            both = invert(backend.predict_noise, clean, sigmas, inversion_settings.start_step, inversion_settings.seed)
            _synchronise(device)
        run.phases["inversion"], run.peak_bytes["inversion"] = count.phase("inversion", clock), memory.peak
        backend.with_guidance(positive, negative, settings.cfg)  # the generation's guidance, as the CLI sets it
        with Counted(backend) as count, PeakMemory(device) as memory, clock.section("generation"):
            result = transfer(backend, both.select([0]), both.select([1]), settings, object_tokens=((5,),))
            _synchronise(device)
        run.phases["generation"], run.peak_bytes["generation"] = count.phase("generation", clock), memory.peak
    run.finite = bool(torch.isfinite(result.output).all())
    del unet, backend_unet, both, result
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return run


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def print_run(model: Model, run: ModelRun, tiny: bool) -> None:
    latent = run.size // 8
    print(
        f"\n## {model.title}{' (tiny)' if tiny else ''}: random-weight UNet, {run.parameters:,} parameters "
        f"({run.weights_bytes / GIB:.2f} GiB of weights), {run.size} px -> {latent}x{latent} latent, "
        f"{run.device} {run.dtype}"
    )
    print(f"{'phase':<12} {'image-evals':>11} {'calls':>6} {'wall s':>9} {'peak GiB':>9} {'expected evals':>15}")
    for name, phase in run.phases.items():
        print(
            f"{name:<12} {phase.evaluations:>11d} {phase.calls:>6d} {phase.wall:>9.2f} "
            f"{run.peak_bytes[name] / GIB:>9.2f} {run.expected_evaluations[name]:>15d}"
        )
    total = sum(run.phases.values(), Phase("", 0, 0, 0.0, 0.0))
    peak = max(run.peak_bytes.values())
    print(f"{'total':<12} {total.evaluations:>11d} {total.calls:>6d} {total.wall:>9.2f} {peak / GIB:>9.2f} (max)")
    if not run.finite:
        print("warning: the output latents are not all finite (random weights in low precision)")
    if tiny:
        print("(tiny models on CPU: the official figure and the targets are for the full-size models on a GPU)")
        return
    if model.official is not None:
        seconds, gib = model.official
        print(
            f"official code ({model.official_source}): {seconds} s, {gib} GiB; ours / official: wall "
            f"{total.wall / seconds:.3f}, peak {peak / GIB / gib:.3f}"
        )
    seconds, gib = model.target
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    print(
        f"target (issue #24): under {seconds:g} s and under {gib:g} GiB: wall {verdict(total.wall < seconds)}, "
        f"peak {verdict(peak / GIB < gib)}"
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="sd15,sdxl", help="comma-separated: sd15, sdxl (default both)")
    parser.add_argument("--tiny", action="store_true", help="tiny UNets of the same layout on CPU, float32, 128 px")
    parser.add_argument("--device", help="default cuda (cpu with --tiny)")
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), help="default float16 (float32 tiny)")
    parser.add_argument("--size", type=int, help="image px, a multiple of 64 (default 512 SD 1.5, 1024 SDXL)")
    parser.add_argument("--steps", type=int, help=f"schedule length (default {InversionSettings().steps})")
    parser.add_argument("--start", type=int, help=f"generation start step (default {InversionSettings().start_step})")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-freeu", action="store_true", help="without the official FreeU variant (paper: on)")
    args = parser.parse_args(argv)
    args.models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in args.models if name not in MODELS]
    if unknown or not args.models:
        parser.error(f"--models takes {', '.join(MODELS)}, got {args.models}")
    if args.size is not None and (args.size < 64 or args.size % 64):
        parser.error(f"--size must be a positive multiple of 64 px, got {args.size}")
    args.device = args.device or ("cpu" if args.tiny else "cuda")
    args.dtype = args.dtype or ("float32" if args.tiny else "float16")
    return args


def run(argv=None) -> list[ModelRun]:
    """Run the benchmark, print its report and return the figures."""
    args = parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --tiny for the CPU check")
    import diffusers
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # its note on casting a built model with to() is not for this case
    if device.type == "cpu":
        torch.set_num_threads(args.threads)

    shown = sys.argv[1:] if argv is None else list(argv)
    print("# GPU transfer benchmark: random-weight full-size UNets, the paper's settings")
    print(f"command: {' '.join(['python bench/bench_gpu.py', *shown])}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; engine commit {engine_revision()}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, python {platform.python_version()}, "
        f"device {device} ({name}), {args.dtype}"
    )
    inversion = InversionSettings()
    steps = inversion.steps if args.steps is None else args.steps
    start = inversion.start_step if args.start is None else args.start
    print(
        f"settings: {steps} steps, start {start}, inversion cfg "
        f"{inversion.cfg}, generation cfg {TransferSettings().cfg}, contrast {TransferSettings().contrast}, "
        f"official FreeU variant {'off' if args.no_freeu else 'on'}, automatic-mask maps recorded, seed {args.seed}"
    )
    runs = []
    for model_name in args.models:
        model = MODELS[model_name]
        runs.append(run_model(model, args, device, dtype))
        print_run(model, runs[-1], args.tiny)
    return runs


def main(argv=None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
