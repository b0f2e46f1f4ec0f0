"""Token ids of a turn as every engine and the trainer see them (tokenizer only, no model).

`prompt_ids`: the chat template with the turn's tools and the generation prompt.
`gold_ids`: the gold turn as the template renders it after the prompt, through the
end-of-turn token (what SFT taught the policy to write: the teacher-forced sequence).
`train_ids`: a completion text + end of turn as `train.data` tokenizes a pair's text.
"""

from __future__ import annotations

from typing import Any

from ttpa_ray.engines.base import EngineError
from ttpa_ray.schema.turns import Turn


def render_prompt(tokenizer: Any, turn: Turn) -> str:
    try:
        return str(
            tokenizer.apply_chat_template(
                turn.prompt, tools=turn.tools or None, add_generation_prompt=True, tokenize=False
            )
        )
    except Exception as exc:
        raise EngineError(f"turn {turn.id}: chat template failed: {exc}") from exc


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(tokenizer: Any, turn: Turn) -> list[int]:
    return encode(tokenizer, render_prompt(tokenizer, turn))


def gold_ids(tokenizer: Any, turn: Turn, eos_ids: set[int]) -> list[int]:
    """Raises EngineError when the template does not render the gold turn after the prompt
    (token-identical prefix) or renders no end-of-turn token."""
    try:
        full = tokenizer.apply_chat_template(
            [*turn.prompt, turn.gold], tools=turn.tools or None, tokenize=False
        )
    except Exception as exc:
        raise EngineError(f"turn {turn.id}: chat template failed on gold: {exc}") from exc
    ids = encode(tokenizer, str(full))
    prompt = prompt_ids(tokenizer, turn)
    if ids[: len(prompt)] != prompt:
        raise EngineError(f"turn {turn.id}: the template does not render gold after the prompt")
    gold = ids[len(prompt) :]
    end = next((k for k, t in enumerate(gold) if t in eos_ids), None)
    if not gold or end is None:
        raise EngineError(f"turn {turn.id}: the template renders no end of turn after gold")
    return gold[: end + 1]


def train_ids(tokenizer: Any, text: str) -> list[int]:
    return encode(tokenizer, text + (tokenizer.eos_token or ""))


def completion_text(tokenizer: Any, ids: list[int], eos: set[int]) -> str:
    """Generated ids → text, without end-of-turn and special tokens."""
    return str(tokenizer.decode([t for t in ids if t not in eos], skip_special_tokens=True))
