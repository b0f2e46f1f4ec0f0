"""Bootstrap intervals and paired differences (`ttpa_ray.eval.stats`) on hand-made cases."""

from __future__ import annotations

import math
import random

import pytest

from ttpa_ray.eval.stats import bootstrap_ci, paired_difference


def _rows(values, prefix="q"):
    return [{"id": f"{prefix}{i}", "exact": v} for i, v in enumerate(values)]


def test_constant_samples_give_degenerate_intervals():
    assert bootstrap_ci([1] * 50) == [1.0, 1.0]
    assert bootstrap_ci([True] * 7) == [1.0, 1.0]
    assert bootstrap_ci([0.0] * 400) == [0.0, 0.0]
    assert bootstrap_ci([None, 0.25, None]) == [0.25, 0.25]  # nulls do not count
    assert bootstrap_ci([]) is None and bootstrap_ci([None]) is None


def test_binary_interval_contains_mean_with_normal_width():
    # 160 of 400 right: p = 0.4; normal approximation 2 · 1.96 · sqrt(p(1 − p)/n) = 0.0960
    values = [1] * 160 + [0] * 240
    lo, hi = bootstrap_ci(values, seed=3)
    assert lo < 0.4 < hi
    normal = 2 * 1.96 * math.sqrt(0.4 * 0.6 / 400)
    assert hi - lo == pytest.approx(normal, rel=0.15)
    # a 4× larger sample halves the width
    lo4, hi4 = bootstrap_ci(values * 4, seed=3)
    assert (hi4 - lo4) == pytest.approx((hi - lo) / 2, rel=0.2)


def test_bootstrap_is_deterministic_for_a_seed():
    rng = random.Random(0)
    values = [rng.random() for _ in range(100)]
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    assert bootstrap_ci(values, seed=7) != bootstrap_ci(values, seed=8)
    narrow = bootstrap_ci(values, level=0.5)
    wide = bootstrap_ci(values, level=0.99)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]
    with pytest.raises(ValueError):
        bootstrap_ci(values, level=1.0)


def test_paired_difference_of_identical_models_is_zero():
    rows = _rows([1, 0, 1, 1, 0, 0, 1] * 20)
    assert paired_difference(rows, rows) == {"diff": 0.0, "ci": [0.0, 0.0], "n": 140}


def test_paired_difference_hand_case():
    # b is right on 40 of 100; a on the same 40 plus 20 more: a − b = +0.2 on every resample
    # of the examples where they differ, so the interval sits well above 0
    b = [1] * 40 + [0] * 60
    a = [1] * 60 + [0] * 40
    d = paired_difference(_rows(a), _rows(b), seed=1)
    assert d["diff"] == pytest.approx(0.2) and d["n"] == 100
    lo, hi = d["ci"]
    assert 0 < lo < 0.2 < hi
    # pairing helps: narrower than the difference of two separate intervals' extremes
    alo, ahi = bootstrap_ci(a, seed=1)
    blo, bhi = bootstrap_ci(b, seed=1)
    assert hi - lo < (ahi - blo) - (alo - bhi)
    # a constant per-example gain has a degenerate interval
    shift = paired_difference(
        [{"id": i, "esm": 0.5 + x / 10} for i, x in enumerate(range(5))],
        [{"id": i, "esm": 0.4 + x / 10} for i, x in enumerate(range(5))],
        "esm",
    )
    assert shift["diff"] == pytest.approx(0.1)
    assert shift["ci"] == pytest.approx([0.1, 0.1])


def test_paired_difference_matches_ids_and_ignores_order():
    a = _rows([1, 1, 0, 1, None])
    b = _rows([0, 1, 0, 0, 1])[::-1] + [{"id": "only-b", "exact": 1}]
    d = paired_difference(a, b, seed=5)
    assert d["n"] == 4  # q4 is None on a's side; only-b has no partner
    assert d["diff"] == pytest.approx(0.5)
    assert paired_difference(a[::-1], b, seed=5) == d
    assert paired_difference(a, b, seed=5) == paired_difference(a, b, seed=5)
    assert paired_difference(a, [], seed=5) == {"diff": None, "ci": None, "n": 0}
    with pytest.raises(ValueError, match="duplicate"):
        paired_difference(a + a[:1], b)
