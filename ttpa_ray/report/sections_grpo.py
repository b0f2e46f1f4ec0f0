"""The report's GRPO section, present when the run has the `grpo` stage: from
`grpo/metrics.jsonl` (one record per optimizer step, `ttpa_ray.train`'s GRPO mode), the
reward and each of its parts, the KL to the SFT reference, the clip fraction and the share
of groups whose rewards are all equal (zero advantage: those prompts teach nothing)."""

from __future__ import annotations

from typing import Any

from ttpa_ray.report import plots
from ttpa_ray.report.common import MissingInput, Run, _mean, _num, _stages_list
from ttpa_ray.report.html import kv_table, note

METRICS_FILE = "grpo/metrics.jsonl"
# (panel title, y label, record keys drawn in it): the reward the policy is trained on
# with its parts, then one panel each for the zero-variance share, the KL and clipping
PANELS = (
    (
        "reward per step (parts in [0, 1])",
        "reward",
        ("reward", "reward/esm", "reward/name", "reward/key", "reward/value"),
    ),
    ("groups with zero reward variance", "share of groups", ("zero_var_groups",)),
    ("KL to the SFT reference", "KL (k3 estimate)", ("kl",)),
    ("clip fraction", "share of tokens clipped", ("clip_frac",)),
)


def has_grpo(run: Run) -> bool:
    """Whether the run has a grpo stage: recorded in `pipeline.json`, or (a run dir without
    one) a `grpo/` directory."""
    try:
        stages = _stages_list(run.json("pipeline.json").get("stages"))
    except (MissingInput, AttributeError):
        return run.path("grpo").is_dir()
    return any(s.get("name") == "grpo" for s in stages)


def _series(recs: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(_num(r.get("step")), _num(r.get(key))) for r in recs]
    kept = [(s, v) for s, v in pts if s is not None and v is not None]
    return [s for s, _ in kept], [v for _, v in kept]


def _window(recs: list[dict[str, Any]], key: str, last: bool) -> float | None:
    """The mean of `key` over the first (or last) 20% of the steps, at least one."""
    k = max(1, len(recs) // 5)
    return _mean(r.get(key) for r in (recs[-k:] if last else recs[:k]))


def sec_grpo(run: Run) -> str | None:
    """The section's HTML; None (no section) when the run has no grpo stage."""
    if not has_grpo(run):
        return None
    recs = sorted(run.jsonl(METRICS_FILE), key=lambda r: _num(r.get("step")) or 0.0)
    last = recs[-1]
    parts: list[str] = [
        kv_table(
            [
                ("steps recorded", len(recs)),
                ("last step", last.get("step")),
                ("reward, first 20% of steps", _window(recs, "reward", last=False)),
                ("reward, last 20% of steps", _window(recs, "reward", last=True)),
                ("exact calls, last 20%", _window(recs, "exact", last=True)),
                ("parse rate, last 20%", _window(recs, "parse_rate", last=True)),
                ("mean KL", _mean(r.get("kl") for r in recs)),
                ("mean clip fraction", _mean(r.get("clip_frac") for r in recs)),
                ("mean zero-variance share", _mean(r.get("zero_var_groups") for r in recs)),
                ("mean rollout tokens/s", _mean(r.get("rollout_tokens_per_s") for r in recs)),
            ]
        )
    ]
    drawn: list[tuple[str, str, dict[str, tuple[list[float], list[float]]]]] = []
    missing: list[str] = []
    for title, ylabel, keys in PANELS:
        series = {k: _series(recs, k) for k in keys}
        # a series the metrics lack is named below, not drawn as an empty line
        missing += [k for k, (steps, _) in series.items() if not steps]
        if got := {k: c for k, c in series.items() if c[0]}:
            drawn.append((title, ylabel, got))
    figures = [drawn[i : i + 2] for i in range(0, len(drawn), 2)]  # two panels a figure
    if figures:
        imgs = [
            plots.step_panels(f, alt="line plots per GRPO step of " + ", ".join(_keys(f)))
            for f in figures
        ]
        parts.append('<div class="plots">' + "".join(str(i) for i in imgs) + "</div>")
    if missing:
        parts.append(note(f"not recorded in {METRICS_FILE}: {', '.join(missing)}", cls="na"))
    return "\n".join(str(p) for p in parts)


def _keys(panels: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    return [k for _, _, series in panels for k in series]
