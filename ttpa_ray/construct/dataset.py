"""Episodes after construction: deterministic split, dataset card, export formats. Pure."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

SPLITS = ("train", "val", "test")


def _unit(key: str) -> float:
    """A stable number in [0, 1) from a string (same on every machine and run)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16**12


def episode_tool_names(row: dict[str, Any]) -> set[str]:
    """Tools an episode actually calls (not merely offers)."""
    return {
        c["function"]["name"] for m in row.get("messages") or [] for c in m.get("tool_calls") or []
    }


def pick_holdout_tools(rows: list[dict[str, Any]], n: int, seed: int) -> list[str]:
    """`n` called tools to hold out of training, chosen by a seeded hash (not by frequency,
    so rare and common tools are equally likely)."""
    called = sorted({t for r in rows for t in episode_tool_names(r)})
    return sorted(called, key=lambda t: _unit(f"{seed}:{t}"))[:n]


def split_rows(
    rows: list[dict[str, Any]], val: float, test: float, holdout: list[str]
) -> dict[str, list[dict[str, Any]]]:
    """Split by episode id hash; an episode that calls a held-out tool goes to test, so
    test measures generalisation to tools never seen in training."""
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    held = set(holdout)
    for r in rows:
        u = _unit(r["id"])
        if held & episode_tool_names(r) or u < test:
            out["test"].append(r)
        elif u < test + val:
            out["val"].append(r)
        else:
            out["train"].append(r)
    return out


def episode_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Figures for the card: calls per episode, tool coverage, argument types, reuse."""
    calls_per = [len([c for m in r["messages"] for c in m.get("tool_calls") or []]) for r in rows]
    tools = Counter(t for r in rows for t in episode_tool_names(r))
    arg_types: Counter[str] = Counter()
    for r in rows:
        for m in r["messages"]:
            for c in m.get("tool_calls") or []:
                for v in json.loads(c["function"]["arguments"]).values():
                    arg_types[type(v).__name__] += 1
    metas = [json.loads(r["meta"]) if r.get("meta") else {} for r in rows]
    reuse = sum(1 for m in metas if m.get("memory_reuse", 0) > 0)
    parallel = sum(
        1 for r in rows if any(len(m.get("tool_calls") or []) > 1 for m in r["messages"])
    )
    coverage = [m["query_coverage"] for m in metas if "query_coverage" in m]
    return {
        "episodes": len(rows),
        # LLM teachers: mean share of user-given values the query states verbatim
        "query_coverage": sum(coverage) / len(coverage) if coverage else None,
        "calls_per_episode": dict(sorted(Counter(calls_per).items())),
        "tools_called": len(tools),
        "tool_counts": dict(tools.most_common()),
        "argument_types": dict(arg_types.most_common()),
        "share_memory_reuse": reuse / len(rows) if rows else 0.0,
        "share_parallel_turn": parallel / len(rows) if rows else 0.0,
    }


def write_card(out: Path, stats: dict[str, Any], manifest: dict[str, Any]) -> Path:
    """`card.md` plus plots (calls per episode, tool coverage, argument types) next to the data."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6), width_ratios=[1, 2.2, 1])
    cpe = stats["calls_per_episode"]
    axes[0].bar([str(k) for k in cpe], list(cpe.values()), color="#4C72B0")
    axes[0].set(title="tool calls per episode", xlabel="calls", ylabel="episodes")
    top = list(stats["tool_counts"].items())[:30]
    axes[1].bar([t for t, _ in top], [c for _, c in top], color="#55A868")
    axes[1].set(
        title=f"tool coverage (top {len(top)} of {stats['tools_called']})", ylabel="episodes"
    )
    axes[1].tick_params(axis="x", labelrotation=90, labelsize=6)
    types = stats["argument_types"]
    axes[2].bar(list(types), list(types.values()), color="#C44E52")
    axes[2].set(title="argument value types", xlabel="JSON type (Python name)", ylabel="arguments")
    fig.tight_layout()
    fig.savefig(out / "card_stats.png", dpi=110)
    plt.close(fig)

    splits = manifest["splits"]
    lines = [
        "# Dataset card: ttpa-ray constructed episodes",
        "",
        f"Teacher: `{manifest['teacher']}`; catalog: `{manifest['catalog']}`; "
        f"config hash `{manifest['config_hash']}`. Reversed construction: scene → trajectory → "
        "final answer → user query (written last).",
        "",
        "| split | episodes |",
        "|---|---|",
        *[f"| {s} | {splits[s]} |" for s in SPLITS],
        "",
        f"Held-out tools (only in test): {', '.join(manifest['holdout_tools']) or 'none'}.",
        f"Quarantined episodes: {manifest['quarantined']} (reasons in `quarantine.parquet`).",
        "",
        f"- tools called: {stats['tools_called']}",
        f"- episodes reusing an earlier result in a later call: {stats['share_memory_reuse']:.1%}",
        f"- episodes with a parallel-call turn: {stats['share_parallel_turn']:.1%}",
        f"- argument value types: {stats['argument_types']}",
        *(
            [f"- query states the user-given values (mean share): {stats['query_coverage']:.1%}"]
            if stats.get("query_coverage") is not None
            else []
        ),
        f"- quarantine reasons: {manifest.get('quarantine_reasons') or 'none'}",
        "- rows per step (in / out / quarantined): "
        + "; ".join(
            f"{st['stage'].split('.')[-1]} {st['rows_in']}/{st['rows_out']}/{st['rows_quarantined']}"
            for st in manifest.get("stages", [])
            if "." in st["stage"]
        ),
        "",
        "![stats](card_stats.png)",
        "",
    ]
    path = out / "card.md"
    path.write_text("\n".join(lines))
    return path


def to_openai_jsonl(row: dict[str, Any]) -> dict[str, Any]:
    """One episode as `{"messages": [...], "tools": [...]}` (OpenAI fine-tuning format)."""
    from ttpa_ray.schema.records import messages_to_openai

    messages = messages_to_openai(row["messages"])
    if row.get("system"):
        messages = [{"role": "system", "content": row["system"]}, *messages]
    return {"messages": messages, "tools": json.loads(row["tools"])}


# LLaMA-Factory's own converter for OpenAI-style data (`OpenAIDatasetConverter` in
# src/llamafactory/data/converter.py) merges consecutive tool results into one observation
# joined by this string; its Qwen template wraps the observation in <tool_response> tags, so
# the merged turn renders as one <tool_response> block per result, as our chat template does.
SHAREGPT_OBSERVATION_SEP = "\n</tool_response>\n<tool_response>\n"


def sharegpt_turns(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """OpenAI messages (system excluded) → ShareGPT turns that LLaMA-Factory keeps.

    LLaMA-Factory drops a conversation unless `human`/`observation` sit at odd positions and
    `gpt`/`function_call` at even ones, so the results of one parallel-call turn become a
    single `observation` (joined by `SHAREGPT_OBSERVATION_SEP`), and the calls themselves
    one `function_call` turn: a JSON object for one call, a JSON list for parallel calls.
    An assistant turn's text next to its calls is dropped: a `function_call` value must be
    pure JSON there.
    """
    turns: list[dict[str, str]] = []
    results: list[str] = []
    for m in messages:
        if m["role"] == "tool":
            results.append(m.get("content") or "")
            continue
        if results:
            turns.append({"from": "observation", "value": SHAREGPT_OBSERVATION_SEP.join(results)})
            results = []
        if m["role"] == "user":
            turns.append({"from": "human", "value": m.get("content") or ""})
        elif m.get("tool_calls"):
            calls = [
                {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
                for c in m["tool_calls"]
            ]
            value = json.dumps(calls if len(calls) > 1 else calls[0], ensure_ascii=False)
            turns.append({"from": "function_call", "value": value})
        else:
            turns.append({"from": "gpt", "value": m.get("content") or ""})
    if results:
        turns.append({"from": "observation", "value": SHAREGPT_OBSERVATION_SEP.join(results)})
    return turns


def to_sharegpt(row: dict[str, Any]) -> dict[str, Any]:
    """ShareGPT with tools in LLaMA-Factory's convention (`function_call`/`observation`
    turns, `system` and `tools` columns; `tools` is a JSON string)."""
    messages = [m for m in to_openai_jsonl(row)["messages"] if m["role"] != "system"]
    return {
        "conversations": sharegpt_turns(messages),
        "system": row.get("system") or "",
        "tools": row["tools"],
    }


EXPORTERS = {"openai-jsonl": to_openai_jsonl, "sharegpt": to_sharegpt}


def set_card_section(card: Path, name: str, markdown: str) -> None:
    """Add or replace the section `name` of `card.md` (between HTML comment markers), for
    figures later stages know, e.g. prompt lengths in the policy's tokens."""
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = card.read_text(encoding="utf-8") if card.exists() else ""
    if begin in text and end in text:
        text = text[: text.index(begin)] + text[text.index(end) + len(end) :].lstrip("\n")
    card.write_text(f"{text.rstrip()}\n\n{begin}\n{markdown.strip()}\n{end}\n", encoding="utf-8")
