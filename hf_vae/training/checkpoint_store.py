"""The checkpoint store: `checkpoints/checkpoint-<step>` folders written atomically, verified against their manifest,
listed, pruned, resumed from.

A checkpoint folder holds only safetensors and JSON (see `checkpointing` for the layout). It is written as
`checkpoints/.tmp-checkpoint-<step>` and renamed into place once complete; a rename within one file system is
atomic, so a `checkpoint-<step>` folder always holds a manifest. `latest` takes the newest checkpoint whose files
match their manifest and skips (with a warning) one that does not. Retention renames a checkpoint to `.tmp-` before
deleting it, so a kill during retention cannot leave a half-deleted `checkpoint-<step>`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .checkpoint_format import CheckpointError, load_tree, read_json, save_tree, write_json
from .random_state import rng_state, set_rng_state

logger = logging.getLogger("hf_vae.training")

CHECKPOINT_PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-"
SUPERSEDED_DIR = "superseded"
MANIFEST = "manifest.json"
FORMAT = "hf_vae-checkpoint"
FORMAT_VERSION = 1
SAFE_SUFFIXES = (".safetensors", ".json")
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
#: config keys transformers writes that say nothing about the model: not compared when a run resumes
_CONFIG_KEYS_IGNORED = {"transformers_version", "_name_or_path", "architectures", "auto_map", "dtype",
                        "torch_dtype", "_commit_hash", "_attn_implementation_autoset", "output_hidden_states",
                        "return_dict"}


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
    write_json(manifest, os.path.join(directory, MANIFEST))
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
    manifest = read_json(manifest_path)
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
        write_json(_config_dict(model), os.path.join(tmp, "model_config.json"))
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
    saved_config = read_json(os.path.join(path, "model_config.json"))
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
