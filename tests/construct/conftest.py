"""A scripted teacher model: valid (or deliberately broken) JSON replies to our step prompts.

It stands in for an LLM where none can run here (no GPU, no downloads). It reads only
the prompt text, as a model would: tool names from the scene window, tool schemas from
the trajectory prompt. Replies depend on a hash of the prompt, so they are deterministic
and some episodes fail in each documented way:
  scene:      h % 10 == 0 → prose twice (discarded), 1 → prose then valid (repaired),
              2 → {"restart": ...}
  trajectory: h % 10 == 3 → a call with a wrong argument type, twice (discarded)
  engine:     a prompt whose hash % 17 == 5 raises EngineError (batch isolation)
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from http_fake import json_server

from ttpa_ray.construct.values import ValueSampler
from ttpa_ray.engines.base import ChatRequest, EngineError, GenerationParams


def _hash(text: str) -> int:
    return int(hashlib.md5(text.encode()).hexdigest()[:8], 16)


def scripted_reply(messages: list[dict[str, Any]]) -> str:
    """The reply to a step prompt (`messages[1]` is the step's user message)."""
    prompt = messages[1]["content"]
    repair = len(messages) > 2
    h = _hash(prompt)
    if prompt.startswith("Step 1"):
        if h % 10 == 0 or (h % 10 == 1 and not repair):
            return "Sure! Here is a lovely scene for you."
        if h % 10 == 2:
            return json.dumps({"restart": "these tools do not fit together"})
        names = re.findall(r"^- ([A-Za-z0-9_-]+): ", prompt, flags=re.M)
        lo = int(re.search(r"names of (\d+) to", prompt).group(1))
        return json.dumps(
            {
                "scenario": f"Ana Silva plans her week around {names[0]}.",
                "constraints": [f"Constraint {i} is {h % 97 + i}." for i in range(4)],
                "tools": names[:lo],
            }
        )
    if prompt.startswith("Step 2"):
        tools = [json.loads(line) for line in prompt.splitlines() if line.startswith('{"name"')]
        rng = random.Random(h)
        sampler = ValueSampler(rng)
        calls = [
            {"name": t["name"], "arguments": sampler.sample(t["parameters"])}
            for t in (tools * 4)[:4]
        ]
        if h % 10 == 3:
            calls[1]["arguments"] = [1, 2]  # not an object: never validates
        results = [{"status": "ok", "ref": f"r{i}-{h % 1000}"} for i in range(4)]
        turns = [
            {"calls": calls[:2], "results": results[:2]},
            {"calls": calls[2:3], "results": results[2:3]},
            {"calls": calls[3:], "results": results[3:]},
        ]
        return "```json\n" + json.dumps({"turns": turns}) + "\n```"
    if prompt.startswith("Step 3"):
        return json.dumps({"answer": f"All done (ref {h % 1000})."})
    if prompt.startswith("Step 4"):
        return "Here you go: " + json.dumps({"query": f"Please sort out my week, ref {h % 97}."})
    return "I do not understand."


def engine_fails(messages: list[dict[str, Any]]) -> bool:
    return _hash(messages[1]["content"]) % 17 == 5


class ScriptedEngine:
    """A `TextEngine` over `scripted_reply`; counts batches and requests."""

    name = "scripted"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def generate(self, requests: list[ChatRequest], params: GenerationParams) -> list[list[str]]:
        self.batches.append(len(requests))
        for r in requests:
            if engine_fails(r.messages):
                raise EngineError(f"request {r.request_id!r}: backend refused it")
        return [[scripted_reply(r.messages)] * params.n for r in requests]


# Taken at import: every directory's conftest is named `conftest`, so by the time a
# fixture runs, sys.modules["conftest"] may be another directory's.
_THIS_MODULE = sys.modules[__name__]


@pytest.fixture
def scripted_module() -> Any:
    """This module (the scripted model), for tests that ship it to Ray workers."""
    return _THIS_MODULE


@pytest.fixture
def scripted_engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture
def openai_teacher_server() -> Iterator[dict[str, Any]]:
    """An OpenAI-compatible `/v1/chat/completions` on 127.0.0.1 answering with
    `scripted_reply` (a 500 for the `engine_fails` prompts: retried, then failed);
    `seen` holds the request bodies."""

    def respond(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if engine_fails(body["messages"]):
            return 500, {"error": {"message": "backend overloaded"}}
        text = scripted_reply(body["messages"])
        choices = [
            {"index": i, "message": {"role": "assistant", "content": text}}
            for i in range(body.get("n", 1))
        ]
        return 200, {"id": "x", "object": "chat.completion", "choices": choices}

    with json_server(respond) as srv:
        yield {"base_url": srv["url"], "seen": srv["seen"]}
