"""The pack copies its sample images into ComfyUI's input folder when ComfyUI loads it (nodes/samples_install.py),
so the templates' Load Image nodes find them; it never replaces a file that is there, and a folder it cannot write
to only logs.

The tier's shared ComfyUI server starts on an empty input/; the other checks call the install function in a fresh
Python on folders made here (one holding a user's own file under one of the pack's names and an identical copy of
another) and on /proc/self, which takes no new file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from comfyui_support import REPO

from scripts.workflow_files import INPUT_SAMPLES

SAMPLES = REPO / "xattn_core" / "samples"
MODULE = REPO / "nodes" / "samples_install.py"
USER_FILE = b"a user's own image, not the pack's"


def sample_bytes(name: str) -> bytes:
    return (SAMPLES / INPUT_SAMPLES[name]).read_bytes()


def test_loading_the_pack_installs_the_samples_load_image_lists(server):
    """The tier's shared server starts on an empty input/ (conftest.py): the pack puts the samples there."""
    listed = server.get("/object_info/LoadImage")["LoadImage"]["input"]["required"]["image"][0]
    for name in INPUT_SAMPLES:
        assert name in listed, name
        assert (server.input_dir / name).read_bytes() == sample_bytes(name), name
    assert "copied the templates' sample images" in server.log_text()


def test_a_user_file_of_the_same_name_is_kept_and_logged_and_an_identical_one_left_as_it_is(tmp_path):
    clashing, identical, *_ = INPUT_SAMPLES
    (tmp_path / clashing).write_bytes(USER_FILE)
    (tmp_path / identical).write_bytes(sample_bytes(identical))
    os.utime(tmp_path / identical, (1_000_000_000, 1_000_000_000))  # an old time, to see that it is not rewritten
    outcome, log = install(tmp_path)
    assert outcome[clashing] == "kept" and outcome[identical] == "present"
    assert (tmp_path / clashing).read_bytes() == USER_FILE
    assert f"{clashing} already exists and differs" in log and f"{identical} already exists" not in log
    path = tmp_path / identical
    assert path.read_bytes() == sample_bytes(identical) and path.stat().st_mtime == 1_000_000_000
    assert all(outcome[name] == "installed" for name in INPUT_SAMPLES if name not in (clashing, identical))


INSTALL = """
import importlib.util, json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
spec = importlib.util.spec_from_file_location("samples_install", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(module.install_samples(sys.argv[2])))
"""


def install(folder) -> tuple[dict, str]:
    """install_samples(folder) in a fresh Python: what it reports, and what it logged."""
    done = subprocess.run(
        [sys.executable, "-c", INSTALL, str(MODULE), str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout), done.stderr


def test_installing_again_changes_nothing(tmp_path):
    first, _ = install(tmp_path)
    assert first == dict.fromkeys(INPUT_SAMPLES, "installed")
    again, log = install(tmp_path)
    assert again == dict.fromkeys(INPUT_SAMPLES, "present") and "WARNING" not in log
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(INPUT_SAMPLES)


def test_a_folder_no_one_may_write_to_is_only_logged():
    """/proc/self: a folder that exists and takes no new file, for root too (who writes through a mode of 0o555)."""
    folder = Path("/proc/self")
    outcome, log = install(folder)
    assert outcome == dict.fromkeys(INPUT_SAMPLES, "failed")  # it returned: the pack goes on loading
    assert not any((folder / name).exists() for name in INPUT_SAMPLES)
    assert log.count("WARNING") == len(INPUT_SAMPLES) and "could not copy the sample image" in log


def test_a_missing_input_folder_that_cannot_be_made_is_only_logged(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    outcome, log = install(blocker / "input")
    assert outcome == dict.fromkeys(INPUT_SAMPLES, "failed") and "could not find or make" in log
