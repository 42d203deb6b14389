"""`config.select` as settings: defaults, validation naming the field, `effective()`."""

import dataclasses
import math
import re

import pytest

from jaxbd.configs import base_config
from jaxbd.select import (
    METHODS,
    SELECTORS,
    CraigSettings,
    ForgettingSettings,
    ScoreSettings,
    SelectSettings,
)
from jaxbd.select.craig import PROXIES
from jaxbd.select.facility_location import GREEDY
from jaxbd.select.ranking import KEEP
from jaxbd.settings import ConfigError, from_config

PREFIX = "config.select"


def select_section(**overrides):
    """`base_config().select` as a dict, with dotted overrides ("craig.greedy": "x")."""
    section = base_config().select.to_dict()
    for path, value in overrides.items():
        *parents, leaf = path.split(".")
        node = section
        for p in parents:
            node = node[p]
        node[leaf] = value
    return section


def test_defaults_mirror_the_config():
    assert from_config(SelectSettings, base_config().select, PREFIX) == SelectSettings()
    assert SelectSettings().score == ScoreSettings()
    assert SelectSettings().forgetting == ForgettingSettings()
    assert SelectSettings().craig == CraigSettings()
    # Every config field has a settings field and the same default, recursively.
    config = base_config().select.to_dict()
    settings = dataclasses.asdict(SelectSettings())
    assert settings == {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


def test_choice_lists_are_the_libraries():
    assert tuple(SELECTORS) == METHODS
    assert PROXIES == ("error", "concat", "outer")
    assert GREEDY == ("exact", "lazy", "stochastic")
    assert KEEP == ("hard", "easy")


def test_every_method_and_choice_is_accepted():
    for name in METHODS:
        for variant in ("standard", "study"):
            s = from_config(SelectSettings, select_section(name=name, variant=variant), PREFIX)
            assert (s.name, s.variant) == (name, variant)
    for proxy in PROXIES:
        for greedy in GREEDY:
            assert CraigSettings(proxy=proxy, greedy=greedy) == from_config(
                CraigSettings, {"proxy": proxy, "greedy": greedy}, PREFIX + ".craig"
            )
    for keep in KEEP:
        assert ScoreSettings(keep=keep).keep == ForgettingSettings(keep=keep).keep == keep
    for parallel in ("auto", "vmap", "sequential"):
        assert ScoreSettings(parallel=parallel).parallel == parallel


def test_lists_become_tuples():
    s = from_config(
        SelectSettings, select_section(**{"name": "el2n", "score.score_epochs": [1, 2]}), PREFIX
    )
    assert s.score.score_epochs == (1, 2)
    assert ScoreSettings(score_epochs=[3]).score_epochs == (3,)
    hash(s)  # frozen and hashable


@pytest.mark.parametrize(
    "field, value",
    [
        ("name", "coreset"),
        ("fraction", 0.0),
        ("fraction", 1.5),
        ("variant", "paper"),
        ("pretrain_epochs", 0),
        ("pretrain_warmup_epochs", -1),
        ("pretrain_warmup_epochs", 20),
        ("score.ensemble_size", 0),
        ("score.score_epochs", []),
        ("score.score_epochs", [0]),
        ("score.score_epochs", [21]),
        ("score.keep", "medium"),
        ("score.offset", 1.0),
        ("score.offset", -0.1),
        ("score.chunk_size", 0),
        ("score.parallel", "pmap"),
        ("forgetting.keep", "medium"),
        ("forgetting.offset", 1.0),
        ("craig.proxy", "logits"),
        ("craig.greedy", "greedy"),
        ("craig.epsilon", 0.0),
        ("craig.epsilon", 1.0),
    ],
)
def test_invalid_value_names_the_field(field, value):
    section = select_section(**{"name": "el2n", field: value})
    pattern = f"^{re.escape(f'config.select.{field}: ')}.*{re.escape(f'got {value!r}')}$"
    with pytest.raises(ConfigError, match=pattern):
        from_config(SelectSettings, section, PREFIX)


def test_messages_list_the_choices():
    with pytest.raises(ConfigError, match=r"must be one of \['exact', 'lazy', 'stochastic'\]"):
        from_config(SelectSettings, select_section(**{"craig.greedy": "x"}), PREFIX)
    with pytest.raises(ConfigError, match=r"must be None \(full set\) or one of \['random'"):
        from_config(SelectSettings, select_section(name="x"), PREFIX)
    with pytest.raises(ConfigError, match=r"in \[1, pretrain_epochs=2\], got \[3\]"):
        from_config(
            SelectSettings,
            select_section(**{"name": "grand", "pretrain_epochs": 2, "score.score_epochs": [3]}),
            PREFIX,
        )


def test_method_fields_are_checked_only_with_a_method():
    # As before: the full-set run ignores the selection's pretraining and fraction.
    s = from_config(
        SelectSettings,
        select_section(**{"fraction": 2.0, "pretrain_epochs": 1, "variant": "x"}),
        PREFIX,
    )
    assert s.name is None and s.fraction == 2.0
    with pytest.raises(ConfigError, match=r"^config\.select\.fraction"):
        from_config(SelectSettings, select_section(name="random", fraction=2.0), PREFIX)
    # The sub-settings' own fields are always checked.
    with pytest.raises(ConfigError, match=r"^config\.select\.craig\.greedy"):
        from_config(SelectSettings, select_section(**{"craig.greedy": "x"}), PREFIX)


def test_unknown_fields_are_refused():
    with pytest.raises(ConfigError, match=r"^config\.select: unknown field\(s\) \['bogus'\]"):
        from_config(SelectSettings, {**select_section(), "bogus": 1}, PREFIX)
    with pytest.raises(ConfigError, match=r"^config\.select\.craig: unknown field\(s\) \['k'\]"):
        from_config(SelectSettings, select_section(**{"craig.k": 1}), PREFIX)


def test_direct_construction_validates():
    with pytest.raises(ValueError, match="epsilon"):
        CraigSettings(epsilon=2.0)
    with pytest.raises(ValueError, match=r"score\.score_epochs"):
        SelectSettings(name="el2n", pretrain_epochs=5)  # default score epoch 10 > 5


def test_effective_standard():
    score = ScoreSettings(ensemble_size=3, score_epochs=(4, 6), keep="easy", offset=0.1)
    forgetting = ForgettingSettings(keep="easy", offset=0.2)
    for name in ("el2n", "grand"):
        s = SelectSettings(name=name, score=score, forgetting=forgetting)
        assert s.effective() == dict(ensemble_size=3, score_epochs=(4, 6), keep="easy", offset=0.1)
    f = SelectSettings(name="forgetting", score=score, forgetting=forgetting).effective()
    assert f == dict(per_epoch=False, never_learned=math.inf, keep="easy", offset=0.2)
    assert SelectSettings(name="forgetting").effective() == dict(
        per_epoch=False, never_learned=math.inf, keep="hard", offset=0.0
    )
    for name in (None, "random", "craig", "grad_align"):
        assert SelectSettings(name=name).effective() == {}


def test_effective_study_reproduces_the_earlier_study():
    score = ScoreSettings(ensemble_size=3, score_epochs=(4,), keep="hard", offset=0.1)
    for name in ("el2n", "grand"):
        s = SelectSettings(name=name, variant="study", pretrain_epochs=5, score=score)
        assert s.effective() == dict(
            ensemble_size=1, score_epochs=(2, 3, 4, 5), keep="easy", offset=0.0
        )
    f = SelectSettings(
        name="forgetting", variant="study", forgetting=ForgettingSettings(keep="hard", offset=0.5)
    )
    assert f.effective() == dict(per_epoch=True, never_learned=0.0, keep="easy", offset=0.0)
    for name in ("random", "craig", "grad_align"):
        assert SelectSettings(name=name, variant="study").effective() == {}
