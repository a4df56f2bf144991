"""The checkpoint format: nested state dicts as a JSON tree and a flat safetensors file, nothing pickled.

`save_tree(tree, folder, stem)` writes `<stem>.safetensors` (the tensors) and `<stem>.json` (the structure, the
numbers and the tensors' names); `load_tree` reads them back. Dicts with non-string keys (an optimiser's parameter
indices), tuples and non-finite floats are tagged so that they come back as they were. `TrainingState` is the
loop's position, saved in this format with the rest of the training state.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted or loaded; the message names the file and what is wrong with it."""


class TrainingState:
    """The loop's position, checkpointed with the rest of the state.

    `data_epochs[r]` / `data_batches[r]`: the epoch of process r's stream and how many of its batches that
    process has consumed in it. Each process keeps its own position because shards may differ in length.
    """

    def __init__(self, num_processes: int = 1):
        self.step = 0
        self.num_processes = num_processes
        self.data_epochs: List[int] = [0] * num_processes
        self.data_batches: List[int] = [0] * num_processes
        self.skipped_batches = 0
        self.examples_seen = 0
        self.skipped_images: List[int] = [0] * num_processes
        #: the number of processes that wrote the checkpoint resumed, when it differs from this run's
        self.resharded_from: Optional[int] = None

    def state_dict(self) -> Dict:
        return {"step": self.step, "num_processes": self.num_processes, "data_epochs": list(self.data_epochs),
                "data_batches": list(self.data_batches), "skipped_batches": self.skipped_batches,
                "examples_seen": self.examples_seen, "skipped_images": list(self.skipped_images)}

    def load_state_dict(self, state: Dict) -> None:
        counts = {"step": state["step"], "skipped_batches": state.get("skipped_batches", 0),
                  "examples_seen": state.get("examples_seen", 0)}
        lists = {name: list(state.get(name) or []) for name in ("data_epochs", "data_batches", "skipped_images")}
        bad = {name: value for name, value in counts.items() if not isinstance(value, int) or value < 0}
        bad.update({name: values for name, values in lists.items()
                    if not all(isinstance(v, int) and v >= 0 for v in values)})
        if bad:  # a crafted or damaged position would resume at a negative step or data position
            raise ValueError(f"expected counts >= 0, got {bad}")
        self.step = int(state["step"])
        self.skipped_batches = int(state.get("skipped_batches", 0))
        self.examples_seen = int(state.get("examples_seen", 0))
        saved_processes = int(state.get("num_processes", 1))
        epochs, batches = list(state["data_epochs"]), list(state["data_batches"])
        skipped = list(state.get("skipped_images", [0] * saved_processes))
        if saved_processes != self.num_processes:
            skipped = [sum(skipped)] + [0] * (self.num_processes - 1)
            # The shards are different now, so the exact order cannot be restored; restart the epoch the first
            # process was in, skipping as many batches as it had consumed (close to the same data position).
            epochs, batches = [epochs[0]] * self.num_processes, [batches[0]] * self.num_processes
            self.resharded_from = saved_processes
        self.data_epochs, self.data_batches = [int(e) for e in epochs], [int(b) for b in batches]
        self.skipped_images = [int(s) for s in skipped]


def flatten_state(value: Any, tensors: Dict[str, torch.Tensor], path: str = "", _seen: Optional[set] = None) -> Any:
    """A JSON-able tree for `value` (a state dict: dicts, lists, tuples, numbers, strings, tensors); tensors are
    moved into `tensors` under their path and replaced by {"__tensor__": path}. Dicts whose keys are not all
    strings (an optimiser's parameter indices) and tuples are tagged so that they come back as they were."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().contiguous()
        seen = _seen if _seen is not None else {t.untyped_storage().data_ptr() for t in tensors.values()}
        if tensor.numel() and tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()  # safetensors refuses two names for one storage
        seen.add(tensor.untyped_storage().data_ptr())
        while path in tensors:  # a key holding a dot can spell another entry's path
            path += "'"
        tensors[path] = tensor
        return {"__tensor__": path}
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, (np.integer, np.floating)):
        return flatten_state(value.item(), tensors, path)
    if _seen is None:
        _seen = {t.untyped_storage().data_ptr() for t in tensors.values()}
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: flatten_state(v, tensors, f"{path}.{k}" if path else k, _seen) for k, v in value.items()}
        items = []
        for k, v in value.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"Cannot checkpoint {path or 'the state'}: key {k!r} of type {type(k).__name__}; "
                                f"expected str or int keys.")
            items.append([k, flatten_state(v, tensors, f"{path}.{k}" if path else str(k), _seen)])
        return {"__items__": items}
    if isinstance(value, tuple):
        return {"__tuple__": [flatten_state(v, tensors, f"{path}.{i}", _seen) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [flatten_state(v, tensors, f"{path}.{i}", _seen) for i, v in enumerate(value)]
    raise TypeError(f"Cannot checkpoint {path or 'the state'}: a {type(value).__name__} is neither a tensor nor "
                    f"a JSON value (expected tensors, numbers, strings, lists and dicts).")


def unflatten_state(tree: Any, tensors: Mapping[str, torch.Tensor], source: str) -> Any:
    """The inverse of `flatten_state`; `source` names the files in error messages."""
    if isinstance(tree, list):
        return [unflatten_state(v, tensors, source) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if set(tree) == {"__tensor__"}:
        name = tree["__tensor__"]
        if name not in tensors:
            raise CheckpointError(f"{source}: the state names tensor {name!r}, which the .safetensors file does not "
                                  f"hold.")
        return tensors[name]
    if set(tree) == {"__float__"}:
        if tree["__float__"] not in ("inf", "-inf", "nan"):
            raise CheckpointError(f"{source}: expected 'inf', '-inf' or 'nan' in a __float__ entry, got "
                                  f"{tree['__float__']!r}.")
        return float(tree["__float__"])
    if set(tree) == {"__tuple__"}:
        return tuple(unflatten_state(v, tensors, source) for v in tree["__tuple__"])
    if set(tree) == {"__items__"}:
        items = tree["__items__"]
        if not isinstance(items, list) or not all(isinstance(i, list) and len(i) == 2 for i in items):
            raise CheckpointError(f"{source}: expected __items__ to be a list of [key, value] pairs.")
        return {k: unflatten_state(v, tensors, source) for k, v in items}
    return {k: unflatten_state(v, tensors, source) for k, v in tree.items()}


def read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing.") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error}).") from None


def write_json(value: Any, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, allow_nan=False)


def read_safetensors(path: str) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: missing.")
    try:
        return load_file(path)
    except Exception as error:  # safetensors raises its own error type for a bad header or a short file
        raise CheckpointError(f"{path}: not a readable safetensors file ({error}).") from None


def save_tree(tree: Any, directory: str, stem: str) -> List[str]:
    """Write `tree` as `<stem>.safetensors` (its tensors) and `<stem>.json` (the rest). Returns the file names."""
    from safetensors.torch import save_file

    tensors: Dict[str, torch.Tensor] = {}
    structure = flatten_state(tree, tensors)
    save_file(tensors, os.path.join(directory, f"{stem}.safetensors"))
    write_json(structure, os.path.join(directory, f"{stem}.json"))
    return [f"{stem}.safetensors", f"{stem}.json"]


def load_tree(directory: str, stem: str) -> Any:
    base = os.path.join(directory, stem)
    tensors = read_safetensors(base + ".safetensors")
    return unflatten_state(read_json(base + ".json"), tensors, f"{base}.json/.safetensors")
