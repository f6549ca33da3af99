"""The pack's errors reach the API response and the log as ``xattn.<Name>``, not as the install folder's path.

ComfyUI imports the pack under its folder's path (``…/custom_nodes/comfyui-xattn``) and names an error's type
``module.qualname``; tests/test_error_types.py checks every exception class the source defines.
"""

import inspect
import sys

from comfyui_support import PACK_NAME
from test_comfy_workflows import api_twin, shrink

from scripts.snapshot_node_schemas import PACK_LINK_NAME


def test_a_bad_object_word_is_reported_as_xattn_object_word_error(server):
    prompt = shrink(api_twin("01 Basic transfer, SD 1.5"))
    node_id = next(key for key, node in prompt.items() if node["class_type"] == "XAttnObjectPrompt")
    prompt[node_id]["inputs"]["object_word"] = "dog"  # the prompt reads "A photo of an animal"
    code, response = server.post("/prompt", {"prompt": prompt, "client_id": "xattn-tests"})
    assert code == 200 and response["node_errors"] == {}, response
    history = server.wait_for(response["prompt_id"], 300)
    assert history["status"]["status_str"] == "error"
    failure = next(message[1] for message in history["status"]["messages"] if message[0] == "execution_error")
    assert failure["node_id"] == node_id
    assert failure["exception_type"] == "xattn.ObjectWordError"
    assert failure["exception_message"].startswith("object word 'dog' is not in the prompt")
    log = server.log_text()
    assert "xattn.ObjectWordError: object word 'dog' is not in the prompt" in log  # the traceback's last line
    assert f"{PACK_LINK_NAME}.xattn_core" not in log and f"{PACK_LINK_NAME}.nodes" not in log


def test_no_exception_class_of_the_loaded_pack_is_named_after_its_import_name(comfy):
    """Under the name this tier loads the pack by (as ComfyUI loads it by its path), nodes modules included."""
    modules = [module for name, module in list(sys.modules.items()) if name.startswith(f"{PACK_NAME}.")]
    exceptions = {
        value
        for module in modules
        for value in vars(module).values()
        if inspect.isclass(value) and issubclass(value, BaseException)
    }
    assert not [cls for cls in exceptions if cls.__module__.startswith(PACK_NAME)]
    pack_exceptions = sorted(cls.__qualname__ for cls in exceptions if cls.__module__ == "xattn")
    assert "UnsupportedModelError" in pack_exceptions and "ObjectWordError" in pack_exceptions
