"""The one place the nodes import ComfyUI names from.

Every ComfyUI module and name the pack uses comes through here, so a ComfyUI release that moves one is met in
this file alone (docs/comfyui_names.md lists each name and how it was checked against which release).

What differs between the releases checked: ``comfy_api`` gained versioned modules (``v0_0_2`` from 0.3.48 on,
``v0_0_3`` later) and ``latest`` now re-exports ``io``/``ui`` from ``_io_public``/``_ui_public``. The versioned
modules are the stable surface, so the pack takes the oldest one that has the V3 ``io`` and ``ComfyExtension``
(``v0_0_2``, the one it was written against) and falls back to a newer one, or to ``latest``, only when a
release drops it. :func:`choose_api_module` is that choice, kept pure so it is tested without ComfyUI.

Outside ComfyUI (the unit tests, the command line) there is no ``comfy_api``: this module then defines only the
pure selection functions, as the pack's ``__init__`` does.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
from collections.abc import Iterable

OLDEST_API = (0, 0, 2)  # the first comfy_api version module with the V3 io and ComfyExtension (ComfyUI 0.3.48)
_VERSION_MODULE = re.compile(r"v(\d+)_(\d+)_(\d+)")


def api_version(module_name: str) -> tuple[int, int, int] | None:
    """``"v0_0_2"`` -> ``(0, 0, 2)``; None for a name that is not a comfy_api version module."""
    match = _VERSION_MODULE.fullmatch(module_name)
    return None if match is None else tuple(int(part) for part in match.groups())


def choose_api_module(available: Iterable[str]) -> str:
    """The comfy_api submodule to import ``io`` and ``ComfyExtension`` from, among the submodule names given.

    The oldest version module from :data:`OLDEST_API` on (the surface the pack was written and tested against),
    else ``latest``; ComfyUI without either is older than 0.3.48 and cannot load a V3 pack.
    """
    names = set(available)
    versions = sorted(
        (version, name) for name in names if (version := api_version(name)) is not None and version >= OLDEST_API
    )
    if versions:
        return versions[0][1]
    if "latest" in names:
        return "latest"
    raise ImportError(
        f"this ComfyUI's comfy_api offers {sorted(names)}, none with the V3 node API (v0_0_2 or newer, or latest): "
        "the Cross-Image Attention nodes need ComfyUI 0.3.48 or newer"
    )


def text_tokens_of_joint_stream(transformer_options: dict, recorded_key: str) -> int | None:
    """How many text tokens open the joint ``cat(txt, img)`` stream a Flux single block sees, or None if unknown.

    Newer ComfyUI says where the image tokens lie (``transformer_options["img_slice"] = [start, end]``, set before
    the single blocks). 0.3.64 and 0.9.2 do not, so there the pack's double blocks record the text length under
    ``recorded_key`` and the single blocks read it back.
    """
    image_slice = transformer_options.get("img_slice")
    if image_slice is not None:
        return int(image_slice[0])
    return transformer_options.get(recorded_key)


if importlib.util.find_spec("comfy_api") is not None:
    import comfy.ldm.modules.attention as comfy_attention  # optimized_attention
    import comfy.model_management  # throw_exception_if_processing_interrupted, intermediate_device, get_free_memory
    import comfy.model_sampling  # CONST: flow-matching models (the Flux family)
    import comfy.samplers  # CFGGuider, KSAMPLER, sampling_function
    import comfy_api
    import folder_paths  # get_input_directory, get_output_directory, get_save_image_path
    import latent_preview  # prepare_callback
    from comfy_execution.utils import get_executing_context  # the running node's id, for its progress text

    API_MODULE = "comfy_api." + choose_api_module(module.name for module in pkgutil.iter_modules(comfy_api.__path__))
    _api = importlib.import_module(API_MODULE)
    io = _api.io
    ComfyExtension = _api.ComfyExtension

    # Whether ComfyUI's prompt validation checks a V3 combo's value (type "COMBO", options in its dict) against its
    # options. It does from the release that made DynamicCombo and Autogrow public V3 types (ComfyUI PR #11345,
    # 2025-12; 0.9.2 has both), which also moved input parsing to a table keyed by the io type, so that a list as
    # the io type is unhashable there. Older releases (0.3.64) check only combos whose io type is the option list.
    CORE_CHECKS_COMBO_VALUES = hasattr(io, "DynamicCombo")

    def flux2_schedule(steps: int, image_tokens: int):
        """Flux2Scheduler's sigmas (ComfyUI 0.9.2 on) for ``steps`` steps over ``image_tokens`` image tokens."""
        from comfy_extras.nodes_flux import get_schedule  # core's; imported when a Flux.2 model is inverted

        return get_schedule(steps, image_tokens)

    def prompt_server():
        """ComfyUI's running PromptServer, or None. Its module is imported only here, when a node runs under the
        executor (the server is loaded by then), never at import time."""
        from server import PromptServer

        return getattr(PromptServer, "instance", None)

    __all__ = [
        "API_MODULE",
        "CORE_CHECKS_COMBO_VALUES",
        "ComfyExtension",
        "comfy",
        "comfy_attention",
        "flux2_schedule",
        "folder_paths",
        "get_executing_context",
        "io",
        "latent_preview",
        "prompt_server",
    ]
