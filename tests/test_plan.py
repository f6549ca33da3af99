import warnings

import pytest

from xattn_core.plan import KeyValueSource, PlanSettings, build_plan


def test_official_plan_at_100_steps_start_32():
    plan = build_plan(100, 32)
    assert len(plan) == 68
    assert plan[0].global_step == 32 and plan[-1].global_step == 99
    mixing = [step.index for step in plan if step.swaps]
    assert mixing == list(range(11, 68))
    # both levels: level 0 counter in [10, 90), level 1 in [10, 70) -> always both up to step 67
    assert all(step.swap_levels == frozenset({0, 1}) for step in plan if step.swaps)
    structure_steps = [step.index for step in plan if step.swaps and step.kv_source is KeyValueSource.STRUCTURE]
    assert structure_steps == [11, 16, 21, 26, 31, 36]
    assert [step.index for step in plan if step.adain] == list(range(20, 68))
    guided = {step.index: step.swap_weight for step in plan if step.swap_weight is not None}
    assert sorted(guided) == list(range(11, 68))
    assert plan[10].swap_weight is None  # guidance starts at k = 10 but nothing swaps before 11
    assert guided[11] == pytest.approx(3.5 - 11 * 1.75 / 67)
    assert guided[67] == pytest.approx(1.75)


def test_official_swap_weight_at_step_10_is_3_239():
    # with mixing starting one step later, weight 3.239 belongs to loop step 10
    weights = build_plan(100, 32, PlanSettings(level_ranges=((0.0, 0.9), (0.0, 0.7))))
    assert weights[10].swap_weight == pytest.approx(3.2388, abs=1e-4)


def test_level_1_stops_at_counter_70_when_generation_is_longer():
    plan = build_plan(100, 0)
    assert plan[70].swap_levels == frozenset({0, 1})  # counter 69
    assert plan[71].swap_levels == frozenset({0})  # counter 70
    assert plan[91].swap_levels == frozenset()  # counter 90


def test_fractions_scale_with_step_count():
    plan = build_plan(50, 16)
    assert [step.index for step in plan if step.swaps][0] == 6  # counter 5 = 0.1 * 50
    assert [step.index for step in plan if step.adain][0] == 10


def test_start_step_out_of_range():
    with pytest.raises(ValueError, match="start step"):
        build_plan(100, 100)
    with pytest.raises(ValueError, match="start step"):
        build_plan(100, -1)


@pytest.mark.parametrize("steps", [10, 20, 50, 100, 200])
def test_structure_keys_values_keep_the_official_share_at_any_length(steps):
    start = round(0.32 * steps)
    plan = build_plan(steps, start)
    kv_end = round(0.4 * steps)
    early = [step for step in plan if step.swaps and max(step.index - 1, 0) < kv_end]
    structure = [step for step in early if step.kv_source is KeyValueSource.STRUCTURE]
    if len(early) >= 5:
        share = len(structure) / len(early)
        assert 0.15 <= share <= 0.25, (steps, len(structure), len(early))
    assert not any(step.kv_source is KeyValueSource.STRUCTURE for step in plan if step.swaps and step not in early)


def test_a_plan_that_never_swaps_warns():
    with pytest.warns(UserWarning, match="no generation step swaps attention .5 steps from start step 4"):
        plan = build_plan(5, 4)
    assert not any(step.swaps for step in plan)


def test_a_few_step_plan_without_a_structure_step_warns_and_says_what_works():
    """Z-Image Turbo's 8 steps: "every 5th step before 40 %" falls on no swapping step; the warning names the
    structure_kv_every that gives one, and that setting does."""
    with pytest.warns(UserWarning, match="no swapping step attends to the structure.*structure_kv_every to 2 or less"):
        plan = build_plan(8, 2)
    assert not any(step.swaps and step.kv_source is KeyValueSource.STRUCTURE for step in plan)
    advised = build_plan(8, 2, PlanSettings(structure_kv_every=2))
    structure_steps = [step.index for step in advised if step.swaps and step.kv_source is KeyValueSource.STRUCTURE]
    assert structure_steps == [3] and sum(step.swaps for step in advised) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the paper's 100 steps and a 28-step Flux run warn of nothing
        build_plan(100, 32)
        build_plan(28, 9)
