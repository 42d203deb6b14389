"""Command-line polish: summarize.py's cell labels, show_attacks.py's output path and
determinism, bench_select.py's docstring example."""

import hashlib
import importlib.util
import json
import os
import shlex

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summarize_labels_sweep_cells_with_their_method(tmp_path, capsys):
    summarize = load_script("summarize")
    runs = []
    for method in ("random", "craig"):
        for seed in (0, 1):
            cell = tmp_path / "sweep" / "cells" / method / f"seed{seed}"
            cell.mkdir(parents=True)
            (cell / "summary.json").write_text(json.dumps({"selection": method, "seed": seed}))
            runs.append(str(cell) + ("/" if seed else ""))  # a trailing slash is the same run
    unfinished = tmp_path / "sweep" / "cells" / "el2n" / "seed0"
    unfinished.mkdir(parents=True)
    plain = tmp_path / "craig_run"
    plain.mkdir()
    (plain / "summary.json").write_text(json.dumps({"selection": "craig"}))
    summarize.main([*runs, str(unfinished), str(plain), "--columns", "selection,seed"])
    labels = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines()[2:]]
    assert labels == [
        "random/seed0",
        "random/seed1",
        "craig/seed0",
        "craig/seed1",
        "el2n/seed0",
        "craig_run",
    ]


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _png_pixels(path):
    from PIL import Image

    return np.asarray(Image.open(path))


@pytest.mark.slow  # trains a surrogate, twice; .ci/run runs it
def test_show_attacks_never_writes_docs_by_default_and_is_the_same_run_to_run(
    tmp_path, monkeypatch
):
    show_attacks = load_script("show_attacks")
    docs_png = os.path.join(ROOT, "docs", "attacks.png")
    before = _sha256(docs_png)
    # The adversarial row: a surrogate trained here, PGD with a random start.
    flags = ["--synthetic", "256", "--model", "tiny_cnn", "--width", "4"]
    flags += ["--surrogate_epochs", "1", "--attacks", "adv_clean_label,badnets"]
    monkeypatch.chdir(tmp_path)
    show_attacks.main(flags)  # no --out
    default = tmp_path / "runs" / "show_attacks" / "attacks.png"
    assert default.exists()
    show_attacks.main([*flags, "--out", str(tmp_path / "again.png")])
    np.testing.assert_array_equal(_png_pixels(default), _png_pixels(tmp_path / "again.png"))
    assert _sha256(docs_png) == before
    with pytest.raises(SystemExit):
        show_attacks.main([*flags, "--attacks", "no_such_attack"])


@pytest.mark.slow  # the benchmark as its docstring runs it; .ci/run runs it
def test_bench_select_docstring_example_runs(capsys):
    bench_select = load_script("bench_select")
    examples = [
        shlex.split(line.strip())
        for line in bench_select.__doc__.splitlines()
        if line.strip().startswith("python scripts/bench_select.py") and "\\" not in line
    ]
    # The smallest one, as written (it needs neither apricot nor a large machine).
    smallest = [e for e in examples if "--no_apricot" in e]
    assert smallest, examples
    bench_select.main(smallest[0][2:])
    out = capsys.readouterr().out
    assert "jaxbd" in out and "lazy" in out


def test_readme_own_code_example_separates_training_poisons_from_test_triggers(capsys):
    # The first snippet of "Using jaxbd in your own JAX code": it must trigger test images
    # with triggered_test_set / test_fn (never the training transform `attack(...)`), on
    # images not all of the target class, and run as written.
    import re

    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme[readme.index("## Using jaxbd in your own JAX code") :]
    snippet = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    assert "attack.train_fn" in section and "attack.test_fn" in section
    assert "triggered_test_set(" in snippet and "wanet.test_fn" in snippet
    assert "jax.jit(attack)(" not in snippet
    namespace = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    test = namespace["test"]
    assert len(set(test.true_labels[:8].tolist())) > 1  # images of mixed classes
    assert np.all(test.labels == 0)  # the test transform gives every image the target
    train_labels, y = np.asarray(namespace["train_labels"]), np.asarray(namespace["y"])
    assert np.any(train_labels != 0) and np.any(y != 0)  # training poisons: some keep y
