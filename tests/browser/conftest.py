"""Browser tier: the shipped workflows in the real ComfyUI front end, in headless Debian Chromium.

Needs COMFYUI_PATH and a chromium binary (apt-get install chromium; CHROMIUM names another path).
Opt-in: it runs only when the -m expression names it, and is skipped, with the reason, when either is
missing. Run: python -m pytest -m browser tests/browser
"""

import sys
from pathlib import Path

import pytest

# the ComfyUI tier's helpers (comfyui_support) serve this tier too
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "comfyui"))

from comfyui_support import CHROMIUM, COMFYUI_PATH  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "browser: opens the shipped workflows in ComfyUI's front end in headless "
        "Chromium (needs COMFYUI_PATH and chromium)",
    )


def pytest_collection_modifyitems(config, items):
    reason = None
    if "browser" not in (config.getoption("markexpr") or ""):
        reason = "browser tier is opt-in: python -m pytest -m browser tests/browser"
    elif not COMFYUI_PATH:
        reason = "COMFYUI_PATH is not set: the browser tier did not run"
    elif not CHROMIUM:
        reason = "no chromium binary (apt-get install chromium, or set CHROMIUM): the browser tier did not run"
    for item in items:
        if "tests/browser/" in item.nodeid:
            item.add_marker(pytest.mark.browser)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
