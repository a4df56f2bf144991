"""Import a script of scripts/ as a module (they are files, not a package), to call its `main(argv)` in-process."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def load_script(name: str):
    """`load_script("convert")` -> the module of scripts/convert.py."""
    spec = importlib.util.spec_from_file_location(f"hf_vae_script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
