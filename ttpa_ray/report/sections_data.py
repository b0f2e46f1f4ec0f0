"""The report's data sections: pipeline stages (timing, row accounting, config from
`pipeline.json`), dataset construction (`construct/manifest.json`, `construct/card.md`),
and what the TPS pairs decide (`sample/manifest.json`; shown in the sampling section)."""

from __future__ import annotations

import json
from typing import Any

from ttpa_ray.report import plots
from ttpa_ray.report.common import (
    MissingInput,
    Run,
    _accounting,
    _compact,
    _dict,
    _num,
    _stages_list,
)
from ttpa_ray.report.html import esc, fmt, kv_table, markdown, not_available, note, table


def _sec_pipeline(run: Run) -> str:
    state = run.json("pipeline.json")
    stages = _stages_list(state.get("stages") if isinstance(state, dict) else None)
    if not stages:
        return str(not_available("pipeline.json", why="no stages recorded"))
    total = sum(_num(s.get("seconds")) or 0.0 for s in stages)
    known = {"name", "status", "seconds", "rows_in", "rows_out", "rows_quarantined", "key"}
    known |= {"started_at", "ended_at"}
    rows, classes = [], []
    for s in stages:
        secs = _num(s.get("seconds"))
        extra = "; ".join(f"{k}={_compact(v)}" for k, v in s.items() if k not in known)
        rows.append(
            (
                s.get("name", "?"),
                s.get("status", "?"),
                fmt(secs, 1) if secs is not None else None,
                f"{100 * secs / total:.1f}%" if secs is not None and total > 0 else None,
                extra or None,
            )
        )
        classes.append("status-failed" if s.get("status") == "failed" else None)
    parts = [
        "<h3>Stage timing</h3>",
        note(f"total wall time of recorded stages: {total:.1f} s"),
        table(["stage", "status", "seconds", "share", "details"], rows, row_classes=classes),
    ]
    timed = [s for s in stages if _num(s.get("seconds")) is not None]
    if timed:
        parts.append(
            plots.stage_seconds(
                [str(s.get("name", "?")) for s in timed],
                [_num(s.get("seconds")) or 0.0 for s in timed],
                [str(s.get("status", "")) for s in timed],
            )
        )
    acct, _ = _accounting(stages, "name")
    parts += ["<h3>Row accounting</h3>", acct]
    config = state.get("config") if isinstance(state, dict) else None
    if config:
        parts.append(
            "<details><summary>pipeline config</summary><pre>"
            + esc(json.dumps(config, indent=2, sort_keys=True, default=str))
            + "</pre></details>"
        )
    return "\n".join(str(p) for p in parts)


def _sec_construct(run: Run) -> str:
    parts: list[str] = []
    try:
        m = run.json("construct/manifest.json")
    except MissingInput as e:
        parts.append(not_available(e.rel, why=e.why))
        m = None
    if isinstance(m, dict):
        top = [
            (k, _compact(m[k]))
            for k in (
                "teacher",
                "catalog",
                "created",
                "config_hash",
                "quarantined",
                "holdout_tools",
            )
            if k in m
        ]
        if top:
            parts.append(kv_table(top))
        if isinstance(m.get("splits"), dict):
            parts += [
                "<h3>Splits</h3>",
                table(["split", "episodes"], list(m["splits"].items())),
            ]
        if isinstance(m.get("stages"), list):
            acct, _ = _accounting(
                [s for s in m["stages"] if isinstance(s, dict)], "stage", with_seconds=True
            )
            parts += ["<h3>Steps: row accounting</h3>", acct]
        reasons = m.get("quarantine_reasons")
        parts.append("<h3>Quarantine reasons</h3>")
        if isinstance(reasons, dict) and reasons:
            parts.append(
                table(["reason", "rows"], sorted(reasons.items(), key=lambda kv: -(kv[1] or 0)))
            )
        else:
            parts.append(note("no quarantined rows recorded"))
        if isinstance(m.get("stats"), dict):
            parts += [
                "<h3>Episode statistics</h3>",
                kv_table([(k, _compact(v)) for k, v in m["stats"].items()]),
            ]
    parts.append("<h3>Dataset card</h3>")
    if run.exists("construct/card.md"):
        card = run.path("construct/card.md").read_text(errors="replace")
        parts.append('<div class="card">' + markdown(card, run.path("construct")) + "</div>")
    else:
        parts.append(not_available("construct/card.md"))
    return "\n".join(str(p) for p in parts)


def sec_pair_decisions(m: Any) -> str:
    """What the TPS pairs teach, from `sample/manifest.json`: where branch pairs diverge
    by token class (`branch_divergence`) and how often the best sample reached the pair
    threshold (`best_at_threshold_share`: chosen = a sample, else gold). Rendered inside
    the sampling section."""
    if not isinstance(m, dict):
        return ""
    parts: list[str] = ["<h3>What the pairs decide</h3>"]
    share = _num(m.get("best_at_threshold_share"))
    if share is not None:
        threshold = _dict(m.get("config")).get("threshold")
        at = f" ≥ {threshold}" if threshold is not None else " at the pair threshold"
        parts.append(
            note(
                f"best sample scored{at} (chosen = a sample, not gold) in {100 * share:.1f}% "
                f"of sampled turns ({_compact(m.get('turns_best_at_threshold'))} turns)"
            )
        )
    hist = _dict(m.get("branch_divergence"))
    total = sum(_num(v) or 0.0 for v in hist.values())
    if total > 0:
        classes = list(hist)
        shares = [(_num(hist[c]) or 0.0) / total for c in classes]
        parts += [
            table(
                ["first diverging token", "branch pairs", "share"],
                [(c, hist[c], s) for c, s in zip(classes, shares, strict=True)],
            ),
            plots.grouped_bars(
                classes,
                {"branch pairs": shares},
                title="Where branch pairs diverge",
                ylabel="share of branch pairs",
                alt="share of branch pairs by the class of their first diverging token",
            ),
        ]
    elif m.get("branch_divergence_error"):
        parts.append(note(f"branch divergence: {m['branch_divergence_error']}", cls="na"))
    else:
        parts.append(note("no branch pairs: no divergence histogram"))
    return "\n".join(str(p) for p in parts)
