"""The README is a user's document that keeps its promises: its Python snippets run as written, it stays short,
every `--model` has its recipe row, its links land, and neither it nor docs/ carries development history.

Blocks fenced as ```python are run; ```py marks illustrations that need a real checkpoint, a download or a GPU."""

import re
from pathlib import Path

import pytest

from hf_vae import families

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEXT = README.read_text()
SNIPPETS = re.findall(r"```python\n(.*?)```", TEXT, re.S)
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 300


def _runs_training(snippet: str) -> bool:
    return "train(" in snippet


def test_readme_has_snippets():
    assert len(SNIPPETS) >= 3


@pytest.mark.parametrize("index", [
    pytest.param(index, marks=pytest.mark.slow) if _runs_training(snippet) else index
    for index, snippet in enumerate(SNIPPETS)])
def test_readme_snippet_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # snippets save checkpoints and runs in the working directory
    exec(compile(SNIPPETS[index], f"README.md snippet {index}", "exec"), {})


def test_readme_is_short():
    lines = TEXT.count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; expected at most {MAX_README_LINES} (docs/ holds the rest)"


def test_readme_names_the_setup_and_test_commands():
    for command in ('pip install torch --index-url https://download.pytorch.org/whl/cpu', 'pip install -e ".[',
                    "python scripts/train.py\n", "python -m pytest ", 'python -m pytest -m "slow or not slow"'):
        assert command in TEXT, f"README.md does not show {command!r}"


def _table_rows(text: str):
    return [line for line in text.splitlines() if line.startswith("| `")]


def test_every_model_has_a_recipe_row_with_its_time():
    rows = _table_rows((ROOT / "docs" / "training.md").read_text())
    for family in families.FAMILIES.values():
        recipe = f"configs/recipes/{family.recipe}"
        found = [row for row in rows if row.startswith(f"| `{family.name}` |") and recipe in row]
        assert found, f"docs/training.md's recipe table has no row for --model {family.name} naming {recipe}"
        assert re.search(r"\d+(\.\d+)? s\b|\d+ min|\d+(\.\d+)? h\b", found[0]), (
            f"the recipe row of {family.name} states no measured time: {found[0]}")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than - and _ dropped, spaces to hyphens."""
    heading = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def _anchors(path: Path) -> set:
    anchors, seen = set(), {}
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # comments in code blocks are not headings
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_links_land(document):
    text = re.sub(r"```.*?```", "", document.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        assert linked.exists(), f"{document.name} links to {target}, which does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{document.name} links to {target}: no such heading in {linked.name}"


HISTORY = re.compile(r"(?i:we tried|sessions? before|before this work|earlier runs?\b)"
                     r"|(?<![\w.-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}(?![\w.-])")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_no_development_history(document):
    found = HISTORY.findall(document.read_text())
    assert not found, f"{document.name} tells development history (what was tried, commit hashes): {found}"
