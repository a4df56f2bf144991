"""Checkpoints that survive a kill at any moment, load without unpickling anything, and detect corruption.

A checkpoint is a folder `checkpoints/checkpoint-<step>` holding only safetensors and JSON:

    model.safetensors                 the model's weights (`safetensors.torch.save_model`)
    model_config.json                 the model's configuration, compared on resume
    training_state.safetensors/.json  everything else the loop needs: its position (`TrainingState`), the
                                      learning-rate schedule, the optimisers, the objective (discriminator,
                                      log-variance), the EMA, the fp16 loss scaler. Tensors go to the
                                      .safetensors file; the JSON holds the structure, the numbers and the
                                      names of the tensors.
    rng_state_<rank>.safetensors/.json  each process's random number generators: torch's CPU (and CUDA)
                                      states are uint8 tensors, Python's and NumPy's Mersenne-Twister states
                                      are lists of integers
    manifest.json                     the size and sha256 of every other file, written last

Nothing in it is unpickled: `accelerator.save_state`/`load_state` are not used, because they pickle the
registered objects and the RNG states and unpickle them with `weights_only=False` (a crafted checkpoint would
run code). A folder holding any other file (`.pkl`, `.bin`, `.pt`, ...) is refused, naming the file, before
anything in it is read.

The folder is written as `checkpoints/.tmp-checkpoint-<step>` and renamed into place once complete; a rename
within one file system is atomic, so a `checkpoint-<step>` folder always holds a manifest. `latest` takes the
newest checkpoint whose files match their manifest and skips (with a warning) one that does not: a truncated
or altered file is found by its size or its hash. A run killed while saving leaves only a `.tmp-` folder,
which `latest` ignores and the next run deletes. Retention renames a checkpoint to `.tmp-` before deleting it,
so a kill during retention cannot leave a half-deleted `checkpoint-<step>`.

The published model (`config.json`, `model.safetensors` and the model code at the root of the output folder) is
written the same way: `save_pretrained` into a temporary folder, then each file renamed into place, weights first.
Both protect against a killed process; surviving a power cut would also need an fsync, which is not done here.

The output folder belongs to one run (`claim_output_dir`, the one guard of every path that writes a run): a new
run refuses a folder holding another run's files unless it is told to overwrite them or to resume that run. A
run lists what it writes in `run_manifest.json` (before writing it), and --overwrite_output_dir removes exactly
those entries (see docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

logger = logging.getLogger("hf_vae.training")

CHECKPOINT_PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-"
SUPERSEDED_DIR = "superseded"
MANIFEST = "manifest.json"
FORMAT = "hf_vae-checkpoint"
FORMAT_VERSION = 1
SAFE_SUFFIXES = (".safetensors", ".json")
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Written by every run into its output folder; anything else there belongs to the user or to another run.
_CONFIG_KEYS_IGNORED = {"transformers_version", "_name_or_path", "architectures", "auto_map", "dtype",
                        "torch_dtype", "_commit_hash", "_attn_implementation_autoset", "output_hidden_states",
                        "return_dict"}


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


# ------------------------------------------------------------------------------------------------------------
# Nested state dicts <-> (JSON tree, flat tensor dict)
# ------------------------------------------------------------------------------------------------------------


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


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing.") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error}).") from None


def _write_json(value: Any, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, allow_nan=False)


def _read_safetensors(path: str) -> Dict[str, torch.Tensor]:
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
    _write_json(structure, os.path.join(directory, f"{stem}.json"))
    return [f"{stem}.safetensors", f"{stem}.json"]


def load_tree(directory: str, stem: str) -> Any:
    base = os.path.join(directory, stem)
    tensors = _read_safetensors(base + ".safetensors")
    return unflatten_state(_read_json(base + ".json"), tensors, f"{base}.json/.safetensors")


# ------------------------------------------------------------------------------------------------------------
# Random number generators, in safe formats
# ------------------------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------------------------
# The folder: listing, manifest, verification
# ------------------------------------------------------------------------------------------------------------


def checkpoint_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def list_checkpoints(checkpoints_dir: str) -> List[Tuple[int, str]]:
    """Renamed-into-place checkpoints as (step, path), oldest first. Temporary folders are not listed."""
    if not os.path.isdir(checkpoints_dir):
        return []
    found = []
    for name in os.listdir(checkpoints_dir):
        match = _CHECKPOINT_RE.match(name)
        path = os.path.join(checkpoints_dir, name)
        if match and os.path.isdir(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: str, step: int) -> Dict[str, Any]:
    """Record the size and sha256 of every file in `directory` (call once everything else is written)."""
    files = {}
    for name in sorted(os.listdir(directory)):
        if name == MANIFEST:
            continue
        path = os.path.join(directory, name)
        files[name] = {"size": os.path.getsize(path), "sha256": _sha256(path)}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step, "files": files}
    _write_json(manifest, os.path.join(directory, MANIFEST))
    return manifest


def check_checkpoint_files(path: str) -> None:
    """Refuse a folder holding anything but safetensors and JSON files, before any of it is read."""
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isdir(full) or os.path.islink(full) or not name.endswith(SAFE_SUFFIXES):
            kind = "a folder" if os.path.isdir(full) else "a link" if os.path.islink(full) else "a file"
            raise CheckpointError(
                f"Refusing checkpoint {path}: it holds {name!r}, {kind} that is not safetensors or JSON. hf_vae "
                f"checkpoints hold only .safetensors and .json files (a pickle such as .pkl/.bin/.pt could run "
                f"code when loaded); nothing from this folder was loaded.")


def verify_checkpoint(path: str) -> Dict[str, Any]:
    """Check a checkpoint folder against its manifest: only safe file types, every file present with its recorded
    size and sha256, nothing unlisted. Returns the manifest; raises `CheckpointError` naming the file."""
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint folder.")
    check_checkpoint_files(path)
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise CheckpointError(f"{manifest_path}: missing; every hf_vae checkpoint ends with a manifest (a folder "
                              f"without one is unfinished, or was not written by hf_vae's trainer).")
    manifest = _read_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"),
                                                                                            dict):
        raise CheckpointError(f"{manifest_path}: expected an {FORMAT!r} manifest with a 'files' table, got "
                              f"{str(manifest)[:200]}.")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{manifest_path}: format version {manifest.get('format_version')!r}; this hf_vae "
                              f"reads version {FORMAT_VERSION}.")
    listed = manifest["files"]
    for name, entry in listed.items():
        file = os.path.join(path, name)
        if os.path.basename(name) != name or name.startswith(".") or not name.endswith(SAFE_SUFFIXES):
            raise CheckpointError(f"{manifest_path}: lists {name!r}; expected plain .safetensors/.json file names.")
        if not os.path.isfile(file):
            raise CheckpointError(f"{file}: missing (listed in the manifest).")
        size = os.path.getsize(file)
        if not isinstance(entry, dict) or size != entry.get("size"):
            raise CheckpointError(f"{file}: {size} bytes, the manifest says {entry.get('size') if isinstance(entry, dict) else entry!r} "
                                  f"(truncated or replaced).")
        if _sha256(file) != entry.get("sha256"):
            raise CheckpointError(f"{file}: sha256 differs from the manifest (the file is corrupt or was edited).")
    unlisted = sorted(set(os.listdir(path)) - set(listed) - {MANIFEST})
    if unlisted:
        raise CheckpointError(f"{path}: {unlisted[0]!r} is not listed in the manifest (added after the checkpoint was "
                              f"written).")
    return manifest


def latest_checkpoint(checkpoints_dir: str) -> Optional[str]:
    """The newest checkpoint that passes `verify_checkpoint`; a newer one that fails is skipped with a warning."""
    for step, path in reversed(list_checkpoints(checkpoints_dir)):
        try:
            verify_checkpoint(path)
        except CheckpointError as error:
            logger.warning("Skipping checkpoint-%d, which fails its check: %s", step, error)
            continue
        return path
    return None


def apply_resume_overrides(step: int, max_steps: int, learning_rate: float, scheduler) -> List[str]:
    """After a resume, the command line's --max_steps and --learning_rate apply (the checkpoint's optimiser and
    schedule would otherwise keep the old rate silently). Returns what changed, for the log; refuses a
    --max_steps below the step resumed (a run cannot be shortened below where it is)."""
    if max_steps < step:
        raise ValueError(f"--max_steps {max_steps} is below step {step} of the checkpoint resumed: expected "
                         f"--max_steps >= {step} (start a new run in another --output_dir for a shorter one).")
    changes = []
    saved = list(scheduler.base_lrs)
    if any(not math.isclose(lr, learning_rate, rel_tol=1e-9) for lr in saved):
        scheduler.base_lrs = [learning_rate] * len(saved)
        for group, factor in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas):
            group["initial_lr"] = learning_rate
            group["lr"] = learning_rate * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
        changes.append(f"--learning_rate {learning_rate:g} replaces the checkpoint's {saved[0]:g}")
    return changes


def resolve_resume(resume_from_checkpoint: Optional[str], output_dir: str) -> Optional[str]:
    """'latest' -> the newest complete checkpoint (None when there is none yet); a path -> that checkpoint,
    verified against its manifest."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        return latest_checkpoint(checkpoint_dir(output_dir))
    path = resume_from_checkpoint
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--resume_from_checkpoint {path}: no such folder; expected 'latest' or a "
                                f"checkpoint folder such as {os.path.join(checkpoint_dir(output_dir), 'checkpoint-500')}.")
    if os.path.basename(os.path.normpath(path)).startswith(TMP_PREFIX):
        raise ValueError(f"--resume_from_checkpoint {path} is an unfinished checkpoint (a run was killed while "
                         f"writing it); expected a complete checkpoint-<step> folder.")
    verify_checkpoint(path)
    return path


def remove_temporary(checkpoints_dir: str) -> List[str]:
    """Delete `.tmp-` folders left by a killed run. Call on the main process before training."""
    removed = []
    if os.path.isdir(checkpoints_dir):
        for name in os.listdir(checkpoints_dir):
            if name.startswith(TMP_PREFIX):
                shutil.rmtree(os.path.join(checkpoints_dir, name), ignore_errors=True)
                removed.append(name)
    return removed


def set_aside_newer(checkpoints_dir: str, resume_step: int) -> List[str]:
    """Move checkpoints newer than the one a run resumes from to `checkpoints/superseded/`: they belong to a
    future this run abandons, and left in place `latest` would mix the two (and retention could delete this
    run's newest checkpoints, whose step numbers are lower). Returns the moved folder names."""
    moved = []
    newer = [(step, path) for step, path in list_checkpoints(checkpoints_dir) if step > resume_step]
    if newer:
        target = os.path.join(checkpoints_dir, SUPERSEDED_DIR, time.strftime("%Y%m%d-%H%M%S"))
        os.makedirs(target, exist_ok=True)
        for _, path in newer:
            os.replace(path, os.path.join(target, os.path.basename(path)))
            moved.append(os.path.basename(path))
        logger.warning("Resuming from step %d: moved the newer checkpoints %s to %s.", resume_step, moved, target)
    return moved


def _remove_checkpoint(path: str) -> None:
    # Renamed first: a kill half-way through rmtree then leaves a .tmp- folder, never a damaged checkpoint.
    doomed = os.path.join(os.path.dirname(path), TMP_PREFIX + "removing-" + os.path.basename(path))
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------------
# Saving and loading the trainer's state
# ------------------------------------------------------------------------------------------------------------


def _config_dict(model) -> Dict[str, Any]:
    return {k: v for k, v in model.config.to_dict().items() if k not in _CONFIG_KEYS_IGNORED}


def save_checkpoint(accelerator, output_dir: str, step: int, model, components: Mapping[str, Any],
                    total_limit: Optional[int] = None) -> str:
    """Save the full training state as checkpoints/checkpoint-<step>, atomically, and prune old checkpoints.

    `model` is the unwrapped model; `components` maps names to objects with `state_dict`/`load_state_dict`
    (the training state, schedulers, optimisers, objective, EMA). Every process must call this (each writes its
    RNG state). Returns the checkpoint path.
    """
    from safetensors.torch import save_model

    directory = checkpoint_dir(output_dir)
    final = os.path.join(directory, f"{CHECKPOINT_PREFIX}{step}")
    tmp = os.path.join(directory, f"{TMP_PREFIX}{CHECKPOINT_PREFIX}{step}")
    if accelerator.is_main_process:
        os.makedirs(directory, exist_ok=True)
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    save_tree(rng_state(), tmp, f"rng_state_{accelerator.process_index}")
    if accelerator.is_main_process:
        save_model(model, os.path.join(tmp, "model.safetensors"))
        _write_json(_config_dict(model), os.path.join(tmp, "model_config.json"))
        save_tree({name: part.state_dict() for name, part in components.items()}, tmp, "training_state")
    accelerator.wait_for_everyone()  # every process has written its part before the manifest is taken
    if accelerator.is_main_process:
        write_manifest(tmp, step)
        if os.path.isdir(final):
            # Only a resumed run that had nothing left to do writes a step twice (newer checkpoints of an
            # abandoned future were set aside); the new copy replaces the old one, never silently.
            logger.warning("Replacing %s with the state saved now.", final)
            _remove_checkpoint(final)
        os.replace(tmp, final)
        if total_limit is not None:
            for _, old in list_checkpoints(directory)[:-max(1, total_limit)]:
                if old != final:  # the checkpoint just written is never deleted
                    _remove_checkpoint(old)
    accelerator.wait_for_everyone()
    return final


def read_training_state(path: str) -> Dict[str, Any]:
    """The `components` state dicts a checkpoint holds (verified first), e.g. `["ema"]["shadow"]`."""
    verify_checkpoint(path)
    return load_tree(path, "training_state")


def load_checkpoint(accelerator, path: str, model, components: Mapping[str, Any], verified: bool = False) -> None:
    """Restore what `save_checkpoint` wrote into `model` and `components`, and this process's RNG states.

    The model configuration must match the one the checkpoint was written with (the differences are listed).
    Nothing is unpickled; a checkpoint that fails its manifest is refused before anything is loaded.
    """
    from safetensors.torch import load_model

    if not verified:
        verify_checkpoint(path)
    saved_config = _read_json(os.path.join(path, "model_config.json"))
    current = json.loads(json.dumps(_config_dict(model)))  # tuples -> lists, as they were saved
    differences = [f"{key}: checkpoint {saved_config.get(key, '<absent>')!r}, this run {current.get(key, '<absent>')!r}"
                   for key in sorted(set(saved_config) | set(current)) if saved_config.get(key) != current.get(key)]
    if differences:
        raise CheckpointError(f"Checkpoint {path} was written by a run with a different model configuration: "
                              f"{'; '.join(differences)}. Expected the same configuration to resume (start a new "
                              f"run in another --output_dir to train a different model).")
    weights = os.path.join(path, "model.safetensors")
    try:
        load_model(model, weights, strict=True, device=str(next(model.parameters()).device))
    except Exception as error:
        raise CheckpointError(f"{weights}: cannot be loaded into the model ({error}).") from None
    states = load_tree(path, "training_state")
    missing = sorted(set(components) - set(states))
    if missing:
        raise CheckpointError(f"{os.path.join(path, 'training_state.json')}: no state for {missing} (it holds "
                              f"{sorted(states)}); expected a checkpoint of a run with the same training setup.")
    for name, part in components.items():
        try:
            part.load_state_dict(states[name])
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as error:
            raise CheckpointError(f"{os.path.join(path, 'training_state.json')}: the {name} state does not fit "
                                  f"this run ({type(error).__name__}: {error}).") from None
    rank = accelerator.process_index
    stem = os.path.join(path, f"rng_state_{rank}")
    if os.path.isfile(stem + ".json"):
        set_rng_state(load_tree(path, f"rng_state_{rank}"), stem + ".json/.safetensors")
    else:
        logger.warning("%s has no random-generator state for process %d (it was written by fewer processes): this "
                       "process keeps its fresh generators.", path, rank)


# ------------------------------------------------------------------------------------------------------------
# The output folder
# ------------------------------------------------------------------------------------------------------------


#: Written into every output folder a run writes: the entries (files and folders) that run wrote, so that
#: --overwrite_output_dir removes exactly those and never a file the run did not write.
RUN_MANIFEST = "run_manifest.json"
RUN_FORMAT = "hf_vae-run"
#: What a run writes before its first step; a folder holding only these (and no checkpoint) is a run killed
#: before its first checkpoint, which holds nothing to lose.
RUN_START_ENTRIES = (RUN_MANIFEST, "training_args.json", "logs", "checkpoints")
#: What a run writes at its end besides the published model (whose file names `publish_pretrained` records).
RUN_END_ENTRIES = ("metrics.json", "reconstructions.png", "samples.png")
#: A folder written before run manifests existed is cleared of these names only (its code files are replaced,
#: not removed).
_LEGACY_RUN_ENTRIES = RUN_START_ENTRIES + RUN_END_ENTRIES + (
    "config.json", "model.safetensors", "model.safetensors.index.json", "vae", "training.json", "generation_config.json")


def read_run_manifest(output_dir: str) -> Optional[Dict[str, Any]]:
    """The run manifest of `output_dir`, or None for a folder without one (new, or written by an older version)."""
    path = os.path.join(output_dir, RUN_MANIFEST)
    if not os.path.isfile(path):
        return None
    manifest = _read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != RUN_FORMAT or \
            not isinstance(manifest.get("entries"), list):
        raise CheckpointError(f"{path}: not an hf_vae run manifest; expected {{'format': {RUN_FORMAT!r}, "
                              f"'entries': [...]}}. Remove it by hand if that folder holds no run of hf_vae.")
    return manifest


def record_run_entries(output_dir: str, entries, **info) -> None:
    """Add `entries` (names directly under `output_dir`) to its run manifest, before they are written: a run
    killed while writing one still has it listed. `info` (e.g. resumed_from) is stored alongside."""
    manifest = read_run_manifest(output_dir) or {"format": RUN_FORMAT, "entries": []}
    manifest["entries"] = sorted(set(manifest["entries"]) | {str(name) for name in entries} | {RUN_MANIFEST})
    manifest.update({k: v for k, v in info.items() if v is not None})
    os.makedirs(output_dir, exist_ok=True)
    tmp = os.path.join(output_dir, f"{TMP_PREFIX}{os.getpid()}-{RUN_MANIFEST}")
    _write_json(manifest, tmp)
    os.replace(tmp, os.path.join(output_dir, RUN_MANIFEST))


def _shown(names: List[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _killed_before_first_checkpoint(output_dir: str, found: List[str]) -> bool:
    """The folder holds only what a run writes before its first checkpoint, and no checkpoint."""
    return set(found) <= set(RUN_START_ENTRIES) and not list_checkpoints(checkpoint_dir(output_dir))


def _same_folder(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def claim_output_dir(output_dir: str, overwrite: bool, resume_from_checkpoint=None) -> List[str]:
    """The one guard of an output folder, for every path that writes a run. Returns the entries found.

    * a new or empty folder: any run may write into it;
    * --resume_from_checkpoint: only into the folder whose checkpoint is resumed (`latest` needs a checkpoint
      there), or into a new or empty folder; a run killed before its first checkpoint may be resumed anew;
    * --overwrite_output_dir: the previous run is removed by the caller (`clear_previous_run`), entry by entry
      as its manifest lists them;
    * otherwise a folder holding files is refused, naming them.
    """
    if not os.path.isdir(output_dir):
        if os.path.exists(output_dir):
            raise FileExistsError(f"--output_dir {output_dir} is a file; expected a folder (new or empty).")
        return []
    found = sorted(os.listdir(output_dir))
    if not found:
        return []
    if resume_from_checkpoint is not None:
        if overwrite:
            raise ValueError(f"--overwrite_output_dir and --resume_from_checkpoint {resume_from_checkpoint} "
                             f"contradict each other: expected one of them (resuming keeps the run in "
                             f"{output_dir}, overwriting removes it).")
        _check_resume_target(output_dir, str(resume_from_checkpoint), found)
        return found
    if overwrite:
        return found
    raise FileExistsError(
        f"--output_dir {output_dir} already holds files ({_shown(found)}), probably of another run; expected a new "
        f"or empty folder. Pass --overwrite_output_dir to replace that run, or --resume_from_checkpoint latest "
        f"to continue it.")


def _check_resume_target(output_dir: str, resume_from_checkpoint: str, found: List[str]) -> None:
    if resume_from_checkpoint == "latest":
        if latest_checkpoint(checkpoint_dir(output_dir)) is None and \
                not _killed_before_first_checkpoint(output_dir, found):
            raise FileExistsError(
                f"--resume_from_checkpoint latest: --output_dir {output_dir} holds files ({_shown(found)}) but no "
                f"complete checkpoint in {checkpoint_dir(output_dir)}; expected a folder with a checkpoint to "
                f"resume, or a new or empty folder. Pass --overwrite_output_dir (without --resume_from_checkpoint) "
                f"to replace that run.")
        return
    home = os.path.dirname(os.path.dirname(os.path.abspath(resume_from_checkpoint)))
    if _same_folder(home, output_dir):
        return
    manifest = read_run_manifest(output_dir) or {}
    same_resume = manifest.get("resumed_from") and _same_folder(manifest["resumed_from"], resume_from_checkpoint)
    if same_resume and _killed_before_first_checkpoint(output_dir, found):
        return  # the same resume, killed before its first checkpoint
    raise FileExistsError(
        f"--resume_from_checkpoint {resume_from_checkpoint} is a checkpoint of the run in {home}, and --output_dir "
        f"{output_dir} holds another run ({_shown(found)}); expected a new or empty --output_dir, or {home} itself.")


def clear_previous_run(output_dir: str) -> Tuple[List[str], List[str]]:
    """For --overwrite_output_dir: remove every entry the previous run wrote, as its run manifest lists them (a
    folder without one: the names a run writes), so that `latest`, retention and readers see only the new run.
    Returns (removed, kept): kept are the entries that run did not write; they are left as they are."""
    manifest = read_run_manifest(output_dir)
    written = set(manifest["entries"]) if manifest is not None else set(_LEGACY_RUN_ENTRIES)
    removed, kept = [], []
    for name in sorted(os.listdir(output_dir)):
        if name.startswith(TMP_PREFIX):
            continue  # leftovers of a killed run: remove_publish_leftovers
        if name not in written or os.sep in name or name in (".", ".."):
            kept.append(name)
            continue
        path = os.path.join(output_dir, name)
        doomed = os.path.join(output_dir, f"{TMP_PREFIX}removing-{name}")
        os.replace(path, doomed)  # renamed first: a kill half-way through leaves a .tmp- entry, never half a run
        if os.path.isdir(doomed) and not os.path.islink(doomed):
            shutil.rmtree(doomed, ignore_errors=True)
        else:
            os.remove(doomed)
        removed.append(name)
    return removed, kept


def describe_cleared(output_dir: str, removed: List[str], kept: List[str]) -> str:
    """The line --overwrite_output_dir prints: what it removed, and what it kept because that run did not write it."""
    line = f"--overwrite_output_dir: removed the previous run's {', '.join(removed) or 'nothing'} from {output_dir}"
    if kept:
        line += f"; kept {', '.join(kept)} (not written by that run)"
    return line + "."


def remove_publish_leftovers(output_dir: str) -> List[str]:
    """Delete `.tmp-publish-*` / `.tmp-removing-*` folders left in the output folder by a killed run."""
    removed = []
    if os.path.isdir(output_dir):
        for name in sorted(os.listdir(output_dir)):
            if name.startswith(TMP_PREFIX):
                shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
                removed.append(name)
    return removed


def publish_pretrained(model, output_dir: str, safe_serialization: bool = True, record: bool = True) -> List[str]:
    """`model.save_pretrained` into `output_dir` atomically: a temporary folder, then one rename per file.

    With `record`, the file names are added to the folder's run manifest first (`record_run_entries`).

    The weights are renamed before config.json, so a reader that finds a new config.json finds new weights.
    Returns the published file names.
    """
    os.makedirs(output_dir, exist_ok=True)
    tmp = os.path.join(output_dir, f"{TMP_PREFIX}publish-{os.getpid()}")
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=safe_serialization)
    names = sorted(os.listdir(tmp), key=lambda n: (n == "config.json", n))
    if record:
        record_run_entries(output_dir, names)
    umask = os.umask(0)
    os.umask(umask)
    for name in names:
        src = os.path.join(tmp, name)
        if os.path.isfile(src):  # safetensors writes 0600 files; published files follow the umask like the rest
            os.chmod(src, 0o666 & ~umask)
        if os.path.isdir(src):  # not produced by save_pretrained today; keep the layout if it ever is
            dst = os.path.join(output_dir, name)
            if os.path.exists(dst):
                shutil.rmtree(dst)
        os.replace(src, os.path.join(output_dir, name))
    shutil.rmtree(tmp, ignore_errors=True)
    return names
