"""Inversion files: safetensors with metadata, validated on load. Nothing is ever unpickled."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import XAttnError
from .inversion import Inversion

FORMAT_NAME = "xattn-inversion"
FORMAT_VERSION = 2  # 2 adds the optional noise mask; files without one are written as version 1
TENSORS = ("clean", "sigmas", "latents", "noise_maps")


class InversionFileError(XAttnError, ValueError):
    pass


def save_inversion(inversion: Inversion, path: str | Path) -> Path:
    """Write ``inversion`` and its metadata to ``path`` (noise maps in float64, the rest float32)."""
    metadata = {k: str(v) for k, v in inversion.metadata.items()}
    # a file without a noise mask stays readable by packs that know version 1 only
    version = 1 if inversion.noise_mask is None else FORMAT_VERSION
    metadata.update(format=FORMAT_NAME, format_version=str(version), start_step=str(inversion.start_step))
    tensors = {name: getattr(inversion, name).detach().float().cpu().contiguous() for name in TENSORS}
    tensors["noise_maps"] = inversion.noise_maps.detach().double().cpu().contiguous()
    if inversion.noise_mask is not None:
        tensors["noise_mask"] = inversion.noise_mask.detach().float().cpu().contiguous()
    path = Path(path)
    save_file(tensors, str(path), metadata=metadata)
    return path


def _read_metadata(path: Path) -> dict[str, str]:
    """The safetensors header's metadata, read without trusting the file."""
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise InversionFileError(f"{path.name} is not a safetensors inversion file (too short)")
        size = int.from_bytes(head, "little")
        if size <= 0 or size > 100 * 2**20 or size > path.stat().st_size - 8:
            raise InversionFileError(f"{path.name} is not a safetensors inversion file (bad header length)")
        try:
            header = json.loads(handle.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InversionFileError(f"{path.name} is not a safetensors inversion file (unreadable header)") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def load_inversion(path: str | Path, device: torch.device | str = "cpu") -> Inversion:
    """Read and validate an inversion file; any defect is an :class:`InversionFileError`."""
    path = Path(path)
    if not path.is_file():
        raise InversionFileError(f"inversion file not found: {path}")
    metadata = _read_metadata(path)
    if metadata.get("format") != FORMAT_NAME:
        raise InversionFileError(f"{path.name} is a safetensors file but not an inversion saved by this pack")
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError:
        raise InversionFileError(f"{path.name} has no valid format version") from None
    if version > FORMAT_VERSION:
        raise InversionFileError(
            f"{path.name} uses inversion format {version}, newer than this pack reads "
            f"({FORMAT_VERSION}); update the pack"
        )
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, RuntimeError) as error:
        raise InversionFileError(f"{path.name} is corrupt or truncated ({error})") from None
    missing = [name for name in TENSORS if name not in tensors]
    if missing:
        raise InversionFileError(f"{path.name} lacks tensors {missing}")
    clean, sigmas, latents, noise_maps = (tensors[name] for name in TENSORS)
    start_step = int(metadata.get("start_step", "-1"))
    steps = sigmas.shape[0] - 1
    expected_latents = (steps + 1 - start_step, *clean.shape)
    expected_maps = (steps - start_step, *clean.shape)
    if (
        clean.dim() != 4
        or sigmas.dim() != 1
        or not 0 <= start_step < steps
        or tuple(latents.shape) != expected_latents
        or tuple(noise_maps.shape) != expected_maps
    ):
        raise InversionFileError(f"{path.name} has inconsistent tensor shapes for start step {start_step}")
    if not all(torch.isfinite(t).all() for t in (clean, sigmas, latents, noise_maps)):
        raise InversionFileError(f"{path.name} contains NaN or infinite values")
    noise_mask = tensors.get("noise_mask")
    if noise_mask is not None and (
        noise_mask.dim() != 4
        or noise_mask.shape[0] not in (1, clean.shape[0])
        or noise_mask.shape[1] != 1
        or tuple(noise_mask.shape[-2:]) != tuple(clean.shape[-2:])
        or not torch.isfinite(noise_mask).all()
    ):
        raise InversionFileError(f"{path.name} has a noise mask that does not fit its latents")
    kept = {k: v for k, v in metadata.items() if k not in ("format", "format_version", "start_step")}
    return Inversion(
        clean=clean,
        sigmas=sigmas,
        start_step=start_step,
        latents=latents,
        noise_maps=noise_maps,
        metadata=kept,
        noise_mask=noise_mask,
    )
