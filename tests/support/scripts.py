"""Helpers for tests that run code outside the test process: scripts/ loaded as modules, and the environment of a
child process whose outputs are compared bit for bit with this process's."""

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


def same_threads(env: dict) -> dict:
    """`env` with OMP_NUM_THREADS set to this process's intra-op thread count: a convolution's float rounding
    depends on how its reductions are split between threads, so a child process that must reproduce this
    process's outputs bit for bit has to use as many threads."""
    import torch

    return {**env, "OMP_NUM_THREADS": str(torch.get_num_threads())}
