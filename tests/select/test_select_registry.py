"""The selection plug-in contract: each method declares what it needs, the settings check
only what it reads, and the pipeline compares no method name."""

import ast
import dataclasses
import pathlib

import pytest

from jaxbd.configs import base_config
from jaxbd.select import METHODS, SELECTORS, SelectSettings
from jaxbd.select.method import Method
from jaxbd.select.registry import SECTIONS, SELECTION_METHODS, method
from jaxbd.select.settings import DETECTORS
from jaxbd.settings import ConfigError, from_config

PIPELINE = pathlib.Path(__file__).resolve().parents[2] / "jaxbd" / "pipeline"


def select_section(name, **fields):
    section = base_config().select
    section.name = name
    for key, value in fields.items():
        section[key] = value
    return section


def test_craig_with_a_short_pretraining_validates():
    # `--config.select.pretrain_epochs=3` with CRAIG: score.score_epochs=(10,) is EL2N's and
    # GraNd's, which CRAIG never reads.
    s = from_config(SelectSettings, select_section("craig", pretrain_epochs=3), "config.select")
    assert (s.name, s.pretrain_epochs, s.score.score_epochs) == ("craig", 3, (10,))


@pytest.mark.parametrize("name", ["el2n", "grand"])
def test_the_score_methods_check_their_epochs(name):
    with pytest.raises(ConfigError, match=r"^config\.select\.score\.score_epochs: .*got \[10\]"):
        from_config(SelectSettings, select_section(name, pretrain_epochs=3), "config.select")


def test_pretraining_fields_are_checked_only_for_methods_that_pretrain():
    assert SelectSettings(name="random", pretrain_epochs=0, variant="x").pretrain_epochs == 0
    with pytest.raises(ConfigError, match=r"^config\.select\.pretrain_epochs"):
        from_config(SelectSettings, select_section("craig", pretrain_epochs=0), "config.select")
    with pytest.raises(ConfigError, match=r"^config\.select\.variant"):
        from_config(SelectSettings, select_section("forgetting", variant="x"), "config.select")


def test_fraction_is_checked_only_where_it_sizes_the_subset():
    # A poison detector keeps what it does not flag: `fraction` is not its field.
    assert SelectSettings(name="spectral", fraction=2.0).fraction == 2.0
    with pytest.raises(ConfigError, match=r"config\.select\.fraction: must be in \(0, 1\]"):
        from_config(SelectSettings, select_section("el2n", fraction=2.0), "config.select")


def test_every_method_declares_its_needs():
    assert tuple(SELECTION_METHODS) == METHODS == tuple(SELECTORS)
    fields = {f.name: f for f in dataclasses.fields(SelectSettings)}
    for name, m in SELECTION_METHODS.items():
        assert isinstance(m, Method) and method(name) is m
        if m.section is not None:  # its settings are a field of SelectSettings, by registry
            assert fields[m.section].default_factory is m.settings is SECTIONS[m.section]
        assert m.pretrain or not (m.ensemble or m.outputs or m.presentations)
    assert DETECTORS == ("spectral", "activation_clustering")
    assert not method("random").pretrain and not method("grand").shares_pretraining
    with pytest.raises(ValueError, match="unknown selection method"):
        method("herding")


def test_the_pipeline_compares_no_method_name():
    names = set(METHODS)
    found = []
    for path in sorted(PIPELINE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                for part in ast.walk(node):
                    if isinstance(part, ast.Constant) and part.value in names:
                        found.append(f"{path.name}:{node.lineno}: {part.value!r}")
    assert found == []


def test_the_sections_are_the_registered_methods():
    names = [f.name for f in dataclasses.fields(SelectSettings)]
    assert names[-len(SECTIONS) :] == list(SECTIONS)
    assert list(SECTIONS) == ["score", "forgetting", "craig", "spectral", "activation_clustering"]
