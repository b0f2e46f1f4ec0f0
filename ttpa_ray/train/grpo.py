"""GRPO with ESM as the reward, and token-span credit from ESM's parts (pure; no Ray).

A prompt's group of completions is scored against the gold call (`score_completion`); each
completion's reward, and each of its call parts, is compared with the group's
(`group_advantages`); the advantages go onto the completion's tokens (`span_advantages`)
and into the clipped policy-gradient loss with a KL term to the reference (`grpo_loss`).

The span rule (`train.grpo.advantage: span`):

- Part scores per completion, from ESM's breakdown over its best matching of predicted and
  gold calls: `name = S_name`, `key = (S_required + S_key) / 2`, `value = (S_type +
  S_value) / 2`. For parallel calls each component is already summed over the matched
  pairs and divided by max(#pred, #gold), so a missing or extra call lowers every part and
  all calls of a completion share its part scores (their value tokens move together).
- Part advantage: `group_advantages` of that part's scores across the group; sequence
  advantage: `group_advantages` of the rewards.
- Token labels (`token_parts`): a token spelling any character of the tool name gets the
  `name` advantage, of an argument key the `key` one, of an argument value (quotes
  included; a nested object or list is one value) the `value` one; tags, JSON punctuation,
  the end of turn and prose get the sequence advantage. A part every completion got equally right (or wrong) has advantage 0 on its
  tokens: a wrong value moves only the value tokens among the call's parts.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ttpa_ray.config import GRPOConfig
from ttpa_ray.schema.token_classes import (
    ARG_KEY,
    ARG_VALUE,
    PUNCT,
    TAG,
    TEXT,
    TOOL_NAME,
    char_classes,
)
from ttpa_ray.schema.tool_call_text import parse_prediction, to_flat_calls
from ttpa_ray.score.esm import COMPONENTS, esm_breakdown
from ttpa_ray.score.exact import exact_match

PARTS = ("name", "key", "value")
STRUCTURE = "structure"
LABELS = (STRUCTURE, *PARTS, TEXT)
# `schema.token_classes` class → GRPO token label
_LABEL_OF_CLASS = {
    TAG: STRUCTURE,
    PUNCT: STRUCTURE,
    TOOL_NAME: "name",
    ARG_KEY: "key",
    ARG_VALUE: "value",
    TEXT: TEXT,
}


@dataclass
class CallReward:
    """One completion scored against the gold calls.

    `reward`: per `cfg.reward`. `esm`: the ESM score. `exact`: eval's exact-call match.
    `parsed`: at least one call parsed. `parts`: name/key/value correctness in [0, 1].
    `components`: ESM's five components (`name, required, key, type, value`).
    """

    reward: float
    esm: float
    exact: bool
    parsed: bool
    parts: dict[str, float]
    components: dict[str, float] = field(default_factory=dict)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def parts_of(components: dict[str, float]) -> dict[str, float]:
    """ESM's five components → the three call parts whose tokens carry credit."""
    return {
        "name": components["name"],
        "key": (components["required"] + components["key"]) / 2,
        "value": (components["type"] + components["value"]) / 2,
    }


def score_completion(
    text: str, gold_calls: str | list[Any], tools: str | list[Any], cfg: GRPOConfig
) -> CallReward:
    """Score raw model output `text` against `gold_calls` (flat or OpenAI calls, or their
    JSON) given the offered `tools` (list or JSON).

    The text is read as eval reads it (`parse_prediction`), and ESM and `exact` are eval's,
    so a rollout scores what eval would. A text with no parseable call against a gold call
    scores 0 everywhere (ESM's `no_call`)."""
    calls, errors = parse_prediction(text)
    gold = to_flat_calls(_json(gold_calls))
    breakdown = esm_breakdown(calls, gold, _json(tools))
    components = {c: float(breakdown[c]) for c in COMPONENTS}
    esm = float(breakdown["score"])
    exact = exact_match(calls, gold) and not errors
    if cfg.reward == "esm":
        reward = esm
    elif cfg.reward == "exact":
        reward = float(exact)
    else:
        total = sum(cfg.weights.values())
        reward = sum(w * components[c] for c, w in cfg.weights.items()) / total
    return CallReward(
        reward=reward,
        esm=esm,
        exact=exact,
        parsed=bool(calls),
        parts=parts_of(components),
        components=components,
    )


def group_advantages(
    values: Sequence[float], std_normalise: bool, eps: float = 1e-6
) -> list[float]:
    """`(v - mean) / (std + eps)` (population std) or `v - mean`; an all-equal group is
    exactly 0 (float residue of the mean must not become a normalised ±1)."""
    v = [float(x) for x in values]
    if not v or all(x == v[0] for x in v):
        return [0.0] * len(v)
    mean = sum(v) / len(v)
    centred = [x - mean for x in v]
    if not std_normalise:
        return centred
    std = math.sqrt(sum(c * c for c in centred) / len(v))
    return [c / (std + eps) for c in centred]


def completion_offsets(tokenizer: Any, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """(the decoded completion, each token's character span in it), special tokens kept.

    Sampled ids need not be the tokenizer's own tokenization of their text, so the fast
    tokenizer's offsets are used only when re-encoding gives back the same ids; otherwise
    growing prefixes are decoded. A token holding part of a multi-byte character gets an
    empty span (the character belongs to the token that completes it)."""
    ids = [int(i) for i in ids]

    def decode(part: list[int]) -> str:
        return str(
            tokenizer.decode(part, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        )

    text = decode(ids)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) == ids:
            return text, [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    spans, end = [], 0
    for k in range(1, len(ids) + 1):
        prefix = decode(ids[:k])
        new_end = len(prefix) if text.startswith(prefix) and len(prefix) >= end else end
        spans.append((end, new_end))
        end = new_end
    return text, spans


def span_label(text: str, classes: list[str], start: int, end: int) -> str:
    """The label of the token covering `text[start:end]` (`classes`: `char_classes(text)`);
    the rule is `token_parts`'."""
    if start >= len(text):
        return STRUCTURE  # past the text: the end of turn
    if end <= start:  # a partial character: label it as the character it helps spell
        return _LABEL_OF_CLASS[classes[start]]
    labels = [_LABEL_OF_CLASS[classes[k]] for k in range(start, min(end, len(text)))]
    # A token that spells any character of a part decides that character, so the part's
    # credit goes to it (`y":` ends a key; ` "Par` starts a value). Whitespace glued to a
    # token says nothing about what it spells.
    pool = [lab for lab in labels if lab in PARTS] or [
        lab for k, lab in zip(range(start, end), labels, strict=False) if not text[k].isspace()
    ]
    pool = pool or labels
    counts = Counter(pool)
    most = max(counts.values())
    return next(lab for lab in pool if counts[lab] == most)


def token_parts(tokenizer: Any, completion_ids: Sequence[int]) -> list[str]:
    """One label per completion token, from `LABELS`.

    Character classes are `schema.token_classes.char_classes` (tag and punctuation →
    structure, tool name → name, argument key → key, argument value → value, prose →
    text; special tokens such as the end of turn are tags). A token with characters of a
    call part takes the part most of those characters belong to; any other token the label
    most of its non-whitespace characters have (all of them when it is only whitespace).
    Ties go to the label of the earliest character."""
    text, spans = completion_offsets(tokenizer, completion_ids)
    classes = char_classes(text)
    return [span_label(text, classes, a, b) for a, b in spans]


def token_advantages(
    labels: Sequence[str],
    part_adv: dict[str, float],
    seq_adv: float,
    mode: Literal["sequence", "span"],
) -> list[float]:
    """Per-token advantages of one completion: `seq_adv` everywhere (sequence), or the
    part's advantage on name/key/value tokens and `seq_adv` on the rest (span)."""
    if mode == "sequence":
        return [seq_adv] * len(labels)
    return [part_adv.get(label, seq_adv) for label in labels]


def span_advantages(
    rewards: Sequence[CallReward], labels: Sequence[Sequence[str]], cfg: GRPOConfig
) -> list[list[float]]:
    """Per-token advantages of one group (its completions' rewards and token labels),
    per `cfg.advantage` and `cfg.std_normalise`."""
    seq = group_advantages([r.reward for r in rewards], cfg.std_normalise)
    part = {p: group_advantages([r.parts[p] for r in rewards], cfg.std_normalise) for p in PARTS}
    return [
        token_advantages(lab, {p: part[p][i] for p in PARTS}, seq[i], cfg.advantage)
        for i, lab in enumerate(labels)
    ]


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    kl_beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO loss over completion tokens, all inputs `[B, T]` (`mask` 1 on completion
    tokens; `old_logps` from the rollout policy, `ref_logps` from the reference).

    Per token: `-min(r·A, clip(r, 1-ε, 1+ε)·A) + β·KL`, `r = exp(logp - old_logp)`, KL the
    k3 estimator `exp(ref - logp) - (ref - logp) - 1` (unbiased, >= 0; as the GRPO paper).
    The loss is the mean over all masked tokens of the batch, not a mean of per-completion
    means: per-completion means weigh a short completion's tokens more (DAPO, Dr. GRPO).
    Metrics: `loss`, `kl` (token mean), `clip_frac` (share of tokens where the clipped term
    is the one taken), `ratio_mean`."""
    m = mask.bool()
    zero = torch.zeros_like(logps)
    # Padding may hold -inf log-probs; zero them before exp so no NaN reaches the gradient.
    logps = torch.where(m, logps, zero)
    old = torch.where(m, old_logps.detach(), zero)
    ref = torch.where(m, ref_logps.detach(), zero)
    adv = torch.where(m, advantages.detach().to(logps.dtype), zero)
    ratio = torch.exp(logps - old)
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    surrogate = torch.minimum(ratio * adv, clipped * adv)
    diff = ref - logps
    kl = torch.exp(diff) - diff - 1.0
    n = m.sum().clamp(min=1)
    per_token = torch.where(m, -surrogate + kl_beta * kl, zero)
    loss = per_token.sum() / n
    with torch.no_grad():
        is_clipped = ((ratio > 1.0 + clip_eps) & (adv > 0)) | ((ratio < 1.0 - clip_eps) & (adv < 0))
        metrics = {
            "loss": float(loss),
            "kl": float((kl * m).sum() / n),
            "clip_frac": float((is_clipped & m).sum() / n),
            "ratio_mean": float((ratio * m).sum() / n),
        }
    return loss, metrics
