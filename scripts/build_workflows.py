"""Write the shipped workflows (workflows/*.json) and their API twins (workflows/api/*.json), each from its
description in scripts/workflow_specs/ (NN_<what it shows>.py; that package's docstring says what one holds).

    COMFYUI_PATH=/path/to/ComfyUI python scripts/build_workflows.py        # reads /object_info from a real ComfyUI
    python scripts/build_workflows.py --object-info object_info.json       # or from a saved /object_info

Afterwards refresh the schema snapshot (scripts/snapshot_node_schemas.py) and the thumbnails and screenshots
(python -m pytest -m browser tests/browser).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workflow_files import MODEL_SOURCES, workflow_spec_files  # noqa: E402
from workflow_graph import Graph  # noqa: E402
from workflow_specs.sample_inputs import DRAWN, GIRAFFE, ZEBRA  # noqa: E402, F401 (scripts/make_thumbnails.py)

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
# each workflow's description, by workflow name, in the workflows' order
WORKFLOWS_BUILT: dict[str, ModuleType] = {
    spec.NAME: spec
    for spec in (importlib.import_module(f"workflow_specs.{path.stem}") for path in workflow_spec_files())
}
# workflow 09's schedule, which tests/test_workflows_static.py recounts
FLUX_SCHEDULE = WORKFLOWS_BUILT["09 Flux transfer"].FLUX_SCHEDULE
FLUX_EVALUATIONS = WORKFLOWS_BUILT["09 Flux transfer"].FLUX_EVALUATIONS


def build(spec: ModuleType, info: dict) -> Graph:
    """One workflow's graph: its note first, then the nodes its description adds."""
    graph = Graph(info, MODEL_SOURCES)
    graph.note(spec.NOTE)
    spec.build(graph)
    return graph


def object_info(path: str | None) -> dict:
    if path:
        return json.loads(Path(path).read_text())
    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui:
        raise SystemExit("name a ComfyUI checkout with COMFYUI_PATH, or pass --object-info")
    import snapshot_node_schemas

    with (
        tempfile.TemporaryDirectory(prefix="xattn-workflows-") as workdir,
        snapshot_node_schemas.comfy_server(comfyui, Path(workdir)) as server,
    ):
        return server.get("/object_info")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--object-info", help="a saved /object_info JSON instead of starting ComfyUI")
    args = parser.parse_args()
    info = object_info(args.object_info)
    for name, spec in WORKFLOWS_BUILT.items():
        graph = build(spec, info)
        graph.write(WORKFLOWS, name)
        print(f"wrote workflows/{name}.json and workflows/api/{name}.json ({len(graph.nodes)} nodes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
