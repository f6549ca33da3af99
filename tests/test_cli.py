import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xattn_core.tiny import save_tiny_pipeline

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "model"
    save_tiny_pipeline(folder)
    return folder


def test_command_line_writes_an_image(model_folder, tmp_path):
    out = tmp_path / "result.png"
    done = run_cli(
        "--model", str(model_folder), "--steps", "8", "--start-step", "2", "--size", "256", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    assert "invert" in done.stderr and "generate" in done.stderr  # progress bars
    image = Image.open(out)
    assert image.size == (256, 256)
    assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 100  # not a blank image


def test_fast_flag_gives_the_same_image_under_matched_guidance(model_folder, tmp_path):
    common = ["--model", str(model_folder), "--steps", "8", "--start-step", "2", "--size", "128", "--cfg", "3.5"]
    images = []
    for flags in ([], ["--fast"]):
        out = tmp_path / f"result{len(images)}.png"
        done = run_cli(*common, *flags, "--out", str(out))
        assert done.returncode == 0, done.stderr
        images.append(np.asarray(Image.open(out), dtype=np.int16))
    assert np.abs(images[0] - images[1]).max() <= 1  # equal up to rounding to 8-bit
    assert images[0].std() > 5


@pytest.mark.parametrize("model", ["/no/such/folder", "nobody/no-such-model"])
def test_missing_model_is_a_one_line_error(model):
    done = run_cli("--model", model)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--model" in errors[0]
