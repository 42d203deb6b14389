"""The package layers of docs/architecture.md hold for every import in `jaxbd/`.

The layer table and the list of imports allowed within a layer are parsed from the page
itself, so the page and the code cannot drift apart; every import counts, including those
inside functions.
"""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "architecture.md"


def _tables(text: str) -> list[list[list[str]]]:
    """Every markdown table of `text`, as rows of cells (header and rule rows dropped)."""
    tables, rows = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r"-+", c) for c in cells):
                rows.append(cells)
        elif rows:
            tables.append(rows[1:])
            rows = []
    return tables


def _names(cell: str) -> list[str]:
    return re.findall(r"`(jaxbd(?:\.\w+)?)`", cell)


def layers_from_page() -> tuple[dict[str, int], set[tuple[str, str]]]:
    """(package -> layer, allowed same-layer edges) from docs/architecture.md."""
    tables = _tables(PAGE.read_text())
    layer_table = next(t for t in tables if t and t[0][0] == "0")
    layer = {name: int(row[0]) for row in layer_table for name in _names(row[1])}
    within = next(t for t in tables if t and _names(t[0][0]) and _names(t[0][1]))
    allowed = {(_names(row[0])[0], _names(row[1])[0]) for row in within}
    return layer, allowed


def package_of(module: str) -> str | None:
    """`jaxbd.defenses.api` -> `jaxbd.defenses`; None outside jaxbd; `jaxbd` for the root."""
    parts = module.split(".")
    if parts[0] != "jaxbd":
        return None
    return "jaxbd" if len(parts) == 1 else f"jaxbd.{parts[1]}"


def imports_of(path: pathlib.Path) -> set[str]:
    """Every module `path` imports (module level or not), absolute names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            if node.module == "jaxbd":
                found.update(f"jaxbd.{a.name}" for a in node.names)
            elif node.module:
                found.add(node.module)
    return found


def package_edges() -> dict[tuple[str, str], list[str]]:
    """(importing package, imported package) -> the files doing it, across jaxbd/."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted((ROOT / "jaxbd").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        me = package_of(module)
        for imported in imports_of(path):
            other = package_of(imported)
            if other is not None and other != me:
                edges.setdefault((me, other), []).append(str(path.relative_to(ROOT)))
    return edges


def test_the_page_places_every_package():
    layer, allowed = layers_from_page()
    packages = {
        package_of(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"))
        for p in (ROOT / "jaxbd").glob("*")
        if p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())
    } - {"jaxbd"}
    assert packages <= set(layer), f"not in the layer table: {sorted(packages - set(layer))}"
    assert all(layer[a] == layer[b] for a, b in allowed), "a within-layer row spans layers"


def test_no_upward_or_undeclared_import():
    layer, allowed = layers_from_page()
    bad = []
    for (me, other), files in package_edges().items():
        if me == "jaxbd" or other == "jaxbd":
            bad.append(f"{me} -> {other} ({files[0]}): the package root is imported by nothing")
            continue
        if layer[other] > layer[me] or (layer[other] == layer[me] and (me, other) not in allowed):
            bad.append(f"{me} (layer {layer[me]}) -> {other} (layer {layer[other]}): {files}")
    assert not bad, "imports against docs/architecture.md:\n" + "\n".join(bad)


def test_no_package_cycle():
    graph: dict[str, set[str]] = {}
    for me, other in package_edges():
        graph.setdefault(me, set()).add(other)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("package cycle: " + " -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_the_checks_catch_what_they_should(tmp_path):
    """The parser sees a function-level import, and an upward edge is reported."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from jaxbd.pipeline import grid\n    import jaxbd.cli\n")
    assert imports_of(source) == {"jaxbd.pipeline", "jaxbd.cli"}
    layer, allowed = layers_from_page()
    assert layer["jaxbd.pipeline"] > layer["jaxbd.defenses"] > layer["jaxbd.train"]
    assert ("jaxbd.defenses", "jaxbd.prune") in allowed
    assert ("jaxbd.prune", "jaxbd.defenses") not in allowed
