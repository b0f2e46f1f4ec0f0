"""ESM: every rule of DESIGN §4 with hand-computed values, parallel calls, and a fuzz."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttpa_ray.score.esm import esm_breakdown, esm_score


def tool(name, props, required=()):
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": name,
            "parameters": {"type": "object", "properties": props, "required": list(required)},
        },
    }


WEATHER = tool(
    "get_weather",
    {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
    },
    required=["city", "unit"],
)
FORECAST = tool(
    "get_forecast",
    {"city": {"type": "string"}, "unit": {"type": "string"}, "days": {"type": "integer"}},
    required=["city"],
)
CONVERT = tool(
    "convert",
    {
        "amount": {"type": "number"},
        "flag": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "meta": {"type": "object"},
        "anything": {"description": "no declared type"},
        "maybe": {"type": ["string", "null"]},
        "weird": {"type": "quaternion"},
    },
)
PING = tool("ping", {})
TOOLS = [WEATHER, FORECAST, CONVERT, PING]


def call(name, **args):
    return {"name": name, "arguments": args}


def score(pred, gold, tools=TOOLS):
    return esm_score(pred, gold, tools)


GOLD = [call("get_weather", city="Paris", unit="celsius", days=3)]


def test_exact_match_is_one():
    assert score(GOLD, GOLD) == 1.0
    b = esm_breakdown(GOLD, GOLD, TOOLS)
    assert b["reason"] == "" and all(
        b[k] == 1.0 for k in ("name", "required", "key", "type", "value")
    )


def test_arguments_as_json_string_and_openai_shape():
    pred = [
        {
            "id": "c1",
            "type": "function",
            "function": {
                "name": "get_weather",
                "arguments": json.dumps({"city": "Paris", "unit": "celsius", "days": 3}),
            },
        }
    ]
    assert score(pred, GOLD) == 1.0
    assert score(json.dumps(pred), GOLD) == 1.0


def test_wrong_name_costs_three_elevenths():
    # get_forecast declares the same keys and types: only S_name is lost.
    pred = [call("get_forecast", city="Paris", unit="celsius", days=3)]
    assert score(pred, GOLD) == pytest.approx(8 / 11)
    assert esm_breakdown(pred, GOLD, TOOLS)["reason"] == "wrong_name"


def test_required_uses_gold_tool_and_prediction():
    # Gold tool requires city+unit; the prediction has only city. D = 3 (gold has 3 args).
    pred = [call("get_weather", city="Paris")]
    # name 1, required 1/2, key 1/3, type 1/3, value 1/3
    expected = (3 * 1 + 3 * 0.5 + 1 * (1 / 3) + 2 * (1 / 3) + 2 * (1 / 3)) / 11
    assert score(pred, GOLD) == pytest.approx(expected)
    b = esm_breakdown(pred, GOLD, TOOLS)
    assert b["required"] == pytest.approx(0.5)
    assert "missing_required" in b["reason"]


def test_required_is_not_read_from_gold_arguments():
    # The reference bug checks gold's arguments: a gold call itself lacking `unit` would
    # then make S_required vacuous. We check the *tool's* required list against pred.
    gold = [call("get_weather", city="Paris")]
    pred = [call("get_weather", city="Paris")]
    b = esm_breakdown(pred, gold, TOOLS)
    assert b["required"] == pytest.approx(0.5)
    assert b["score"] == pytest.approx((3 + 1.5 + 1 + 2 + 2) / 11)


def test_no_required_params_gives_full_required_term():
    pred = [call("convert", amount=2.5)]
    gold = [call("convert", amount=2.5)]
    assert esm_breakdown(pred, gold, TOOLS)["required"] == 1.0
    assert score(pred, gold) == 1.0


def test_key_counts_names_in_schema_over_max_len():
    pred = [call("get_weather", city="Paris", unit="celsius", days=3, country="FR")]
    # D = max(4, 3) = 4: key 3/4, type 3/4 (unknown key has no type), value 3/4
    b = esm_breakdown(pred, GOLD, TOOLS)
    assert b["key"] == pytest.approx(3 / 4)
    assert b["type"] == pytest.approx(3 / 4)
    assert b["value"] == pytest.approx(3 / 4)
    assert b["score"] == pytest.approx((3 + 3 + 0.75 + 1.5 + 1.5) / 11)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (3, True),
        (3.0, True),  # JSON Schema: an integral float is an integer
        (3.5, False),
        (True, False),  # a bool is not an integer
        ("3", False),
        (None, False),
    ],
)
def test_type_integer_is_strict_about_bools(value, ok):
    pred = [call("get_weather", city="Paris", unit="celsius", days=value)]
    assert esm_breakdown(pred, GOLD, TOOLS)["type"] == pytest.approx(1.0 if ok else 2 / 3)


@pytest.mark.parametrize(
    ("arg", "value", "ok"),
    [
        ("amount", 2, True),  # an integer is a number
        ("amount", 2.5, True),
        ("amount", False, False),  # a bool is not a number
        ("flag", True, True),
        ("flag", 1, False),
        ("tags", ["a"], True),
        ("tags", "a", False),
        ("meta", {"k": 1}, True),
        ("meta", [1], False),
        ("anything", {"x": [1, None]}, True),  # no declared type accepts anything
        ("maybe", None, True),  # type lists: any branch
        ("maybe", "s", True),
        ("maybe", 1, False),
        ("weird", 1, False),  # unknown type names match nothing
    ],
)
def test_type_rules(arg, value, ok):
    pred = [{"name": "convert", "arguments": {arg: value}}]
    gold = [{"name": "convert", "arguments": {arg: value}}]
    assert esm_breakdown(pred, gold, TOOLS)["type"] == (1.0 if ok else 0.0)


@pytest.mark.parametrize(
    ("pred_city", "value_term"),
    [
        ("Paris", 1.0),
        ("paris", 0.5),  # equal ignoring case
        ("Paris, France", 0.5),  # gold is a substring of pred
        ("Pari", 0.5),  # pred is a substring of gold
        ("PARIS, France", 0.0),  # neither (substring is case-sensitive)
        ("London", 0.0),
        ("", 0.0),  # the empty string is not credited as a substring
    ],
)
def test_string_value_partial_credit(pred_city, value_term):
    gold = [call("get_forecast", city="Paris")]
    pred = [call("get_forecast", city=pred_city)]
    b = esm_breakdown(pred, gold, TOOLS)
    assert b["value"] == pytest.approx(value_term)
    assert b["score"] == pytest.approx((3 + 3 + 1 + 2 + 2 * value_term) / 11)


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (1, 1.0, True),
        (True, 1, False),
        (0, False, False),
        ([1, 2], [1, 2], True),
        ([1, 2], [2, 1], False),
        ({"a": [1, {"b": True}]}, {"a": [1, {"b": True}]}, True),
        ({"a": [1, {"b": True}]}, {"a": [1, {"b": 1}]}, False),
        (None, None, True),
    ],
)
def test_non_string_values_need_exact_equality(a, b, equal):
    pred = [{"name": "convert", "arguments": {"anything": a}}]
    gold = [{"name": "convert", "arguments": {"anything": b}}]
    assert esm_breakdown(pred, gold, TOOLS)["value"] == (1.0 if equal else 0.0)


def test_value_only_counts_args_present_in_gold():
    gold = [call("get_forecast", city="Paris", days=2)]
    pred = [call("get_forecast", city="Paris", unit="celsius")]
    # D = 2; value: city 1, unit not in gold → 1/2
    b = esm_breakdown(pred, gold, TOOLS)
    assert b["value"] == pytest.approx(0.5)
    assert b["key"] == 1.0 and b["type"] == 1.0


def test_no_call_scores_zero():
    assert score([], GOLD) == 0.0
    assert score(None, GOLD) == 0.0
    assert esm_breakdown([], GOLD, TOOLS)["reason"] == "no_call"


def test_no_call_expected_and_none_made_scores_one():
    assert score([], []) == 1.0
    assert score([call("ping")], []) == 0.0


def test_both_argument_sets_empty_and_same_name_is_one():
    assert score([call("ping")], [call("ping")]) == 1.0
    # same for a tool that is not offered: the edge case decides before any lookup
    assert score([call("mystery")], [call("mystery")], []) == 1.0


def test_empty_prediction_args_against_nonempty_gold_is_zero():
    assert score([call("get_weather")], GOLD) == 0.0
    assert esm_breakdown([call("get_weather")], GOLD, TOOLS)["reason"] == "pred_args_empty"


def test_both_empty_names_differ_has_vacuous_argument_terms():
    gold = [call("ping")]
    # convert has no required params; argument terms vacuous (1) → (0+3+1+2+2)/11
    assert score([call("convert")], gold) == pytest.approx(8 / 11)
    # an unknown tool: key and type 0 → (0+3+0+0+2)/11
    assert score([call("nope")], gold) == pytest.approx(5 / 11)


def test_unknown_predicted_tool_zeroes_key_and_type():
    pred = [call("get_wether", city="Paris", unit="celsius", days=3)]
    b = esm_breakdown(pred, GOLD, TOOLS)
    assert (b["name"], b["key"], b["type"]) == (0.0, 0.0, 0.0)
    assert b["required"] == 1.0 and b["value"] == 1.0
    assert b["score"] == pytest.approx((0 + 3 + 0 + 0 + 2) / 11)
    assert b["reason"] == "unknown_tool"


def test_gold_tool_not_offered_falls_back_to_gold_arguments():
    gold = [call("secret", a=1, b=2)]
    pred = [call("secret", a=1)]
    b = esm_breakdown(pred, gold, TOOLS)
    # required from gold args: 1/2; pred tool unknown: key = type = 0; value 1/2
    assert b["required"] == pytest.approx(0.5)
    assert b["score"] == pytest.approx((3 + 1.5 + 0 + 0 + 1) / 11)


def test_parallel_calls_are_matched_order_free():
    g = [call("get_forecast", city="Paris"), call("get_forecast", city="Rome")]
    p = [call("get_forecast", city="Rome"), call("get_forecast", city="Paris")]
    assert score(p, g) == 1.0
    b = esm_breakdown(p, g, TOOLS)
    assert sorted((m["pred"], m["gold"]) for m in b["matches"]) == [(0, 1), (1, 0)]


def test_parallel_divides_by_max_count():
    g = [call("get_forecast", city="Paris"), call("get_forecast", city="Rome")]
    assert score([call("get_forecast", city="Rome")], g) == pytest.approx(0.5)
    # an extra, useless call halves a perfect pair too
    p = [call("get_forecast", city="Paris"), call("ping")]
    assert score(p, [g[0]]) == pytest.approx(0.5)
    assert "call_count:2!=1" in esm_breakdown(p, [g[0]], TOOLS)["reason"]


def test_parallel_assignment_is_optimal_not_greedy():
    g0 = call("get_forecast", city="Paris")
    g1 = call("get_forecast", city="Paris", unit="c")
    p0 = call("get_forecast", city="Paris", days=1)  # greedy would take g0 for it ...
    p1 = call("get_forecast", city="Paris")  # ... leaving p1 the worse g1
    s = lambda a, b: score([a], [b])  # noqa: E731
    assert s(p0, g0) >= s(p0, g1)  # a tie: first-best greedy takes g0
    greedy = s(p0, g0) + s(p1, g1)
    optimal = s(p0, g1) + s(p1, g0)
    assert optimal > greedy + 0.1
    assert score([p0, p1], [g0, g1]) == pytest.approx(optimal / 2)
    # hand-computed: p1→g0 is perfect; p0→g1: key/type 1, value 1/2 → (3+3+1+2+1)/11
    assert optimal == pytest.approx(1 + 10 / 11)


@pytest.mark.parametrize(
    ("pred", "reason"),
    [
        ([{"name": "get_weather", "arguments": "{not json"}], "arguments_not_json"),
        ([{"name": "get_weather", "arguments": "[1, 2]"}], "arguments_not_object:list"),
        ([{"name": "get_weather", "arguments": 7}], "arguments_not_object:int"),
        ([{"arguments": {}}], "missing_name"),
        (["get_weather(city='Paris')"], "call_not_object:str"),
        ("definitely not json", "calls_not_json"),
        (42, "calls_not_list:int"),
    ],
)
def test_malformed_predictions_score_zero_with_reason(pred, reason):
    b = esm_breakdown(pred, GOLD, TOOLS)
    assert b["score"] == 0.0
    assert b["reason"] == reason
    assert esm_score(pred, GOLD, TOOLS) == 0.0


def test_invalid_gold_scores_zero_with_reason():
    b = esm_breakdown(GOLD, [{"name": "get_weather", "arguments": "{"}], TOOLS)
    assert b["score"] == 0.0 and b["reason"].startswith("gold_invalid")


def test_garbage_tools_do_not_raise():
    for tools in (
        None,
        "x",
        [1, None, {"function": 3}, {"function": {"name": "get_weather", "parameters": "nope"}}],
    ):
        s = esm_score(GOLD, GOLD, tools)
        # unknown (or unusable) tool: key and type are lost, required falls back to gold args
        assert 0.0 <= s <= 1.0


# ---- fuzz -----------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=4)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
names = st.sampled_from(["get_weather", "get_forecast", "convert", "ping", "nope", "", "x"])
keys = st.sampled_from(["city", "unit", "days", "amount", "flag", "tags", "zz", ""])
arguments = st.one_of(
    st.dictionaries(keys, json_values, max_size=4),
    st.dictionaries(keys, json_values, max_size=4).map(json.dumps),
    st.text(max_size=8),
    json_values,
)
calls = st.one_of(
    st.fixed_dictionaries({"name": names, "arguments": arguments}),
    st.fixed_dictionaries(
        {"function": st.fixed_dictionaries({"name": names, "arguments": arguments})}
    ),
    json_values,
)
call_lists = st.one_of(st.lists(calls, max_size=3), json_values, st.text(max_size=10))
type_names = st.sampled_from(
    ["string", "integer", "number", "boolean", "array", "object", "null", "bogus"]
)
schemas = st.fixed_dictionaries(
    {
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {
                "name": names,
                "parameters": st.one_of(
                    st.fixed_dictionaries(
                        {
                            "type": st.just("object"),
                            "properties": st.dictionaries(
                                keys,
                                st.one_of(
                                    st.fixed_dictionaries({"type": type_names}),
                                    st.fixed_dictionaries(
                                        {"type": st.lists(type_names, max_size=2)}
                                    ),
                                    json_values,
                                ),
                                max_size=4,
                            ),
                            "required": st.one_of(st.lists(keys, max_size=3), json_values),
                        }
                    ),
                    json_values,
                ),
            }
        ),
    }
)
tool_lists = st.one_of(st.lists(st.one_of(schemas, json_values), max_size=4), json_values)


@settings(
    max_examples=2_500, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
@given(pred=call_lists, gold=call_lists, tools=tool_lists)
def test_fuzz_never_raises_and_stays_in_range(pred, gold, tools):
    s = esm_score(pred, gold, tools)
    b = esm_breakdown(pred, gold, tools)
    assert 0.0 <= s <= 1.0
    assert b["score"] == s
    assert not b["reason"].startswith("internal_error")
    for k in ("name", "required", "key", "type", "value"):
        assert 0.0 <= b[k] <= 1.0
