"""CI tier: the workflow descriptions (scripts/workflow_specs/, one module per shipped workflow) hold what the
builder (scripts/build_workflows.py) reads, and the name list the tests read agrees with them."""

from __future__ import annotations

import pytest

from scripts.build_workflows import WORKFLOWS_BUILT
from scripts.workflow_files import OLDEST_COMFYUI, WORKFLOW_NAMES, declared_name, workflow_spec_files, workflows_for


def test_each_workflow_name_has_one_description_in_order():
    assert tuple(WORKFLOWS_BUILT) == WORKFLOW_NAMES  # imported NAMEs == the NAMEs read without importing
    for spec, name in zip(workflow_spec_files(), WORKFLOW_NAMES, strict=True):
        assert name.split(" ", 1)[0] == spec.name.split("_", 1)[0], f"{spec.name}: its NN_ prefix is its number"


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_every_description_has_a_note_and_a_build_function(name):
    spec = WORKFLOWS_BUILT[name]
    assert spec.NOTE.startswith("# ") and callable(spec.build)


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_the_oldest_release_read_without_importing_is_the_description_s(name):
    assert OLDEST_COMFYUI[name] == getattr(WORKFLOWS_BUILT[name], "OLDEST_COMFYUI", None)


def test_a_workflow_applies_from_its_oldest_release_on():
    assert "10 Flux.2 transfer" not in workflows_for("0.3.64") and "11 Qwen-Image transfer" in workflows_for("0.3.64")
    assert "10 Flux.2 transfer" in workflows_for("0.9.2") and "10 Flux.2 transfer" in workflows_for("0.10.0")


def test_a_name_must_be_a_plain_string(tmp_path):
    plain, computed = tmp_path / "10_plain.py", tmp_path / "11_computed.py"
    plain.write_text('"""A description."""\n\nNAME = "10 Plain"\n')
    computed.write_text('NUMBER = 11\nNAME = f"{NUMBER} Computed"\n')
    assert declared_name(plain) == "10 Plain"
    with pytest.raises(ValueError):
        declared_name(computed)
