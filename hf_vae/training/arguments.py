"""The command line of `scripts/train.py`: flags, a --config file and model config fields, parsed into
(`TrainArguments`, `DataArguments`, a model-config dict).

    python scripts/train.py --model vae --dataset shapes --max_steps 2000 --latent_dim 10 --config run.yaml

The dataclasses' fields become argparse flags, in the groups of `GROUPS`; every other `--name value` pair must be a
field of the chosen model's config (`--latent_dim 10`, `--block_out_channels 32 64`, `--beta 4`) and goes to the
config constructor. `--config FILE.json|yaml` holds the same keys; flags given on the command line win over the
file. `--help` ends with the chosen model's config fields and its recipe.

This module and its siblings (`training_args`, `config_fields`, `recipes`, and `hf_vae.families`,
`hf_vae.data.names`) import only the standard library at module level (yaml when a value or file is parsed): the
command line is parsed, and `--help` answered, before torch and transformers are imported, which takes seconds
(`scripts/train.py` loads them without the package's `__init__`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import MISSING, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..families import DEFAULT_FAMILY
from .config_fields import (  # noqa: F401  (re-exported: the names the tests and scripts import from here)
    MODEL_REGISTRY,
    ConfigField,
    _docstring_args,
    check_model_config,
    model_config_defaults,
    model_config_field_info,
    model_config_fields,
    train_data_field_names,
)
from .recipes import (  # noqa: F401
    ARCHITECTURE_FIELDS,
    RECIPE_FALLBACKS,
    apply_recipe,
    recipe,
    recipe_help,
    show_value,
    yaml_numbers,
)
from .training_args import (  # noqa: F401
    GROUPS,
    MODEL_NAMES,
    UPPER_BOUNDS,
    DataArguments,
    TrainArguments,
)


def _parse_value(tokens: List[str]) -> Any:
    """'10' -> 10, '1e-3' -> 0.001, 'true' -> True, 'null' -> None, '[32, 64]' / '32,64' / '32 64' -> [32, 64]."""
    import yaml

    def one(token: str):
        try:
            value = yaml.safe_load(token)
        except yaml.YAMLError:
            return token
        if isinstance(value, str) and _is_number(value):  # YAML 1.1 reads 1e-4 (no dot) as a string
            return float(value)
        return value

    if len(tokens) == 1:
        token = tokens[0]
        if "," in token and not token.strip().startswith(("[", "{", "(")):
            return [one(t) for t in token.split(",") if t.strip()]
        if token.strip().startswith("("):
            return list(one("[" + token.strip()[1:-1] + "]"))
        return one(token)
    return [one(t) for t in tokens]


def _parse_model_flags(remaining: List[str]) -> Dict[str, Any]:
    """['--latent_dim', '10', '--block_out_channels', '32', '64', '--x=1'] -> {'latent_dim': 10, ...}."""
    out: Dict[str, Any] = {}
    i = 0
    while i < len(remaining):
        token = remaining[i]
        if not token.startswith("--"):
            raise ValueError(f"Unexpected argument {token!r}: expected --name value pairs.")
        name, eq, value = token[2:].partition("=")
        name = name.replace("-", "_")
        if eq:
            out[name] = _parse_value([value])
            i += 1
            continue
        j = i + 1
        while j < len(remaining) and not (remaining[j].startswith("--") and len(remaining[j]) > 2
                                          and not _is_number(remaining[j])):
            j += 1
        if j == i + 1:  # a bare flag: a boolean switch
            out[name] = True
        else:
            out[name] = _parse_value(remaining[i + 1: j])
        i = j
    return out


def _is_number(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


def load_config_file(path: str) -> Dict[str, Any]:
    """Read a JSON or YAML file of arguments into a dict."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--config {path}: cannot be read ({error}).") from None
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ValueError(f"--config {path}: not valid JSON ({error}).") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            where = getattr(error, "problem_mark", None)
            line = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            raise ValueError(f"--config {path}: not valid YAML{line} ({getattr(error, 'problem', None) or error})."
                             ) from None
        data = yaml_numbers(data)
    if not isinstance(data, dict):
        raise ValueError(f"Expected --config {path} to hold a mapping of argument names to values, "
                         f"got {type(data).__name__}.")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


# ------------------------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------------------------

_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter with lines wrapped at 100 columns at most and the help column at 34."""

    def __init__(self, prog: str):
        import shutil

        width = min(100, shutil.get_terminal_size((100, 24)).columns - 2)
        super().__init__(prog, max_help_position=34, width=max(60, width))


def _field_type(f) -> Tuple[str, bool]:
    """('int' | 'float' | 'str' | 'bool', optional) from a dataclass field's annotation (a string here)."""
    annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    optional = annotation.startswith("Optional[")
    return (annotation[len("Optional["):-1] if optional else annotation), optional


def _converter(base: str, optional: bool):
    kind = {"int": int, "float": float, "str": str}[base]

    def convert(token: str):
        if optional and token.lower() in ("none", "null"):
            return None
        if kind is int:  # 1e3 is the integer 1000, as in a YAML/JSON config; 1.5 is not an integer
            try:
                return int(token)
            except ValueError:
                number = float(token)
                if not number.is_integer():
                    raise
                return int(number)
        return kind(token)

    convert.__name__ = base  # argparse names it in "invalid int value: 'x'"
    return convert


_METAVARS = {"int": "N", "float": "X", "str": "NAME"}


def _field_metavar(default: Any) -> str:
    if isinstance(default, bool):
        return "{true,false}"
    if isinstance(default, (list, tuple)):
        return f"{_field_metavar(default[0]) if default else 'V'} [...]"
    return {int: "N", float: "X", str: "NAME"}.get(type(default), "VALUE")


def _add_field(group, f) -> None:
    """One dataclass field as a flag: a switch for a bool, a typed value otherwise, with its default shown."""
    meta = dict(f.metadata)
    text = meta.pop("help", "").replace("%", "%%")  # argparse %-formats help strings
    meta.pop("group", None)
    base, optional = _field_type(f)
    flag = "--" + f.name
    if base == "bool":
        if f.default is None:  # three states: --x, --no_x, or neither (the run decides)
            group.add_argument(flag, dest=f.name, action="store_const", const=True, default=None, help=text)
            group.add_argument(f"--no_{f.name}", dest=f.name, action="store_const", const=False,
                               help=f"Turn --{f.name} off.")
        else:  # the switch that changes the default is shown; the other one exists for `--x false` and files
            on, off = (argparse.SUPPRESS, text) if f.default else (text, argparse.SUPPRESS)
            group.add_argument(flag, dest=f.name, action="store_true", default=f.default, help=on)
            group.add_argument(f"--no_{f.name}", dest=f.name, action="store_false", help=off)
        return
    if f.default is not None and f.default is not MISSING:
        text = f"{text} (default: {show_value(f.default)})"
    metavar = meta.pop("metavar", None) or (None if "choices" in meta else _METAVARS[base])
    group.add_argument(flag, dest=f.name, type=_converter(base, optional), default=f.default, metavar=metavar,
                       help=text, **meta)


def _underscored_flags(argv: List[str]) -> List[str]:
    """`--max-steps 10` -> `--max_steps 10`: every flag is accepted with dashes or underscores."""
    out = []
    for token in argv:
        if token.startswith("--") and len(token) > 2 and not _is_number(token):
            name, eq, value = token[2:].partition("=")
            token = "--" + name.replace("-", "_") + eq + value
        out.append(token)
    return out


def debug_requested(argv: Optional[Sequence[str]] = None) -> bool:
    """--debug on the command line, or HF_VAE_DEBUG=1 (HF_VAE_TRACEBACK=1, its older name): show tracebacks."""
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or any(os.environ.get(name, "") not in ("", "0") for name in
                                     ("HF_VAE_DEBUG", "HF_VAE_TRACEBACK"))


def _switch_values(argv: List[str]) -> List[str]:
    """`--skip_nonfinite true`, `--binarize=false`, `--no_x yes` (the older spelling of the switches) ->
    `--skip_nonfinite`, `--no_binarize`, `--no_x`."""
    switches = {}
    for f in fields(TrainArguments) + fields(DataArguments):
        if _field_type(f)[0] == "bool":
            switches[f.name] = f.default
    out: List[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name, eq, value = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        if name not in switches or (not eq and (i + 1 >= len(argv) or argv[i + 1].lower() not in _TRUE + _FALSE)):
            out.append(token)
            i += 1
            continue
        if not eq:
            value = argv[i + 1]
            i += 1
        i += 1
        if value.lower() not in _TRUE + _FALSE:
            raise ValueError(f"Expected --{name} alone, or followed by true or false, got {value!r}.")
        out.append(f"--{name}" if value.lower() in _TRUE else f"--no_{name}")
    return out


def _model_fields_help(model: str) -> str:
    """The `model fields` section of --help: every field of the model's config, default and one-line description."""
    module, class_name = MODEL_REGISTRY[model]
    helper = argparse.ArgumentParser(add_help=False, usage=argparse.SUPPRESS, formatter_class=_Formatter)
    group = helper.add_argument_group(
        f"{model} model fields ({class_name})",
        "Any of them as --name VALUE (lists as 32 64 or 32,64); '--model NAME --help' shows another model's.")
    for entry in model_config_field_info(model):
        default = "" if entry.default is MISSING else f" (default: {show_value(entry.default)})"
        text = (entry.description + default).replace("%", "%%")
        group.add_argument("--" + entry.name, metavar=_field_metavar(entry.default), help=text)
    return helper.format_help()


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose --help ends with the chosen model's config fields."""

    help_model = DEFAULT_FAMILY

    def error(self, message: str):
        """One line, as every other error of train.py (argparse's default adds the whole usage)."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def format_help(self) -> str:
        return (super().format_help().rstrip("\n") + "\n\n" + _model_fields_help(self.help_model) + "\n"
                + recipe_help(self.help_model))


def build_parser(model: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser of `scripts/train.py`: trainer and data flags in their groups, with choices and defaults;
    --help then lists the config fields of `model` (default: vae)."""
    parser = _Parser(
        prog="train.py", formatter_class=_Formatter, allow_abbrev=False,
        usage="%(prog)s [-h] [--model NAME] [--dataset NAME] [--config FILE]\n"
              "                [--FLAG VALUE ...] [--MODEL_FIELD VALUE ...]",
        description="Train an hf_vae model with one Accelerate loop. With no arguments: a VAE on the procedural "
                    "shapes stream, a few minutes on 2 CPU cores. Every model config field is accepted as "
                    "--name VALUE (listed at the end).")
    parser.help_model = model if model in MODEL_REGISTRY else DEFAULT_FAMILY
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    other = None
    for f in fields(TrainArguments) + fields(DataArguments):
        group = groups.get(f.metadata.get("group"))
        if group is None:
            other = other or parser.add_argument_group("other options")
            group = other
        _add_field(group, f)
    return parser


def _peek(argv: Sequence[str], name: str) -> Optional[str]:
    """The value of --name in argv (last one wins), before parsing."""
    value = None
    for i, token in enumerate(argv):
        if token == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
        elif token.startswith(f"--{name}="):
            value = token.split("=", 1)[1]
    return value


def _file_value(name: str, value: Any, path: str) -> Any:
    """A trainer flag's value from a --config file, typed as on the command line (`max_steps: 1e3` is 1000).

    Checked here even where the command line overrides it: a file with a value its key cannot take is broken."""
    kind = {f.name: _field_type(f)[0] for f in fields(TrainArguments) + fields(DataArguments)}.get(name)
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in ("int", "float") and (isinstance(value, bool) or not isinstance(value, (int, float, str))):
        raise ValueError(f"{path}: `{name}` expected an {kind}, got {value!r}.")
    if kind in ("int", "float") and isinstance(value, str):
        try:
            (int if kind == "int" else float)(value)
        except ValueError:
            raise ValueError(f"{path}: `{name}` expected an {kind}, got {value!r}.") from None
    return value


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[TrainArguments, DataArguments, Dict[str, Any]]:
    """Parse the command line (and --config FILE) into (TrainArguments, DataArguments, model config overrides).

    Precedence: command line > --config file > defaults (dataset-derived model fields are filled in later by
    the trainer, only where neither gave a value).
    """
    argv = _switch_values(_underscored_flags(list(sys.argv[1:] if argv is None else argv)))
    # The config file is read first so that its values become defaults the command line can override.
    config_path = _peek(argv, "config")
    file_values = load_config_file(config_path) if config_path else {}
    known = train_data_field_names()
    parser = build_parser(_peek(argv, "model") or file_values.get("model"))
    parser.set_defaults(**{k: _file_value(k, v, config_path) for k, v in file_values.items() if k in known})
    namespace, remaining = parser.parse_known_args(argv)
    values = vars(namespace)
    train_args = TrainArguments(**{f.name: values[f.name] for f in fields(TrainArguments)})
    data_args = DataArguments(**{f.name: values[f.name] for f in fields(DataArguments)})
    model_config = {k: v for k, v in file_values.items() if k not in known}
    model_config.update(_parse_model_flags(remaining))
    if train_args.pretrained_model_name_or_path is not None:  # the model comes from the source: checked in train()
        return train_args, data_args, model_config
    return train_args, data_args, check_model_config(train_args.model, model_config)


def parse_command_line(argv: Optional[Sequence[str]] = None) -> Tuple[TrainArguments, DataArguments, Dict[str, Any]]:
    """`parse_args` for a command: a bad argument prints one line `train.py: error: ...` and exits with status 2,
    as argparse's own errors do (--debug or HF_VAE_DEBUG=1 shows the traceback); --help prints and exits 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    try:
        return parse_args([token for token in argv if token != "--debug"])
    except (ValueError, FileNotFoundError) as error:
        if debug:
            raise
        print(f"train.py: error: {error}", file=sys.stderr)
        sys.exit(2)
