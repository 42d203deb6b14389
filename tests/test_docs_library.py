"""docs/library.md's snippets run as written (the README's own snippet: test_scripts_polish.py).

Each ```python block runs in a fresh interpreter, as a reader would paste it. Slow (about a
minute each on 2 shared CPU cores, most of it compilation), so behind the `slow` marker:
`pytest -m slow tests/test_docs_library.py`.
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snippets():
    with open(os.path.join(ROOT, "docs", "library.md")) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_library_page_has_its_snippets():
    assert len(_snippets()) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_snippets())))
def test_library_snippet_runs(index, tmp_path):
    script = tmp_path / f"snippet{index}.py"
    script.write_text(_snippets()[index])
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
