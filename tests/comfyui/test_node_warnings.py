"""A node's run warnings reach the front end as its UI output (web/warnings.js shows them on the node), a clean
run clears them, and no missing or failing UI channel ever fails a node or hides its own error."""

import logging
import sys

import pytest
import torch
from comfyui_support import PACK_NAME, conditioning, invert_node, tiny_clip, tiny_sd15

KEY = "xattn_warnings"  # nodes/common.py WARNINGS_UI_KEY, which web/warnings.js reads
EMPTY_MASK = "AdaIN: a mask is empty (all zero) for image 0 of the batch; using unmasked AdaIN there"
NO_SWAP = "no generation step swaps attention (5 steps from start step 4)"


class RecordingServer:
    """Stands in for ComfyUI's PromptServer: records the progress texts the node sends."""

    def __init__(self, fail: bool = False):
        self.texts, self.fail = [], fail

    def send_progress_text(self, text, node_id):
        if self.fail:
            raise ConnectionResetError("the websocket went away")
        self.texts.append((node_id, text))


def latent(batch=1):
    return {"samples": torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(batch))}


def adain(comfy, mask_value: float | None):
    """AdaIN Latent Match's NodeOutput; a content mask of ``mask_value`` everywhere (0 warns), or none."""
    mask = None if mask_value is None else torch.full((1, 64, 64), mask_value)
    return comfy.nodes.XAttnAdaINLatentMatch.execute(latent(), latent(), 1.0, content_mask=mask)


@pytest.fixture
def as_executor(comfy):
    """Run the block as ComfyUI's executor runs a node (its current-node context, node id "7")."""
    from comfy_execution.utils import CurrentNodeContext

    return lambda: CurrentNodeContext("prompt-1", "7")


def test_the_ui_output_carries_the_warnings_and_a_clean_run_clears_them(comfy):
    warned = adain(comfy, 0.0)
    assert warned.ui == {KEY: [EMPTY_MASK]}
    clean = adain(comfy, None)
    assert clean.ui == {KEY: []}  # the front end replaces what it showed
    # the LATENT the node returns is what it returned before it had a UI output: AdaIN of the whole latent (the
    # empty mask's fallback and the unmasked call may reach it by different float work: a tolerance, not equality)
    assert torch.allclose(warned.result[0]["samples"], clean.result[0]["samples"], rtol=1e-5, atol=1e-6)


def test_the_sampler_and_the_inversion_return_their_warnings(comfy):
    model, _ = tiny_sd15(comfy, seed=1)
    images = torch.randn(2, 1, 4, 32, 32, generator=torch.Generator().manual_seed(5))
    inversions = [invert_node(comfy, model, image, steps=5, start_step=4) for image in images]
    widgets = {
        spec.id: spec.default
        for spec in comfy.nodes.XAttnCrossImageSampler.define_schema().inputs
        if getattr(spec, "default", None) is not None
    }
    output = comfy.nodes.XAttnCrossImageSampler.execute(
        model=model,
        positive=conditioning(1),
        negative=conditioning(2),
        appearance=inversions[0],
        structure=inversions[1],
        **widgets,
    )
    (warning,) = [text for text in output.ui[KEY] if text.startswith("no generation step")]
    assert warning.startswith(NO_SWAP)
    assert len(output.result) == 5  # the sampler's own outputs, unchanged
    inverted = comfy.nodes.XAttnInvertImage.execute(
        model=model,
        latent={"samples": images[0]},
        positive=conditioning(1),
        negative=conditioning(2),
        steps=4,
        start_step=1,
        cfg=3.5,
        seed=0,
        freeu="auto",
        fast_mode="off",
    )
    assert inverted.ui == {KEY: []}  # a clean inversion says so too (it replaces an earlier run's warnings)


def test_the_object_prompt_returns_its_warning(comfy, monkeypatch):
    """A text encoder whose tokens cannot be matched to the object word: the prompt is encoded plainly, and the
    node says so."""
    clip = tiny_clip(comfy, seed=3)
    node_module = sys.modules[f"{PACK_NAME}.nodes.object_word"]
    monkeypatch.setattr(node_module, "object_token_positions", lambda *args: None)
    output = comfy.nodes.XAttnObjectPrompt.execute(clip, "A photo of a giraffe", "giraffe")
    (warning,) = output.ui[KEY]
    assert warning.startswith("the object word cannot be found among this text encoder's tokens")
    monkeypatch.undo()
    assert comfy.nodes.XAttnObjectPrompt.execute(clip, "A photo of a giraffe", "giraffe").ui == {KEY: []}


def test_under_the_executor_the_progress_text_says_the_same(comfy, monkeypatch, as_executor):
    """The live channel (progress text, what a run that fails still shows) keeps its old behaviour: the
    warnings, then once "No warnings in the last run." after a clean run."""
    server = RecordingServer()
    monkeypatch.setattr(comfy.common, "prompt_server", lambda: server)
    with as_executor():
        adain(comfy, 0.0)
        adain(comfy, None)
        adain(comfy, None)
    assert server.texts == [("7", f"Warning: {EMPTY_MASK}"), ("7", "No warnings in the last run.")]


@pytest.mark.parametrize("channel", ["server module missing", "no PromptServer", "failing server"])
def test_without_a_ui_channel_the_node_runs_and_logs(comfy, monkeypatch, caplog, as_executor, channel):
    """ComfyUI hosted as a library has no server module or no running PromptServer, and a server may fail to
    send: the node still returns its output and UI output, the log has the warning, and its own error is the
    error raised."""
    if channel == "server module missing":
        monkeypatch.setitem(sys.modules, "server", None)  # `from server import PromptServer` raises ImportError
    elif channel == "no PromptServer":
        monkeypatch.setattr(comfy.common, "prompt_server", lambda: None)
    else:
        monkeypatch.setattr(comfy.common, "prompt_server", lambda: RecordingServer(fail=True))
    with caplog.at_level(logging.WARNING), as_executor():
        output = adain(comfy, 0.0)
    assert output.ui == {KEY: [EMPTY_MASK]}
    assert EMPTY_MASK in caplog.text
    with as_executor(), pytest.raises(ValueError, match="AdaIN Latent Match got an empty latent batch"):
        empty = {"samples": torch.zeros(0, 4, 8, 8)}
        comfy.nodes.XAttnAdaINLatentMatch.execute(empty, latent(), 1.0, content_mask=torch.zeros(1, 8, 8))
