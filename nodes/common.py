"""Socket types and small helpers shared by the nodes."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..xattn_core.freeu import FreeUSettings
from ..xattn_core.settings import value_range
from .compat import CORE_CHECKS_COMBO_VALUES, get_executing_context, io, prompt_server
from .unet_family import is_sd1

CATEGORY = "appearance transfer"
Inversion = io.Custom("XATTN_INVERSION")
Options = io.Custom("XATTN_OPTIONS")

FREEU_CHOICES = ["auto", "on", "off"]
LOG_PREFIX = "Cross-Image Attention"


WARNINGS_UI_KEY = "xattn_warnings"  # the node's UI output web/warnings.js shows on the node, after the run too
_warned_nodes: set[str] = set()  # nodes whose last run showed warnings as progress text


def show_warnings_on_node(messages: list[str]) -> None:
    """The run's warnings as ComfyUI's progress text under the running node, as core's Get Image Size shows its
    result: the one channel a run that fails has (a finished run also returns them as its UI output, see
    :func:`with_warnings_ui`, which the pack's web extension shows in its place). After a run that showed some, a
    clean run says so, since front ends up to 1.36 keep the old text. Nothing when the node runs outside ComfyUI's
    executor and server (tests, scripts)."""
    context = get_executing_context()
    if context is None:  # not run by ComfyUI's executor
        return
    try:  # the UI channel is a courtesy: without a server (ComfyUI hosted as a library) the log has the warnings
        server = prompt_server()
        if server is None:
            return
        if messages:
            server.send_progress_text("\n".join(f"Warning: {message}" for message in messages), context.node_id)
            _warned_nodes.add(context.node_id)
        elif context.node_id in _warned_nodes:
            server.send_progress_text("No warnings in the last run.", context.node_id)
            _warned_nodes.discard(context.node_id)
    except Exception as error:  # never fail the node, nor hide its own error, for the sake of showing a warning
        logging.debug("%s: warnings not shown on the node (%s: %s)", LOG_PREFIX, type(error).__name__, error)


def with_warnings_ui(output: io.NodeOutput, messages: list[str]) -> io.NodeOutput:
    """``output`` with the run's warnings as its UI output, an empty list for a clean run (which clears what an
    earlier run showed). ComfyUI keeps a node's UI output: it sends it to the front end when the node finishes,
    again when a later run takes the node from the cache, and files it in the history. Front ends up to 1.58 draw
    a UI output's text only on their own preview nodes, and 1.58 drops progress text when the job ends, so
    web/warnings.js draws this one."""
    ui = output.ui if isinstance(output.ui, dict) else ({} if output.ui is None else output.ui.as_dict())
    output.ui = {**ui, WARNINGS_UI_KEY: list(messages)}
    return output


@contextmanager
def engine_warnings() -> Iterator[list[str]]:
    """Run engine calls and report each warning they raise through ComfyUI's log, on every run, and on the node.

    The engine raises Python warnings (for library users); Python's default filter shows each text once per
    process, so a ComfyUI user would see it on the first run only. Here every warning is recorded whatever the
    filter says and logged as core nodes log. Yields the list the messages are appended to (after the block).
    """
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield messages
        finally:  # a failed run reports what it warned about too
            messages.extend(dict.fromkeys(str(warning.message) for warning in caught))  # AdaIN may repeat a text
            for message in messages:
                logging.warning("%s: %s", LOG_PREFIX, message)
            show_warnings_on_node(messages)


def reports_warnings(execute: Callable) -> Callable:
    """Decorate a node's ``execute`` (under ``@classmethod``) to run it inside :func:`engine_warnings`; the
    ``io.NodeOutput`` it returns carries the warnings as its UI output."""

    @functools.wraps(execute)
    def run(cls, *args, **kwargs):
        with engine_warnings() as messages:
            output = execute(cls, *args, **kwargs)
        return with_warnings_ui(output, messages)

    return run


def log_choices(node: str, choices: list[str]) -> None:
    """One log line per run with what a node chose for the user (automatic settings, defaults it resolved)."""
    if choices:
        logging.info("%s %s: %s", LOG_PREFIX, node, "; ".join(choices))


def setting_input(kind: type, settings_type: type, name: str, socket: str | None = None, **options):
    """A number widget whose default and min/max are the engine's (``settings_type`` field ``name``)."""
    low, high = value_range(settings_type, name)
    return kind.Input(socket or name, default=getattr(settings_type(), name), min=low, max=high, **options)


class CheckedCombo(io.Combo.Input):
    """A combo whose value ComfyUI checks against its options when it validates a prompt, on every release.

    Newer ComfyUI checks every V3 combo itself, and this is then core's plain combo. Older releases (0.3.64) check
    only a combo whose io type is its option list (the V1 form), so there it reports that form; without it a
    misspelt value in a saved API prompt would reach the node unnoticed. Both file the error under the input.
    """

    if not CORE_CHECKS_COMBO_VALUES:

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


def freeu_choice(choice: str, settings: FreeUSettings | None) -> list[str]:
    """What freeu 'auto' resolved to, for :func:`log_choices` (nothing when the user chose on or off)."""
    if choice != "auto":
        return []
    return ["freeu auto: " + ("on (an SD 1.x model)" if settings is not None else "off (not an SD 1.x model)")]
