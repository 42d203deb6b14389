"""The entry-point layer (`jaxbd.configs`, `jaxbd.cli`) sits above the pipelines: no module
of `jaxbd.pipeline` imports it, at module level or inside a function."""

import ast
import pathlib

PIPELINE = pathlib.Path(__file__).resolve().parent.parent / "jaxbd" / "pipeline"
ENTRY = ("jaxbd.configs", "jaxbd.cli")


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_no_pipeline_module_imports_the_entry_points():
    found = [
        f"{path.name}: {name}"
        for path in sorted(PIPELINE.glob("*.py"))
        for name in _imports(ast.parse(path.read_text()))
        if name in ENTRY or name.startswith(tuple(f"{e}." for e in ENTRY))
    ]
    assert found == []


def test_the_entry_point_defaults_are_the_pipelines():
    from jaxbd import configs
    from jaxbd.pipeline import defaults

    for name in ("defend_config", "detect_config", "evaluate_config", "sweep_section"):
        assert getattr(configs, name) is getattr(defaults, name)
