"""A scripted OpenAI-compatible server on 127.0.0.1 for the eval tests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from http_fake import Responder, json_server


@pytest.fixture
def fake_server() -> Iterator[Callable[[Responder], dict[str, Any]]]:
    """Start servers with `start(respond)` → {"url", "seen"}; all stopped at teardown."""
    with contextlib.ExitStack() as stack:
        yield lambda respond: stack.enter_context(json_server(respond))
