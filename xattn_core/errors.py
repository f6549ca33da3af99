"""The base of the pack's own exceptions: their type reads ``xattn.<Name>`` wherever the pack is installed.

ComfyUI reports a node's error type as ``type(error).__module__ + "." + type(error).__qualname__`` (execution.py,
``full_type_name``) in the API response, the log and the error dialog, and it imports a custom node folder under
the folder's path (``/home/me/ComfyUI/custom_nodes/comfyui-xattn``). A class's own module name would show that
path; every exception the pack defines derives from :class:`XAttnError` and takes the module name ``xattn``
instead. Tracebacks print the same ``xattn.<Name>``.

``xattn`` is not an importable module, so these exceptions do not round-trip through plain ``pickle``; the pack
never pickles one (Ray workers turn errors into text, and cloudpickle would copy the class by value).
"""

ERROR_MODULE = "xattn"  # the project's name: short, and the same in ComfyUI, the command line and tests


class XAttnError(Exception):
    """An error the pack raises for a reason it can name. Each subclass also derives from the builtin type it
    refines (ValueError, MemoryError, ...), so ``except ValueError`` keeps catching it."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.__module__ = ERROR_MODULE


XAttnError.__module__ = ERROR_MODULE
