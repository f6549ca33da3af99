"""Socket types and small helpers shared by the nodes."""

from __future__ import annotations

from ..xattn_core.freeu import FreeUSettings
from ..xattn_core.settings import value_range
from .comfy_backend import is_sd1
from .compat import io

CATEGORY = "appearance transfer"
Inversion = io.Custom("XATTN_INVERSION")
Options = io.Custom("XATTN_OPTIONS")

FREEU_CHOICES = ["auto", "on", "off"]


def setting_input(kind: type, settings_type: type, name: str, socket: str | None = None, **options):
    """A number widget whose default and min/max are the engine's (``settings_type`` field ``name``)."""
    low, high = value_range(settings_type, name)
    return kind.Input(socket or name, default=getattr(settings_type(), name), min=low, max=high, **options)


class CheckedCombo(io.Combo.Input):
    """A combo reported in ComfyUI's classic form, its option list as its type.

    ComfyUI (0.3.64) checks a combo value against its options at validation only for that form; a combo typed
    "COMBO" passes any value, so a misspelt value in a saved API prompt would reach the node unnoticed.
    """

    def get_io_type(self):
        return list(self.options)


def freeu_input() -> io.Combo.Input:
    return CheckedCombo(
        "freeu",
        options=FREEU_CHOICES,
        default="auto",
        tooltip="The official code's FreeU variant (boost + low-frequency filter at each decoder level's input). "
        "auto = on for SD 1.x (as in the paper), off for other families. Use the same setting for "
        "inversion and transfer.",
    )


def freeu_settings(choice: str, model) -> FreeUSettings | None:
    if choice == "on" or (choice == "auto" and is_sd1(model)):
        return FreeUSettings()
    return None
