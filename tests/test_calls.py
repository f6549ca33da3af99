"""The model calls of each step, checked as data without a model; the counts at the paper's settings."""

import dataclasses

import pytest

from xattn_core.calls import (
    CallLayout,
    ModelCall,
    PlannedCapture,
    PlannedSwap,
    Rows,
    StepRole,
    model_evaluations,
    recording_step,
    step_calls,
    step_roles,
)
from xattn_core.plan import KeyValueSource, build_plan

OUTPUT, APPEARANCE, STRUCTURE = Rows.OUTPUT, Rows.APPEARANCE, Rows.STRUCTURE
BOTH = frozenset({0, 1})
CACHED = frozenset({APPEARANCE, STRUCTURE})
PLAN = build_plan(100, 32)  # the paper's: 68 steps, swaps from step 11, structure K/V at 11, 16, ..., 36


def plain_pass(step):
    return ModelCall((OUTPUT,), False, (OUTPUT,), swap_guidance=step.swap_weight)


def test_the_paper_steps_as_calls():
    before, structure_step, appearance_step = PLAN[0], PLAN[11], PLAN[12]
    assert before.swap_weight is None and not before.swaps
    assert (
        structure_step.kv_source is KeyValueSource.STRUCTURE and appearance_step.kv_source is KeyValueSource.APPEARANCE
    )
    layout = CallLayout.of(1, 1)
    assert step_calls(before, layout) == [
        ModelCall((APPEARANCE,), True, (APPEARANCE,)),
        ModelCall((OUTPUT, STRUCTURE), False, (OUTPUT, STRUCTURE)),
    ]
    # structure keys/values: the output row attends to the structure row of the same call; nothing captured
    assert step_calls(structure_step, layout) == [
        ModelCall((APPEARANCE,), True, (APPEARANCE,)),
        ModelCall((OUTPUT, STRUCTURE), False, (OUTPUT, STRUCTURE), swap=PlannedSwap(BOTH, (0,), STRUCTURE, (1,), True)),
        plain_pass(structure_step),
    ]
    # appearance keys/values: captured by the appearance call, read by the output row
    assert step_calls(appearance_step, layout) == [
        ModelCall((APPEARANCE,), True, (APPEARANCE,), capture=PlannedCapture(APPEARANCE, BOTH)),
        ModelCall(
            (OUTPUT, STRUCTURE), False, (OUTPUT, STRUCTURE), swap=PlannedSwap(BOTH, (0,), APPEARANCE, (0,), False)
        ),
        plain_pass(appearance_step),
    ]


def test_pairs_pick_the_source_rows():
    step = PLAN[11]  # structure keys/values: structure rows follow the outputs in the joint call
    one_on_two = step_calls(step, CallLayout.of(1, 2))[1]
    assert one_on_two.swap == PlannedSwap(BOTH, (0, 1), STRUCTURE, (2, 3), True)
    two_on_one = step_calls(PLAN[12], CallLayout.of(2, 1))[1]  # appearance keys/values, rows of the capture
    assert two_on_one.swap == PlannedSwap(BOTH, (0, 1), APPEARANCE, (0, 1), False)
    assert step_calls(PLAN[12], CallLayout.of(3, 3))[1].swap.source_rows == (0, 1, 2)


def test_output_hints_run_the_joint_call_as_a_path_call_and_the_output_again():
    step = PLAN[11]
    calls = step_calls(step, CallLayout.of(1, 2, output_hints=True))
    assert calls == [
        ModelCall((APPEARANCE,), True, (APPEARANCE,)),
        # the joint call keeps only the structure's prediction and captures every row's keys/values ...
        ModelCall(
            (OUTPUT, STRUCTURE),
            True,
            (STRUCTURE,),
            capture=PlannedCapture(STRUCTURE, BOTH),
            swap=PlannedSwap(BOTH, (0, 1), STRUCTURE, (2, 3), True),
        ),
        # ... which the output rows, with their hints, read at the same rows
        ModelCall((OUTPUT,), False, (OUTPUT,), swap=PlannedSwap(BOTH, (0, 1), STRUCTURE, (2, 3), False)),
        plain_pass(step),
    ]
    appearance_step = step_calls(PLAN[12], CallLayout.of(1, 1, output_hints=True))
    assert appearance_step[1].capture is None  # the appearance call captured what the output reads
    assert appearance_step[2].swap == PlannedSwap(BOTH, (0,), APPEARANCE, (0,), False)


def test_fast_mode_runs_the_output_rows_alone_reading_the_caches():
    step = PLAN[11]
    assert step_calls(step, CallLayout.of(1, 1, CACHED)) == [
        ModelCall((OUTPUT,), False, (OUTPUT,), swap=PlannedSwap(BOTH, (0,), STRUCTURE, (0,), False)),
        plain_pass(step),
    ]
    # only the appearance cached: the structure rows still run with the outputs
    mixed = step_calls(PLAN[12], CallLayout.of(1, 2, frozenset({APPEARANCE})))
    assert mixed == [
        ModelCall(
            (OUTPUT, STRUCTURE), False, (OUTPUT, STRUCTURE), swap=PlannedSwap(BOTH, (0, 1), APPEARANCE, (0, 0), False)
        ),
        plain_pass(PLAN[12]),
    ]


def test_maps_are_recorded_by_the_path_rows_and_replayed_paths_get_a_call_of_their_own():
    assert recording_step(PLAN, True) == 20 and PLAN[20].adain and not PLAN[19].adain
    assert recording_step(PLAN, False) is None
    step = PLAN[20]
    live = step_calls(step, CallLayout.of(1, 2), StepRole(records_maps=True))
    assert live[0].records == ((0, ("appearance", 0)),)
    assert live[1].records == ((2, ("structure", 0)), (3, ("structure", 1)))  # after the two output rows
    assert [call.records for call in live[2:]] == [()]  # the plain pass records nothing
    fast = step_calls(step, CallLayout.of(1, 1, CACHED), StepRole(records_maps=True))
    assert fast[:2] == [
        ModelCall((APPEARANCE,), True, records=((0, ("appearance", 0)),)),  # gives nothing: the cache does
        ModelCall((STRUCTURE,), True, records=((0, ("structure", 0)),)),
    ]
    assert len(fast) == 4 and not fast[2].records


def test_the_output_rows_are_not_evaluated_while_they_equal_the_structure_rows():
    roles = step_roles(PLAN, CallLayout.of(1, 1))
    assert [step.index for step, role in zip(PLAN, roles, strict=True) if role.output_is_structure] == list(range(11))
    assert all(role.structure_needed for role in roles)  # the reconstruction is asked for by default
    assert step_calls(PLAN[0], CallLayout.of(1, 2), roles[0]) == [
        ModelCall((APPEARANCE,), True, (APPEARANCE,)),
        ModelCall((STRUCTURE,), True, (STRUCTURE,)),  # the sampler copies the structure's prediction
    ]
    assert step_calls(PLAN[0], CallLayout.of(1, 1, CACHED), roles[0]) == []  # both from the caches
    # other conditioning for the output (hints), or a noise mask blending in the inversion: no longer equal, so
    # the output rows run on their own until the first swap (and the structure path is what it is without)
    for layout in (CallLayout.of(1, 1, output_hints=True), CallLayout.of(1, 1, noise_mask=True)):
        roles = step_roles(PLAN, layout)
        assert not any(role.output_is_structure for role in roles)
        assert [role.before_swaps for role in roles] == [step.index < 11 for step in PLAN]
        assert step_calls(PLAN[0], layout, roles[0]) == [
            ModelCall((APPEARANCE,), True, (APPEARANCE,)),
            ModelCall((STRUCTURE,), True, (STRUCTURE,)),
            ModelCall((OUTPUT,), False, (OUTPUT,)),
        ]
    # an AdaIN step before the first swap changes the output: from the next step on it is evaluated
    early_adain = [dataclasses.replace(step, adain=step.index >= 4) for step in PLAN]
    follows = [role.output_is_structure for role in step_roles(early_adain, CallLayout.of(1, 1))]
    assert follows[:6] == [True] * 5 + [False]


def test_without_its_reconstruction_the_structure_path_stops_after_its_last_key_value_step():
    layout = CallLayout.of(1, 1, structure_reconstruction=False)
    roles = step_roles(PLAN, layout)
    assert [role.structure_needed for role in roles] == [step.index <= 36 for step in PLAN]
    assert step_calls(PLAN[37], layout, roles[37]) == [
        ModelCall((APPEARANCE,), True, (APPEARANCE,), capture=PlannedCapture(APPEARANCE, BOTH)),
        ModelCall((OUTPUT,), False, (OUTPUT,), swap=PlannedSwap(BOTH, (0,), APPEARANCE, (0,), False)),
        plain_pass(PLAN[37]),
    ]
    # a recording step after the last key/value step keeps the path running up to it
    late_masks = [dataclasses.replace(step, adain=step.index >= 50) for step in PLAN]
    needed = [role.structure_needed for role in step_roles(late_masks, layout, automatic_masks=True)]
    assert needed.index(False) == 51


@pytest.mark.parametrize(
    "layout, automatic_masks, expected",
    [
        # 68 steps x (appearance + output + structure) + 57 plain passes - 11 output rows before the first swap;
        # with the inversion's 2 x 2 x 68 = 272: 522 evaluations a transfer (533 before the output rows were
        # shared; the official code 808)
        (CallLayout.of(1, 1), False, 250),
        (CallLayout.of(1, 1), True, 250),  # the masks cost no evaluation: the path rows record
        # without the structure's reconstruction: 31 structure rows fewer (steps 37..67), 272 + 219 = 491
        (CallLayout.of(1, 1, structure_reconstruction=False), False, 219),
        (CallLayout.of(1, 1, noise_mask=True), False, 261),  # a local transfer evaluates every output row
        # + 68 output rows with hints (the output is evaluated at every step): 261 + 68 - 11
        (CallLayout.of(1, 1, output_hints=True), False, 318),
        (CallLayout.of(1, 1, output_hints=True, structure_reconstruction=False), False, 256),  # no joint call after 36
        (CallLayout.of(1, 1, CACHED), False, 114),  # fast mode: 57 output rows + 57 plain passes
        (CallLayout.of(1, 1, CACHED), True, 116),  # + one recording call per replayed path
        (CallLayout.of(1, 1, frozenset({APPEARANCE})), False, 182),
        (CallLayout.of(1, 2), False, 432),  # 68 x 5 + 57 x 2 - 11 x 2
    ],
)
def test_evaluations_at_the_paper_settings(layout, automatic_masks, expected):
    assert model_evaluations(PLAN, layout, automatic_masks) == expected
