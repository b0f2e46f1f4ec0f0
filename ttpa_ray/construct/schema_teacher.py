"""The deterministic schema-driven teacher: the four steps of reversed construction.

scene → trajectory → answer → query (the query last, DESIGN §3). Each step is a pure
function on JSON-able dicts with its own RNG, `random.Random(f"{seed}:{step}")`, so a Ray
Data stage can run any step alone and reproduce it.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from ttpa_ray.construct import texts
from ttpa_ray.construct import wordlists as W
from ttpa_ray.construct.values import ValueSampler, is_id_like, is_valid
from ttpa_ray.schema.records import Episode, Message, ToolCall
from ttpa_ray.schema.tools import ToolSpec

SYSTEM_PROMPT = (
    "You are a helpful assistant that can call tools. Call the tools the request needs, "
    "using values from the user and from earlier tool results, then answer concisely."
)
P_SINGLE = 0.10  # single-call episodes, for coverage of every tool
P_PARALLEL = 0.28  # of multi-step episodes, so ≈25% of all episodes have a parallel turn
MAX_REPEAT = 2  # a tool may be called at most this often in one episode


class Restart(Exception):
    """The teacher cannot build this episode (the paper's restart signal)."""


def _rng(seed: int, step: str) -> random.Random:
    return random.Random(f"{seed}:{step}")


def id_patterns(catalog: Sequence[ToolSpec]) -> dict[str, str]:
    """The catalog's identifier shape per id-like property name, from result (then
    parameter) schemas, first tool first: `message_id` → `^MSG_[A-Z0-9]{8}$`. An id the
    teacher invents takes this shape, so the tool's own result can echo it."""
    found: dict[str, str] = {}

    def walk(s: Any) -> None:
        if isinstance(s, dict):
            for k, sub in (s.get("properties") or {}).items():
                if isinstance(sub, dict) and is_id_like(k, sub) and "pattern" in sub:
                    found.setdefault(k, sub["pattern"])
                walk(sub)
            walk(s.get("items"))

    for t in catalog:
        walk(t.result_schema or {})
    for t in catalog:
        walk(t.parameters)
    return found


def _own_shape(spec: ToolSpec, name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` of id-like parameter `name`, narrowed to the pattern of the same-named field
    of the tool's own result (a `reply_to_email.message_id` is a `MSG_…`, not an `EVT_…`)."""
    own = ((spec.result_schema or {}).get("properties") or {}).get(name)
    if "pattern" in schema or not isinstance(own, dict) or "pattern" not in own:
        return schema
    return {**schema, "pattern": own["pattern"]}


def _result_keys(spec: ToolSpec) -> set[str]:
    keys: set[str] = set()

    def walk(s: Any) -> None:
        if isinstance(s, dict):
            for k, sub in (s.get("properties") or {}).items():
                keys.add(k)
                walk(sub)
            walk(s.get("items"))

    walk(spec.result_schema or {})
    return keys


# -- scene ----------------------------------------------------------------------------
def sample_window(
    rng: random.Random, catalog: Sequence[ToolSpec], window: int = 20
) -> tuple[str, dict[str, list[ToolSpec]], list[ToolSpec]]:
    """The scene's tool window: a primary domain whole, then a secondary domain, then
    other tools shuffled, cut at `window`. Returns (primary domain, tools by domain, window);
    LLM teachers use the same window so both teachers see the same kind of scene."""
    by_domain: dict[str, list[ToolSpec]] = defaultdict(list)
    for t in catalog:
        by_domain[t.domain or "general"].append(t)
    domains = sorted(by_domain)
    primary = rng.choice(domains)
    others = [d for d in domains if d != primary]
    secondary = rng.choice(others) if others else None
    rest = [t for d in others if d != secondary for t in by_domain[d]]
    rng.shuffle(rest)
    win = by_domain[primary] + (by_domain[secondary] if secondary else []) + rest
    return primary, by_domain, win[:window]


def step_scene(
    seed: int,
    catalog: list[ToolSpec],
    window: int = 20,
    n_tools: Sequence[int] = (7, 10),
    n_constraints: Sequence[int] = (4, 7),
) -> dict[str, Any]:
    """Window of ≤`window` tools from one or two domains, a scenario, constraints with
    concrete values, their `facts` (keyed by the parameter they fill) and the chosen tools."""
    rng = _rng(seed, "scene")
    primary, by_domain, win = sample_window(rng, catalog, window)
    k = min(rng.randint(n_tools[0], n_tools[1]), len(win))
    # the primary domain whole (its tools chain), topped up from the secondary domain
    head = list(by_domain[primary][:window])
    if len(head) > k:
        head = rng.sample(head, k)
    tail = [t for t in win if t not in head]
    chosen = head + tail[: k - len(head)]
    rng.shuffle(chosen)

    home, trip = rng.sample(W.CITIES, 2)
    sampler = ValueSampler(rng, id_patterns=id_patterns(catalog))
    produced = {key: t.name for t in chosen for key in _result_keys(t)}
    must: dict[str, Any] = {}
    optional_params: dict[str, Any] = {}
    required_params: dict[str, Any] = {}
    for t in chosen:
        props = t.parameters.get("properties", {})
        for name, sub in props.items():
            if sub.get("type") not in ("string", "number", "integer") or name in must:
                continue
            by_other = name in produced and produced[name] != t.name
            if is_id_like(name, sub) or "pattern" in sub and by_other:
                if not by_other and name in t.required:
                    must[name] = _own_shape(t, name, sub)  # a root id the user must know
                continue
            if name in ("lat", "lon", "lat1", "lat2", "lon1", "lon2") and by_other:
                continue
            (required_params if name in t.required else optional_params).setdefault(name, sub)
    n_c = rng.randint(n_constraints[0], n_constraints[1])
    pool = list(required_params.items())
    rng.shuffle(pool)
    extra = [kv for kv in optional_params.items() if kv[0] not in required_params]
    rng.shuffle(extra)
    picked = list(must.items()) + (pool + extra)[: max(0, n_c - len(must))]
    facts: dict[str, Any] = {}
    for name, sub in picked:
        try:
            facts[name] = _anchored(name, sub, home, trip) or sampler.sample(sub, name)
        except ValueError:
            continue  # a parameter we cannot fill is left to the trajectory (or a Restart)
    currency = trip[6]
    constraints = [texts.constraint_text(n, v, currency) for n, v in facts.items()]
    person = sampler.person()
    return {
        "scenario": texts.scenario_text(rng, primary, home[0], trip[0], person),
        "constraints": constraints,
        "facts": facts,
        "tools": [t.name for t in chosen],
        "window": [t.name for t in win],
        "domain": primary,
    }


def _anchored(name: str, schema: dict[str, Any], home: tuple, trip: tuple) -> Any:
    """Values consistent with the scene's home and trip cities, when they validate."""
    desc = schema.get("description", "").lower()
    if "airport" in desc or "iata" in desc:
        value: Any = home[3] if name == "origin" else trip[3]
    elif "currency" in name:
        value = home[6] if name.startswith("from") else trip[6]
    elif name in ("city", "location"):
        value = trip[0]
    elif name in ("country", "region", "country_hint") and "code" in desc:
        value = trip[2]
    else:
        return None
    return value if is_valid(value, schema) else None


# -- trajectory -----------------------------------------------------------------------
_ALIASES = {
    "lat1": "lat",
    "lat2": "lat",
    "lon1": "lon",
    "lon2": "lon",
    "contact_email": "email",
    "buyer_email": "email",
    "address": "formatted_address",
}


def _flatten(value: Any, out: list[tuple[str, Any]], key: str = "") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, out, k)
    elif isinstance(value, list) and value and isinstance(value[0], dict | list):
        for v in value:
            _flatten(v, out, key)
    elif key and value is not None and not isinstance(value, bool):
        out.append((key, value))


def _from_memory(
    name: str, schema: dict[str, Any], memory: list[tuple[str, Any]], rng: random.Random
) -> tuple[bool, Any]:
    """An earlier result value for parameter `name` that validates against its schema."""
    if schema.get("type") == "array" and name.endswith("_ids"):
        singles = list(dict.fromkeys(v for k, v in memory if k == name[:-1] and _hashable(v)))
        if singles:
            value = singles[: rng.randint(1, min(3, len(singles)))]
            if is_valid(value, schema):
                return True, value
        return False, None
    if schema.get("type") not in ("string", "number", "integer", "array", None):
        return False, None
    keys = {name, _ALIASES.get(name, name)}
    valid = [v for k, v in reversed(memory) if k in keys and is_valid(v, schema)]
    if not valid:
        return False, None
    return True, rng.choice(valid[:3])


def _hashable(v: Any) -> bool:
    return isinstance(v, str | int | float)


class _Filler:
    """Fills one call's arguments. An id-like argument (`is_id_like`) is recalled from an
    earlier result first, else taken from the user's facts; never invented at the top level
    (a required one without a source makes the tool not callable yet). Other arguments come
    from facts, then memory, then sampling. Ids nested in a sampled object
    (`items[].item_id`) are recalled the same way, else invented in the catalog's shape and
    stated in the query like any other sampled value."""

    def __init__(
        self,
        facts: dict[str, Any],
        memory: list[tuple[str, Any]],
        rng: random.Random,
        shapes: dict[str, str] | None = None,
    ):
        self.facts, self.memory, self.rng = facts, memory, rng
        self.recalled: set[str] = set()  # JSON of the nested ids taken from memory
        self.n_recalled = 0
        self.sampler = ValueSampler(rng, resolver=self._resolve, id_patterns=shapes)

    def _resolve(self, name: str, schema: dict[str, Any]) -> tuple[bool, Any]:
        if is_id_like(name, schema):
            found, value = _from_memory(name, schema, self.memory, self.rng)
            if found:
                self.n_recalled += 1
                self.recalled.update(json.dumps(v) for v in _as_list(value))
                return True, value
        if name in self.facts and is_valid(self.facts[name], schema):
            return True, self.facts[name]
        return False, None

    def _recall(
        self, spec: ToolSpec, name: str, schema: dict[str, Any], rng: random.Random
    ) -> tuple[bool, Any]:
        return _from_memory(name, _own_shape(spec, name, schema), self.memory, rng)

    def callable(self, spec: ToolSpec) -> bool:
        props = spec.parameters.get("properties", {})
        for name in spec.required:
            sub = props.get(name, {})
            if not is_id_like(name, sub):
                continue
            if name in self.facts and is_valid(self.facts[name], sub):
                continue
            if not self._recall(spec, name, sub, random.Random(0))[0]:
                return False
        return True

    def fill(self, spec: ToolSpec) -> tuple[dict[str, Any], dict[str, str], list[list[Any]]]:
        props = spec.parameters.get("properties", {})
        args: dict[str, Any] = {}
        sources: dict[str, str] = {}
        given: list[list[Any]] = []
        for name, sub in props.items():
            req = name in spec.required
            id_like = is_id_like(name, sub)
            has_fact = name in self.facts and is_valid(self.facts[name], sub)
            if not req and self.rng.random() > (0.8 if has_fact else 0.25):
                continue
            if id_like:
                found, value = self._recall(spec, name, sub, self.rng)
                if found:
                    args[name], sources[name] = value, "memory"
                    continue
            if has_fact:
                args[name], sources[name] = self.facts[name], "facts"
                given.extend(_leaves(name, self.facts[name]))
                continue
            if id_like:
                if req:
                    raise Restart(f"{spec.name}: no value for required id {name!r}")
                continue
            found, value = _from_memory(name, sub, self.memory, self.rng)
            if found:
                args[name], sources[name] = value, "memory"
                continue
            before = self.n_recalled
            try:
                value = self.sampler.sample(sub, name)
            except ValueError as e:
                if req:
                    raise Restart(f"{spec.name}: cannot fill {name!r}: {e}") from e
                continue
            args[name] = value
            sources[name] = "mixed" if self.n_recalled > before else "sampled"
            given.extend(_leaves(name, value, self.recalled))
        return args, sources, given


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _leaves(path: str, value: Any, recalled: set[str] | None = None) -> list[list[Any]]:
    """[path, value] for each string/number leaf the user must state: all but booleans,
    nulls and the ids in `recalled` (JSON), which came from earlier results."""
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(f"{path}.{k}", v, recalled)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(path, v, recalled)]
    if isinstance(value, bool) or value is None:
        return []
    if recalled and json.dumps(value) in recalled and is_id_like(path.split(".")[-1]):
        return []
    return [[path, value]]


def _simulate(spec: ToolSpec, args: dict[str, Any], sampler: ValueSampler) -> dict[str, Any]:
    """A result from the tool's result schema, echoing inputs into same-named fields; a
    list of entities of the kind an id argument names lists exactly those entities
    (`control_lights(device_ids=[a, b])` → `updated` rows for a and b)."""
    schema = spec.result_schema or {"type": "object", "properties": {"status": {"const": "ok"}}}
    result = sampler.sample(schema, spec.name)
    if not isinstance(result, dict):
        return {"result": result}
    props = schema.get("properties", {})
    for key, value in args.items():
        field = {k: v for k, v in props.get(key, {}).items() if k != "enum"}
        if key in props and is_valid(value, field):
            result[key] = value  # a weather result names the asked city, even off its enum
    params = spec.parameters.get("properties", {})
    for key, value in args.items():
        if not is_id_like(key, params.get(key, {})):
            continue
        row_key, ids = (key[:-1], value) if isinstance(value, list) else (key, [value])
        for field, sub in props.items():
            rows_schema = sub.get("items") or {}
            id_schema = (rows_schema.get("properties") or {}).get(row_key)
            if not isinstance(result.get(field), list) or id_schema is None:
                continue
            if not sub.get("minItems", 0) <= len(ids) <= sub.get("maxItems", len(ids)):
                continue
            if not all(is_valid(i, id_schema) for i in ids):
                continue
            rows = result[field][: len(ids)]
            rows += [sampler.sample(rows_schema, field) for _ in range(len(ids) - len(rows))]
            for row, i in zip(rows, ids, strict=True):
                row[row_key] = i
            result[field] = rows
    return result


def step_trajectory(
    scene: dict[str, Any],
    seed: int,
    catalog: list[ToolSpec],
    call_range: Sequence[int] = (4, 7),
) -> dict[str, Any]:
    """`call_range` (4–7) grounded calls in turns (≈10% single-call episodes, ≈25% with a parallel turn),
    results simulated from result schemas. Raises `Restart` when the tools cannot chain."""
    rng = _rng(seed, "trajectory")
    specs = {t.name: t for t in catalog}
    tools = [specs[n] for n in scene["tools"] if n in specs]
    if not tools:
        raise Restart("scene offers no known tool")
    single = rng.random() < P_SINGLE
    target = 1 if single else rng.randint(call_range[0], call_range[1])
    parallel_turn = -1 if single or rng.random() >= P_PARALLEL else rng.randint(0, 1)
    memory: list[tuple[str, Any]] = []
    uses: dict[str, int] = defaultdict(int)
    turns: list[dict[str, Any]] = []
    n_calls = reuse = 0
    shapes = id_patterns(catalog)
    sampler = ValueSampler(rng, id_patterns=shapes)
    while n_calls < target:
        filler = _Filler(scene["facts"], memory, rng, shapes)
        ready = [t for t in tools if uses[t.name] < MAX_REPEAT and filler.callable(t)]
        if not ready:
            raise Restart(f"no callable tool after {n_calls} of {target} calls")
        weights = [_weight(t, uses, memory, filler) for t in ready]
        width = 1
        if len(turns) == parallel_turn and target - n_calls >= 2 and len(ready) >= 2:
            width = 3 if target - n_calls >= 3 and len(ready) >= 3 and rng.random() < 0.3 else 2
        picked: list[ToolSpec] = []
        while len(picked) < width:
            t = rng.choices(ready, weights)[0]
            if t not in picked:
                picked.append(t)
        calls, results = [], []
        for t in picked:
            args, sources, given = filler.fill(t)
            uses[t.name] += 1
            reuse += sum(1 for s in sources.values() if s in ("memory", "mixed"))
            call_id = f"call_{rng.getrandbits(40):010x}"
            calls.append(
                {
                    "id": call_id,
                    "name": t.name,
                    "arguments": args,
                    "sources": sources,
                    "given": given,
                }
            )
            results.append(_simulate(t, args, sampler))
        for r in results:  # parallel calls cannot see each other's results
            _flatten(r, memory)
        turns.append({"calls": calls, "results": results})
        n_calls += len(calls)
    return {"turns": turns, "memory_reuse": reuse, "n_calls": n_calls}


def _weight(t: ToolSpec, uses: dict[str, int], memory: list[tuple[str, Any]], f: _Filler) -> float:
    """Prefer tools that consume earlier results (chains) and tools not yet used."""
    keys = {k for k, _ in memory}
    consumes = sum(
        1 for n in t.parameters.get("properties", {}) if n in keys or _ALIASES.get(n) in keys
    )
    return (1.0 + 4.0 * consumes) * (0.15 if uses[t.name] else 1.0)


# -- answer, query, assembly ------------------------------------------------------------
def step_answer(scene: dict[str, Any], trajectory: dict[str, Any], seed: int) -> str:
    """The final assistant answer, naming the results' concrete values."""
    return texts.answer_text(_rng(seed, "answer"), trajectory)


def step_query(scene: dict[str, Any], trajectory: dict[str, Any], answer: str, seed: int) -> str:
    """The user query, written last: it states every value the calls need that no earlier
    result provides, and the scene's constraints."""
    return texts.query_text(_rng(seed, "query"), scene, trajectory)


def assemble_episode(
    episode_id: str,
    seed: int,
    scene: dict[str, Any],
    trajectory: dict[str, Any],
    answer: str,
    query: str,
    catalog: list[ToolSpec],
    teacher: str = "schema",
    extra_meta: dict[str, Any] | None = None,
) -> Episode:
    """user(query) → per turn: assistant(tool_calls) + one tool message per call → answer.

    Shared by every teacher (`teacher` is recorded on the episode)."""
    specs = {t.name: t for t in catalog}
    messages = [Message("user", query)]
    for turn in trajectory["turns"]:
        calls = [ToolCall(c["name"], c["arguments"], c["id"]) for c in turn["calls"]]
        messages.append(Message("assistant", None, tool_calls=calls))
        for c, r in zip(turn["calls"], turn["results"], strict=True):
            content = json.dumps(r, ensure_ascii=False)
            messages.append(Message("tool", content, tool_call_id=c["id"], name=c["name"]))
    messages.append(Message("assistant", answer))
    return Episode(
        id=episode_id,
        system=SYSTEM_PROMPT,
        tools=[specs[n].to_openai() for n in scene["tools"] if n in specs],
        messages=messages,
        scenario=scene["scenario"],
        constraints=list(scene["constraints"]),
        teacher=teacher,
        seed=seed,
        meta={
            "generation_order": ["scene", "trajectory", "answer", "query"],
            "memory_reuse": trajectory["memory_reuse"],
            "n_calls": trajectory["n_calls"],
            "domain": scene.get("domain"),
            **(extra_meta or {}),
        },
    )


def build_episode(seed: int, catalog: list[ToolSpec], episode_id: str | None = None) -> Episode:
    """All four steps in paper order, then assembly."""
    scene = step_scene(seed, catalog)
    trajectory = step_trajectory(scene, seed, catalog)
    answer = step_answer(scene, trajectory, seed)
    query = step_query(scene, trajectory, answer, seed)
    return assemble_episode(
        episode_id or f"ep-{seed}", seed, scene, trajectory, answer, query, catalog
    )
