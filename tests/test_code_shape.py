"""Files a reader can hold: no module in jaxbd/ over 500 lines, module docstrings of at most
20 lines (the paper-to-code essays live in docs/), a README of at most 250 lines."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULES = sorted((ROOT / "jaxbd").rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_is_short_with_a_short_docstring(path):
    source = path.read_text()
    assert len(source.splitlines()) <= 500, f"{path.name}: {len(source.splitlines())} lines"
    doc = ast.get_docstring(ast.parse(source), clean=False)
    assert doc, f"{path.name} has no module docstring"
    assert len(doc.splitlines()) <= 20, f"{path.name}: a {len(doc.splitlines())}-line docstring"


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md: {len(lines)} lines; long tables belong in docs/"
