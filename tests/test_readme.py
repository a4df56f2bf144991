"""The README's Python snippets run as written (a newcomer copies them first).

Blocks fenced as ```python are run; ```py marks illustrations that need a real checkpoint or a long run."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_snippets():
    assert len(SNIPPETS) >= 2


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # snippets save checkpoints in the working directory
    exec(compile(SNIPPETS[index], f"README.md snippet {index}", "exec"), {})
