"""The command line: bad arguments are refused before anything loads, and a real run on the tiny pipeline."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import xattn_core.app.diffusers_pipeline as diffusers_pipeline
from xattn_core.app.cli import PhaseProgress, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = ["--steps", "6", "--start-step", "2", "--size", "128"]


def run_cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "xattn_core", "transfer", "--device", "cpu", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if the command line gets as far as loading a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the command line loaded a model before rejecting its arguments")

    monkeypatch.setattr(diffusers_pipeline, "load_pipeline", refuse)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--steps", "0"], "steps must be in 2..1000, got 0"),
        (["--start-step", "200"], "start_step (200) must be below steps (100)"),
        (["--size", "100"], "size must be a positive multiple of 64 px, got 100"),
        (["--contrast", "0.5"], "contrast must be in 1..5, got 0.5"),
        (["--cfg", "-1"], "cfg must be in 0..30, got -1"),
        (["--seed", "-5"], "seed must be in 0..18446744073709551615, got -5"),
        (["--device", "cuda:99"], "device 'cuda:99' is not available on this machine; it has: cpu"),
        (["--device", "tpu"], "unknown device 'tpu'; this machine has: cpu"),
        (["--out", "result.bmpx"], "unknown image format '.bmpx'"),
        (["--model", "/no/such/folder"], "'/no/such/folder' is not a diffusers model folder (no model_index.json)"),
    ],
)
def test_bad_arguments_are_one_line_errors_before_anything_loads(
    flags, message, nothing_loads, capsys, tiny_model_folder
):
    code = main(["transfer", "--model", str(tiny_model_folder), *flags])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(error) == 1 and error[0].startswith("error: ") and message in error[0], error


def test_a_missing_image_is_an_error_before_loading(nothing_loads, capsys, tiny_model_folder):
    code = main(["transfer", "--model", str(tiny_model_folder), "--appearance", "/no/such/image.png"])
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: image not found: /no/such/image.png"


def test_help_shows_the_paper_defaults():
    text = build_parser()._subparsers._group_actions[0].choices["transfer"].format_help()
    # one entry per option, so a default is read from its own flag's help (two flags default to 3.5)
    entries = {
        entry.split()[0]: " ".join(entry.split()) for entry in re.split(r"\n  (?=-)", text) if entry.startswith("-")
    }
    for flag, default in (
        ("--steps", "100"),
        ("--start-step", "32"),
        ("--inversion-cfg", "3.5"),
        ("--swap-guidance", "3.5"),
        ("--contrast", "1.67"),
        ("--size", "512"),
    ):
        assert f"(default: {default})" in entries[flag], (flag, entries[flag])
    assert "(default: None)" not in entries["--object-word"] and "(default: none," in entries["--object-word"]
    # the sample images' defaults are said in words, once, without the path they have in this install
    for flag, words in (("--appearance", "the paper's zebra"), ("--structure", "the paper's giraffe")):
        assert entries[flag].count("(default:") == 1 and f"(default: {words}" in entries[flag], entries[flag]
        assert "samples" not in entries[flag] and str(ROOT) not in entries[flag]


def test_progress_off_a_terminal_is_plain_lines(capsys):
    import io

    stream = io.StringIO()
    progress = PhaseProgress(stream)
    for done in range(1, 69):
        progress("invert", done, 68)
    for done in range(1, 4):
        progress("generate", done, 3)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert "\x1b" not in stream.getvalue() and "\r" not in stream.getvalue()
    invert_lines = [line for line in lines if line.startswith("invert: ")]
    assert 5 <= len(invert_lines) <= 11 and invert_lines[-1].startswith("invert: 68/68 steps")
    assert lines[-1].startswith("generate: 3/3 steps")


def test_command_line_writes_an_image(tiny_model_folder, tmp_path):
    out = tmp_path / "result.png"
    done = run_cli("--model", str(tiny_model_folder), *TINY_RUN, "--out", str(out))
    assert done.returncode == 0, done.stderr
    # one plain progress line per phase step here (stderr is a pipe), the invert phase closed first
    assert "invert: 4/4 steps" in done.stderr and "generate: 4/4 steps" in done.stderr
    assert done.stderr.index("invert: 4/4") < done.stderr.index("generate: 1/4")
    assert "\x1b[A" not in done.stderr and "Traceback" not in done.stderr
    assert "torchvision" not in done.stderr and "Loading" not in done.stderr  # library noise is silenced
    image = Image.open(out)
    assert image.size == (128, 128)
    assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 100  # not a blank image


def test_fast_flag_smoke(tiny_model_folder, tmp_path):
    """Loose on purpose: fast and normal mode agree step by step (tests/test_fast_mode.py); end to end their
    images differ by rounding that random weights amplify, so this only checks the flag runs and is close."""
    common = ["--model", str(tiny_model_folder), *TINY_RUN, "--cfg", "3.5"]
    images = []
    for flags in ([], ["--fast"]):
        out = tmp_path / f"result{len(images)}.png"
        done = run_cli(*common, *flags, "--out", str(out))
        assert done.returncode == 0, done.stderr
        images.append(np.asarray(Image.open(out), dtype=np.int16))
    assert np.abs(images[0] - images[1]).mean() <= 2
    assert images[0].std() > 5


def test_unreachable_hub_model_is_one_short_line():
    done = run_cli("--model", "nobody/no-such-model", *TINY_RUN)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: cannot load 'nobody/no-such-model' from the Hugging Face hub")
    assert "local diffusers folder" in lines[0] and "stacktrace" not in lines[0] and len(lines[0]) < 300


def test_an_uncached_hub_model_with_an_object_word_is_one_short_line():
    """Offline, transformers 5 returns a tokenizer of special tokens alone for a hub id it has no files for; the
    object word check says the model cannot be loaded (not that the word is missing, nor a traceback)."""
    done = run_cli("--model", "nobody/no-such-model", "--object-word", "animal", *TINY_RUN)
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot load 'nobody/no-such-model' from the Hugging Face hub: it is not in ")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


# Runs Python as on a machine without torchvision: the import system no longer finds it (package metadata still
# does, which transformers does not consult first)
WITHOUT_TORCHVISION = """
import importlib.machinery, runpy, sys

class HideTorchvision(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.split(".")[0] == "torchvision" else super().find_spec(name, path, target)

sys.meta_path = [HideTorchvision if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""


def run_without_torchvision(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="warning")  # the notices' own level
    command = [sys.executable, "-c", WITHOUT_TORCHVISION + code]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_the_commands_print_no_notice_that_torchvision_is_missing(tmp_path):
    importing_diffusers = run_without_torchvision("from diffusers import StableDiffusionPipeline")
    assert importing_diffusers.returncode == 0, importing_diffusers.stderr
    # without the command line's filter: CLIP's and SigLIP's image processors each say so
    assert importing_diffusers.stderr.count("requires torchvision (not installed)") == 2, importing_diffusers.stderr

    folder = tmp_path / "tiny"
    command = (
        f"sys.argv = ['xattn_core', 'tiny-model', {str(folder)!r}]; runpy.run_module('xattn_core', run_name='__main__')"
    )
    done = run_without_torchvision(command)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # nor a "Writing model shards" bar
    assert done.stdout == f"wrote {folder}: pass --model {folder}\n"
    assert (folder / "model_index.json").is_file()


def test_tiny_model_refuses_a_file_as_its_folder(tmp_path, capsys):
    existing = tmp_path / "a_file"
    existing.write_text("")
    assert main(["tiny-model", str(existing)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {str(existing)!r} is a file, not a folder"


def test_object_word_turns_on_automatic_masks_and_writes_them(tiny_model_folder, tmp_path):
    out = tmp_path / "result.png"
    prompt = ["--prompt", "A photo of a giraffe", "--object-word", "giraffe"]
    done = run_cli("--model", str(tiny_model_folder), *TINY_RUN, *prompt, "--out", str(out))
    assert done.returncode == 0, done.stderr
    for role in ("appearance", "structure"):
        mask = Image.open(tmp_path / f"result_{role}_mask.png")
        assert mask.size == (128, 128) and mask.mode == "L"
    # random weights find no object: said in one line, and AdaIN runs unmasked
    assert "warning: automatic masks: the object word was not found" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_word_the_prompt_lacks_is_refused_before_the_model_loads(nothing_loads, capsys, tiny_model_folder):
    prompt = ["--prompt", "A photo of a cat", "--object-word", "dog"]
    assert main(["transfer", "--model", str(tiny_model_folder), *prompt]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: object word 'dog' is not in the prompt; the prompt reads 'a photo of a cat'")
