"""What the command line's subcommands share: the setting flags, the device, the phase progress display."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..inversion import InversionSettings
from ..plan import PlanSettings
from ..segmentation import split_words
from ..transfer import TransferSettings
from .diffusers_pipeline import DEFAULT_MODEL, TransferOptions


class HelpFormat(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each default, except where the help says it in words: flags without a default (what
    happens then), and defaults such as the sample images, whose value is a path inside the installed package."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def writable_folder(path: Path, flag: str) -> Path:
    """The nearest existing folder at or above ``path``, or ValueError when it is a file or cannot be written."""
    folder = path
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ValueError(f"{flag} {str(path)!r}: cannot write into {folder}")
    return folder


def add_setting_flags(parser: argparse.ArgumentParser, fast: bool = True) -> None:
    """The model and transfer settings; defaults come from the engine's settings dataclasses.

    ``fast`` offers ``--fast`` (the batch cannot: fast mode's cache is not saved with inversions).
    """
    inversion, transfer, plan = InversionSettings(), TransferSettings(), PlanSettings()
    parser.add_argument("--model", default=DEFAULT_MODEL, help="diffusers SD 1.x/2.x folder or hub id")
    parser.add_argument("--steps", type=int, default=inversion.steps, help="schedule length")
    parser.add_argument("--start-step", type=int, default=inversion.start_step, help="first step generation uses")
    parser.add_argument("--inversion-cfg", type=float, default=inversion.cfg, help="guidance while inverting")
    parser.add_argument("--cfg", type=float, default=transfer.cfg, help="prompt guidance while generating")
    parser.add_argument("--swap-guidance", type=float, default=plan.swap_guidance, help="swap guidance scale")
    parser.add_argument("--contrast", type=float, default=transfer.contrast, help="attention contrast")
    parser.add_argument("--seed", type=int, default=inversion.seed, help="seed of the inversion's noise")
    parser.add_argument("--size", type=int, default=TransferOptions().size, help="square working size in px (x64)")
    parser.add_argument("--no-freeu", action="store_true", help="turn off the official FreeU variant")
    if fast:
        parser.add_argument(
            "--fast",
            action="store_true",
            help="fast mode: keep the inversion's attention keys/values (in RAM, ~1.6 GB per image for SD 1.5 at "
            "512 px in fp16) and evaluate only the output row while generating; exact only when --cfg equals "
            "--inversion-cfg, otherwise an approximation",
        )
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda when available, else cpu)"
    )


def options_from(args: argparse.Namespace) -> TransferOptions:
    """The parsed flags as TransferOptions; ValueError names the first flag out of range."""
    inversion = InversionSettings(steps=args.steps, start_step=args.start_step, cfg=args.inversion_cfg, seed=args.seed)
    transfer = TransferSettings(
        plan=PlanSettings(swap_guidance=args.swap_guidance), contrast=args.contrast, cfg=args.cfg
    )
    words = split_words(getattr(args, "object_word", None))
    return TransferOptions(
        inversion=inversion,
        transfer=transfer,
        size=args.size,
        freeu=not args.no_freeu,
        fast=getattr(args, "fast", False),
        object_words=words,
    )


def available_devices() -> list[str]:
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(name: str | None):
    """``name`` as a torch.device that exists here, or ValueError listing the devices that do."""
    import torch

    available = available_devices()
    if name is None:
        return torch.device("cuda" if len(available) > 1 and available[1].startswith("cuda") else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; this machine has: {', '.join(available)}") from None
    wanted = f"{device.type}:{device.index or 0}" if device.type == "cuda" else device.type
    if wanted not in available:
        raise ValueError(f"device {name!r} is not available on this machine; it has: {', '.join(available)}")
    return device


class PhaseProgress:
    """One progress display per phase, closed when the phase ends; plain lines when stderr is not a terminal.

    ``position`` puts the bars on that line under other bars (the batch's pairs bar) and clears them when done.
    """

    def __init__(self, stream=None, position: int | None = None) -> None:
        self.stream = stream or sys.stderr  # looked up per instance: a redirected stderr is honoured
        self.position = position
        self.interactive = self.stream.isatty()
        self.phase: str | None = None
        self.bar = None
        self.started = 0.0
        self.reported = 0

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase != self.phase:
            self.close()
            self.phase, self.started, self.reported = phase, time.monotonic(), 0
            if self.interactive:
                from tqdm.auto import tqdm

                self.bar = tqdm(
                    total=total,
                    desc=phase,
                    unit="step",
                    file=self.stream,
                    position=self.position,
                    leave=self.position is None,
                )
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        elif done * 10 // total > self.reported * 10 // total or done == total:
            self.reported = done
            print(
                f"{phase}: {done}/{total} steps, {time.monotonic() - self.started:.1f} s", file=self.stream, flush=True
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.phase = None
