"""The report's model sections: training curves (`<model>/metrics.jsonl`), TPS sampling and
preference pairs (`sample/`), and evaluation by suite (`eval/<model>/<suite>/`)."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any

from ttpa_ray.report import plots
from ttpa_ray.report.common import (
    BEST_RULE,
    HEADLINE_METRICS,
    HEADLINE_SUITE,
    METRICS,
    MODELS,
    MissingInput,
    Run,
    _accounting,
    _compact,
    _dict,
    _mean,
    _num,
    _order_models,
    best_model,
    with_ci,
)
from ttpa_ray.report.html import esc, kv_table, not_available, note, table
from ttpa_ray.report.sections_data import sec_pair_decisions


def _series(recs: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, r in enumerate(recs):
        y = _num(r.get(key))
        if y is None:
            continue
        xs.append(_num(r.get("step")) or float(i + 1))
        ys.append(y)
    return xs, ys


def _sec_training(run: Run) -> str:
    parts: list[str] = []
    loaded: dict[str, list[dict[str, Any]]] = {}
    missing = []
    for m in MODELS:
        if m == "grpo":  # its curves (reward, KL, clipping) are the GRPO section's
            continue
        rel = f"{m}/metrics.jsonl"
        try:
            recs = run.jsonl(rel)
        except MissingInput as e:
            missing.append(not_available(e.rel, why=e.why))
            continue
        recs.sort(key=lambda r: _num(r.get("step")) or 0.0)
        loaded[m] = recs
    parts += missing
    if not loaded:
        return "\n".join(str(p) for p in parts)
    rows = []
    for m, recs in loaded.items():
        last = recs[-1]
        losses = [x for x in (_num(r.get("loss")) for r in recs) if x is not None]
        rows.append(
            (
                m,
                len(recs),
                last.get("step"),
                losses[0] if losses else None,
                losses[-1] if losses else None,
                _num(last.get("rewards/accuracy")),
                _num(last.get("rewards/margin")),
                _num(last.get("lr")),
                _mean(r.get("tokens_per_s") for r in recs),
            )
        )
    parts.append(
        table(
            [
                "model",
                "records",
                "last step",
                "first loss",
                "last loss",
                "last reward acc.",
                "last reward margin",
                "last lr",
                "mean tokens/s",
            ],
            [
                tuple(f"{v:.3g}" if j == 7 and isinstance(v, float) else v for j, v in enumerate(r))
                for r in rows
            ],
        )
    )
    curves = {m: _series(recs, "loss") for m, recs in loaded.items()}
    curves = {m: c for m, c in curves.items() if c[0]}
    if curves:
        parts.append(plots.loss_curves(curves))
    acc = {m: _series(recs, "rewards/accuracy") for m, recs in loaded.items()}
    margin = {m: _series(recs, "rewards/margin") for m, recs in loaded.items()}
    acc = {m: c for m, c in acc.items() if c[0]}
    margin = {m: c for m, c in margin.items() if c[0]}
    if acc or margin:
        parts.append(plots.reward_curves(acc, margin))
    else:
        parts.append(note("no DPO reward metrics (rewards/accuracy, rewards/margin) recorded"))
    return "\n".join(str(p) for p in parts)


def _sec_sampling(run: Run) -> str:
    parts: list[str] = []
    try:
        m = run.json("sample/manifest.json")
    except MissingInput as e:
        parts.append(not_available(e.rel, why=e.why))
        m = None
    if isinstance(m, dict):
        parts.append(
            kv_table(
                [
                    (k, _compact(m[k]))
                    for k in ("pairs", "forward_tokens_per_pair", "mean_candidate_esm")
                    if k in m
                ]
            )
        )
        pbs = _dict(m.get("pairs_by_source"))
        cbs = _dict(m.get("candidates_by_source"))
        if pbs or cbs:
            srcs = sorted(set(pbs) | set(cbs))
            parts += [
                "<h3>Counts by source</h3>",
                table(
                    ["source", "candidates", "pairs"],
                    [(s, cbs.get(s), pbs.get(s)) for s in srcs],
                ),
            ]
        if isinstance(m.get("stages"), list):
            acct, _ = _accounting(
                [s for s in m["stages"] if isinstance(s, dict)], "stage", with_seconds=True
            )
            parts += ["<h3>Steps: row accounting</h3>", acct]
        parts.append(sec_pair_decisions(m))

    parts.append("<h3>Candidates</h3>")
    try:
        cands = run.parquet("sample/candidates.parquet", ["source", "esm_score"])
        by_src: dict[str, list[float]] = defaultdict(list)
        for s, v in zip(cands.get("source", []), cands.get("esm_score", []), strict=False):
            if _num(v) is not None:
                by_src[str(s)].append(float(v))
        if by_src:
            parts.append(
                table(
                    ["source", "candidates", "mean ESM", "share ESM = 1"],
                    [
                        (s, len(v), _mean(v), sum(x >= 1.0 for x in v) / len(v))
                        for s, v in sorted(by_src.items())
                    ],
                )
            )
            parts.append(
                plots.histograms(
                    dict(sorted(by_src.items())),
                    title="ESM of sampled candidates by source",
                    xlabel="ESM score",
                    range_=(0.0, 1.0),
                    alt="histogram of candidate ESM scores, one line per sampling source",
                )
            )
        else:
            parts.append(note("candidates.parquet has no ESM scores", cls="na"))
    except MissingInput as e:
        parts.append(not_available(e.rel, why=e.why))

    parts.append("<h3>Preference pairs</h3>")
    try:
        pairs = run.parquet(
            "sample/pairs.parquet",
            ["source", "chosen_score", "rejected_score", "branch_token_index"],
        )
        n = len(next(iter(pairs.values()), []))
        srcs = [str(s) for s in pairs.get("source", ["?"] * n)]
        chosen = pairs.get("chosen_score", [None] * n)
        rejected = pairs.get("rejected_score", [None] * n)
        margins: dict[str, list[float]] = defaultdict(list)
        for s, c, r in zip(srcs, chosen, rejected, strict=False):
            if _num(c) is not None and _num(r) is not None:
                margins[s].append(float(c) - float(r))
        counts = Counter(srcs)
        parts.append(
            table(
                ["source", "pairs", "mean chosen", "mean rejected", "mean margin"],
                [
                    (
                        s,
                        counts[s],
                        _mean(c for s2, c in zip(srcs, chosen, strict=False) if s2 == s),
                        _mean(r for s2, r in zip(srcs, rejected, strict=False) if s2 == s),
                        _mean(margins.get(s, [])),
                    )
                    for s in sorted(counts)
                ],
            )
        )
        plot_row = []
        if margins:
            plot_row.append(
                plots.histograms(
                    dict(sorted(margins.items())),
                    title="chosen − rejected ESM per pair",
                    xlabel="score margin",
                    range_=(0.0, 1.0),
                    alt="histogram of chosen minus rejected ESM score margins by source",
                )
            )
        bti = [
            int(v)
            for v in pairs.get("branch_token_index", [])
            if _num(v) is not None and float(v) >= 0
        ]
        if bti:
            plot_row.append(
                plots.histograms(
                    {"branch": bti},
                    title="branch token index of pairs (TPS branch points)",
                    xlabel="token index of the branch point in the response",
                    integer=True,
                    alt="histogram of branch_token_index over branch pairs",
                )
            )
        else:
            plot_row.append(note("no pairs with a branch_token_index ≥ 0"))
        parts.append('<div class="plots">' + "".join(plot_row) + "</div>")
    except MissingInput as e:
        parts.append(not_available(e.rel, why=e.why))
    return "\n".join(str(p) for p in parts)


def _eval_layout(run: Run) -> dict[str, list[str]]:
    """suite → models having `results.parquet` or `metrics.json` for it."""
    root = run.path("eval")
    out: dict[str, list[str]] = defaultdict(list)
    if not root.is_dir():
        return {}
    for mdir in root.iterdir():
        if not mdir.is_dir():
            continue
        for sdir in mdir.iterdir():
            if sdir.is_dir() and (
                (sdir / "results.parquet").exists() or (sdir / "metrics.json").is_file()
            ):
                out[sdir.name].append(mdir.name)
    suites = sorted(out, key=lambda s: (s != HEADLINE_SUITE, s))
    return {s: _order_models(out[s]) for s in suites}


def _metrics_from_results(res: dict[str, list[Any]]) -> dict[str, Any]:
    n = len(next(iter(res.values()), []))
    cats = [str(c) for c in res.get("category", ["all"] * n)]
    esm, exact, ast = (res.get(k, [None] * n) for k in ("esm", "exact", "ast"))
    by_cat: dict[str, dict[str, Any]] = {}
    for c in sorted(set(cats)):
        idx = [i for i, x in enumerate(cats) if x == c]
        by_cat[c] = {
            "n": len(idx),
            "esm": _mean(esm[i] for i in idx),
            "exact": _mean(exact[i] for i in idx),
            "ast": _mean(ast[i] for i in idx),
        }
    # bucketed like eval's `error_kind`: the first label, without detail
    errors = Counter(
        re.split(r"[,:!=\s]", str(e), maxsplit=1)[0] or str(e)
        for e in res.get("error_type", [])
        if e not in (None, "", "none", "ok")
    )
    from ttpa_ray.eval.stats import bootstrap_ci

    out: dict[str, Any] = {"n": n}
    for key, col in (
        ("exact", "exact"),
        ("esm", "esm"),
        ("name_acc", "name_acc"),
        ("parse_rate", "parsed"),
        ("ast", "ast"),
    ):
        vals = [v for v in res.get(col, []) if _num(v) is not None]
        out[key] = _mean(vals)
        out[f"{key}_ci"] = bootstrap_ci(vals) if vals else None
    return out | {"errors": dict(errors), "by_category": by_cat}


def _sec_eval(run: Run) -> str:
    layout = _eval_layout(run)
    if not layout:
        return str(not_available("eval/<model>/<suite>/results.parquet", "metrics.json"))
    parts: list[str] = []
    for suite, models in layout.items():
        parts.append(f'<h3 id="eval-{esc(suite)}">Suite: {esc(suite)}</h3>')
        metrics: dict[str, dict[str, Any]] = {}
        esm_vals: dict[str, list[float]] = {}
        notes: list[str] = []
        for m in models:
            base = f"eval/{m}/{suite}"
            res = None
            try:
                res = run.parquet(
                    f"{base}/results.parquet",
                    ["category", "esm", "exact", "name_acc", "parsed", "ast", "error_type"],
                )
                esm_vals[m] = [float(v) for v in res.get("esm", []) if _num(v) is not None]
            except MissingInput as e:
                notes.append(not_available(e.rel, why=e.why))
            try:
                mj = run.json(f"{base}/metrics.json")
                if not isinstance(mj, dict):
                    raise MissingInput(f"{base}/metrics.json", "not a JSON object")
                metrics[m] = mj
            except MissingInput as e:
                if res is not None:
                    metrics[m] = _metrics_from_results(res)
                    notes.append(note(f"{e.rel} missing: metrics computed from results.parquet"))
                else:
                    notes.append(not_available(e.rel, why=e.why))
        parts += notes
        if metrics:
            shown = [
                (key, label)
                for key, label in HEADLINE_METRICS
                if any(_num(mj.get(key)) is not None for mj in metrics.values())
            ]
            best = {key: best_model(metrics, key) for key, _ in shown}
            rows = [
                (
                    m,
                    metrics[m].get("n"),
                    *(with_ci(metrics[m].get(k), metrics[m].get(f"{k}_ci")) for k, _ in shown),
                )
                for m in metrics
            ]
            parts.append(
                table(
                    ["model", "n", *(label for _, label in shown)],
                    rows,
                    bold={
                        (i, j + 2)
                        for i, m in enumerate(metrics)
                        for j, (k, _) in enumerate(shown)
                        if best[k] == m
                    },
                )
            )
            parts.append(note(f"95% bootstrap intervals; bold: {BEST_RULE}."))
        if esm_vals:
            parts.append(
                plots.histograms(
                    esm_vals,
                    title=f"ESM distribution per model ({suite})",
                    xlabel="ESM score",
                    range_=(0.0, 1.0),
                    alt=f"histograms of per-example ESM for {', '.join(esm_vals)} on {suite}",
                )
            )
        # accuracy by category
        cat_models = {m: _dict(mj.get("by_category")) for m, mj in metrics.items()}
        cat_models = {m: c for m, c in cat_models.items() if c}
        parts.append(f"<h4>Accuracy by category ({esc(suite)})</h4>")
        if cat_models:
            cats = sorted({c for bc in cat_models.values() for c in bc})
            parts.append(
                plots.grouped_bars(
                    cats,
                    {
                        m: [_num((bc.get(c) or {}).get("exact")) for c in cats]
                        for m, bc in cat_models.items()
                    },
                    title=f"exact-call accuracy by category ({suite})",
                    ylabel="exact-call accuracy",
                    alt=f"grouped bar chart of exact-call accuracy per category and model on {suite}",
                )
            )
            crow = []
            for c in cats:
                for m, bc in cat_models.items():
                    v = bc.get(c)
                    if isinstance(v, dict):
                        crow.append((c, m, v.get("n"), v.get("esm"), v.get("exact"), v.get("ast")))
            parts.append(table(["category", "model", "n", *(label for _, label in METRICS)], crow))
        else:
            parts.append(note("no per-category metrics", cls="na"))
        # error types
        parts.append(f"<h4>Error types ({esc(suite)})</h4>")
        errs = {m: _dict(mj.get("errors")) for m, mj in metrics.items() if "errors" in mj}
        types = sorted({t for e in errs.values() for t in e})
        if types:
            parts.append(
                table(
                    ["error type", *errs],
                    [(t, *((errs[m] or {}).get(t, 0) for m in errs)) for t in types],
                )
            )
        elif errs:
            parts.append(note("no errors recorded"))
        else:
            parts.append(note("no error counts", cls="na"))
    return "\n".join(str(p) for p in parts)
