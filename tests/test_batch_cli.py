"""The batch command's checks before anything loads (pairs file, flags), its help, and Ray never imported locally."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import xattn_core.app.diffusers_pipeline as diffusers_pipeline
from tests.batch_support import PROMPT, TINY, run_main, write_pilot_set

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pilot(tmp_path_factory):
    return write_pilot_set(tmp_path_factory.mktemp("pilot"))


@pytest.fixture
def nothing_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the batch loaded a model before rejecting its arguments")

    monkeypatch.setattr(diffusers_pipeline, "load_pipeline", refuse)
    monkeypatch.setattr(diffusers_pipeline, "load_tokenizer", refuse)


@pytest.mark.parametrize(
    "content, message",
    [
        ("structure,appearance\nx.png,y.png\n", "lacks the column(s) prompt; its header reads 'structure,appearance'"),
        ("structure,apearance,prompt\n", "lacks the column(s) appearance"),
        ("structure,appearance,prompt,strength\n", "unknown column(s) 'strength'"),
        ("structure,appearance,prompt,prompt\n", "names the column(s) prompt more than once"),
        ("", "is empty; its first row must name the columns structure, appearance, prompt"),
        ("structure,appearance,prompt\n\n", "has a header but no pairs"),
        (b"structure,appearance,prompt\n\xff\xfe,x,y\n", "is not UTF-8 text"),
    ],
)
def test_a_bad_pairs_file_is_one_line_before_anything_loads(
    content, message, tmp_path, tiny_model_folder, nothing_loads
):
    pairs = tmp_path / "pairs.csv"
    pairs.write_bytes(content if isinstance(content, bytes) else content.encode())
    run = run_main("batch", pairs, "--out", tmp_path / "out", "--model", tiny_model_folder)
    lines = run.stderr.strip().splitlines()
    assert run.code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_flags_are_checked_before_anything_loads(pilot, tiny_model_folder, tmp_path, nothing_loads):
    pairs = tmp_path / "one.csv"
    pairs.write_text(f"structure,appearance,prompt\n{pilot.parent / 's1.png'},{pilot.parent / 'a2.png'},{PROMPT}\n")
    common = ["batch", pairs, "--model", tiny_model_folder, "--out", tmp_path / "out"]
    for flags, message in (
        (["--ray-actors", "2"], "--ray-actors and --ray-cpus need --ray"),
        (["--steps", "1"], "steps must be in 2..1000, got 1"),
        (["--dino", tmp_path / "nowhere"], "DINO model folder not found"),
        (["--model", tmp_path], "is not a diffusers model folder"),
        (["--ray", "--device", "cuda:1"], "with --ray, --device is cpu or cuda"),
    ):
        run = run_main(*common, *flags)
        assert run.code == 2 and run.stderr.count("\n") == 1 and message in run.stderr, (flags, run.stderr)
    with pytest.raises(SystemExit):
        run_main(*common, "--fast")  # fast mode's cache is not saved with inversions: not a batch flag


def test_help_describes_the_pairs_file():
    run = subprocess.run(
        [sys.executable, "-m", "xattn_core", "batch", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    for column in ("structure", "appearance", "prompt", "object_word", "structure_mask", "appearance_mask", "seed"):
        assert f"\n  {column} " in run.stdout, column
    assert "relative to the CSV's folder" in run.stdout and "--dino" in run.stdout and "--ray" in run.stdout


def test_a_local_batch_never_imports_ray(pilot, tiny_model_folder, tmp_path):
    pairs = tmp_path / "one.csv"
    pairs.write_text(f"structure,appearance,prompt\n{pilot.parent / 's1.png'},{pilot.parent / 'a2.png'},{PROMPT}\n")
    script = (
        "import sys\nfrom xattn_core.app.cli import main\ncode = main(sys.argv[1:])\n"
        "assert 'ray' not in sys.modules, 'a local batch imported ray'\nsys.exit(code)"
    )
    args = ["batch", pairs, "--model", tiny_model_folder, *TINY, "--out", tmp_path / "out"]
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        cwd=ROOT,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "outputs" / "002_s1__a2.png").is_file()


def test_a_row_with_an_object_word_and_a_mask_is_skipped(pilot):
    """Given masks turn the automatic ones off, so a row asking for both is refused before any model call."""
    from xattn_core.app.batch_csv import read_pairs
    from xattn_core.app.diffusers_pipeline import TransferOptions

    pairs = pilot.parent / "masked.csv"
    pairs.write_text(
        "structure,appearance,prompt,object_word,structure_mask\n"
        f"s1.png,a1.png,{PROMPT},animal,s2.png\n"
        f"s1.png,a1.png,{PROMPT},,s2.png\n"
    )
    good, bad = read_pairs(pairs, TransferOptions(size=128))
    assert [pair.row for pair in good] == [3] and good[0].structure_mask.path == pilot.parent / "s2.png"
    assert [(error.row, error.message) for error in bad] == [
        (2, "object_word and structure_mask exclude each other (given masks replace the automatic ones)")
    ]
