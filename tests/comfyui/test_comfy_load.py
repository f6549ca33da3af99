"""ComfyUI starts with the pack: no IMPORT FAILED for it, every node in /object_info with its inputs."""

import subprocess
import sys

import pytest
from comfyui_support import COMFYUI_PATH, REPO, load_snapshot_module

PACK_FOLDER = "comfyui-xattn"
NODE_IDS = ["XAttnInvertImage", "XAttnCrossImageSampler", "XAttnOptions", "XAttnAdaINLatentMatch",
            "XAttnSaveInversion", "XAttnLoadInversion"]


@pytest.fixture(scope="module")
def comfy_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy")
    (root / "custom_nodes").mkdir()
    (root / "custom_nodes" / PACK_FOLDER).symlink_to(REPO)
    for name in ("input", "output", "temp", "user"):
        (root / name).mkdir()
    config = root / "extra_model_paths.yaml"
    config.write_text(f"xattn_tests:\n    custom_nodes: {root / 'custom_nodes'}\n")
    return [
        "--cpu", "--disable-auto-launch", "--disable-api-nodes", "--database-url", "sqlite:///:memory:",
        "--extra-model-paths-config", str(config), "--input-directory", str(root / "input"),
        "--output-directory", str(root / "output"), "--temp-directory", str(root / "temp"),
        "--user-directory", str(root / "user"),
    ]


def test_quick_test_for_ci_loads_the_pack(comfy_dirs):
    done = subprocess.run([sys.executable, "main.py", *comfy_dirs, "--quick-test-for-ci"], cwd=COMFYUI_PATH,
                          capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line]
    assert not [line for line in failed if PACK_FOLDER in line], log[-3000:]
    assert any(PACK_FOLDER in line and "seconds" in line for line in log.splitlines()), log[-3000:]
    assert not [line for line in log.splitlines() if "Cannot import" in line and PACK_FOLDER in line], log[-3000:]


def test_server_lists_every_node_with_its_inputs(tmp_path):
    with load_snapshot_module().comfy_server(COMFYUI_PATH, tmp_path) as server:
        info = server.get("/object_info")
    for node_id in NODE_IDS:
        assert node_id in info, node_id
        assert info[node_id]["category"] == "appearance transfer"
        assert info[node_id]["description"]
        for group in ("required", "optional"):
            for name, spec in info[node_id]["input"].get(group, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    sampler = info["XAttnCrossImageSampler"]
    assert set(sampler["input"]["required"]) >= {"model", "appearance", "structure", "swap_guidance", "contrast"}
    assert sampler["input"]["required"]["appearance"][0] == "XATTN_INVERSION"
    assert sampler["input"]["optional"]["structure_mask"][0] == "MASK"
    assert info["XAttnInvertImage"]["output"] == ["XATTN_INVERSION"]
    assert info["XAttnInvertImage"]["input"]["required"]["steps"][1]["default"] == 100
    assert info["XAttnInvertImage"]["input"]["required"]["start_step"][1]["default"] == 32
    display_names = {info[node_id]["display_name"] for node_id in NODE_IDS}
    core_names = {spec["display_name"] for key, spec in info.items() if not key.startswith("XAttn")}
    assert not display_names & core_names
