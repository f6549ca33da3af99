"""The batch command on the tiny pipeline: inversions cached and reused, resuming, bad rows, the contact sheet,
scores, and the transfer command's output for each pair."""

import html
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import xattn_core.app.batch as batch
from tests.batch_support import (
    INVERSION_CALLS,
    MISSING,
    PROMPT,
    TINY,
    ModelSpy,
    SheetParser,
    pixels,
    read_results,
    run_main,
    write_pilot_set,
)
from xattn_core.app.diffusers_pipeline import TransferOptions, generate, invert_images, load_image, load_pipeline
from xattn_core.inversion import InversionSettings

ROOT = Path(__file__).resolve().parents[1]
GOOD_ROWS, BAD_ROWS = (2, 3, 5), (4, 6)


@pytest.fixture(scope="module")
def pilot(tmp_path_factory):
    return write_pilot_set(tmp_path_factory.mktemp("pilot"))


@pytest.fixture(scope="module")
def first_run(pilot, tiny_model_folder, tmp_path_factory):
    """The pilot set's first batch run, with the model spied on."""
    out = tmp_path_factory.mktemp("batch") / "out"
    with pytest.MonkeyPatch.context() as monkeypatch:
        spy = ModelSpy().install(monkeypatch)
        run = run_main("batch", pilot, "--model", tiny_model_folder, *TINY, "--out", out)
    return run, spy, out


@pytest.fixture(scope="module")
def transfer_command(pilot, tiny_model_folder, tmp_path_factory):
    """``python -m xattn_core transfer`` on row 2's pair: its output and its UNet calls."""
    out = tmp_path_factory.mktemp("transfer") / "out.png"
    with pytest.MonkeyPatch.context() as monkeypatch:
        spy = ModelSpy().install(monkeypatch)
        flags = ["--structure", pilot.parent / "s1.png", "--appearance", pilot.parent / "a1.png", "--prompt", PROMPT]
        run = run_main("transfer", "--model", tiny_model_folder, *TINY, *flags, "--out", out)
    assert run.code == 0, run.stderr
    return out, spy


def copy_of(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "out"))


def test_each_image_is_inverted_once_and_bad_rows_are_skipped(first_run, transfer_command, pilot):
    run, spy, out = first_run
    assert run.code == 1  # some rows were skipped
    assert spy.loads == 1
    # four images, each inverted alone, once: appearances with the seed, structures with seed + 1
    images = {name: load_image(pilot.parent / name, 128).tobytes() for name in ("s1.png", "s2.png", "a1.png", "a2.png")}
    inverted = {image: seed for (image,), seed in zip(spy.inversions, spy.seeds, strict=True)}
    assert len(spy.inversions) == 4 and all(len(batch_of) == 1 for batch_of in spy.inversions)
    assert inverted == {images["a1.png"]: 0, images["a2.png"]: 0, images["s1.png"]: 1, images["s2.png"]: 1}
    assert len(list((out / "inversions").glob("*.safetensors"))) == 4
    # UNet calls: 4 images x 4 inversion steps, then per pair what the transfer command spends generating
    generation_calls = transfer_command[1].unet_calls - INVERSION_CALLS
    assert generation_calls > 0
    assert spy.unet_calls == 4 * INVERSION_CALLS + 3 * generation_calls
    # one prompt for every row, encoded once with the empty negative prompt, as by the transfer command
    assert spy.text_encodings == transfer_command[1].text_encodings == 2
    lines = run.stderr.splitlines()
    assert f"row 4 skipped: structure: cannot read {pilot.parent / 'not_an_image.png'} as an image" in run.stderr
    assert f"row 6 skipped: structure: image not found: {pilot.parent / MISSING}" in lines
    assert "skipped: rows 4, 6" in lines
    assert run.stdout.startswith("5 rows: 3 done, 2 skipped; wrote ")
    assert "Traceback" not in run.stderr


def test_a_batch_pair_is_the_transfer_commands_output(first_run, transfer_command, pilot, tiny_model_folder):
    """Close to the transfer command's output, and bit for bit what inverting each image alone gives.

    The transfer command inverts both images in one UNet call (a batch of two); the batch inverts each image
    alone so it can be reused, with the same seeds (appearance s, structure s + 1: the same noise draws). CPU
    kernels round a batch of two and a batch of one differently (noise maps differ by ~2e-4 here), which random
    weights carry to about 1e-5 of the final latents and, after decoding, one grey level on a few pixels. That
    comparison is a loose smoke check (rounding depends on the torch build); the exact one is the second.
    """
    out = first_run[2]
    batch_output = pixels(out / "outputs" / "002_s1__a1.png")
    command_output = pixels(transfer_command[0])
    assert batch_output.shape == command_output.shape == (128, 128, 3)
    assert batch_output.std() > 5  # not a blank image
    difference = np.abs(batch_output - command_output)
    assert difference.max() <= 4 and (difference > 0).mean() < 0.05, (difference.max(), (difference > 0).mean())
    # the only difference is the batch of one: each image inverted alone, saved, read back, then generated
    pipe = load_pipeline(str(tiny_model_folder))
    options = TransferOptions(inversion=InversionSettings(steps=6, start_step=2), size=128)
    structure, appearance = (load_image(pilot.parent / name, 128) for name in ("s1.png", "a1.png"))
    image, _ = generate(
        pipe,
        invert_images(pipe, [appearance], PROMPT, options, seed=0),
        invert_images(pipe, [structure], PROMPT, options, seed=1),
        PROMPT,
        options,
    )
    assert np.array_equal(np.asarray(image, dtype=np.int16), batch_output)


def test_a_rerun_does_no_model_call_and_force_redoes_the_same(first_run, tiny_model_folder, pilot, tmp_path):
    out = copy_of(first_run[2], tmp_path)
    names = sorted(path.name for path in (out / "outputs").glob("*.png"))
    with pytest.MonkeyPatch.context() as monkeypatch:
        spy = ModelSpy().install(monkeypatch)
        rerun = run_main("batch", pilot, "--model", tiny_model_folder, *TINY, "--out", out)
    assert (spy.loads, spy.unet_calls, spy.inversions) == (0, 0, [])
    assert rerun.stdout.startswith("5 rows: 3 kept, 2 skipped")
    assert {row: fields["status"] for row, fields in read_results(out).items()} == {
        2: "kept",
        3: "kept",
        4: "skipped",
        5: "kept",
        6: "skipped",
    }
    with pytest.MonkeyPatch.context() as monkeypatch:
        spy = ModelSpy().install(monkeypatch)
        forced = run_main("batch", pilot, "--model", tiny_model_folder, *TINY, "--out", out, "--force")
    assert forced.stdout.startswith("5 rows: 3 done, 2 skipped")
    assert spy.loads == 1 and len(spy.inversions) == 4  # every inversion again, still once each
    assert len(names) == 5  # three outputs and row 3's two automatic masks
    for name in names:  # deterministic: the same files again
        assert np.array_equal(pixels(out / "outputs" / name), pixels(first_run[2] / "outputs" / name)), name


def test_a_pair_failing_mid_batch_is_reported_and_the_rest_finish(first_run, tiny_model_folder, pilot, tmp_path):
    out = copy_of(first_run[2], tmp_path)
    for row in ("003_s2__a1", "005_s1__a2"):  # these two run again; the first of them fails
        (out / "outputs" / f"{row}.json").unlink()
    real_generate = batch.generate
    calls = []

    def failing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (simulated)\nsecond line of a long message")
        return real_generate(*args, **kwargs)

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(batch, "generate", failing_once)
        run = run_main("batch", pilot, "--model", tiny_model_folder, *TINY, "--out", out)
    assert run.code == 1
    assert "pair 2/3, row 3 failed: CUDA out of memory (simulated)" in run.stderr.splitlines()  # its first line
    results = read_results(out)
    assert [results[row]["status"] for row in sorted(results)] == ["kept", "failed", "skipped", "done", "skipped"]
    assert results[3]["error"] == "CUDA out of memory (simulated)" and results[3]["output"] == ""
    assert "failed: rows 3" in run.stderr and "skipped: rows 4, 6" in run.stderr
    assert "CUDA out of memory (simulated)" in (out / "index.html").read_text()


def test_contact_sheet_is_valid_html_linking_files_in_the_folder(first_run):
    out = first_run[2]
    parser = SheetParser()
    page = (out / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    parser.feed(page)
    parser.close()
    assert parser.problems == [] and parser.open == []
    assert parser.body_rows == 5  # one per row of the pairs file, good or bad
    # 3 x (structure, appearance, output) and the two automatic masks of row 3
    assert len(parser.sources) == 11
    for source in parser.sources:
        assert not source.startswith(("/", "file:", "http")) and ".." not in source, source
        assert (out / source).is_file(), source
    text = "".join(parser.text)
    assert MISSING in text  # the file name came through as text: escaped, not markup
    assert html.escape(MISSING) in page
    assert "not_an_image.png" in text
    assert "0.145" in text and "0.651" in text  # the reference scores for scale


def test_results_csv_has_one_row_per_pair(first_run, pilot):
    out = first_run[2]
    results = read_results(out)
    assert sorted(results) == sorted(GOOD_ROWS + BAD_ROWS)
    for row in GOOD_ROWS:
        fields = results[row]
        assert fields["status"] == "done" and float(fields["seconds"]) > 0
        assert (out / fields["output"]).is_file() and fields["error"] == ""
        assert fields["structure_distance"] == fields["appearance_similarity"] == ""  # no --dino
    assert results[2]["structure"] == str(pilot.parent / "s1.png") and results[5]["prompt"] == PROMPT
    assert results[3]["object_word"] == "animal"
    assert (out / results[3]["appearance_mask"]).is_file() and (out / results[3]["structure_mask"]).is_file()
    assert results[2]["appearance_mask"] == ""
    assert {results[row]["status"] for row in BAD_ROWS} == {"skipped"}
    assert results[6]["error"] == f"structure: image not found: {pilot.parent / MISSING}"


def test_dino_scores_fill_results_and_sheet_without_the_model(first_run, tiny_model_folder, pilot, tmp_path):
    from xattn_core.app.scores import DinoScorer
    from xattn_core.tiny import tiny_vit

    tiny_vit(0).save_pretrained(tmp_path / "dino")
    out = copy_of(first_run[2], tmp_path)
    with pytest.MonkeyPatch.context() as monkeypatch:
        spy = ModelSpy().install(monkeypatch)
        run = run_main("batch", pilot, "--model", tiny_model_folder, *TINY, "--out", out, "--dino", tmp_path / "dino")
    assert spy.loads == 0  # finished pairs are only scored
    assert run.stdout.startswith("5 rows: 3 kept, 2 skipped")
    scorer = DinoScorer(tmp_path / "dino")
    results = read_results(out)
    page = (out / "index.html").read_text()
    for row, name in zip(GOOD_ROWS, ("002_s1__a1", "003_s2__a1", "005_s1__a2"), strict=True):
        structure, appearance = name[4:].split("__")
        paths = (out / "outputs" / f"{name}.png", pilot.parent / f"{structure}.png", pilot.parent / f"{appearance}.png")
        expected = scorer.score(*(Image.open(path).convert("RGB") for path in paths))
        distance, similarity = float(results[row]["structure_distance"]), float(results[row]["appearance_similarity"])
        assert distance == pytest.approx(expected.structure_distance, abs=1e-4)
        assert similarity == pytest.approx(expected.appearance_similarity, abs=1e-4)
        assert 0 < distance and -1 <= similarity < 1  # a transfer is neither its structure nor its appearance
        assert results[row]["structure_distance"] in page and results[row]["appearance_similarity"] in page
    assert "Mean over 3 scored pairs" in page


@pytest.mark.slow
def test_the_ray_batch_writes_what_the_local_batch_writes(first_run, pilot, tiny_model_folder, tmp_path):
    """The same pilot set as a Ray Data job on a two-CPU local cluster: the same files, the same skips."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"py_modules": [str(ROOT / "xattn_core")]})
    try:
        out = tmp_path / "ray"
        run = run_main("batch", pilot, "--model", tiny_model_folder, *TINY, "--out", out, "--ray")
        rerun = run_main("batch", pilot, "--model", tiny_model_folder, *TINY, "--out", out, "--ray")
    finally:
        ray.shutdown()
    assert run.code == 1 and run.stdout.startswith("5 rows: 3 done, 2 skipped"), run.stderr
    assert rerun.stdout.startswith("5 rows: 3 kept, 2 skipped")
    local = first_run[2]
    names = sorted(path.name for path in (local / "outputs").glob("*.png"))
    assert names == sorted(path.name for path in (out / "outputs").glob("*.png")) and len(names) == 5
    for name in names:
        assert np.array_equal(pixels(out / "outputs" / name), pixels(local / "outputs" / name)), name
    assert sorted(path.name for path in (out / "inversions").iterdir()) == sorted(
        path.name for path in (local / "inversions").iterdir()
    )
