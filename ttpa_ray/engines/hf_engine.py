"""A transformers engine: a local model directory on CPU or one GPU.

Each request is rendered with the tokenizer's own chat template and its own `tools`
(`apply_chat_template(messages, tools=..., add_generation_prompt=True)`), tokenized
without extra special tokens (the template already writes them), grouped into left-padded
batches of similar length, and decoded back without the prompt and special tokens.

Prompts are never cut: one over `max_prompt_tokens` or the context raises
`ContextLengthError`. Each prompt gets `min(max_tokens, context - its own length)` new
tokens, whatever its batch-mates' lengths (rows whose budget the context cuts run in
their own `generate` calls, so no position past the context is ever used).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ttpa_ray.engines.base import (
    ChatRequest,
    ContextLengthError,
    EngineError,
    GenerationParams,
    eos_ids,
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def truncate_at_stop(text: str, stop: list[str] | None) -> str:
    """`text` cut before the earliest occurrence of any stop string (OpenAI semantics)."""
    if not stop:
        return text
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


class HFEngine:
    """`TextEngine` over `AutoModelForCausalLM` loaded offline from `model_path`.

    `dtype`: "auto" (the checkpoint's dtype), "float32", "bfloat16" or "float16".
    `batch_size`: requests per forward batch (each expands to `n` sequences).
    `max_prompt_tokens`: if set, a longer prompt raises `ContextLengthError` (an
    `EngineError`); so does any prompt of `context` tokens or more (`max_position_embeddings`):
    prompts are never truncated. Each prompt gets `min(max_tokens, context - its length)`
    new tokens, independent of the other prompts of its batch.

    Sampling (`temperature > 0`) is seeded per batch with `seed + batch index` inside a
    forked RNG (the caller's global torch RNG is untouched), so a call is reproducible
    for the same requests, `batch_size` and seed.
    """

    name = "hf"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        device: str = "cpu",
        dtype: str = "auto",
        batch_size: int = 8,
        max_prompt_tokens: int | None = None,
    ) -> None:
        from ttpa_ray.storage import local_path

        # a URI (s3://, gs://) is downloaded once per node; a path is used as is
        path = Path(local_path(model_path))
        if not path.is_dir():
            raise EngineError(f"model directory not found: {path}")
        if dtype != "auto" and dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_path = path
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_prompt_tokens = max_prompt_tokens
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as exc:
            raise EngineError(f"cannot load a tokenizer from {path}: {exc}") from exc
        if not getattr(self.tokenizer, "chat_template", None):
            raise EngineError(
                f"the tokenizer in {path} has no chat template "
                "(add chat_template.jinja or 'chat_template' in tokenizer_config.json)"
            )
        torch_dtype: Any = "auto" if dtype == "auto" else _DTYPES[dtype]
        try:
            model = AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, dtype=torch_dtype
            )
        except Exception as exc:
            raise EngineError(f"cannot load a causal LM from {path}: {exc}") from exc
        # transformers' stubs type `.to` oddly (a decorated method); it is the nn.Module one.
        self.model: Any = model.to(self.device)  # type: ignore[arg-type]
        self.model.eval()
        gen_cfg = self.model.generation_config
        self.eos_token_ids = eos_ids(self.tokenizer, gen_cfg.eos_token_id)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = (
                gen_cfg.pad_token_id if gen_cfg.pad_token_id is not None else self.eos_token_ids[0]
            )
        self.pad_token_id = int(pad)
        self.max_length = int(
            getattr(self.model.config, "max_position_embeddings", None)
            or self.tokenizer.model_max_length
        )

    # -- prompts ---------------------------------------------------------------------------

    def render(self, request: ChatRequest) -> str:
        """The prompt text of one request (chat template, its tools, generation prompt)."""
        tools: list[Any] | None = list(request.tools) if request.tools else None
        try:
            return str(
                self.tokenizer.apply_chat_template(
                    request.messages,
                    tools=tools,
                    add_generation_prompt=True,
                    tokenize=False,
                )
            )
        except Exception as exc:
            raise EngineError(
                f"request {request.request_id!r}: chat template failed: {exc}"
            ) from exc

    def encode(self, request: ChatRequest, max_tokens: int) -> list[int]:
        """Token ids of one rendered prompt. Raises `ContextLengthError` (never truncates)
        when it has more than `max_prompt_tokens` tokens or leaves no room in the context."""
        ids = list(self.tokenizer(self.render(request), add_special_tokens=False)["input_ids"])
        return self.check_prompt(ids, request.request_id)

    def check_prompt(self, ids: list[int], request_id: str = "") -> list[int]:
        """`ids`, or `ContextLengthError` when they are over `max_prompt_tokens` or leave
        no room in the context (also for prompts that are not chat-rendered)."""
        who = f"request {request_id!r}: " if request_id else ""
        if self.max_prompt_tokens is not None and len(ids) > self.max_prompt_tokens:
            raise ContextLengthError(
                f"{who}the prompt has {len(ids)} tokens; max_prompt_tokens accepts at most "
                f"{self.max_prompt_tokens} (the model's context length is {self.max_length})",
                len(ids),
                self.max_prompt_tokens,
            )
        if len(ids) >= self.max_length:
            raise ContextLengthError(
                f"{who}the prompt has {len(ids)} tokens; the model's context length is "
                f"{self.max_length} tokens, which leaves no room for a completion",
                len(ids),
                self.max_length,
            )
        return ids

    def budget(self, prompt_len: int, max_tokens: int) -> int:
        """New tokens a prompt of `prompt_len` tokens gets: `max_tokens`, or less where the
        context ends first (≥ 1 for any prompt `encode` accepts)."""
        return max(1, min(max_tokens, self.max_length - prompt_len))

    # -- generation ------------------------------------------------------------------------

    def _generate_batch(
        self, prompts: list[list[int]], params: GenerationParams, batch_index: int
    ) -> list[list[str]]:
        """One `generate` call; `generate` only batches prompts with the same budget."""
        width = max(len(p) for p in prompts)
        # Left padding: every prompt ends at the same position, so new tokens line up.
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        # Greedy decoding gives n identical texts: decode once, repeat (transformers rejects
        # num_return_sequences > 1 without sampling).
        per_prompt = 1 if params.greedy else params.n
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.budget(width, params.max_tokens),
            "num_return_sequences": per_prompt,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_ids,
        }
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            # top_k=0: no top-k filter (transformers defaults to 50; OpenAI/vLLM use none).
            kwargs.update(
                do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0
            )
        if params.stop:
            kwargs.update(stop_strings=params.stop, tokenizer=self.tokenizer)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            if params.seed is not None:
                torch.manual_seed(params.seed + batch_index)
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                **kwargs,
            )
        texts = self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        texts = [truncate_at_stop(t, params.stop) for t in texts]
        # generate() returns the sequences of each prompt consecutively.
        groups = [texts[i * per_prompt : (i + 1) * per_prompt] for i in range(len(prompts))]
        return [g * params.n if params.greedy else g for g in groups]

    def generate(self, requests: list[ChatRequest], params: GenerationParams) -> list[list[str]]:
        """`params.n` completions per request, in request order."""
        if not requests:
            return []
        prompts = [self.encode(r, params.max_tokens) for r in requests]
        # Batch prompts of similar length together (less padding); order restored below.
        # Budgets only fall as length grows, so a batch is cut where its budget would
        # change: a long prompt near the context never shortens a short one's completion.
        order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
        batches: list[list[int]] = []
        for i in order:
            budget = self.budget(len(prompts[i]), params.max_tokens)
            last = batches[-1] if batches else None
            if (
                last is None
                or len(last) >= self.batch_size
                or self.budget(len(prompts[last[0]]), params.max_tokens) != budget
            ):
                batches.append([i])
            else:
                last.append(i)
        results: list[list[str]] = [[] for _ in requests]
        for b, idx in enumerate(batches):
            for i, texts in zip(
                idx, self._generate_batch([prompts[i] for i in idx], params, b), strict=True
            ):
                results[i] = texts
        return results
