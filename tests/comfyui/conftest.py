"""Integration tier: a real ComfyUI checkout named by COMFYUI_PATH. Skipped, loudly, without one."""

import warnings

import pytest
from comfyui_support import COMFYUI_PATH


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/comfyui/" in item.nodeid:
            item.add_marker(pytest.mark.comfyui)
            if not COMFYUI_PATH:
                reason = "COMFYUI_PATH is not set: the ComfyUI integration tier did not run"
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_terminal_summary(terminalreporter):
    if not COMFYUI_PATH:
        terminalreporter.write_sep("!", "COMFYUI_PATH unset: ComfyUI integration tests were SKIPPED", red=True)


if not COMFYUI_PATH:
    warnings.warn("COMFYUI_PATH is not set: skipping the ComfyUI integration tier", stacklevel=1)


@pytest.fixture(scope="session")
def comfy():
    from comfyui_support import setup

    return setup(COMFYUI_PATH)
