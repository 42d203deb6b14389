"""Every `configs/*.py` builds exactly the config it built before the config sections were
derived from the settings dataclasses: same keys in the same order, same values, same types
(placeholders of optional fields included).

The frozen copy, tests/fixtures/configs_frozen.json, was written by this module's `snapshot`
before the change (`python tests/test_configs_frozen.py` rewrites it).
"""

import importlib.util
import json
import pathlib
import sys

import pytest
from ml_collections import FieldReference, config_dict

ROOT = pathlib.Path(__file__).resolve().parent.parent
FROZEN = ROOT / "tests" / "fixtures" / "configs_frozen.json"
CONFIGS = sorted((ROOT / "configs").glob("*.py"))


def _value(value):
    if isinstance(value, tuple):
        return {"tuple": [_value(v) for v in value]}
    if isinstance(value, list):
        return {"list": [_value(v) for v in value]}
    if isinstance(value, float):
        return {"float": repr(value)}
    return value


def describe(section: config_dict.ConfigDict) -> list:
    """[key, type, value] per field in insertion order; a placeholder or other field
    reference is typed "ref:<its type>", a sub-section is described recursively."""
    out = []
    for key, field in section._fields.items():
        if isinstance(field, FieldReference):
            kind = field.get_type()
            out.append([key, f"ref:{kind.__name__ if kind else None}", _value(field.get())])
        elif isinstance(field, config_dict.ConfigDict):
            out.append([key, type(field).__name__, describe(field)])
        else:
            out.append([key, type(field).__name__, _value(field)])
    return out


def get_config(path: pathlib.Path) -> config_dict.ConfigDict:
    spec = importlib.util.spec_from_file_location(f"_frozen_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def snapshot() -> dict:
    return {path.name: describe(get_config(path)) for path in CONFIGS}


def test_every_config_is_listed():
    assert sorted(json.loads(FROZEN.read_text())) == [path.name for path in CONFIGS]


@pytest.mark.parametrize("path", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_config_is_unchanged(path):
    assert describe(get_config(path)) == json.loads(FROZEN.read_text())[path.name]


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "scripts"))
    FROZEN.write_text(json.dumps(snapshot(), indent=0) + "\n")
