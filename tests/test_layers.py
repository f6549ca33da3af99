"""The engine stands alone: importing it (every module of xattn_core/, not xattn_core/app/) imports neither
ComfyUI nor the application layer nor diffusers."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import xattn_core

ROOT = Path(__file__).resolve().parents[1]


def test_the_engine_imports_no_app_no_comfyui_and_no_diffusers():
    engine = sorted(
        f"xattn_core.{module.name}"
        for module in pkgutil.iter_modules(xattn_core.__path__)
        if module.name not in ("app", "__main__", "tiny")  # tiny builds diffusers models for tests, on purpose
    )
    assert "xattn_core.calls" in engine and "xattn_core.transfer" in engine and len(engine) >= 15
    script = (
        "import importlib, sys\n"
        f"for name in {engine!r}:\n    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('xattn_core.app', 'comfy', 'diffusers')))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
