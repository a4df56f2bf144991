"""The fields of each family's model config, read from the configuration modules' source (`ast`), not by importing
them: the command line lists and checks them before torch is imported. A test checks that this agrees with the
classes themselves.
"""

from __future__ import annotations

import ast
import functools
import os
import re
from dataclasses import MISSING, dataclass, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..families import FAMILIES
from .training_args import MODEL_NAMES, DataArguments, TrainArguments, _choice

#: --model NAME -> (configuration module in hf_vae/, config class), from the family table
MODEL_REGISTRY: Dict[str, Tuple[str, str]] = {
    name: (family.config_module, family.config.partition(":")[2]) for name, family in FAMILIES.items()}

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TRANSFORMERS_BASES = ("PretrainedConfig", "PreTrainedConfig")


@dataclass(frozen=True)
class ConfigField:
    """One keyword argument of a model config: its default and the first sentence of its docstring entry."""

    name: str
    default: Any
    description: str = ""


@functools.lru_cache(maxsize=None)
def _module_tree(module: str) -> ast.Module:
    path = os.path.join(_PACKAGE_DIR, module + ".py")
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), filename=path)


def _constant(node: ast.AST, tree: ast.Module) -> Any:
    """A default value: a literal, or a module-level constant of the same file."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        pass
    if isinstance(node, ast.Name):
        for statement in tree.body:
            if isinstance(statement, ast.Assign) and any(isinstance(t, ast.Name) and t.id == node.id
                                                          for t in statement.targets):
                return _constant(statement.value, tree)
    return ast.unparse(node)


def _docstring_args(doc: Optional[str]) -> Dict[str, str]:
    """{'name': 'first sentence'} from the `Args:` section of a transformers-style docstring.

    An entry is `name (`type`, defaults to x): description`, possibly several names sharing one entry
    (`in_channels (...), out_channels (...): image channels.`) and continuation lines indented deeper.
    """
    if not doc:
        return {}
    lines = doc.expandtabs().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Args:") + 1
    except StopIteration:
        return {}
    entries: List[str] = []
    indent = None
    for line in lines[start:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        if depth < indent:
            break
        if depth == indent:
            entries.append(line.strip())
        elif entries:
            entries[-1] += " " + line.strip()
    out: Dict[str, str] = {}
    for entry in entries:
        # Split at the first colon outside parentheses and backquotes: names and types, then the description.
        level, quoted, split = 0, False, None
        for i, char in enumerate(entry):
            if char == "`":
                quoted = not quoted
            elif not quoted and char in "([":
                level += 1
            elif not quoted and char in ")]":
                level -= 1
            elif char == ":" and level == 0 and not quoted:
                split = i
                break
        header = entry if split is None else entry[:split]
        if split is None:  # `name (`type`, defaults to x).`: the parenthesis is the description
            inside = header[header.find("(") + 1: header.rfind(")")] if "(" in header else ""
            description = re.sub(r"^`[^`]*`,?\s*", "", inside.strip())
        else:
            description = entry[split + 1:].strip()
        description = re.split(r"\.\s+(?=[A-Z])", description)[0].rstrip(".")  # the first sentence
        level, names, word = 0, [], ""
        for char in header + " ":
            if char in "([":
                level += 1
            elif char in ")]":
                level -= 1
            elif level == 0 and (char.isalnum() or char == "_"):
                word += char
                continue
            if word:
                names.append(word)
            word = ""
        for name in names:
            out.setdefault(name, description)
    return out


def _class_fields(module: str, class_name: str) -> Dict[str, ConfigField]:
    """The keyword arguments of `class_name.__init__` and of its bases up to transformers' config, in MRO order
    (a subclass's default wins), with their docstring descriptions."""
    tree = _module_tree(module)
    klass = next((node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == class_name), None)
    if klass is None:
        raise ValueError(f"Expected a class {class_name} in hf_vae/{module}.py, found none.")
    docs = _docstring_args(ast.get_docstring(klass))
    own: Dict[str, ConfigField] = {}
    init = next((node for node in klass.body if isinstance(node, ast.FunctionDef) and node.name == "__init__"), None)
    if init is not None:
        positional = init.args.posonlyargs + init.args.args
        defaults = [None] * (len(positional) - len(init.args.defaults)) + list(init.args.defaults)
        pairs = list(zip(positional, defaults)) + list(zip(init.args.kwonlyargs, init.args.kw_defaults))
        for arg, default in pairs:
            if arg.arg != "self":
                value = MISSING if default is None else _constant(default, tree)
                own[arg.arg] = ConfigField(arg.arg, value, docs.get(arg.arg, ""))
    inherited: Dict[str, ConfigField] = {}
    for base in klass.bases:
        base_name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
        if base_name in _TRANSFORMERS_BASES:
            continue
        for name, entry in _class_fields(_defining_module(tree, module, base_name), base_name).items():
            inherited.setdefault(name, entry)
    merged = dict(own)
    for name, entry in inherited.items():
        if name in merged:  # redefined default, inherited description when the subclass gives none
            merged[name] = ConfigField(name, merged[name].default, merged[name].description or entry.description)
        else:
            merged[name] = entry
    return merged


def _defining_module(tree: ast.Module, module: str, name: str) -> str:
    """The sibling module that defines `name` as seen from `module` (`from .configuration_base import X`)."""
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and any(a.name == name for a in node.names):
            return node.module
        if isinstance(node, ast.ClassDef) and node.name == name:
            return module
    raise ValueError(f"Cannot find where {name}, a base class in hf_vae/{module}.py, is defined.")


@functools.lru_cache(maxsize=None)
def model_config_field_info(model: str) -> Tuple[ConfigField, ...]:
    """The fields `--model model` accepts as --name value, with defaults and one-line descriptions."""
    _choice("model", model, MODEL_NAMES)
    module, class_name = MODEL_REGISTRY[model]
    entries = dict(_class_fields(module, class_name))
    if "sample_size" in entries and "image_size" not in entries:  # the KLAE: every variant takes --image_size
        entries["image_size"] = ConfigField("image_size", None, "alias of sample_size")
    return tuple(entries.values())


def model_config_defaults(model: str) -> Dict[str, Any]:
    """The keyword arguments the config class of `model` accepts (its own and its parents', up to transformers'),
    with their default values."""
    return {entry.name: entry.default for entry in model_config_field_info(model)}


def model_config_fields(model: str) -> List[str]:
    """The names of the fields `--model model` accepts as --name value."""
    return list(model_config_defaults(model))


def train_data_field_names() -> set:
    return {f.name for f in fields(TrainArguments)} | {f.name for f in fields(DataArguments)}


def check_model_config(model: str, overrides: Dict[str, Any]) -> Dict[str, Any]:
    """Refuse keys that are neither trainer flags nor fields of the model's config, naming what is accepted."""
    defaults = model_config_defaults(model)
    unknown = [k for k in overrides if k not in defaults]
    if unknown:
        raise ValueError(
            f"Unknown argument(s) {', '.join('--' + k for k in unknown)} for --model {model}"
            f"{_did_you_mean(unknown, list(defaults) + sorted(train_data_field_names()))}: expected a trainer "
            f"flag (see --help) or a field of {_config_class_name(model)}: {', '.join(defaults)}.")
    checked = {}
    for key, value in overrides.items():
        # A list-valued field given one value on the command line (--hidden_dims 256) is a one-element list.
        if isinstance(defaults[key], (list, tuple)) and not isinstance(value, (list, tuple)) and value is not None:
            value = [value]
        checked[key] = value
    return checked


def _did_you_mean(unknown: Sequence[str], known: Sequence[str]) -> str:
    """' (did you mean --latent_dim?)' for the known names closest to the misspelt ones; '' when none is close."""
    import difflib

    guesses = [match[0] for name in unknown for match in [difflib.get_close_matches(name, known, n=1, cutoff=0.75)]
               if match]
    return f" (did you mean {', '.join('--' + g for g in guesses)}?)" if guesses else ""


def _config_class_name(model: str) -> str:
    return MODEL_REGISTRY[model][1]

