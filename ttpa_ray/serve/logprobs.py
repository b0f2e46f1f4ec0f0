"""Token log-probabilities as the endpoint reports them (`logprobs`, `top_logprobs`).

A value is the log-softmax, in float32, of the model's raw logits at its step
(`generate(output_logits=True)`): the model's own distribution, before temperature,
top_p and any grammar mask — vLLM's default (`raw_logprobs`) and what the `hf` TPS
sampler sums — so a token's log-prob does not depend on the sampling settings. (The
grammar's logits processor never edits the logits in place for this reason.) Cost:
`generate` keeps every step's logits (steps × rows × vocab floats) until it returns;
only groups that ask for logprobs pay it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ttpa_ray.serve.responses import TokenLogprob

LOGPROB_FLOOR = -9999.0  # -inf as JSON can carry it (vLLM's choice too)


@dataclass
class StepLogprobs:
    """Per row and step: the chosen token's log-prob (`chosen[r][s]`) and the `k` most
    likely tokens' log-probs and ids (`top_values[r][s]`, `top_ids[r][s]`, best first)."""

    chosen: list[list[float]]
    top_values: list[list[list[float]]]
    top_ids: list[list[list[int]]]


def step_logprobs(logits: tuple[torch.Tensor, ...], tokens: torch.Tensor, k: int) -> StepLogprobs:
    """From `generate`'s raw logits (one `[R, V]` tensor per step) and the tokens it
    chose (`[R, S]`, padding after a row's end included). One step at a time, never
    `[R, S, V]` at once."""
    rows, steps = tokens.shape
    if len(logits) != steps:
        raise RuntimeError(f"generate returned logits for {len(logits)} of {steps} steps")
    chosen = torch.empty((rows, steps), dtype=torch.float32)
    values = torch.empty((rows, steps, k), dtype=torch.float32)
    ids = torch.empty((rows, steps, k), dtype=torch.long)
    for s, step in enumerate(logits):
        lp = torch.log_softmax(step.float(), dim=-1)
        chosen[:, s] = lp.gather(1, tokens[:, s : s + 1].to(lp.device)).squeeze(1).cpu()
        if k:
            v, i = lp.topk(k, dim=-1)
            values[:, s], ids[:, s] = v.cpu(), i.cpu()
    return StepLogprobs(chosen.tolist(), values.tolist(), ids.tolist())


class TokenTexts:
    """`tokenizer.decode([id])` per token id, special tokens kept, cached (the
    vocabulary is finite; a dict is safe to share between threads here)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        text = self._texts.get(token)
        if text is None:
            text = str(self.tokenizer.decode([token], skip_special_tokens=False))
            self._texts[token] = text
        return text


def token_logprobs(
    scored: StepLogprobs, row: int, tokens: list[int], k: int, texts: TokenTexts
) -> list[TokenLogprob]:
    """Row `row`'s first `len(tokens)` steps as reported: each token with its log-prob
    and its top `k` alternatives."""

    def lp(value: float) -> float:
        return max(value, LOGPROB_FLOOR)

    out = []
    for s, t in enumerate(tokens):
        top_ids, top_values = scored.top_ids[row][s][:k], scored.top_values[row][s][:k]
        pairs = zip(top_ids, top_values, strict=True)
        top = [TokenLogprob(texts(a), lp(v), token_id=a) for a, v in pairs]
        out.append(TokenLogprob(texts(t), lp(scored.chosen[row][s]), top, token_id=t))
    return out


def covering(tokenizer: Any, body: list[int], text: str) -> list[int]:
    """The shortest prefix of `body` whose decoded text covers `text`: a completion that
    a stop string cut reports its tokens up to the one the stop string begins in."""
    for k in range(len(body) + 1):
        if len(str(tokenizer.decode(body[:k], skip_special_tokens=True))) >= len(text):
            return body[:k]
    return body
