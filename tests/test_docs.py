"""The node help pages (web/docs) agree with the nodes, and README.md carries them unchanged.

The pages are checked against the node schema snapshot of the oldest ComfyUI release run
(workflows/schemas/node_schemas-*.json), which the ComfyUI tier proves current: every input is documented, in
order, with the default the node really has.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.workflow_checks import SCHEMAS

REPO = Path(__file__).resolve().parents[1]
PACK_NODES = sorted(name for name in SCHEMAS if name.startswith("XAttn"))


ITEM = re.compile(r"- \*\*(\w+)\*\*(?: \(default `([^`]*)`\))?: (.+)")


def table(page: str, heading: str) -> list[list[str]]:
    """[name, default, text] of each item of the list under ``## heading`` (``- **name** (default `x`): text``; a
    list, not a table, so that it reads at the width of the front end's help sidebar)."""
    section = page.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    assert "|" not in "".join(line[:1] for line in section.splitlines()), f"## {heading}: a list, not a table"
    items = [ITEM.fullmatch(line) for line in section.splitlines() if line.startswith("- ")]
    assert all(items), section
    return [[item[1], item[2] or "—", item[3]] for item in items]


def shown(default) -> str:
    return "—" if default is None else str(default)


@pytest.mark.parametrize("node_id", PACK_NODES)
def test_every_node_has_a_page_that_documents_each_input_and_default(node_id):
    page = (REPO / "web" / "docs" / f"{node_id}.md").read_text()
    schema = SCHEMAS[node_id]
    assert page.startswith(f"# {schema['display_name']}\n")
    rows = table(page, "Inputs")
    assert [row[0] for row in rows] == [spec["name"] for spec in schema["inputs"]]
    for row, spec in zip(rows, schema["inputs"], strict=True):
        assert row[1] == shown(spec.get("default")), (spec["name"], row[1], spec.get("default"))
        assert len(row[2]) > 20, f"{node_id}.{spec['name']}: say what the input does"
    if schema["outputs"]:
        assert [row[0] for row in table(page, "Outputs")] == [output["name"] for output in schema["outputs"]]


def test_the_web_directory_holds_the_pages():
    init = (REPO / "__init__.py").read_text()
    folder = re.search(r'WEB_DIRECTORY = "\./(\w+)"', init).group(1)
    assert sorted(path.stem for path in (REPO / folder / "docs").glob("*.md")) == PACK_NODES


def test_readme_carries_the_pages_unchanged():
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_docs.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
