"""ComfyUI entry point of the Cross-Image Attention pack.

ComfyUI imports this folder as a package and calls ``comfy_entrypoint``, which first copies the pack's sample
images into ComfyUI's input folder (nodes/samples_install.py: the templates' Load Image nodes name them; an
existing file is never replaced, and a failure is only logged). Outside ComfyUI (tests, the command line, plain
``import``) there is no ``comfy_api`` and this module defines nothing, so importing it never fails and writes
nothing.
"""

import importlib.util

# the front end's node library shows web/docs/<node id>.md as each node's help page
WEB_DIRECTORY = "./web"

if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint as _nodes_entrypoint
    from .nodes.compat import folder_paths
    from .nodes.samples_install import install_samples

    async def comfy_entrypoint():
        # here rather than at import: the ComfyUI tier imports the pack as a library, and must not write into
        # the checkout's input/
        install_samples(folder_paths.get_input_directory())
        return await _nodes_entrypoint()
