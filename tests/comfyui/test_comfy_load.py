"""ComfyUI starts with the pack: no import failure for it, every node in /object_info with its inputs."""

from pathlib import Path

from comfyui_support import load_snapshot_module

# every node has a help page (tests/test_docs.py), so the pages name every node
NODE_IDS = sorted(page.stem for page in (Path(__file__).resolve().parents[2] / "web" / "docs").glob("*.md"))


def test_the_pack_imports_without_failure(server):
    """The session server's start-up log: what ComfyUI's --quick-test-for-ci would show for the pack."""
    pack = load_snapshot_module().PACK_LINK_NAME
    log = server.log_text().splitlines()
    assert not [line for line in log if "IMPORT FAILED" in line and pack in line], "\n".join(log[-60:])
    assert not [line for line in log if "Cannot import" in line and pack in line], "\n".join(log[-60:])
    assert any(pack in line and "seconds" in line for line in log), "\n".join(log[-60:])  # the import-times list


def test_server_lists_every_node_with_its_inputs(server):
    info = server.get("/object_info")
    assert {node_id for node_id in info if node_id.startswith("XAttn")} == set(NODE_IDS) and len(NODE_IDS) == 8
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
