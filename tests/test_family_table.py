"""The family table (hf_vae/families.py) is the one place that knows the families.

These tests hold the house rules the table exists for: every family is complete (classes, objective, recipe, card),
no code outside the table and a family's own files branches on a family's name, and the modules import each other
without a circle.
"""

import ast
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModel

import hf_vae
from hf_vae import families

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hf_vae"


@pytest.mark.parametrize("name", list(families.FAMILIES))
def test_every_family_is_complete(name):
    family = families.get(name)
    config_class, model_class = family.config_class, family.model_class
    assert config_class.model_type == name
    assert model_class.config_class is config_class
    assert AutoConfig.for_model(name).__class__ is config_class
    assert AutoModel._model_mapping[config_class] is model_class
    assert callable(family.objective_factory)
    assert (ROOT / "configs" / "recipes" / family.recipe).is_file(), f"no recipe file for {name}"
    if family.card is not None:
        assert (ROOT / "model_cards" / family.card_template).is_file(), f"no card template for {name}"
    assert set(family.capabilities.imports_from) <= {"ldm", "diffusers", "diffusers_vq"}
    if not family.capabilities.code_prior:  # the model layer's own statement (its data contract) agrees
        assert config_class.quantized == family.capabilities.quantized
    assert family.summary and family.papers, f"{name} has no summary or papers for the documents' family tables"


def test_the_documents_family_tables_are_rendered_from_the_table():
    from hf_vae.integrations.family_docs import DOCUMENTS, render_into

    for relative, kind in DOCUMENTS.items():
        text = (ROOT / relative).read_text(encoding="utf-8")
        assert render_into(text, kind) == text, f"{relative} is out of date: run python scripts/render_family_docs.py"


def test_family_docs_list_the_fields_a_config_adds():
    from hf_vae.integrations.family_docs import own_fields

    assert own_fields(families.get("vae").config_class) == []
    # inherited from IWAEConfig (the default of the nearest class wins), after the class's own field
    assert own_fields(families.get("ciwae").config_class) == [("elbo_weight", 0.5), ("num_importance_samples", 5)]
    assert dict(own_fields(families.get("miwae").config_class))["num_importance_samples"] == 8


def test_package_face_is_read_from_the_table():
    assert set(hf_vae.MODELS) | set(hf_vae.PRIORS) == set(families.FAMILIES)
    assert set(hf_vae.PRIORS) == set(families.names(code_prior=True))


def test_lookups_name_what_was_expected():
    with pytest.raises(families.UnknownFamilyError, match="Unknown model family 'vea': expected one of vae, "):
        families.get("vea")
    assert families.importing("ldm").capabilities.diffusers_twin
    with pytest.raises(families.UnknownFamilyError, match="Expected one family importing 'onnx'"):
        families.importing("onnx")


def test_the_table_imports_only_the_standard_library():
    tree = ast.parse((PACKAGE / "families.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


def _own_files(family) -> set:
    """The files that may name `family`: its configuration and modeling modules, its objective's module, its
    recipe and card template."""
    own = {PACKAGE / f"{family.config_module}.py", PACKAGE / f"{family.model.split(':')[0]}.py"}
    objective_module = family.objective.split(":")[0]
    if objective_module not in ("objectives",):  # a module of the family's own, not the shared objectives
        own.add(PACKAGE / "training" / f"{objective_module}.py")
    return own


def _string_literals(path: Path):
    """(line, value) of every string literal in a Python file, f-string parts included."""
    source = path.read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_no_family_name_appears_outside_the_table_and_the_familys_own_files():
    files = sorted(p for p in [*PACKAGE.rglob("*.py"), *(ROOT / "scripts").glob("*.py")] if p.name != "families.py")
    offenders = []
    for path in files:
        literals = list(_string_literals(path))
        for name, family in families.FAMILIES.items():
            if path in _own_files(family):
                continue
            offenders += [f"{path.relative_to(ROOT)}:{line}: {value!r}" for line, value in literals if value == name]
    assert not offenders, "family names outside the table:\n" + "\n".join(offenders)


def _module_level_imports(path: Path, module: str) -> set:
    """The hf_vae modules `module` imports when it is imported (not inside functions)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        nodes = [node]
        if isinstance(node, (ast.If, ast.Try)):  # `if TYPE_CHECKING:` is skipped below; try/except imports count
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            nodes = list(ast.walk(node))
        for inner in nodes:
            if isinstance(inner, ast.Import):
                found |= {alias.name for alias in inner.names if alias.name.startswith("hf_vae")}
            elif isinstance(inner, ast.ImportFrom):
                if inner.level:
                    base = package.split(".")
                    base = base[:len(base) - inner.level + 1]
                    target = ".".join(base + ([inner.module] if inner.module else []))
                else:
                    target = inner.module or ""
                if target.startswith("hf_vae"):
                    found.add(target)
                    found |= {f"{target}.{alias.name}" for alias in inner.names}
    return found


def test_no_import_circle():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {name: {target for target in _module_level_imports(path, name) if target in modules and target != name}
             for name, path in modules.items()}
    # A package's __init__ importing its own submodules is how packages work; the circle that matters is a
    # submodule importing back into a module that (indirectly) imports it.
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)
