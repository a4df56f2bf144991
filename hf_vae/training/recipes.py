"""Recipes: the settings a run uses for what its command line leaves open, one file per family.

    configs/recipes/<family>.yaml          (shipped in the wheel as the package data `hf_vae.recipes`)

    # why these settings
    every_dataset: {max_steps: 6000, learning_rate: 2.0e-3, ...}
    shapes: {backbone: burgess, ...}       # per-dataset overrides, under the datasets' canonical names

A setting is a trainer flag whose default is None (max_steps, learning_rate, batch_size, perceptual_weight, ...) or
a model config field. The config classes keep their diffusers/transformers-compatible defaults; the recipes only
fill what a command line leaves open.

Standard library only (yaml is imported when a recipe is read): `--help` shows the recipe before torch is imported.
"""

from __future__ import annotations

import dataclasses
import os
import re
import textwrap
from typing import Any, Dict, Tuple

from ..data.names import canonical_dataset
from ..families import get as get_family
from .training_args import DataArguments, TrainArguments

#: the key of a recipe's settings for every dataset
EVERY_DATASET = "every_dataset"
#: used where a recipe does not set them
RECIPE_FALLBACKS: Dict[str, Any] = {"max_steps": 1000, "learning_rate": 1e-3, "batch_size": 64, "eval_steps": 500,
                                    "eval_importance_samples": 100}
#: model config fields that make up an architecture: when the user gives any of them, the recipe's are all
#: dropped, so that a recipe never grafts its channel list onto the user's network
ARCHITECTURE_FIELDS = ("backbone", "block_out_channels", "hidden_dims", "layers_per_block", "norm_num_groups",
                       "mid_block_add_attention", "latent_channels", "latent_dim", "local_latent_channels")

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def recipes_dir() -> str:
    """`configs/recipes/` of the source tree this package belongs to, else the wheel's package data."""
    source_tree = os.path.join(os.path.dirname(_PACKAGE_DIR), "configs", "recipes")
    return source_tree if os.path.isdir(source_tree) else os.path.join(_PACKAGE_DIR, "recipes")


def recipe_path(model: str) -> str:
    return os.path.join(recipes_dir(), get_family(model).recipe)


def yaml_numbers(value: Any) -> Any:
    """YAML 1.1 reads 1e-4 (no dot) as a string: such strings become floats, as on the command line."""
    if isinstance(value, dict):
        return {k: yaml_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [yaml_numbers(v) for v in value]
    if isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value.strip()):
        return float(value)
    return value


def read_recipe(model: str) -> Dict[str, Dict[str, Any]]:
    """The recipe file of `model`: {"every_dataset": {...}, DATASET: {...}}."""
    import yaml

    path = recipe_path(model)
    try:
        with open(path, encoding="utf-8") as handle:
            entry = yaml_numbers(yaml.safe_load(handle))
    except FileNotFoundError:
        raise FileNotFoundError(f"The recipe of --model {model} is missing: expected {path}.") from None
    if not isinstance(entry, dict) or not all(isinstance(v, dict) for v in entry.values()):
        raise ValueError(f"Expected the recipe {path} to map `{EVERY_DATASET}` and dataset names to settings, got "
                         f"{entry!r}.")
    return entry


def recipe(model: str, dataset: str) -> Dict[str, Any]:
    """The settings `--model model --dataset dataset` uses where the command line gives none."""
    entry = read_recipe(model)
    return {**entry.get(EVERY_DATASET, {}), **entry.get(canonical_dataset(dataset).lower(), {})}


def apply_recipe(train_args: TrainArguments, data_args: DataArguments, model_config: Dict[str, Any],
                 pretrained: bool = False) -> Tuple[TrainArguments, Dict[str, Any], Dict[str, Any]]:
    """Fill what the user left unset from the model's recipe.

    Returns (train_args with every recipe flag resolved, model_config with the recipe's fields added, the
    settings the recipe supplied). A fine-tuning run (`pretrained`) takes its architecture from the checkpoint,
    so only the trainer settings apply.
    """
    settings = recipe(train_args.model, data_args.dataset)
    trainer_names = {f.name for f in dataclasses.fields(TrainArguments)}
    applied: Dict[str, Any] = {}
    updates: Dict[str, Any] = {}
    for name in sorted((set(settings) & trainer_names) | set(RECIPE_FALLBACKS)):
        if getattr(train_args, name) is None:
            updates[name] = settings.get(name, RECIPE_FALLBACKS.get(name))
            if name in settings:
                applied[name] = settings[name]
    config = dict(model_config)
    if not pretrained:
        fields_given = {k: v for k, v in settings.items() if k not in trainer_names}
        if any(name in config for name in ARCHITECTURE_FIELDS):  # the user designs the network: all of it
            fields_given = {k: v for k, v in fields_given.items() if k not in ARCHITECTURE_FIELDS}
        for name, value in fields_given.items():
            if name not in config:
                config[name] = value
                applied[name] = value
    return dataclasses.replace(train_args, **updates), config, applied


def show_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(show_value(v) for v in value) or "[]"
    return "None" if value is None else str(value)


def recipe_help(model: str) -> str:
    """The recipe section of --help: the file and its settings."""
    lines = [f"{model} recipe (what a run uses for every setting not given):", f"  file: {recipe_path(model)}"]
    entry = read_recipe(model)
    for dataset, settings in entry.items():
        where = "every dataset" if dataset == EVERY_DATASET else f"--dataset {dataset}"
        lines.append(f"  {where}: " + ", ".join(f"{k} {show_value(v)}" for k, v in settings.items()))
    if EVERY_DATASET not in entry:
        lines.append("  every dataset: " + ", ".join(f"{k} {show_value(v)}" for k, v in RECIPE_FALLBACKS.items()))
    return "\n".join(textwrap.fill(line, width=100, subsequent_indent="      ", break_long_words=False,
                                    break_on_hyphens=False) for line in lines) + "\n"
