"""Integration tier: a real ComfyUI checkout named by COMFYUI_PATH. Skipped, loudly, without one."""

import warnings

import pytest
from comfy_tasks import run_task
from comfyui_support import COMFYUI_PATH, has_flux2, has_z_image, load_snapshot_module

from scripts.workflow_files import SD15_CHECKPOINT  # the name the shipped workflows use


def needs_flux2(item) -> bool:
    """A test of Flux.2: marked so, or run on the flux2 parameter of the Flux tests' fixture."""
    callspec = getattr(item, "callspec", None)
    return item.get_closest_marker("needs_flux2") is not None or (
        callspec is not None and callspec.params.get("flux") == "flux2"
    )


def needs_z_image(item) -> bool:
    """A test of Z-Image: marked so, or run on the z_image parameter of the joint families' fixture."""
    callspec = getattr(item, "callspec", None)
    return item.get_closest_marker("needs_z_image") is not None or (
        callspec is not None and callspec.params.get("joint") == "z_image"
    )


def not_applicable(item) -> bool:
    """A parameter combination with nothing to test: reference images on a family without edit models."""
    callspec = getattr(item, "callspec", None)
    return callspec is not None and needs_z_image(item) and bool(callspec.params.get("references"))


def pytest_collection_modifyitems(config, items):
    # Flux.2 and Z-Image tests on a ComfyUI without them (0.3.64) are deselected, not skipped: the CI tier check
    # fails on any skip, and these have nothing to run there
    without_flux2 = bool(COMFYUI_PATH) and not has_flux2()
    without_z_image = bool(COMFYUI_PATH) and not has_z_image()
    kept, deselected = [], []
    for item in items:
        if "tests/comfyui/" in item.nodeid:
            item.add_marker(pytest.mark.comfyui)
            if not COMFYUI_PATH:
                reason = "COMFYUI_PATH is not set: the ComfyUI integration tier did not run"
                item.add_marker(pytest.mark.skip(reason=reason))
            elif (
                (without_flux2 and needs_flux2(item))
                or (without_z_image and needs_z_image(item))
                or not_applicable(item)
            ):
                deselected.append(item)
                continue
        kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def pytest_terminal_summary(terminalreporter):
    if not COMFYUI_PATH:
        terminalreporter.write_sep("!", "COMFYUI_PATH unset: ComfyUI integration tests were SKIPPED", red=True)


if not COMFYUI_PATH:
    warnings.warn("COMFYUI_PATH is not set: skipping the ComfyUI integration tier", stacklevel=1)


@pytest.fixture(scope="session", autouse=True)
def without_autograd():
    """As ComfyUI's executor runs every node (under torch.inference_mode): no autograd graph. With one, the tiny
    models' graphs of earlier calls stayed alive in this process (about 0.7 GB per Flux.2 transfer, found by
    RSS per test), which the real executor never builds."""
    import torch

    with torch.no_grad():
        yield


@pytest.fixture(scope="session")
def comfy():
    from comfyui_support import setup

    return setup(COMFYUI_PATH)


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """A models/ folder with a random-weight SD-1.5-architecture checkpoint under the workflows' name (made once)."""
    folder = tmp_path_factory.mktemp("models")
    (folder / "checkpoints").mkdir()
    (folder / "controlnet").mkdir()
    run_task("checkpoint", "sd15", str(folder / "checkpoints" / SD15_CHECKPOINT))
    return folder


@pytest.fixture(scope="session")
def server(models, tmp_path_factory):
    """One real ComfyUI server (CPU, loopback) with this pack, shared by the whole test run."""
    workdir = tmp_path_factory.mktemp("comfy")
    (workdir / "input").mkdir()  # empty: the pack installs the samples the workflows load (test_sample_install.py)
    with load_snapshot_module().comfy_server(COMFYUI_PATH, workdir, models=models) as running:
        yield running
