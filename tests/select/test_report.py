"""The poison-aware selection report, by hand."""

import json

import pytest

from jaxbd.select import selection_report


def test_report_by_hand():
    is_poison = [True, True, True, False, False, False, False, True]
    original = [1, 2, 2, 0, 1, 2, 0, 1]
    report = selection_report([0, 2, 3, 4], is_poison, original, num_classes=3)
    assert report["num_selected"] == 4 and report["num_removed"] == 4
    assert report["poison_total"] == 4 and report["poison_kept"] == 2
    assert report["poison_retention"] == 0.5
    # Removed: 1 (poison), 5, 6 (clean), 7 (poison).
    assert report["clean_removed"] == 2
    assert report["removed_precision"] == 0.5 and report["removed_recall"] == 0.5
    assert report["poison_total_per_class"] == [0, 2, 2]
    assert report["poison_kept_per_class"] == [0, 1, 1]
    assert report["poison_retention_per_class"] == [None, 0.5, 0.5]
    assert report["selected_per_class"] == [1, 2, 1]


def test_no_poisons_and_full_selection():
    report = selection_report([0, 1], [False, False], [0, 1], num_classes=2)
    # Undefined ratios are None (JSON null), never NaN or a misleading 0.
    assert report["poison_retention"] is None and report["removed_precision"] is None
    assert report["removed_recall"] is None


def test_bad_indices():
    with pytest.raises(ValueError, match="distinct"):
        selection_report([0, 0], [True, False], [0, 1], 2)
    with pytest.raises(ValueError, match="in \\[0, 2\\)"):
        selection_report([2], [True, False], [0, 1], 2)


def test_backdoor_retention_counts_only_the_backdoor_samples():
    # Poisons 0, 1, 2, 7; of them 1 and 7 kept their label (e.g. WaNet noise samples).
    is_poison = [True, True, True, False, False, False, False, True]
    is_backdoor = [True, False, True, False, False, False, False, False]
    original = [1, 2, 2, 0, 1, 2, 0, 1]
    report = selection_report([0, 1, 3, 4], is_poison, original, 3, is_backdoor=is_backdoor)
    assert report["poison_kept"] == 2 and report["poison_retention"] == 0.5
    assert report["backdoor_total"] == 2 and report["backdoor_kept"] == 1
    assert report["backdoor_retention"] == 0.5
    without = selection_report([0, 1, 3, 4], is_poison, original, 3)
    assert without["backdoor_total"] is None and without["backdoor_retention"] is None
    none_kept = selection_report([3], is_poison, original, 3, is_backdoor=[False] * 8)
    assert none_kept["backdoor_total"] == 0 and none_kept["backdoor_retention"] is None
    with pytest.raises(ValueError, match="not poisons"):
        selection_report([0], is_poison, original, 3, is_backdoor=[False, False, False, True] * 2)


def test_fractions_are_exact_float64_ratios_of_counts():
    # 77 of 200 poisons kept: float32 arithmetic gives 0.38499999046325684.
    n = 400
    is_poison = [i < 200 for i in range(n)]
    report = selection_report(list(range(77)), is_poison, [0] * n, 1, is_backdoor=is_poison)
    assert report["poison_retention"] == 0.385 == 77 / 200
    assert report["backdoor_retention"] == 0.385
    assert report["poison_retention_per_class"] == [0.385]
    assert report["removed_recall"] == 123 / 200
    json_text = json.dumps(report)
    assert "0.38499999" not in json_text and "0.385" in json_text
