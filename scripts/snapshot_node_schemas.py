"""Write workflows/schemas/node_schemas-VERSION.json: the node schemas the shipped workflows are checked against,
one file per ComfyUI release (VERSION from the checkout's comfyui_version.py; core nodes differ between releases).

The snapshot lists, for this pack's nodes and for every core node a shipped workflow uses, the inputs in
widget order (name, type, widget or socket, combo options, defaults and ranges) and the outputs, as a real
ComfyUI reports them in GET /object_info. The CI tier (tests/test_workflows_static.py) checks the workflows
against it without importing ComfyUI; the integration tier (tests/comfyui/test_comfy_workflows.py) checks
that it still equals what ComfyUI and the pack report, so it cannot go stale.

Run after changing a node's inputs or a workflow:
    COMFYUI_PATH=/path/to/ComfyUI python scripts/snapshot_node_schemas.py          # rewrite the snapshot
    COMFYUI_PATH=/path/to/ComfyUI python scripts/snapshot_node_schemas.py --check  # exit 1 when stale

It starts ComfyUI (CPU, loopback, throw-away input/output folders) with this repository as a custom node
pack, reads /object_info and stops it. The helpers here are reused by the tests that start a server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"
SCHEMAS_FOLDER = WORKFLOWS / "schemas"  # not top level: ComfyUI lists those as templates
PACK_LINK_NAME = "comfyui-xattn"
PACK_PREFIX = "XAttn"
# Front-end-only nodes: they never reach the server (no schema, dropped from API prompts).
VIRTUAL_NODES = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Combos whose options are files on the machine (they differ between installs, so they are not snapshotted).
DYNAMIC_COMBOS = {
    ("CheckpointLoaderSimple", "ckpt_name"),
    ("LoadImage", "image"),
    ("LoadImageMask", "image"),
    ("XAttnLoadInversion", "inversion_file"),
    ("ControlNetLoader", "control_net_name"),
    ("UNETLoader", "unet_name"),
    ("CLIPLoader", "clip_name"),
    ("DualCLIPLoader", "clip_name1"),
    ("DualCLIPLoader", "clip_name2"),
    ("VAELoader", "vae_name"),  # the files in models/vae plus the approximate decoders found
}
KEPT_OPTIONS = ("default", "min", "max", "step", "control_after_generate", "image_upload", "forceInput")


def comfyui_version(comfyui: str | Path) -> str:
    """The release of a ComfyUI checkout, as its comfyui_version.py states it."""
    text = (Path(comfyui) / "comfyui_version.py").read_text()
    return text.split("__version__", 1)[1].split('"')[1]


def snapshot_file(comfyui: str | Path) -> Path:
    """Where the snapshot of that checkout's release lives."""
    return SCHEMAS_FOLDER / f"node_schemas-{comfyui_version(comfyui)}.json"


def input_schema(node_type: str, name: str, spec: list, required: bool) -> dict:
    """One input of an /object_info entry in the snapshot's form."""
    kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    entry: dict = {"name": name, "required": required}
    if isinstance(kind, list) or kind == "COMBO":
        entry["type"] = "COMBO"
        choices = kind if isinstance(kind, list) else options.get("options", [])
        entry["options"] = "dynamic" if (node_type, name) in DYNAMIC_COMBOS else list(choices)
    else:
        entry["type"] = kind
    entry["widget"] = entry["type"] in WIDGET_TYPES and not options.get("forceInput", False)
    for key in KEPT_OPTIONS:
        if key in options:
            entry[key] = options[key]
    if entry["type"] == "COMBO" and "default" in entry and entry["options"] == "dynamic":
        del entry["default"]
    return entry


def node_schema(node_type: str, info: dict) -> dict:
    """One node's /object_info entry in the snapshot's form (no tooltips, no file lists)."""
    inputs = []
    for section, required in (("required", True), ("optional", False)):
        specs = info["input"].get(section, {})
        for name in info.get("input_order", {}).get(section, list(specs)):
            inputs.append(input_schema(node_type, name, specs[name], required))
    names = info.get("output_name") or info["output"]
    return {
        "display_name": info.get("display_name", node_type),
        "output_node": bool(info.get("output_node", False)),
        "inputs": inputs,
        "outputs": [{"name": name, "type": kind} for name, kind in zip(names, info["output"], strict=True)],
    }


def workflow_files(folder: Path = WORKFLOWS) -> list[Path]:
    """The UI-format workflows ComfyUI lists in its template browser (the folder's top-level JSON files)."""
    return sorted(folder.glob("*.json"))


def used_node_types(folder: Path = WORKFLOWS) -> set[str]:
    used = set()
    for path in workflow_files(folder):
        used.update(node["type"] for node in json.loads(path.read_text())["nodes"])
    for path in sorted((folder / "api").glob("*.json")):
        used.update(node["class_type"] for node in json.loads(path.read_text()).values())
    return used - VIRTUAL_NODES


def snapshot(object_info: dict, folder: Path = WORKFLOWS) -> dict:
    """The snapshot for this pack's nodes plus the core nodes the workflows use."""
    wanted = {name for name in object_info if name.startswith(PACK_PREFIX)} | used_node_types(folder)
    missing = sorted(wanted - set(object_info))
    if missing:
        raise KeyError(f"ComfyUI reports no node types {missing}: a workflow uses a node this ComfyUI lacks")
    return {name: node_schema(name, object_info[name]) for name in sorted(wanted)}


def dump(data: dict) -> str:
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


# --- a real ComfyUI server on loopback -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyServer:
    """A running ComfyUI: `base` URL, JSON `get`/`post`, its `log` file."""

    def __init__(self, base: str, process: subprocess.Popen, log: Path, input_dir: Path, output_dir: Path):
        self.base, self.process, self.log = base, process, log
        self.input_dir, self.output_dir = input_dir, output_dir

    def get(self, path: str, timeout: float = 60):
        with urllib.request.urlopen(self.base + path, timeout=timeout) as response:
            return json.loads(response.read())

    def fetch(self, path: str, timeout: float = 60) -> tuple[int, str, bytes]:
        """Status, content type and body of a GET, errors included."""
        try:
            with urllib.request.urlopen(self.base + path, timeout=timeout) as response:
                return response.status, response.headers.get("Content-Type", ""), response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("Content-Type", ""), error.read()

    def post(self, path: str, payload: dict, timeout: float = 60) -> tuple[int, dict]:
        request = urllib.request.Request(
            self.base + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, prompt_id: str, timeout: float) -> dict:
        """The /history entry of a queued prompt once it has finished (success or error)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history:  # ComfyUI files a prompt in /history when it has finished
                return history[prompt_id]
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited while running {prompt_id}:\n{self.log_text()[-4000:]}")
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.log_text()[-4000:]}")


@contextlib.contextmanager
def comfy_server(
    comfyui_path: str | Path,
    workdir: Path,
    models: Path | None = None,
    startup_timeout: float = 180,
    extra_args: Sequence[str] = (),
) -> Iterator[ComfyServer]:
    """Start ComfyUI (CPU, 127.0.0.1, SDPA attention) with this repo as a pack; stop it on exit.

    workdir receives custom_nodes/ (a symlink to the repo), input/, output/, temp/, user/, the paths file and
    server.log, so the ComfyUI checkout itself is never written to. ``models`` is a folder laid out like
    ComfyUI's models/ (checkpoints/, controlnet/, ...). ``extra_args`` go to main.py as they are (e.g.
    ``--front-end-root``).
    """
    workdir = Path(workdir)
    nodes_dir, input_dir, output_dir = workdir / "custom_nodes", workdir / "input", workdir / "output"
    user_dir = workdir / "user"
    for folder in (nodes_dir, input_dir, output_dir, user_dir):
        folder.mkdir(parents=True, exist_ok=True)
    link = nodes_dir / PACK_LINK_NAME
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    paths = workdir / "extra_model_paths.yaml"
    lines = ["xattn_tests:", f"    custom_nodes: {nodes_dir}"]
    if models is not None:
        lines.append(f"    base_path: {models}")
        lines += [f"    {kind}: {kind}/" for kind in ("checkpoints", "controlnet")]
    paths.write_text("\n".join(lines) + "\n")
    port = free_port()
    log = workdir / "server.log"
    command = [
        sys.executable,
        "main.py",
        "--cpu",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--disable-auto-launch",
        "--disable-api-nodes",
        "--database-url",
        "sqlite:///:memory:",
        "--extra-model-paths-config",
        str(paths),
        "--output-directory",
        str(output_dir),
        "--input-directory",
        str(input_dir),
        "--temp-directory",
        str(workdir),
        "--user-directory",
        str(user_dir),
        "--use-pytorch-cross-attention",
        "--log-stdout",
        *extra_args,
    ]
    with open(log, "w") as log_file:
        process = subprocess.Popen(command, cwd=str(comfyui_path), stdout=log_file, stderr=subprocess.STDOUT)
    server = ComfyServer(f"http://127.0.0.1:{port}", process, log, input_dir, output_dir)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited at start-up:\n{server.log_text()[-4000:]}")
            try:
                server.get("/system_stats", timeout=5)
                break
            except OSError:  # URLError and ConnectionError are OSErrors
                if time.monotonic() > deadline:
                    raise TimeoutError(f"ComfyUI did not start in {startup_timeout} s") from None
                time.sleep(0.5)
        yield server
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen, grace: float = 30) -> None:
    """Terminate, and kill if it has not exited within ``grace`` seconds."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(grace)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout (COMFYUI_PATH)")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the snapshot is stale")
    args = parser.parse_args()
    if not args.comfyui:
        parser.error("name the ComfyUI checkout with --comfyui or COMFYUI_PATH")
    with (
        tempfile.TemporaryDirectory(prefix="xattn-snapshot-") as workdir,
        comfy_server(args.comfyui, Path(workdir)) as server,
    ):
        text = dump(snapshot(server.get("/object_info")))
    target = snapshot_file(args.comfyui)
    if args.check:
        stale = not target.exists() or target.read_text() != text
        print(f"{target.relative_to(REPO)} is {'STALE' if stale else 'up to date'}")
        return 1 if stale else 0
    target.write_text(text)
    print(f"wrote {target.relative_to(REPO)} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
