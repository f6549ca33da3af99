"""The CI guard that turns a skipped or empty ComfyUI tier into a failure (.ci/check_tier.py)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKER = REPO / ".ci" / "check_tier.py"


def _checker():
    spec = importlib.util.spec_from_file_location("check_tier", CHECKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(tmp_path: Path, cases: list[tuple[str, str | None]]) -> str:
    """A JUnit file with one testcase per (classname, outcome child tag or None for passed)."""
    body = "".join(
        f'<testcase classname="{cls}" name="t{i}">' + (f"<{tag} message='x'/>" if tag else "") + "</testcase>"
        for i, (cls, tag) in enumerate(cases)
    )
    path = tmp_path / "report.xml"
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{body}</testsuite></testsuites>')
    return str(path)


def test_counts_only_the_tier_folder(tmp_path):
    checker = _checker()
    report = _report(
        tmp_path,
        [
            ("tests.comfyui.test_comfy_load", None),
            ("tests.comfyui.test_comfy_nodes.TestX", None),
            ("tests.comfyui.test_comfy_nodes", "failure"),
            ("tests.test_plan", "skipped"),  # outside the tier: does not count
            ("tests.comfyuix.test_other", "skipped"),  # a folder that merely starts with the same name
        ],
    )
    outcomes = checker.tier_outcomes(report, "tests/comfyui")
    assert dict(outcomes) == {"passed": 2, "failed": 1}
    assert checker.problem(outcomes, "tests/comfyui") is None


@pytest.mark.parametrize(
    "cases, expected",
    [
        ([("tests.comfyui.test_a", None), ("tests.comfyui.test_a", "skipped")], "1 test(s) under tests/comfyui"),
        ([("tests.test_plan", None)], "no test under tests/comfyui passed (none collected)"),
        ([("tests.comfyui.test_a", "error")], "no test under tests/comfyui passed ({'error': 1})"),
    ],
)
def test_a_skip_or_an_empty_tier_fails(tmp_path, cases, expected):
    report = _report(tmp_path, cases)
    result = subprocess.run([sys.executable, str(CHECKER), report, "tests/comfyui"], capture_output=True, text=True)
    assert result.returncode == 1
    assert expected in result.stderr


def test_a_real_run_without_comfyui_fails_the_check(tmp_path):
    """The integration tier as pytest runs it with no ComfyUI found: it skips, and the guard says so."""
    report = tmp_path / "junit.xml"
    env = {key: value for key, value in os.environ.items() if key != "COMFYUI_PATH"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/comfyui/test_comfy_load.py"]
        + [f"--junitxml={report}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-2000:]  # a plain developer run without ComfyUI stays green ...
    check = subprocess.run([sys.executable, str(CHECKER), str(report), "tests/comfyui"], capture_output=True, text=True)
    assert check.returncode == 1  # ... and CI's guard turns it red
    assert "skipped: the tier must run in CI" in check.stderr
