"""The GPU benchmark's configs are the released models' and its --tiny run reports the engine's counts."""

import pytest
import torch

from bench.bench_gpu import MODELS, run
from xattn_core.calls import CallLayout, model_evaluations
from xattn_core.diffusers_backend import decoder_attention_levels
from xattn_core.plan import build_plan

STEPS, START = 8, 2


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_full_size_configs_build_the_released_unets(name):
    from diffusers import UNet2DConditionModel

    model = MODELS[name]
    with torch.device("meta"):  # the layout alone, no memory
        unet = UNet2DConditionModel(**model.config)
    assert sum(parameter.numel() for parameter in unet.parameters()) == model.parameters
    # up-block index -> attention level: SD 1.5 swaps at x1 and x2 downsampling, SDXL (no attention at x1) at x2, x4
    assert decoder_attention_levels(unet) == ({1: 2, 2: 1, 3: 0} if name == "sd15" else {0: 1, 1: 0})


@pytest.mark.filterwarnings("ignore:automatic masks")  # random weights: no object stands out
def test_tiny_run_reports_both_phases_with_the_engines_counts(capsys):
    runs = run(["--tiny", "--steps", str(STEPS), "--start", str(START), "--size", "64"])
    printed = capsys.readouterr().out
    assert [r.model for r in runs] == ["sd15", "sdxl"] and printed.count("\ninversion ") == 2
    layout = CallLayout.of(1, 1, structure_reconstruction=False)  # the command line's transfer
    generation = model_evaluations(build_plan(STEPS, START), layout, automatic_masks=True)
    for result in runs:
        assert set(result.phases) == {"inversion", "generation"}
        inversion_phase, generation_phase = result.phases["inversion"], result.phases["generation"]
        assert inversion_phase.evaluations == 2 * 2 * (STEPS - START)  # two images, both CFG branches
        assert inversion_phase.calls == STEPS - START  # one batched call a step
        assert generation_phase.evaluations == generation == result.expected_evaluations["generation"]
        assert all(phase.wall > 0 for phase in result.phases.values())
        assert all(peak > 2**20 for peak in result.peak_bytes.values())
        assert result.finite and result.device == "cpu" and result.dtype == "float32"
    assert "official code" not in printed  # the full-size figures are not compared with tiny CPU runs
