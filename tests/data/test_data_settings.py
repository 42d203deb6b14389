"""`DataSettings`: the defaults of `config.data`, and a ConfigError naming each bad field."""

import dataclasses

import pytest

from jaxbd.configs import base_config
from jaxbd.data import DATASETS, DataSettings
from jaxbd.data.cifar10 import SOURCES
from jaxbd.settings import ConfigError, from_config


def _from(section):
    return from_config(DataSettings, section, "config.data")


def test_defaults_are_the_base_config_data_section():
    assert DataSettings() == _from(base_config().data)
    assert {f.name for f in dataclasses.fields(DataSettings)} == set(base_config().data)


def test_every_registered_choice_is_accepted():
    for name in DATASETS:
        assert DataSettings(name=name).name == name
    for source in SOURCES:
        assert DataSettings(source=source).source == source


def test_lists_from_the_command_line_become_tuples():
    settings = _from({"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
    assert settings.mean == (0.5, 0.5, 0.5) and settings.std == (0.25, 0.25, 0.25)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "mnist"),
        ("path", 3),
        ("source", "web"),
        ("cache_dir", ["/tmp"]),
        ("train_limit", 0),
        ("train_limit", 2.5),
        ("train_limit", True),
        ("test_limit", -1),
        ("mean", (0.5, 0.5)),
        ("mean", (0.5, 0.5, float("nan"))),
        ("std", (0.2, 0.0, 0.2)),
        ("std", (0.2, 0.2, 0.2, 0.2)),
        ("num_train", 0),
        ("num_test", 0),
        ("num_classes", 1),
        ("image_size", 2),
        ("image_size", 32.0),
        ("seed", "0"),
        ("noise", -0.1),
        ("noise", float("inf")),
    ],
)
def test_a_bad_value_names_its_field(field, value):
    with pytest.raises(ConfigError, match=rf"^config\.data\.{field}: "):
        _from({field: value})


def test_an_unknown_field_is_refused():
    with pytest.raises(ConfigError, match=r"config.data: unknown field\(s\) \['nmae'\]"):
        _from({"nmae": "cifar10"})


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DataSettings().name = "synthetic"  # type: ignore[misc]
