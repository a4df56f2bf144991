"""The README's family list and the table of docs/families.md, rendered from the family table.

Each family's row comes from its `Family` entry (`summary`, `papers`, the classes) and from its config class's
signature (the fields it adds to the common ones, with their defaults), so a family added to the table appears
in both documents by running `python scripts/render_family_docs.py`; `--check` (and the test suite) fails when a
document is out of date. The rows live between markers in the documents:

    <!-- family-table:readme -->  …  <!-- /family-table -->
"""

from __future__ import annotations

import inspect
import re
from typing import Dict, List, Tuple

from .. import families

#: the rendered tables, by marker name: (header lines, row renderer)
END_MARKER = "<!-- /family-table -->"


def _cell(text: str) -> str:
    """Text for a markdown table cell: a literal | would end the cell."""
    return text.replace("|", "\\|")


def _common_fields() -> set:
    from ..configuration_base import AutoencoderConfig

    return set(inspect.signature(AutoencoderConfig.__init__).parameters)


def own_fields(config_class) -> List[Tuple[str, object]]:
    """(name, default) of the fields a config adds to `AutoencoderConfig`'s, from the signatures along its MRO (a
    subclass's default wins)."""
    common, seen, fields = _common_fields(), set(), []
    for cls in config_class.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None or cls.__module__.split(".")[0] != "hf_vae":
            continue
        for name, parameter in inspect.signature(init).parameters.items():
            if name in seen or name in common or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                continue
            seen.add(name)
            fields.append((name, parameter.default))
    return fields


def _default(value) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        value = tuple(value)
    return repr(value)


def _fields_cell(config_class) -> str:
    fields = own_fields(config_class)
    if not fields:
        return "the common fields"
    return ", ".join(f"`{name}` ({_default(default)})" for name, default in fields)


def _class_name(path: str) -> str:
    return path.split(":")[1]


def readme_row(family: families.Family) -> str:
    papers = "; ".join(short for short, _ in family.papers)
    return f"| `{family.name}` | `{_class_name(family.model)}` | {_cell(family.summary)} | {papers} |"


def docs_row(family: families.Family) -> str:
    papers = "; ".join(f"{short}, *{title}*" for short, title in family.papers)
    return (f"| `{family.name}` | `{_class_name(family.model)}`, `{_class_name(family.config)}` | "
            f"{_cell(family.summary)} | {_cell(_fields_cell(family.config_class))} | {papers} |")


TABLES = {
    "readme": (["| `--model` | class | what it changes | paper |", "|---|---|---|---|"], readme_row),
    "docs": (["| `--model` | classes | the piece that changes | its own config fields (defaults) | paper |",
              "|---|---|---|---|---|"], docs_row),
}


def render_table(kind: str) -> str:
    header, row = TABLES[kind]
    return "\n".join(header + [row(family) for family in families.FAMILIES.values()])


def render_into(text: str, kind: str) -> str:
    """`text` with the table between `<!-- family-table:KIND -->` and the end marker replaced."""
    begin = f"<!-- family-table:{kind} -->"
    pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(END_MARKER), re.S)
    if not pattern.search(text):
        raise ValueError(f"Expected the markers {begin} … {END_MARKER} in the document, found none.")
    return pattern.sub(lambda _: f"{begin}\n{render_table(kind)}\n{END_MARKER}", text, count=1)


#: the documents that carry a rendered table, relative to the repository root, and their table kinds
DOCUMENTS: Dict[str, str] = {"README.md": "readme", "docs/families.md": "docs"}
