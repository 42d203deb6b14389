"""The README's "Defenses in your own loop" example runs as written."""

import contextlib
import io
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_block(heading: str) -> str:
    """The first Python code block under `heading` in README.md."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow  # every step of a repair and a detector; .ci/run runs it
def test_defenses_in_your_own_loop_runs():
    code = readme_block("## Defenses in your own loop")
    assert "Classifier(" in code and "defenses.repair(" in code and "defenses.detect(" in code
    out = io.StringIO()
    namespace = {}
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), namespace)
    repaired, strip = namespace["repaired"], namespace["strip"]
    assert [row["step"] for row in repaired.curve] == [0, 10, 20]
    assert repaired.classifier.module == namespace["CNN"]()
    assert strip.flagged["suspect"].shape == (20,)
    assert len(out.getvalue().splitlines()) == 2
