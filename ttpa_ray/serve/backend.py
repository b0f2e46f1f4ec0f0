"""The `hf` serving backend: a local HF model directory, optional LoRA adapters, batches.

A request is a chat (messages rendered with the tokenizer's chat template) or a raw text
prompt (legacy completions: tokenized as is, no special tokens added); both run through
the same batched `generate`.

One base model in memory; LoRA adapters are loaded beside it with PEFT
(`PeftModel.load_adapter`) and selected per batch (`set_adapter`, or `disable_adapter`
for the base), so SFT, DPO and TTPA variants of one base are served by one replica.
`generate` takes the requests of one `@serve.batch` call and runs one `model.generate`
per group of requests that share adapter, sampling settings and new-token budget (left
padding, one logits processor per row for constrained tool calls and JSON responses).

Logprobs (a request's `logprobs`): the model's raw distribution at each step; what that
means and costs: `serve/logprobs.py`.

Budgets are per request: `min(max_tokens, context - len(its prompt))`. A prompt whose
budget the context cuts runs apart from shorter batch-mates, so a long neighbour never
shortens another completion and no row decodes past the context. A prompt that leaves no
room (or is over `max_prompt_tokens`) fails alone with `ContextLengthError`; it is never
truncated.

Isolation: whatever can fail for one request (template, tokenizer, its constrained-decoding
grammar, its adapter, generation itself) fails that request alone: `generate` returns the
exception in its slot and serves the others; a group whose `generate` call fails is re-run
one request at a time, so only the request that fails gets the error. A request's
`cancel` event (set when its client goes away) stops its rows at the next decoding step.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ttpa_ray.engines.base import ChatRequest as EngineRequest
from ttpa_ray.engines.base import EngineError
from ttpa_ray.engines.hf_engine import HFEngine, truncate_at_stop
from ttpa_ray.serve.errors import ConstraintError
from ttpa_ray.serve.logprobs import TokenTexts, covering, step_logprobs, token_logprobs
from ttpa_ray.serve.responses import Generation, sendable_length

log = logging.getLogger("ttpa_ray")


class _Cancelled:
    """A stopping criterion: rows whose request's `cancel` event is set are done.

    (Duck-typed `StoppingCriteria`: `generate` calls it with the ids so far and wants one
    bool per row.)"""

    def __init__(self, events: list[threading.Event | None]) -> None:
        self.events = events

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = [e is not None and e.is_set() for e in self.events]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _IdStreamer:
    """A `generate(streamer=...)` sink passing new token ids to a queue (the first `put`
    is the prompt, skipped)."""

    def __init__(self, out: queue.Queue[list[int] | None]) -> None:
        self.out, self.seen_prompt = out, False

    def put(self, value: Any) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        self.out.put([int(t) for t in value.reshape(-1).tolist()])

    def end(self) -> None:
        pass  # the producer thread signals the end itself (also on errors)


@dataclass
class GenRequest:
    """One completion to run: of `messages` (chat-rendered, with `tools`), or of `prompt`
    (text sent as is) when set. `constraint`: None, "required" or a named-function
    `tool_choice` (decoding forced to a schema-valid call). `response_schema`: a JSON
    Schema the completion must follow (or, with `tools` and no constraint, tool calls).
    `logprobs`: None, or how many top alternatives to report per token (0..20).
    `adapter`: None = the base."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    constraint: str | dict[str, Any] | None = None
    prompt: str | None = None
    response_schema: dict[str, Any] | None = None
    logprobs: int | None = None
    parallel_tool_calls: bool = True
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    stop: list[str] | None = None
    adapter: str | None = None
    # set when the client is gone: its rows stop at the next step (not part of the key)
    cancel: threading.Event | None = field(default=None, compare=False)

    def group_key(self) -> tuple[Any, ...]:
        """Requests with equal keys share one `generate` call."""
        greedy = self.temperature == 0
        return (
            self.adapter,
            greedy,
            None if greedy else (self.temperature, self.top_p),
            self.n,
            self.max_tokens,
            self.seed,
            tuple(self.stop or ()),
            self.logprobs is not None,
        )

    @property
    def constrained(self) -> bool:
        return bool(self.constraint) or self.response_schema is not None


class HFChatBackend:
    """Chat completions from `model_dir` (+ `adapters`: name → adapter dir)."""

    def __init__(
        self,
        model_dir: str | Path,
        adapters: dict[str, str] | None = None,
        device: str = "cpu",
        dtype: str = "auto",
        max_prompt_tokens: int | None = None,
    ) -> None:
        self.engine = HFEngine(
            model_dir, device=device, dtype=dtype, max_prompt_tokens=max_prompt_tokens
        )
        self.tokenizer = self.engine.tokenizer
        self.device = self.engine.device
        self.adapters = dict(adapters or {})
        model: Any = self.engine.model
        if self.adapters:
            from peft import PeftModel

            items = list(self.adapters.items())
            for name, path in items:
                if not Path(path).is_dir():
                    raise EngineError(f"adapter {name!r}: directory {path} does not exist")
            model = PeftModel.from_pretrained(model, items[0][1], adapter_name=items[0][0])
            for name, path in items[1:]:
                model.load_adapter(path, adapter_name=name)
            model.eval()
        self.model = model
        self.vocab_size = int(self.engine.model.config.vocab_size)
        self._texts = TokenTexts(self.tokenizer)
        # generate() is not re-entrant across adapters: one batch at a time per replica.
        self._lock = threading.Lock()

    # -- prompts ---------------------------------------------------------------------------

    def prompt_ids(self, req: GenRequest) -> list[int]:
        """Token ids of the prompt (`prompt` as is, else the rendered messages);
        `ContextLengthError` when it leaves no room in the context or is over
        `max_prompt_tokens` (never truncated)."""
        if req.prompt is not None:
            ids = self.tokenizer(req.prompt, add_special_tokens=False)["input_ids"]
            return self.engine.check_prompt(list(ids))
        return self.engine.encode(EngineRequest(req.messages, req.tools), req.max_tokens)

    def budget(self, req: GenRequest, prompt: list[int]) -> int:
        """New tokens this request gets: its `max_tokens`, or less where the context ends."""
        return self.engine.budget(len(prompt), req.max_tokens)

    @contextlib.contextmanager
    def _adapter(self, name: str | None) -> Iterator[None]:
        if not self.adapters:
            if name is not None:
                raise EngineError(f"no adapter {name!r} is loaded")
            yield
            return
        if name is None:
            with self.model.disable_adapter():
                yield
            return
        self.model.set_adapter(name)
        yield

    # -- generation ------------------------------------------------------------------------

    def _grammar(self, req: GenRequest) -> Any:
        """The request's compiled grammar (cached by the compiler), None when free;
        `ConstraintError` naming the field when its schema cannot be compiled."""
        if not req.constrained:
            return None
        try:
            from ttpa_ray.serve.constrained import get_compiler
        except ImportError as exc:
            raise EngineError(
                "tool_choice required / a named function / response_format json needs "
                "xgrammar: pip install 'ttpa-ray[constrained]'"
            ) from exc
        compiler = get_compiler(self.tokenizer, self.vocab_size)
        param = "tools" if req.response_schema is None else "response_format"
        try:
            if req.response_schema is not None:
                return compiler.compile_json(
                    req.response_schema, req.tools, parallel_tool_calls=req.parallel_tool_calls
                )
            return compiler.compile(
                req.tools or [], req.constraint, parallel_tool_calls=req.parallel_tool_calls
            )
        except (ValueError, TypeError, KeyError, RecursionError, RuntimeError) as exc:
            # recursive or unsupported schemas: the client's, so a 400 naming the field
            raise ConstraintError(f"{param}: cannot constrain decoding: {exc}", param) from exc

    def check_constraint(self, req: GenRequest) -> None:
        """Compile the request's grammar now (cached for its batch), so a schema that
        cannot be compiled fails this request alone with `ConstraintError`."""
        self._grammar(req)

    def _processors(self, reqs: list[GenRequest]) -> list[Any]:
        if not any(r.constrained for r in reqs):
            return []
        from ttpa_ray.serve.constrained import ToolCallConstraint, get_compiler

        grammars: list[Any] = []
        for r in reqs:
            grammars += [self._grammar(r)] * (1 if r.temperature == 0 else r.n)
        compiler = get_compiler(self.tokenizer, self.vocab_size)
        return [ToolCallConstraint(grammars, compiler.vocab_size, compiler.stop_token_ids[0])]

    def _kwargs(self, head: GenRequest, width: int) -> dict[str, Any]:
        eng = self.engine
        kw: dict[str, Any] = {
            # the group's common budget: its rows all have it (see `generate`)
            "max_new_tokens": eng.budget(width, head.max_tokens),
            "num_return_sequences": 1 if head.temperature == 0 else head.n,
            "pad_token_id": eng.pad_token_id,
            "eos_token_id": eng.eos_token_ids,
        }
        if head.temperature == 0:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kw.update(do_sample=True, temperature=head.temperature, top_p=head.top_p, top_k=0)
        if head.stop:
            kw.update(stop_strings=head.stop, tokenizer=self.tokenizer)
        if head.logprobs is not None:
            kw.update(output_logits=True, return_dict_in_generate=True)
        return kw

    @staticmethod
    def _cancel_criteria(reqs: list[GenRequest], per: int) -> list[Any]:
        if not any(r.cancel is not None for r in reqs):
            return []
        return [_Cancelled([r.cancel for r in reqs for _ in range(per)])]

    def _run_group(
        self, reqs: list[GenRequest], prompts: list[list[int]], streamer: Any = None
    ) -> list[Generation]:
        """One `generate` call for requests of one group key and one budget."""
        head = reqs[0]
        width = max(len(p) for p in prompts)
        pad = self.engine.pad_token_id
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, ids in enumerate(prompts):
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            mask[i, width - len(ids) :] = 1
        kw = self._kwargs(head, width)
        processors = self._processors(reqs)
        if processors:
            kw["logits_processor"] = processors
        criteria = self._cancel_criteria(reqs, kw["num_return_sequences"])
        if criteria:
            from transformers import StoppingCriteriaList

            kw["stopping_criteria"] = StoppingCriteriaList(criteria)
        if streamer is not None:  # generate() streams a batch of one
            kw["streamer"] = streamer
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with (
            self._lock,
            self._adapter(head.adapter),
            torch.random.fork_rng(devices=devices),
            torch.inference_mode(),
        ):
            if head.seed is not None:
                torch.manual_seed(head.seed)
            out = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), **kw
            )
        seqs = out.sequences if head.logprobs is not None else out
        new_ids = seqs[:, width:]
        top_k = max(r.logprobs or 0 for r in reqs)
        scored = step_logprobs(out.logits, new_ids, top_k) if head.logprobs is not None else None
        new = new_ids.tolist()
        per = kw["num_return_sequences"]
        eos = set(self.engine.eos_token_ids) | {pad}
        results = []
        for i, (req, ids) in enumerate(zip(reqs, prompts, strict=True)):
            texts, reasons, used, logprobs = [], [], 0, []
            for row in range(i * per, (i + 1) * per):
                seq = new[row]
                end = next((k for k, t in enumerate(seq) if t in eos), None)
                body = seq if end is None else seq[:end]
                used += len(body) + (0 if end is None else 1)
                text = str(self.tokenizer.decode(body, skip_special_tokens=True))
                cut = truncate_at_stop(text, req.stop)
                stopped = end is not None or cut != text
                texts.append(cut)
                reasons.append("stop" if stopped else "length")
                if scored is not None:
                    kept = body if cut == text else covering(self.tokenizer, body, cut)
                    alternatives = req.logprobs or 0
                    logprobs.append(token_logprobs(scored, row, kept, alternatives, self._texts))
            if per == 1 and req.n > 1:  # greedy: one decode, n identical choices
                texts, reasons, used = texts * req.n, reasons * req.n, used * req.n
                logprobs = logprobs * req.n
            scores = logprobs if scored is not None else None
            results.append(Generation(texts, reasons, len(ids), used, scores))
        return results

    def generate(self, reqs: list[GenRequest]) -> list[Generation | Exception]:
        """One result per request, in order: its `Generation`, or the exception that
        request alone hit (`EngineError` for what the client can fix — prompt too long,
        unknown adapter, a schema that cannot be constrained, a template that cannot render
        its messages; anything else is a server error). Requests run together only with the
        same group key and budget, so each gets `min(max_tokens, context - len(its
        prompt))` new tokens whatever its batch-mates."""
        results: list[Generation | Exception | None] = [None] * len(reqs)
        groups: dict[tuple[Any, ...], list[tuple[int, list[int]]]] = {}
        for i, r in enumerate(reqs):
            try:
                if r.adapter is not None and r.adapter not in self.adapters:
                    raise EngineError(f"no adapter {r.adapter!r} is loaded")
                ids = self.prompt_ids(r)
                self.check_constraint(r)
                groups.setdefault((r.group_key(), self.budget(r, ids)), []).append((i, ids))
            except Exception as exc:  # this request only
                results[i] = exc
        for members in groups.values():
            for idx, gens in self._run_isolated([reqs[i] for i, _ in members], members):
                results[idx] = gens
        return [r if r is not None else EngineError("not run") for r in results]

    def _run_isolated(
        self, reqs: list[GenRequest], members: list[tuple[int, list[int]]]
    ) -> Iterator[tuple[int, Generation | Exception]]:
        """Run one group; if its `generate` call fails, run each member alone, so the
        error reaches only the request(s) that cause it."""
        try:
            gens = self._run_group(reqs, [p for _, p in members])
        except Exception as exc:
            if len(members) == 1:
                if not isinstance(exc, EngineError):
                    log.exception("generation failed for one request")
                yield members[0][0], exc
                return
            log.warning(
                "a batch of %d failed (%s); running its requests one by one", len(reqs), exc
            )
            for req, member in zip(reqs, members, strict=True):
                yield from self._run_isolated([req], [member])
            return
        for (i, _), gen in zip(members, gens, strict=True):
            yield i, gen

    def stream(
        self, req: GenRequest, prompt: list[int] | None = None
    ) -> Iterator[str | Generation]:
        """Text pieces of one `n=1` completion as they are decoded, then its `Generation`.

        `prompt`: the ids from `prompt_ids(req)` when the caller checked them and the
        grammar (`check_constraint`) already (the app does, to answer a 400 before the
        stream starts).
        Pieces are suffixes of the decoded completion (up to the first end-of-turn
        token), decoded as the final text is, so they always add up to it; a piece
        ending inside a multi-byte character, or with what may begin a stop string,
        waits for the next token (a stop string is never sent). A batch of one: the
        completion has its own budget.
        """
        if prompt is None:
            prompt = self.prompt_ids(req)
            self.check_constraint(req)
        ids: queue.Queue[list[int] | None] = queue.Queue()
        streamer = _IdStreamer(ids)
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                # generate() streams a batch of one: a single choice
                one = GenRequest(**{**req.__dict__, "n": 1})
                box["gen"] = self._run_group([one], [prompt], streamer)[0]
            except Exception as exc:  # surfaced to the caller below
                box["error"] = exc
            finally:
                ids.put(None)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        eos = set(self.engine.eos_token_ids) | {self.engine.pad_token_id}
        body: list[int] = []
        sent, ended = "", False
        while (new := ids.get()) is not None:
            for t in new:
                ended = ended or t in eos
                if not ended:
                    body.append(t)
            text = str(self.tokenizer.decode(body, skip_special_tokens=True))
            text = text[: sendable_length(text, req.stop or [])]
            if text.startswith(sent) and len(text) > len(sent) and not text.endswith("\ufffd"):
                yield text[len(sent) :]
                sent = text
        thread.join()
        if "error" in box:
            raise box["error"]
        gen: Generation = box["gen"]
        if gen.texts[0].startswith(sent) and len(gen.texts[0]) > len(sent):
            yield gen.texts[0][len(sent) :]  # e.g. what a stop string left of the end
        yield gen
