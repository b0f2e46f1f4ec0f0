"""The headline's tie rule (`ttpa_ray.report.common.best_model`) on hand-made cases."""

from __future__ import annotations

from ttpa_ray.report.common import best_model, paired_ci, with_ci


def _e(v, lo, hi):
    return {"exact": v, "exact_ci": [lo, hi]}


ENTRIES = {"sft": _e(0.40, 0.35, 0.45), "dpo": _e(0.46, 0.41, 0.51), "ttpa": _e(0.50, 0.45, 0.55)}


def _pair(a, b, lo, hi, metric="exact"):
    key = "ci" if metric == "exact" else f"{metric}_ci"
    return {f"{a}-{b}": {"a": a, "b": b, key: [lo, hi]}}


def test_paired_interval_above_zero_against_everyone_marks_the_leader():
    paired = {**_pair("ttpa", "sft", 0.05, 0.15), **_pair("ttpa", "dpo", 0.01, 0.07)}
    # intervals of ttpa and dpo overlap, but the paired difference excludes 0
    assert best_model(ENTRIES, "exact", paired) == "ttpa"


def test_paired_interval_touching_zero_is_a_tie():
    paired = {**_pair("ttpa", "sft", 0.05, 0.15), **_pair("ttpa", "dpo", 0.0, 0.07)}
    assert best_model(ENTRIES, "exact", paired) is None
    paired = {**_pair("ttpa", "sft", 0.05, 0.15), **_pair("ttpa", "dpo", -0.01, 0.07)}
    assert best_model(ENTRIES, "exact", paired) is None


def test_reversed_pair_is_negated():
    paired = {**_pair("sft", "ttpa", -0.15, -0.05), **_pair("dpo", "ttpa", -0.07, -0.01)}
    assert paired_ci(paired, "ttpa", "dpo", "exact") == (0.01, 0.07)
    assert best_model(ENTRIES, "exact", paired) == "ttpa"


def test_without_paired_intervals_must_not_overlap():
    assert best_model(ENTRIES, "exact") is None  # ttpa [0.45, 0.55] overlaps dpo [0.41, 0.51]
    apart = {**ENTRIES, "ttpa": _e(0.60, 0.52, 0.68)}
    assert best_model(apart, "exact") == "ttpa"
    # a paired difference where there is one, interval non-overlap for the rest
    mixed = {**ENTRIES, "ttpa": _e(0.58, 0.52, 0.64)}
    assert best_model(mixed, "exact", _pair("ttpa", "dpo", 0.02, 0.2)) == "ttpa"
    assert best_model(mixed, "exact", _pair("ttpa", "dpo", -0.01, 0.2)) is None


def test_equal_values_single_model_and_missing_intervals_mark_nothing():
    tie = {**ENTRIES, "dpo": _e(0.50, 0.45, 0.55)}
    assert best_model(tie, "exact", _pair("ttpa", "sft", 0.05, 0.15)) is None
    assert best_model({"ttpa": ENTRIES["ttpa"]}, "exact") is None
    assert best_model({"a": {"exact": 0.9}, "b": {"exact": 0.1}}, "exact") is None
    # a model without a value is not a competitor
    assert best_model({"a": _e(0.9, 0.8, 1.0), "b": _e(0.1, 0.0, 0.2), "c": {}}, "exact") == "a"


def test_with_ci_formatting():
    assert with_ci(0.4123, [0.365, 0.46]) == "0.412 [0.365, 0.460]"
    assert with_ci(0.088, [0.04, 0.135], signed=True) == "+0.088 [+0.040, +0.135]"
    assert with_ci(0.5, None) == "0.500" and with_ci(None, [0, 1]) == "n/a"
