"""The pack's sample images, copied into ComfyUI's input folder when ComfyUI loads the pack, so that the shipped
templates open with their Load Image nodes showing an image and run as they are.

Load Image lists only the files directly in input/ (no subfolders, on 0.3.64 as on 0.9.2), so the samples go
there under names that start with ``xattn_``, which no other file of a user's is likely to have. A file of that name
that is already there is never replaced: the same bytes are left as they are, other bytes are left too, with a
warning (the template then shows that file). Nothing here may stop the pack from loading: a read-only or missing
input folder is only logged.

Only the standard library: the entry point (``__init__.py``) names the folder, from ComfyUI's ``folder_paths``
through ``compat``, so the builder and the tests can read :data:`SAMPLE_FILES` and run this without ComfyUI.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "xattn_core" / "samples"
# name in ComfyUI's input/ -> the sample in xattn_core/samples/; the templates' Load Image nodes name these
SAMPLE_FILES = {
    "xattn_giraffe.jpg": "giraffe.jpg",  # the paper's pair (MIT licence, samples/LICENSE-giraffe-zebra.txt)
    "xattn_zebra.jpg": "zebra.jpg",
    "xattn_structure.png": "structure.png",  # the pack's drawn pair
    "xattn_appearance.png": "appearance.png",
}

log = logging.getLogger(__name__)


def install_samples(input_dir: str | os.PathLike) -> dict[str, str]:
    """Copy each sample missing from ``input_dir`` (ComfyUI's input folder) into it.

    Returns what happened to each name: "installed", "present" (the same bytes were there), "kept" (a different
    file of that name was there and stays) or "failed" (it could not be read or written). Never raises.
    """
    outcome: dict[str, str] = {}
    try:
        folder = Path(input_dir)
        folder.mkdir(parents=True, exist_ok=True)
    except Exception as error:  # noqa: BLE001 (whatever it is, the pack must still load)
        log.warning("xattn: could not find or make ComfyUI's input folder for the sample images: %s", error)
        return dict.fromkeys(SAMPLE_FILES, "failed")
    for name, sample in SAMPLE_FILES.items():
        outcome[name] = _install_one(SAMPLES / sample, folder / name)
    installed = [name for name, what in outcome.items() if what == "installed"]
    if installed:
        log.info("xattn: copied the templates' sample images %s into %s", ", ".join(installed), folder)
    return outcome


def _install_one(source: Path, target: Path) -> str:
    try:
        data = source.read_bytes()
        if target.exists():
            if target.is_file() and target.read_bytes() == data:
                return "present"
            log.warning(
                "xattn: %s already exists and differs from the pack's sample %s: left as it is (the templates "
                "will show it)",
                target,
                source.name,
            )
            return "kept"
        # "x": create only, so a file that appears meanwhile is never overwritten
        with open(target, "xb") as file:
            try:
                file.write(data)
            except BaseException:
                file.close()
                target.unlink(missing_ok=True)  # no half-written sample left behind
                raise
        return "installed"
    except OSError as error:
        log.warning("xattn: could not copy the sample image %s into ComfyUI's input folder: %s", target.name, error)
        return "failed"
