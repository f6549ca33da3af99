"""ComfyUI entry point of the Cross-Image Attention pack.

ComfyUI imports this folder as a package and calls ``comfy_entrypoint``. Outside ComfyUI (tests,
the command line, plain ``import``) there is no ``comfy_api`` and this module defines nothing,
so importing it never fails.
"""

import importlib.util

# the front end's node library shows web/docs/<node id>.md as each node's help page
WEB_DIRECTORY = "./web"

if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint  # noqa: F401
