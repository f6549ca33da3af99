"""Save Inversion / Load Inversion: safetensors files under ComfyUI's output and input folders."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..xattn_core.inversion_file import load_inversion, save_inversion
from .common import CATEGORY
from .common import Inversion as InversionSocket
from .compat import folder_paths, io

SUFFIX = ".safetensors"


def inversion_files() -> list[str]:
    """Files the Load node offers: input-folder files as they are, output-folder files marked [output]."""
    found = []
    for folder, tag in ((folder_paths.get_input_directory(), ""), (folder_paths.get_output_directory(), " [output]")):
        root = Path(folder)
        if root.is_dir():
            for path in sorted(root.rglob(f"*{SUFFIX}")):
                found.append(path.relative_to(root).as_posix() + tag)
    return found


def resolve(name: str) -> Path:
    """The file a Load Inversion name refers to, refusing anything outside the input/output folders."""
    if name.endswith(" [output]"):
        folder, relative = folder_paths.get_output_directory(), name[: -len(" [output]")]
    else:
        folder, relative = folder_paths.get_input_directory(), name.removesuffix(" [input]")
    root = Path(folder).resolve()
    path = (root / relative).resolve()
    if Path(relative).is_absolute() or not path.is_relative_to(root):
        raise ValueError(f"refusing to read {name!r}: inversion files must lie inside ComfyUI's input or output folder")
    if path.suffix != SUFFIX:
        raise ValueError(f"refusing to read {name!r}: inversion files end in {SUFFIX}")
    return path


class XAttnSaveInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XAttnSaveInversion",
            display_name="Save Inversion",
            category=CATEGORY,
            description="Save an inversion as a safetensors file in ComfyUI's output folder, to reuse it for many "
            "transfers without inverting again.",
            inputs=[
                InversionSocket.Input("inversion", tooltip="From Invert Image (DDPM)."),
                io.String.Input(
                    "filename_prefix",
                    default="xattn/inversion",
                    tooltip="Path under the output folder; a counter and .safetensors are appended.",
                ),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, inversion, filename_prefix):
        output_dir = folder_paths.get_output_directory()
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output_dir)
        if not Path(folder).resolve().is_relative_to(Path(output_dir).resolve()):
            raise ValueError(f"refusing to save {filename_prefix!r} outside ComfyUI's output folder")
        os.makedirs(folder, exist_ok=True)
        name = f"{filename}_{counter:05}_{SUFFIX}"
        save_inversion(inversion, Path(folder) / name)
        if inversion.attention is not None:
            logging.info("Save Inversion: the fast-mode attention cache is not written; a loaded copy runs normally")
        return io.NodeOutput(ui={"text": [os.path.join(subfolder, name) + " [output]"]})


class XAttnLoadInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="XAttnLoadInversion",
            display_name="Load Inversion",
            category=CATEGORY,
            description="Load an inversion saved by Save Inversion (from the output folder) or placed in the input "
            "folder. Files are validated; nothing is unpickled.",
            inputs=[
                io.Combo.Input(
                    "inversion_file",
                    options=inversion_files(),
                    tooltip="Inversion files found in the input folder and (marked [output]) the output folder.",
                ),
            ],
            outputs=[InversionSocket.Output(display_name="inversion")],
        )

    @classmethod
    def validate_inputs(cls, inversion_file: str) -> bool | str:
        try:
            path = resolve(inversion_file)
        except ValueError as error:
            return str(error)
        return True if path.is_file() else f"inversion file not found: {inversion_file}"

    @classmethod
    def fingerprint_inputs(cls, inversion_file: str):
        path = resolve(inversion_file)
        return path.stat().st_mtime_ns if path.is_file() else None

    @classmethod
    def execute(cls, inversion_file):
        return io.NodeOutput(load_inversion(resolve(inversion_file)))
