"""Pure logic of the `vllm` TPS sampler (DESIGN §5): request rows and engine outputs.

Functions on plain dicts (rows) and Arrow schemas, no Ray: rendering a TURN row into
request rows, expanding a gold-pass row into branch / n-sample requests from its
`prompt_logprobs`, summarising engine outputs, and collecting and regrouping them into
candidates. `vllm_sampler` wires these into Ray Data LLM passes (see its docstring).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from typing import Any

import pyarrow as pa

from ttpa_ray.config import SampleConfig
from ttpa_ray.engines.base import EngineError, GenerationParams
from ttpa_ray.engines.vllm_engine import dummy_prompt_ids, sampling_params
from ttpa_ray.sample import tokens
from ttpa_ray.sample.branch import (
    BranchPoint,
    GoldPosition,
    branch_cap,
    branch_points,
    branch_prefix,
    sample_cap,
)
from ttpa_ray.sample.candidates import Candidate, dedupe
from ttpa_ray.schema.turns import TURN_SCHEMA, Turn

GOLD, GENERATE = "gold", "generate"  # processor names passed to `processor_factory`
IDLE = "idle"  # a row with nothing to generate (dummy request)

# One request between passes. Lists are JSON strings: Ray Data LLM rows round-trip
# through Arrow and numpy, where int lists come back as arrays or tensor columns.
REQUEST_SCHEMA = pa.schema(
    [
        ("_turn_id", pa.string()),
        ("_turn", pa.string()),  # the TURN row as JSON (its `prompt` would clash with vLLM's)
        ("_kind", pa.string()),  # n_sample | branch | gold | idle
        ("_index", pa.int64()),  # sample index or branch number
        ("_ids", pa.string()),  # tokenized_prompt submitted
        ("_n_prompt", pa.int64()),  # tokens of the rendered prompt (without gold)
        ("_gold_ids", pa.string()),  # teacher-forced gold ids (through end of turn)
        ("_train_gold", pa.string()),  # train_ids(gold_text): the SAMPLED `gold_ids`
        ("_prefix", pa.string()),  # completion tokens fixed before generation (branch)
        ("_prefix_logprob", pa.float64()),  # log-prob of the branch token
        ("_branch_index", pa.int64()),
        ("_params", pa.string()),  # vllm.SamplingParams fields
        ("_forward", pa.int64()),  # tokens of earlier passes charged to this row
        ("_quarantine_reason", pa.string()),
        ("_result", pa.string()),  # postprocess: the engine output, summarised
    ]
)
# After the generate pass: one candidate (or none) per request.
RESULT_SCHEMA = pa.schema(
    [
        ("_turn_id", pa.string()),
        ("_turn", pa.string()),
        ("_kind", pa.string()),
        ("_index", pa.int64()),
        ("_train_gold", pa.string()),
        ("_forward", pa.int64()),
        ("_quarantine_reason", pa.string()),
        ("_candidate", pa.string()),
    ]
)


# -- settings ---------------------------------------------------------------------------------


def request_params(
    max_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    prompt_logprobs: int | None = None,
) -> dict[str, Any]:
    """`vllm.SamplingParams` fields of one request, `n=1`, with the sampled tokens'
    log-probs (`logprobs=0`).

    Every request of a pass has the same keys and value types: Ray Data LLM carries them
    as an Arrow struct, where a key missing in some rows becomes null (and an int field
    mixed with nulls can come back as a float). So `prompt_logprobs` is set on every row
    of the gold pass and on none of the generate pass.
    """
    gen = GenerationParams(
        max_tokens=max_tokens, temperature=float(temperature), top_p=float(top_p), seed=seed
    )
    out = {**sampling_params(gen), "logprobs": 0}
    if prompt_logprobs is not None:
        out["prompt_logprobs"] = int(prompt_logprobs)
    return out


# -- pure row builders ------------------------------------------------------------------------


def _request(
    turn: dict[str, Any], kind: str, ids: list[int], params: dict[str, Any], **fields: Any
) -> dict[str, Any]:
    """A REQUEST_SCHEMA row of `turn`'s (a request row of the same turn, or
    `{"_turn_id", "_turn"}`): its turn, gold and bookkeeping fields, then `fields`."""
    row: dict[str, Any] = {
        "_turn_id": turn["_turn_id"],
        "_turn": turn["_turn"],
        "_kind": kind,
        "_index": 0,
        "_ids": json.dumps(ids),
        "_n_prompt": 0,
        "_gold_ids": turn.get("_gold_ids"),
        "_train_gold": turn.get("_train_gold"),
        "_prefix": "[]",
        "_prefix_logprob": 0.0,
        "_branch_index": -1,
        "_params": json.dumps(params),
        "_forward": 0,
        "_quarantine_reason": turn.get("_quarantine_reason"),
        "_result": None,
    }
    row.update(fields)
    return row


def idle_row(row: dict[str, Any], dummy_ids: list[int], params: dict[str, Any]) -> dict[str, Any]:
    """`row`'s turn as a dummy request (one token in, one out) that keeps its bookkeeping
    (`_forward`, `_quarantine_reason`, gold ids) through a pass."""
    return _request(row, IDLE, dummy_ids, params, _forward=int(row.get("_forward") or 0))


def sample_rows(
    base: dict[str, Any], prompt: list[int], cfg: SampleConfig, gold_len: int
) -> list[dict[str, Any]]:
    """The `n` n-sample requests of a turn (`base`: a request row of it): seeds
    `cfg.seed + i`, temperature/top-p from `cfg`, `max_tokens` capped as the HF sampler
    caps it (`branch.sample_cap`) and at the context."""
    cap = sample_cap(gold_len, cfg.max_tokens, cfg.length_factor)
    max_tokens = min(cap, cfg.max_model_len - len(prompt))
    return [
        _request(
            base,
            "n_sample",
            prompt,
            request_params(max_tokens, cfg.temperature, cfg.top_p, cfg.seed + i),
            _index=i,
            _n_prompt=len(prompt),
        )
        for i in range(cfg.n)
    ]


def branch_rows(
    base: dict[str, Any],
    prompt: list[int],
    gold: list[int],
    points: list[BranchPoint],
    cfg: SampleConfig,
) -> list[dict[str, Any]]:
    """One greedy request per branch point: `prompt + gold[:i] + [alt]`, decoding the rest."""
    rows = []
    for b, p in enumerate(points):
        prefix = branch_prefix(gold, p)
        ids = prompt + prefix
        # The branch token is the first of the branch's tokens (as in the HF sampler).
        cap = branch_cap(len(gold), p.index, cfg.max_tokens, cfg.length_factor)
        budget = max(1, min(cap - 1, cfg.max_model_len - len(ids)))
        row = _request(
            base,
            "branch",
            ids,
            request_params(budget, seed=cfg.seed),
            _index=b,
            _n_prompt=len(prompt),
            _prefix=json.dumps(prefix),
            _prefix_logprob=float(p.logprob),
            _branch_index=p.index,
        )
        rows.append(row)
    return rows


def render_turn(
    turn_row: dict[str, Any], tokenizer: Any, eos: Iterable[int], cfg: SampleConfig, k: int
) -> list[dict[str, Any]]:
    """A TURN row → its first-pass requests: the `n` samples (mode `n_sample`) or the
    teacher-forced gold request (`branch`, `both`: prompt + gold, `prompt_logprobs=k`);
    one idle row with the reason when the turn cannot be prompted (template error,
    prompt (+ gold) not shorter than `max_model_len`)."""
    base: dict[str, Any] = {
        "_turn_id": str(turn_row["id"]),
        "_turn": json.dumps(turn_row, ensure_ascii=False),
    }
    gold_pass = cfg.mode != "n_sample"
    # One greedy token: the gold request's params, and an idle row's (same keys).
    one_token = request_params(1, seed=cfg.seed, prompt_logprobs=k if gold_pass else None)

    def quarantined(reason: str) -> list[dict[str, Any]]:
        dummy = dummy_prompt_ids(tokenizer)
        return [idle_row({**base, "_quarantine_reason": reason}, dummy, one_token)]

    try:
        turn = Turn.from_row(turn_row)
        prompt = tokens.prompt_ids(tokenizer, turn)
        gold = tokens.gold_ids(tokenizer, turn, set(eos))
        train_gold = json.dumps(tokens.train_ids(tokenizer, turn.gold_text))
    except (EngineError, KeyError, TypeError, ValueError) as exc:
        return quarantined(f"template_error: {exc}")
    submitted = len(prompt) + (len(gold) if gold_pass else 0)
    if submitted >= cfg.max_model_len:  # vLLM needs room for at least one new token
        what = "prompt + gold" if gold_pass else "prompt"
        return quarantined(
            f"prompt_too_long: {what} is {submitted} tokens, max_model_len {cfg.max_model_len}"
        )
    base.update(_gold_ids=json.dumps(gold), _train_gold=train_gold)
    if not gold_pass:
        return sample_rows(base, prompt, cfg, len(gold))
    return [_request(base, GOLD, prompt + gold, one_token, _n_prompt=len(prompt))]


# -- engine outputs ---------------------------------------------------------------------------


def _get(info: Any, name: str) -> Any:
    return info.get(name) if isinstance(info, dict) else getattr(info, name, None)


def _entries(logprob_dict: Any) -> dict[int, Any]:
    """A vLLM logprob dict (token id → {logprob, rank, decoded_token}) with int keys.

    Keys arrive as ints (pickled blocks) or strings (Arrow structs, where a struct also
    gains the other rows' keys with null values: those are dropped)."""
    if not logprob_dict:
        return {}
    return {int(t): info for t, info in dict(logprob_dict).items() if info is not None}


def gold_positions(
    prompt_logprobs: list[Any], n_prompt: int, gold: list[int], k: int | None = None
) -> list[GoldPosition]:
    """vLLM `prompt_logprobs` of `prompt + gold` → the policy at each gold token.

    Entry `n_prompt + i` is for gold token `i`: it holds that token and the top-`k`;
    `top` lists tokens of rank ≤ `k` (all when `k` is None) by rank, most likely first.
    Raises ValueError when an entry or the gold token's log-prob is missing.
    """
    if len(prompt_logprobs) < n_prompt + len(gold):
        raise ValueError(
            f"prompt_logprobs has {len(prompt_logprobs)} entries, expected {n_prompt + len(gold)}"
        )
    out = []
    for i, g in enumerate(gold):
        entry = _entries(prompt_logprobs[n_prompt + i])
        if g not in entry or _get(entry[g], "logprob") is None:
            raise ValueError(f"no log-prob for gold token {i} (id {g})")

        def order(item: tuple[int, Any]) -> tuple[float, float]:
            rank = _get(item[1], "rank")
            return (
                float(rank) if rank is not None else float("inf"),
                -float(_get(item[1], "logprob")),
            )

        ranked = sorted(entry.items(), key=order)
        top = [
            (t, float(_get(info, "logprob")))
            for t, info in ranked
            if k is None or _get(info, "rank") is None or int(_get(info, "rank")) <= k
        ]
        out.append(GoldPosition(i, g, float(_get(entry[g], "logprob")), top))
    return out


def positions_to_json(positions: list[GoldPosition]) -> list[Any]:
    return [[p.gold_id, p.gold_logprob, [[t, lp] for t, lp in p.top]] for p in positions]


def positions_from_json(data: list[Any]) -> list[GoldPosition]:
    return [
        GoldPosition(i, int(g), float(lp), [(int(t), float(x)) for t, x in top])
        for i, (g, lp, top) in enumerate(data)
    ]


def generated_logprob(generated: list[int], logprobs: Any) -> float | None:
    """Summed log-prob of the generated tokens (vLLM `logprobs`, one dict per token), or
    None when vLLM returned none."""
    if not logprobs or len(logprobs) < len(generated):
        return None
    total = 0.0
    for tok, entry in zip(generated, logprobs, strict=False):
        info = _entries(entry).get(int(tok))
        if info is None or _get(info, "logprob") is None:
            return None
        total += float(_get(info, "logprob"))
    return total


def summarize_output(row: dict[str, Any]) -> dict[str, Any]:
    """The engine output of one request row, small: generated tokens, their summed
    log-prob, the gold positions (gold pass) or why they could not be read."""
    generated = [int(t) for t in (row.get("generated_tokens") or [])]
    out: dict[str, Any] = {
        "tokens": generated,
        "logprob": generated_logprob(generated, row.get("logprobs")),
    }
    if row.get("_kind") == GOLD:
        gold = json.loads(row["_gold_ids"])
        k = json.loads(row["_params"]).get("prompt_logprobs")
        try:
            plp = list(row.get("prompt_logprobs") or [])
            positions = gold_positions(plp, int(row["_n_prompt"]), gold, k)
            out["positions"] = positions_to_json(positions)
        except (TypeError, ValueError) as exc:
            out["error"] = f"bad_prompt_logprobs: {exc}"
    return out


# -- processor pre/postprocess (run inside the Ray Data LLM processor) ------------------------


def preprocess_row(row: dict[str, Any]) -> dict[str, Any]:
    """A request row → the vLLM stage's inputs. `_result` is set here (empty) so rows
    that fail in the engine, which bypass postprocess, keep the same keys."""
    return {
        "tokenized_prompt": [int(t) for t in json.loads(row["_ids"])],
        "sampling_params": json.loads(row["_params"]),
        "_result": "",
    }


def postprocess_row(row: dict[str, Any]) -> dict[str, Any]:
    """The processed row, whole (error rows keep every key: same schema), with the
    per-position `prompt_logprobs` and `logprobs` replaced by `_result` (JSON)."""
    out = {**row, "prompt_logprobs": None, "logprobs": None}
    if row.get("_kind") != IDLE:
        out["_result"] = json.dumps(summarize_output(row))
    return out


# -- between passes (CPU tasks with the cached tokenizer) -------------------------------------


def _request_fields(row: dict[str, Any]) -> dict[str, Any]:
    return {name: row.get(name) for name in REQUEST_SCHEMA.names}


def _engine_error(row: dict[str, Any]) -> str | None:
    err = row.get("__inference_error__")
    if row.get("_kind") == IDLE or not err:
        return None
    return f"engine_error: {row['_kind']} request {row['_index']}: {err}"


def _charged(row: dict[str, Any], result: dict[str, Any] | None) -> int:
    """Tokens a finished request adds: its prompt (submitted) + what it generated."""
    if row.get("_kind") == IDLE:
        return int(row.get("_forward") or 0)
    submitted = len(json.loads(row["_ids"]))
    generated = len(result.get("tokens", [])) if result else 0
    return int(row.get("_forward") or 0) + submitted + generated


def expand_gold_row(
    row: dict[str, Any],
    cfg: SampleConfig,
    skip_special: Collection[int],
    dummy_ids: list[int],
) -> list[dict[str, Any]]:
    """A gold-pass output row → the generate-pass requests of its turn: one per branch
    point (+ the `n` samples in mode `both`), or one idle row (quarantined, or nothing
    to generate). The gold pass's tokens are charged to the first row. `skip_special`:
    token ids never taken as branch alternatives."""
    row = {**_request_fields(row), "__inference_error__": row.get("__inference_error__")}
    idle_params = request_params(1, seed=cfg.seed)
    result = json.loads(row["_result"]) if row.get("_result") else None
    forward = _charged(row, result)
    reason = row.get("_quarantine_reason") or _engine_error(row)
    if not reason and row["_kind"] == GOLD and (result is None or "error" in result):
        reason = result["error"] if result else "engine_error: gold request: no output"
    if reason or row["_kind"] != GOLD or result is None:
        return [
            idle_row(
                {**row, "_forward": forward, "_quarantine_reason": reason}, dummy_ids, idle_params
            )
        ]
    ids = json.loads(row["_ids"])
    prompt, gold = ids[: int(row["_n_prompt"])], json.loads(row["_gold_ids"])
    points = branch_points(positions_from_json(result["positions"]), cfg.branch, skip_special)
    rows = sample_rows(row, prompt, cfg, len(gold)) if cfg.mode == "both" else []
    rows += branch_rows(row, prompt, gold, points, cfg)
    if not rows:  # no branch point: no candidates, not a quarantine
        return [idle_row({**row, "_forward": forward}, dummy_ids, idle_params)]
    rows[0]["_forward"] = forward
    return rows


def collect_row(row: dict[str, Any], tokenizer: Any, eos: Iterable[int]) -> dict[str, Any]:
    """A generate-pass output row → its candidate (JSON) and the tokens it is charged."""
    result = json.loads(row["_result"]) if row.get("_result") else None
    reason = row.get("_quarantine_reason") or _engine_error(row)
    candidate = None
    kind = row["_kind"]
    if not reason and kind in ("n_sample", "branch"):
        if result is None:
            reason = f"engine_error: {kind} request {row['_index']}: no output"
        else:
            prefix = json.loads(row["_prefix"] or "[]")
            text = tokens.completion_text(tokenizer, prefix + result["tokens"], set(eos))
            logprob = result.get("logprob")
            if logprob is not None and kind == "branch":
                logprob += float(row.get("_prefix_logprob") or 0.0)
            cand = Candidate(
                text,
                kind,
                int(row["_branch_index"]) if kind == "branch" else -1,
                tokens.train_ids(tokenizer, text),
                logprob,
            )
            candidate = json.dumps(cand.to_dict(), ensure_ascii=False)
    return {
        "_turn_id": row["_turn_id"],
        "_turn": row["_turn"],
        "_kind": kind,
        "_index": int(row.get("_index") or 0),
        "_train_gold": row.get("_train_gold"),
        "_forward": _charged(row, result),
        "_quarantine_reason": reason,
        "_candidate": candidate,
    }


def assemble_turn(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A turn's collected rows → its SAMPLED row: candidates (n-samples by index, then
    branches in branch order) deduped; quarantined if any request failed."""
    turn = json.loads(rows[0]["_turn"])
    order = {"n_sample": 0, "branch": 1}
    rows = sorted(rows, key=lambda r: (order.get(r["_kind"], 2), int(r["_index"])))
    reasons = [r["_quarantine_reason"] for r in rows if r.get("_quarantine_reason")]
    train_gold = next((r["_train_gold"] for r in rows if r.get("_train_gold")), None)
    cands = [Candidate.from_dict(json.loads(r["_candidate"])) for r in rows if r["_candidate"]]
    return {
        **{name: turn.get(name) for name in TURN_SCHEMA.names},
        "candidates": "[]"
        if reasons
        else json.dumps([c.to_dict() for c in dedupe(cands)], ensure_ascii=False),
        "gold_ids": train_gold,
        "forward_tokens": sum(int(r["_forward"] or 0) for r in rows),
        "_quarantine_reason": reasons[0] if reasons else None,
    }


__all__ = [
    "GENERATE",
    "GOLD",
    "IDLE",
    "REQUEST_SCHEMA",
    "RESULT_SCHEMA",
    "assemble_turn",
    "branch_rows",
    "collect_row",
    "expand_gold_row",
    "generated_logprob",
    "gold_positions",
    "idle_row",
    "positions_from_json",
    "positions_to_json",
    "postprocess_row",
    "preprocess_row",
    "render_turn",
    "request_params",
    "sample_rows",
    "summarize_output",
]
