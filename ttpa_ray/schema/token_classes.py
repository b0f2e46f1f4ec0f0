"""Which part of a tool call each character of a completion text spells.

Pure Python; TPS and GRPO both read it. TPS: a branch pair's chosen and rejected share
their tokens up to `branch_token_index`; the chosen token there covers some characters of
the chosen text, and their class says what kind of decision the pair teaches. GRPO
(`train.grpo`): the class of a completion token says which ESM part's credit it carries.
The classes:

- `tag`: `<tool_call>` / `</tool_call>`, the whitespace around and between blocks, and
  special tokens such as `<|im_end|>` (also any offset past the end: the end of turn);
- `tool_name`: the characters of the `"name"` value (inside its quotes);
- `arg_key`: the characters of an argument key (inside its quotes);
- `arg_value`: an argument value, quotes included; a nested object or list is one value;
- `punctuation`: the JSON structure: braces, colons, commas, the quotes of names and keys,
  the `"name"`/`"arguments"` keys themselves (and whatever a malformed block holds);
- `text`: prose outside the blocks.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from ttpa_ray.schema.tool_call_text import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

TAG, TOOL_NAME, ARG_KEY, ARG_VALUE, PUNCT, TEXT = (
    "tag",
    "tool_name",
    "arg_key",
    "arg_value",
    "punctuation",
    "text",
)
CLASSES = (TAG, TOOL_NAME, ARG_KEY, ARG_VALUE, PUNCT, TEXT)

_DECODER = json.JSONDecoder()
_SPECIAL = re.compile(r"<\|[^|<>\s]*\|>")  # `<|im_end|>`, `<|endoftext|>`, ...
_WS = " \t\n\r"
# on_pair(key, key_start, key_end, value_start, value_end): key span without its quotes
_OnPair = Callable[[str, int, int, int, int], None]


def _skip_ws(text: str, i: int, end: int) -> int:
    while i < end and text[i] in _WS:
        i += 1
    return i


def _value_end(text: str, i: int, end: int) -> int:
    """End of the JSON value starting at `i`; raises ValueError when there is none."""
    _, stop = _DECODER.raw_decode(text, i)
    if stop > end:
        raise ValueError("value runs past the block")
    return stop


def _object(text: str, i: int, end: int, on_pair: _OnPair) -> int:
    """Walk the JSON object at `i`, calling `on_pair` per member; returns its end.
    Raises ValueError where the text stops being a JSON object."""
    if i >= end or text[i] != "{":
        raise ValueError("not an object")
    i = _skip_ws(text, i + 1, end)
    if i < end and text[i] == "}":
        return i + 1
    while True:
        k_end = _value_end(text, i, end)
        key = json.loads(text[i:k_end])
        if not isinstance(key, str):
            raise ValueError("key is not a string")
        j = _skip_ws(text, k_end, end)
        if j >= end or text[j] != ":":
            raise ValueError("no colon")
        v_start = _skip_ws(text, j + 1, end)
        v_end = _value_end(text, v_start, end)
        on_pair(key, i + 1, k_end - 1, v_start, v_end)
        i = _skip_ws(text, v_end, end)
        if i < end and text[i] == ",":
            i = _skip_ws(text, i + 1, end)
            continue
        if i < end and text[i] == "}":
            return i + 1
        raise ValueError("no comma or closing brace")


def _classify_block(text: str, start: int, end: int, out: list[str]) -> None:
    """Fill `out[start:end]` for one block body: edge whitespace `tag`, the JSON by role."""
    lo, hi = _skip_ws(text, start, end), end
    while hi > lo and text[hi - 1] in _WS:
        hi -= 1
    for k in range(start, end):
        out[k] = TAG if k < lo or k >= hi else PUNCT

    def member(key: str, ks: int, ke: int, vs: int, ve: int) -> None:
        if key == "name" and text[vs] == '"':
            out[vs + 1 : ve - 1] = [TOOL_NAME] * (ve - vs - 2)
        elif key == "arguments":
            if text[vs] == "{":
                _object(text, vs, ve, arg)
            else:  # arguments as a JSON string, or not an object: one value
                out[vs:ve] = [ARG_VALUE] * (ve - vs)

    def arg(key: str, ks: int, ke: int, vs: int, ve: int) -> None:
        out[ks:ke] = [ARG_KEY] * (ke - ks)
        out[vs:ve] = [ARG_VALUE] * (ve - vs)

    # A malformed block stays punctuation past what parsed.
    with contextlib.suppress(ValueError, RecursionError):
        _object(text, lo, hi, member)


def char_classes(text: str) -> list[str]:
    """The class of every character of `text` (a completion: content and `<tool_call>`
    blocks, possibly followed by an end-of-turn token)."""
    out = [TEXT] * len(text)
    for m in _SPECIAL.finditer(text):
        out[m.start() : m.end()] = [TAG] * (m.end() - m.start())
    pos = 0
    while (open_at := text.find(TOOL_CALL_OPEN, pos)) >= 0:
        body = open_at + len(TOOL_CALL_OPEN)
        close = text.find(TOOL_CALL_CLOSE, body)
        reopen = text.find(TOOL_CALL_OPEN, body)
        closed = close >= 0 and (reopen < 0 or close < reopen)
        # Block boundaries as `parse_tool_calls` draws them (unclosed: to the next block).
        stop = close if closed else reopen if reopen >= 0 else len(text)
        out[open_at:body] = [TAG] * len(TOOL_CALL_OPEN)
        _classify_block(text, body, stop, out)
        pos = stop
        if closed:
            out[close : close + len(TOOL_CALL_CLOSE)] = [TAG] * len(TOOL_CALL_CLOSE)
            pos = close + len(TOOL_CALL_CLOSE)
    # Whitespace next to a tag (newlines around and between blocks, before the end of
    # turn) or at either end is `tag`; spaces inside prose stay `text`.
    for m in re.finditer(r"\s+", text):
        a, b = m.start(), m.end()
        if out[a] == TEXT and (a == 0 or b == len(text) or TAG in (out[a - 1], out[b])):
            out[a:b] = [TAG] * (b - a)
    return out


def call_spans(text: str) -> list[tuple[int, int, str]]:
    """`text` as maximal runs `(start, end, class)` covering it in order."""
    spans: list[tuple[int, int, str]] = []
    for k, c in enumerate(char_classes(text)):
        if spans and spans[-1][2] == c:
            spans[-1] = (spans[-1][0], k + 1, c)
        else:
            spans.append((k, k + 1, c))
    return spans


def _span_class(text: str, classes: list[str], start: int, end: int) -> str:
    # A token's class is its first non-whitespace character's: BPE glues quotes and spaces
    # to their neighbours, so ` "Paris` (opening quote) is a value, `": ` (a key's closing
    # quote and the colon) is structure.
    end = min(end, len(text))
    if start >= len(text):
        return TAG  # past the text: the end of turn
    for k in range(start, max(end, start + 1)):
        if text[k] not in _WS:
            return classes[k]
    return classes[start]


def token_class(text: str, char_offset: int, char_end: int | None = None) -> str:
    """The class of the token covering `text[char_offset:char_end]` (one character when
    `char_end` is None); an offset at or past the end of `text` is `tag`."""
    end = char_offset + 1 if char_end is None else char_end
    return _span_class(text, char_classes(text), char_offset, end)


def divergence_histogram(spans: Iterable[tuple[str, int, int]]) -> dict[str, int]:
    """Counts per class (every class present, zeros included) of `(chosen text, start,
    end)`: the chosen characters covered by each pair's first diverging token."""
    counts: Counter[str] = Counter()
    cache: dict[str, list[str]] = {}
    for text, start, end in spans:
        classes = cache.get(text)
        if classes is None:
            classes = cache[text] = char_classes(text)
        counts[_span_class(text, classes, start, end)] += 1
    return {c: counts[c] for c in CLASSES}


# -- branch pairs (a tokenizer, duck-typed: the policy's, as `sample.tokens` uses it) ---------


def token_char_spans(tokenizer: Any, text: str) -> tuple[str, list[tuple[int, int]]]:
    """(`text + eos`, the character span of each of its tokens), tokenized as training
    tokenizes a pair's text (`sample.tokens.train_ids`), so `branch_token_index` indexes
    the spans. Fast tokenizers give offsets; slow ones decode growing prefixes."""
    full = text + (tokenizer.eos_token or "")
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        return full, [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    ids = list(tokenizer(full, add_special_tokens=False)["input_ids"])
    ends = [
        len(tokenizer.decode(ids[:k], clean_up_tokenization_spaces=False))
        for k in range(len(ids) + 1)
    ]
    return full, list(zip(ends[:-1], ends[1:], strict=True))


def branch_divergence(pairs: Iterable[dict[str, Any]], tokenizer: Any) -> dict[str, int]:
    """Histogram (every class of `CLASSES` → pairs) of the class of each branch pair's
    first diverging token, located in its chosen text.

    `pairs`: PAIR_SCHEMA rows; only `source == "branch"` rows with `branch_token_index >=
    0` count. An index past the chosen tokens counts as `tag` (the end of turn). Each
    distinct chosen text is tokenized once (many pairs share the gold answer).
    """
    tokenized: dict[str, tuple[str, list[tuple[int, int]]]] = {}
    located = []
    for p in pairs:
        index = p.get("branch_token_index")
        if p.get("source") != "branch" or index is None or index < 0:
            continue
        text = p["chosen_text"]
        if text not in tokenized:
            tokenized[text] = token_char_spans(tokenizer, text)
        full, spans = tokenized[text]
        start, end = spans[index] if index < len(spans) else (len(full), len(full))
        located.append((full, start, end))
    return divergence_histogram(located)
