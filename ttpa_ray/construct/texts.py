"""The natural-language parts of a schema-teacher episode: scenario, constraints,
final answer and user query (templated, seeded)."""

from __future__ import annotations

import json
import random
from typing import Any

from ttpa_ray.construct import wordlists as W

_DOMAIN_PLANS = {
    "travel": ["is planning a trip to {trip}", "needs to organise travel to {trip}"],
    "weather": ["wants to check the conditions in {trip}", "is watching the weather in {trip}"],
    "finance": ["is sorting out money matters", "is reviewing accounts and payments"],
    "calendar": ["is juggling a busy schedule", "needs to organise meetings"],
    "maps": ["is finding their way around {trip}", "is exploring places in {trip}"],
    "messaging": ["has to reach a few people", "is catching up on messages"],
    "shopping": ["is shopping online", "wants to order a few things"],
    "math_units": ["is working through some calculations", "is checking numbers for a report"],
    "food": ["is planning meals in {trip}", "is looking for a good place to eat in {trip}"],
    "health_fitness": ["is tracking their health goals", "is getting back in shape"],
    "entertainment": ["is planning a night out in {trip}", "wants some entertainment"],
    "news": ["is keeping up with the news", "is researching current events"],
    "smart_home": ["is setting up their smart home", "is managing devices at home"],
}
_WHEN = ["this week", "next weekend", "before the end of the month", "today", "over the holidays"]


def human(name: str) -> str:
    return name.replace("_", " ").strip()


def render(value: Any) -> str:
    """How a value is written in text: exactly as its JSON token for numbers, so a
    query or answer contains the same characters as the call arguments."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return json.dumps(value)
    if value is None:
        return "none"
    if isinstance(value, list):
        return ", ".join(render(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{human(k)} {render(v)}" for k, v in value.items())
    return str(value)


def scenario_text(rng: random.Random, domain: str, home: str, trip: str, person: str) -> str:
    plan = rng.choice(_DOMAIN_PLANS.get(domain, ["has a few errands to run"])).format(trip=trip)
    role = rng.choice(W.ROLES)
    form = rng.randrange(3)
    if form == 0:
        return f"{person}, a {role} based in {home}, {plan} {rng.choice(_WHEN)}."
    if form == 1:
        return f"It is {rng.choice(_WHEN)}; {person} ({role}, {home}) {plan}."
    return f"{person} lives in {home} and works as a {role}. {person.split()[0]} {plan}."


def constraint_text(name: str, value: Any, currency: str) -> str:
    """One constraint sentence carrying `value` verbatim."""
    v, n = render(value), name.lower()
    if n.startswith("max_") and ("price" in n or "budget" in n):
        return f"budget under {v} {currency}"
    if n.startswith("max_"):
        return f"at most {v} {human(n[4:])}"
    if n.startswith("min_"):
        return f"at least {v} {human(n[4:])}"
    if n in ("origin", "from_station", "from_currency"):
        return f"from {v}"
    if n in ("destination", "to_station", "to_currency"):
        return f"to {v}"
    if n in ("city", "location"):
        return f"in {v}"
    if "date" in n or n in ("check_in", "check_out", "since"):
        return f"{human(n)} on {v}"
    if "email" in n:
        return f"contact email {v}"
    return f"{human(n)}: {v}"


def _result_summary(name: str, result: Any) -> str:
    """A sentence naming a tool's result with its concrete values."""
    if not isinstance(result, dict) or not result:
        return f"{human(name)} completed."
    parts: list[str] = []
    for key, value in result.items():
        if len(parts) >= 3:
            break
        if isinstance(value, list) and value and isinstance(value[0], dict):
            first = [f"{human(k)} {render(v)}" for k, v in value[0].items() if _scalar(v)][:2]
            parts.append(f"{len(value)} {human(key)} (first: {', '.join(first)})")
        elif _scalar(value) or isinstance(value, list):
            parts.append(f"{human(key)} {render(value)}")
    return f"{human(name).capitalize()}: {'; '.join(parts) or 'done'}."


def _scalar(v: Any) -> bool:
    return isinstance(v, str | int | float | bool) or v is None


def answer_text(rng: random.Random, trajectory: dict[str, Any]) -> str:
    sentences = [
        _result_summary(c["name"], r)
        for turn in trajectory["turns"]
        for c, r in zip(turn["calls"], turn["results"], strict=True)
    ]
    intro = rng.choice(
        ["Here is what I found.", "Done. Summary:", "All set.", "Here are the results."]
    )
    outro = rng.choice(["", " Let me know if you need anything else.", " Anything else?"])
    return f"{intro} {' '.join(sentences)}{outro}".strip()


def _call_clause(call: dict[str, Any]) -> str:
    given = [f"{human(path.split('.')[-1])} {render(v)}" for path, v in call.get("given", [])]
    memory = [k for k, s in call.get("sources", {}).items() if s in ("memory", "mixed")]
    text = human(call["name"])
    if given:
        text += " with " + ", ".join(given)
    if memory:
        text += f" (using the {', '.join(human(k) for k in memory)} from the earlier results)"
    return text


_TEMPLATES = [
    "{scenario} Could you {tasks}? Keep in mind: {constraints}.",
    "I need help: please {tasks}. My constraints: {constraints}.",
    "Hi! {constraints_cap}. With that in mind, {tasks}.",
    "Can you {tasks}? Details that matter: {constraints}.",
    "{scenario} My plan is to {tasks}. Remember: {constraints}.",
    "Quick request, please {tasks}. Note: {constraints}.",
    "Step by step, please: {steps}. Constraints: {constraints}.",
    "Hello, {tasks}, please. I care about this: {constraints}.",
    "{constraints_cap}. Please {tasks} and tell me the outcome.",
    "For my plans ({constraints}), I'd like you to {tasks}.",
]


def query_text(rng: random.Random, scene: dict[str, Any], trajectory: dict[str, Any]) -> str:
    clauses = []
    for turn in trajectory["turns"]:
        parts = [_call_clause(c) for c in turn["calls"]]
        clauses.append(parts[0] if len(parts) == 1 else " and at the same time ".join(parts))
    tasks = clauses[0] if len(clauses) == 1 else ", then ".join(clauses)
    steps = " ".join(f"{i}) {c};" for i, c in enumerate(clauses, 1)).rstrip(";")
    cons = list(scene["constraints"])
    constraints = "; ".join(cons)
    return rng.choice(_TEMPLATES).format(
        scenario=scene["scenario"],
        tasks=tasks,
        steps=steps,
        constraints=constraints,
        constraints_cap=constraints[:1].upper() + constraints[1:],
    )
