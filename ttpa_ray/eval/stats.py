"""Uncertainty of eval metrics: percentile bootstrap intervals (pure numpy, no Ray).

- `bootstrap_ci(values)`: the 95% interval of a mean (one model's exact, ESM, ...).
- `paired_difference(rows_a, rows_b, metric)`: mean(a) − mean(b) over the examples both
  rows lists answered (matched by id), with the 95% interval from resampling example ids
  jointly: the same resampled ids score both models, so what the examples share (easy or
  hard turns) cancels and the interval is narrower than two separate ones would suggest.

Percentile bootstrap: draw `n_resamples` samples of size n with replacement, take each
sample's mean, report the (1 − level)/2 and (1 + level)/2 quantiles. Deterministic for a
seed. Examples are treated as independent (turns of one episode are resampled one by one,
not by episode), which slightly understates the width when turns are correlated.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

N_RESAMPLES = 2000
LEVEL = 0.95
_CHUNK = 1_000_000  # resampled indices held at once (8 MB): bounds memory for large n


def _values(xs: Iterable[Any]) -> np.ndarray:
    """Non-null values as floats (bools count 0/1)."""
    return np.asarray([float(x) for x in xs if x is not None], dtype=np.float64)


def bootstrap_means(
    values: Sequence[Any] | np.ndarray, *, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> np.ndarray:
    """`[n_resamples]` means of resamples (with replacement) of the non-null `values`."""
    x = _values(values) if not isinstance(values, np.ndarray) else values.astype(np.float64)
    if x.size == 0:
        raise ValueError("bootstrap of an empty sample")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    out = np.empty(n_resamples, dtype=np.float64)
    step = max(1, _CHUNK // x.size)
    for start in range(0, n_resamples, step):
        stop = min(n_resamples, start + step)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))
        out[start:stop] = x[idx].mean(axis=1)
    return out


def bootstrap_ci(
    values: Sequence[Any] | np.ndarray,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> list[float] | None:
    """Percentile bootstrap interval `[lo, hi]` (rounded to 6 decimals) of the mean of the
    non-null `values` (bools count 0/1); None when there are none. A constant sample gives
    the degenerate interval `[c, c]`."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    x = _values(values) if not isinstance(values, np.ndarray) else values
    if x.size == 0:
        return None
    means = bootstrap_means(x, n_resamples=n_resamples, seed=seed)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return [round(float(lo), 6), round(float(hi), 6)]


def paired_difference(
    rows_a: Iterable[Mapping[str, Any]],
    rows_b: Iterable[Mapping[str, Any]],
    metric: str = "exact",
    *,
    id_key: str = "id",
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Any]:
    """Model A minus model B on `metric` over the examples both answered.

    `rows_*`: results rows (`results.parquet` rows as dicts) with `id_key` and `metric`
    (`exact`, `esm`, `name_acc`, `parsed`, `ast`; bools count 0/1). Examples are matched
    by id; a row whose metric is None on either side is left out. Returns
    `{"diff": mean(a − b), "ci": [lo, hi], "n": examples paired}` (`diff`/`ci` None
    when no example pairs up). Raises ValueError for a duplicate id (a pairing must be
    one-to-one: prefix ids with the seed when pooling runs).
    """

    def by_id(rows: Iterable[Mapping[str, Any]]) -> dict[Any, float | None]:
        out: dict[Any, float | None] = {}
        for r in rows:
            key = r[id_key]
            if key in out:
                raise ValueError(f"duplicate example id {key!r} in paired rows")
            v = r.get(metric)
            out[key] = None if v is None else float(v)
        return out

    a, b = by_id(rows_a), by_id(rows_b)
    # sorted: the interval does not depend on the order of the rows
    common = sorted((k for k in a if k in b and a[k] is not None and b[k] is not None), key=str)
    if not common:
        return {"diff": None, "ci": None, "n": 0}
    # mean(a[idx]) − mean(b[idx]) == mean(d[idx]): resampling d resamples ids jointly
    d = np.asarray([a[k] - b[k] for k in common], dtype=np.float64)  # type: ignore[operator]
    ci = bootstrap_ci(d, n_resamples=n_resamples, seed=seed, level=level)
    return {"diff": round(float(d.mean()), 6), "ci": ci, "n": len(common)}
