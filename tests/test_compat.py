"""The ComfyUI import shim's choice of comfy_api module, on the module layouts of real ComfyUI releases.

nodes/compat.py is loaded from its file: without ComfyUI it defines only the pure selection functions. The
integration tier (tests/comfyui/test_comfy_compat.py) checks the choice made on the checkout in use.
"""

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_compat():
    spec = importlib.util.spec_from_file_location("xattn_nodes_compat", REPO / "nodes" / "compat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compat = load_compat()

# comfy_api's submodules (pkgutil.iter_modules names) as the releases ship them.
COMFYUI_0_3_47 = ["feature_flags", "input", "input_impl", "torch_helpers", "util"]  # git tree of 2f74e179
COMFYUI_0_3_48 = [  # git trees of bff60b5c (0.3.48) and a125cd8 (0.3.64) list the same modules
    "feature_flags",
    "generate_api_stubs",
    "input",
    "input_impl",
    "internal",
    "latest",
    "torch_helpers",
    "util",
    "v0_0_1",
    "v0_0_2",
    "version_list",
]
# Newest public sources (read, not run): version_list.py lists latest, v0_0_3, v0_0_2 and v0_0_1.
COMFYUI_NEWEST = [*COMFYUI_0_3_48, "credential_registry", "generate_api_spec", "v0_0_3"]


COMFYUI_MODULES = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "latent_preview", "nodes")


def test_the_nodes_import_comfyui_only_through_the_shim():
    """A ComfyUI module imported anywhere else in nodes/ would bypass the version choice made in compat.py."""
    imports = re.compile(rf"^\s*(?:import|from)\s+({'|'.join(COMFYUI_MODULES)})(?:\.|\s|$)", re.MULTILINE)
    offenders = {
        path.name: imports.findall(path.read_text())
        for path in sorted((REPO / "nodes").glob("*.py"))
        if path.name != "compat.py"
    }
    assert {name: found for name, found in offenders.items() if found} == {}
    assert imports.findall((REPO / "nodes" / "compat.py").read_text())  # the pattern does match real imports


def test_version_module_names_parse():
    assert compat.api_version("v0_0_2") == (0, 0, 2)
    assert compat.api_version("v1_12_0") == (1, 12, 0)
    assert compat.api_version("latest") is None
    assert compat.api_version("v0_0_2_x") is None
    assert compat.api_version("version_list") is None


@pytest.mark.parametrize("layout", [COMFYUI_0_3_48, COMFYUI_NEWEST], ids=["0.3.48-0.3.64", "newest"])
def test_the_version_the_pack_was_written_against_is_taken_while_it_exists(layout):
    assert compat.choose_api_module(layout) == "v0_0_2"


def test_a_release_without_v0_0_2_gets_the_oldest_newer_version_module():
    without = [name for name in COMFYUI_NEWEST if name != "v0_0_2"] + ["v0_1_0"]
    assert compat.choose_api_module(without) == "v0_0_3"


def test_v0_0_1_has_no_v3_api_so_only_latest_remains():
    assert compat.choose_api_module(["latest", "v0_0_1", "internal"]) == "latest"


def test_a_comfyui_without_the_v3_api_is_refused_with_the_version_needed():
    with pytest.raises(ImportError, match="ComfyUI 0.3.48 or newer"):
        compat.choose_api_module(COMFYUI_0_3_47)
    with pytest.raises(ImportError, match=r"v0_0_1"):
        compat.choose_api_module(["v0_0_1", "input"])


def test_the_joint_stream_text_length_comes_from_img_slice_where_comfyui_sets_it():
    recorded = "xattn_text_tokens"
    # newer ComfyUI (after 0.9.2) names the image tokens' slice of cat(txt, img) before the single blocks
    assert compat.text_tokens_of_joint_stream({"img_slice": [512, 4608], recorded: 7}, recorded) == 512
    # 0.3.64 and 0.9.2: what the pack's double blocks recorded
    assert compat.text_tokens_of_joint_stream({recorded: 7}, recorded) == 7
    assert compat.text_tokens_of_joint_stream({}, recorded) is None
