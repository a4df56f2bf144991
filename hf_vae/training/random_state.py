"""Every random number generator of a process (torch CPU and CUDA, Python, NumPy) as tensors and integers, so that a
checkpoint restores them without unpickling anything, each part checked for its type and size first."""

from __future__ import annotations

import logging
import random
from typing import Any, Dict

import numpy as np
import torch

from .checkpoint_format import CheckpointError

logger = logging.getLogger("hf_vae.training")


def rng_state() -> Dict[str, Any]:
    """This process's generator states: torch CPU/CUDA (uint8 tensors), Python and NumPy (integers)."""
    version, internal, gauss_next = random.getstate()
    numpy_state = np.random.get_state(legacy=True)
    state = {"torch_cpu": torch.get_rng_state(),
             "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
             "numpy": {"bit_generator": numpy_state[0], "keys": [int(k) for k in numpy_state[1]],
                       "pos": int(numpy_state[2]), "has_gauss": int(numpy_state[3]),
                       "cached_gaussian": float(numpy_state[4])}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: Dict[str, Any], source: str) -> None:
    """Restore `rng_state()`'s result, checking every part's type and size first (a truncated or edited state
    would silently give another random stream)."""
    def bad(what, expected, got):
        return CheckpointError(f"{source}: {what} must be {expected}, got {got}.")

    cpu = state.get("torch_cpu")
    reference = torch.get_rng_state()
    if not isinstance(cpu, torch.Tensor) or cpu.dtype != torch.uint8 or cpu.shape != reference.shape:
        raise bad("torch_cpu", f"a uint8 tensor of shape {tuple(reference.shape)}",
                  cpu if not isinstance(cpu, torch.Tensor) else f"{cpu.dtype} of shape {tuple(cpu.shape)}")
    python = state.get("python")
    if not (isinstance(python, dict) and python.get("version") == 3 and isinstance(python.get("state"), list)
            and len(python["state"]) == 625 and all(isinstance(v, int) for v in python["state"])
            and (python.get("gauss_next") is None or isinstance(python.get("gauss_next"), float))):
        raise bad("python", "{version: 3, state: 625 integers, gauss_next: float or null}",
                  type(python).__name__ if not isinstance(python, dict) else
                  f"version={python.get('version')!r} with {len(python.get('state') or [])} integers")
    numpy_state = state.get("numpy")
    if not (isinstance(numpy_state, dict) and numpy_state.get("bit_generator") == "MT19937"
            and isinstance(numpy_state.get("keys"), list) and len(numpy_state["keys"]) == 624
            and all(isinstance(k, int) and 0 <= k < 2 ** 32 for k in numpy_state["keys"])
            and isinstance(numpy_state.get("pos"), int) and 0 <= numpy_state["pos"] <= 624):
        raise bad("numpy", "{bit_generator: MT19937, keys: 624 integers < 2**32, pos: 0..624, ...}",
                  type(numpy_state).__name__ if not isinstance(numpy_state, dict) else
                  f"{numpy_state.get('bit_generator')!r} with {len(numpy_state.get('keys') or [])} keys")
    cuda = state.get("torch_cuda")
    if cuda is not None and (not isinstance(cuda, torch.Tensor) or cuda.dtype != torch.uint8 or cuda.dim() != 2):
        raise bad("torch_cuda", "a uint8 tensor (devices, state)", type(cuda).__name__)

    torch.set_rng_state(cpu)
    random.setstate((3, tuple(python["state"]), python["gauss_next"]))
    np.random.set_state((numpy_state["bit_generator"], np.asarray(numpy_state["keys"], dtype=np.uint32),
                         numpy_state["pos"], int(numpy_state.get("has_gauss", 0)),
                         float(numpy_state.get("cached_gaussian", 0.0))))
    if cuda is not None and torch.cuda.is_available():
        if cuda.shape[0] != torch.cuda.device_count():
            logger.warning("%s: CUDA RNG states for %d devices, this process sees %d; CUDA generators not restored.",
                           source, cuda.shape[0], torch.cuda.device_count())
        else:
            torch.cuda.set_rng_state_all(list(cuda))
