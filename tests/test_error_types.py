"""Every exception the pack defines is reported as ``xattn.<Name>``, never under the path ComfyUI imports it by.

ComfyUI names a node's error type ``type(error).__module__ + "." + type(error).__qualname__`` and imports a custom
node folder under its path (0.3.64 and 0.9.2: the path with "." replaced by "_x_"), so a plain class would be
reported as ``/home/me/ComfyUI/custom_nodes/comfyui-xattn.xattn_core.segmentation.ObjectWordError``.
The nodes' exceptions need ComfyUI to import; tests/comfyui/test_comfy_error_types.py checks them at run time.
"""

import ast
import builtins
import importlib
import importlib.util
import sys
import traceback
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACK_FILES = sorted([REPO / "__init__.py", *(REPO / "xattn_core").rglob("*.py"), *(REPO / "nodes").rglob("*.py")])
BUILTIN_EXCEPTIONS = {
    name for name, value in vars(builtins).items() if isinstance(value, type) and issubclass(value, BaseException)
}
# how ComfyUI 0.3.64 and 0.9.2 name a custom node folder's module (nodes.py, load_custom_node), for a folder
# whose name has a dot in it
INSTALL_FOLDER = "comfyui-xattn.v2"
COMFYUI_MODULE_NAME = f"/home/me/ComfyUI/custom_nodes/{INSTALL_FOLDER}".replace(".", "_x_")


def base_names(node: ast.ClassDef) -> list[str]:
    """The names of a class statement's bases as written (``errors.XAttnError`` gives ``XAttnError``)."""
    return [base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "") for base in node.bases]


def exception_classes() -> dict[tuple[Path, str], list[str]]:
    """(file, class name) -> base names of every class in the pack that derives from an exception, by reading the
    source: a builtin exception or another such class among its bases."""
    classes = {
        (path, node.name): base_names(node)
        for path in PACK_FILES
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
    }
    exception_names = set(BUILTIN_EXCEPTIONS)
    while True:  # until no class joins: a subclass of a subclass of ValueError is an exception too
        found = {name for (_, name), bases in classes.items() if exception_names & set(bases)}
        if found <= exception_names:
            break
        exception_names |= found
    return {key: bases for key, bases in classes.items() if exception_names & set(bases)}


def comfyui_type_name(cls: type) -> str:
    """ComfyUI's execution.full_type_name, as 0.3.64 and 0.9.2 write it."""
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def test_the_source_scan_finds_every_pack_exception():
    names = sorted(name for _, name in exception_classes())
    assert names == [
        "CacheTooLargeError",
        "InversionFileError",
        "ModelLoadError",
        "ObjectWordError",
        "PairsFileError",
        "UnsupportedModelError",
        "XAttnError",
    ]


@pytest.mark.parametrize("path, name", sorted(exception_classes()), ids=lambda value: getattr(value, "name", value))
def test_every_pack_exception_derives_from_the_shared_base(path, name):
    bases = exception_classes()[path, name]
    assert name == "XAttnError" or "XAttnError" in bases, f"{path.relative_to(REPO)}: {name}({', '.join(bases)})"


@pytest.fixture
def pack_as_comfyui_loads_it():
    """The repo imported as ComfyUI imports a custom node folder, with its path as the module name; removed after."""
    spec = importlib.util.spec_from_file_location(
        COMFYUI_MODULE_NAME, REPO / "__init__.py", submodule_search_locations=[str(REPO)]
    )
    pack = importlib.util.module_from_spec(spec)
    sys.modules[COMFYUI_MODULE_NAME] = pack
    spec.loader.exec_module(pack)
    yield COMFYUI_MODULE_NAME
    for name in [name for name in sys.modules if name.startswith(COMFYUI_MODULE_NAME)]:
        del sys.modules[name]


def test_every_engine_exception_is_reported_as_xattn_under_an_install_path(pack_as_comfyui_loads_it):
    engine = [(path, name) for path, name in exception_classes() if path.parts[len(REPO.parts)] == "xattn_core"]
    assert len(engine) == 6  # all but the nodes' UnsupportedModelError
    for path, name in engine:
        module_path = ".".join(path.relative_to(REPO).with_suffix("").parts)
        module = importlib.import_module(f"{pack_as_comfyui_loads_it}.{module_path}")
        assert module.__name__.startswith("/home/me/")  # imported under the path, as ComfyUI does
        reported = comfyui_type_name(getattr(module, name))
        assert reported == f"xattn.{name}"
        assert "/" not in reported and "\\" not in reported and "comfyui-xattn" not in reported


def test_a_traceback_names_the_error_as_xattn():
    from xattn_core.segmentation import ObjectWordError, word_positions

    with pytest.raises(ObjectWordError) as caught:
        word_positions(["a</w>", "photo</w>", "of</w>", "an</w>", "animal</w>"], ["dog</w>"], "dog")
    last_line = traceback.format_exception_only(caught.value)[-1]
    assert last_line.startswith("xattn.ObjectWordError: object word 'dog' is not in the prompt")
    assert isinstance(caught.value, ValueError)  # callers that catch ValueError still do
