"""BFCL-style AST checker: every BFCL ground truth passes, seeded perturbations fail with
the exact error type, BFCL's comparison rules by hand, and the parser never raises."""

from __future__ import annotations

import copy
import importlib.util
import json
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttpa_ray.score.ast_checker import (
    ERROR_TYPES,
    AstCheckResult,
    AstParseError,
    ast_check,
    ast_check_detail,
    parse_model_output,
    parse_python_calls,
    standardize_string,
)
from ttpa_ray.tools.bfcl import ground_truth_calls

HAS_BFCL = importlib.util.find_spec("bfcl_eval") is not None
needs_bfcl = pytest.mark.skipif(not HAS_BFCL, reason="bfcl-eval not installed")

PYTHON_CATEGORIES = [
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
]

# Entries whose ground truth contradicts its own function doc, so no output can pass
# (BFCL's own checker rejects the rendered ground truth the same way). Each is listed with
# the error it must keep producing, so a BFCL data fix makes this test fail.
INCONSISTENT: dict[str, tuple[str, str]] = {
    "live_simple_106-63-0": (
        "missing_required",
        "'auto_loan_payment_start' is required by the doc; ground truth accepts no value",
    ),
    "live_simple_112-68-0": (
        "missing_required",
        "five required list params whose ground truth accepts no value ([])",
    ),
    "live_multiple_507-149-4": (
        "missing_required",
        "'origin_airport' is required by the doc; ground truth only accepts omitting it",
    ),
    "live_multiple_862-181-3": (
        "unexpected_param",
        "ground truth passes 'journey_start_time', not in Trains_1_FindTrains' doc",
    ),
    "live_multiple_964-207-0": (
        "missing_required",
        "ground truth names the parameter 'question'; the doc requires 'statement'",
    ),
}
# Only in the "full" rendering (every optional parameter passed): the ground truth lists
# an optional value for a parameter the doc does not have.
INCONSISTENT_FULL_ONLY: dict[str, tuple[str, str]] = {
    "parallel_multiple_26": (
        "unexpected_param",
        "ground truth allows 'type' (optional) for bank.calculate_balance, not in the doc",
    ),
    "parallel_multiple_12": (
        "unexpected_param",
        "ground truth allows 'permeability' (optional), not in the doc",
    ),
}
# Java: array items the doc types as String but the ground truth gives ints/booleans.
INCONSISTENT_JAVA: dict[str, tuple[str, str]] = {
    "simple_java_36": ("type_error", "String[] 'parts' with int/boolean ground-truth items"),
    "simple_java_65": ("type_error", "String[] 'params' with boolean ground-truth items"),
}


# ------------------------------------------------------------------ rendering

render = ground_truth_calls


def _docs(functions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in functions}


def to_python(calls: list[tuple[str, dict[str, Any]]]) -> str:
    body = ", ".join(f"{n}({', '.join(f'{k}={v!r}' for k, v in a.items())})" for n, a in calls)
    return f"[{body}]"


def to_dicts(
    calls: list[tuple[str, dict[str, Any]]], json_args: bool = False
) -> list[dict[str, Any]]:
    return [{"name": n, "arguments": json.dumps(a) if json_args else a} for n, a in calls]


@pytest.fixture(scope="module")
def entries() -> dict[str, list[Any]]:
    if not HAS_BFCL:
        pytest.skip("bfcl-eval not installed")
    from ttpa_ray.tools.bfcl import load_category

    cats = [*PYTHON_CATEGORIES, "simple_java", "simple_javascript"]
    return {cat: load_category(cat) for cat in cats}


# ------------------------------------------------------------- ground truths pass


@needs_bfcl
@pytest.mark.parametrize("full", [False, True], ids=["minimal", "full"])
@pytest.mark.parametrize("category", PYTHON_CATEGORIES)
def test_every_ground_truth_is_valid(entries: dict, category: str, full: bool) -> None:
    excluded = dict(INCONSISTENT)
    if full:
        excluded.update(INCONSISTENT_FULL_ONLY)
    checked = 0
    for entry in entries[category]:
        calls = render(entry.possible_answer, entry.original_functions, full)
        outputs = [
            # Python source against the original BFCL docs...
            (to_python(calls), entry.original_functions),
            # ...and OpenAI-style calls against the normalised tools, with underscored names.
            (to_dicts([(_openai(n), a) for n, a in calls]), entry.functions),
            (to_dicts(calls, json_args=True), entry.functions),
        ]
        for output, functions in outputs:
            result = ast_check_detail(output, entry.possible_answer, functions)
            if entry.id in excluded:
                assert (result.valid, result.error_type) == (False, excluded[entry.id][0]), entry.id
            else:
                assert result == AstCheckResult(True), (entry.id, output, result)
        checked += entry.id not in excluded
    assert checked >= len(entries[category]) - 4


def _openai(name: str) -> str:
    return name.replace(".", "_")


@needs_bfcl
@pytest.mark.parametrize("category", ["simple_java", "simple_javascript"])
def test_java_and_javascript_ground_truths_are_valid(entries: dict, category: str) -> None:
    language = "java" if category == "simple_java" else "javascript"
    for entry in entries[category]:
        calls = render(entry.possible_answer, entry.original_functions, full=True)
        result = ast_check_detail(
            to_dicts(calls), entry.possible_answer, entry.original_functions, language
        )
        if entry.id in INCONSISTENT_JAVA:
            assert result.error_type == INCONSISTENT_JAVA[entry.id][0]
        else:
            assert result.valid, (entry.id, result)


# ----------------------------------------------------------------- perturbations

_TYPE_OF = {"integer": int, "float": float, "string": str, "boolean": bool, "array": list}
_WRONG_TYPE = {int: "not a number", float: "not a number", str: 12345, bool: "yes", list: "a, b"}


def _typed_params(
    args: dict[str, Any], values: dict[str, list[Any]], doc: dict[str, Any]
) -> list[tuple[str, type]]:
    """Arguments whose doc type is simple and whose ground truth has exactly that type."""
    out = []
    props = doc["parameters"]["properties"]
    for param in args:
        expected = _TYPE_OF.get(props[param].get("type"))
        answers = [v for v in values[param] if v != ""]
        if expected is None or not answers:
            continue
        allowed = (int, float) if expected is float else (expected,)
        if all(type(v) in allowed for v in answers):
            out.append((param, expected))
    return out


def _wrong_value(value: Any, answers: list[Any]) -> Any:
    if isinstance(value, bool):
        return None if (not value) in answers else (not value)
    if isinstance(value, int):
        return value + 7919
    if isinstance(value, float):
        return value + 1234.5
    if isinstance(value, str):
        return "zzqx wrong value"
    return None


def _perturb(entry: Any, rng: random.Random) -> list[tuple[str, list[tuple[str, dict]], str]]:
    """(kind, perturbed calls, expected error) for every perturbation that applies."""
    base = render(entry.possible_answer, entry.original_functions, full=True)
    docs = _docs(entry.original_functions)
    index = rng.randrange(len(base))
    name, args = base[index]
    doc = docs[name]
    values = entry.possible_answer[index][name]

    def with_call(new_name: str, new_args: dict[str, Any]) -> list[tuple[str, dict]]:
        calls = copy.deepcopy(base)
        calls[index] = (new_name, new_args)
        return calls

    cases = [
        ("rename", with_call(name + "_renamed", args), "wrong_func_name"),
        ("extra", with_call(name, {**args, "zz_not_a_param": 1}), "unexpected_param"),
        ("duplicate", [*base, base[index]], "wrong_count"),
    ]
    if len(base) > 1:
        cases.append(("drop_call", base[:index] + base[index + 1 :], "wrong_count"))
    present_required = [p for p in doc["parameters"].get("required", []) if p in args]
    if present_required:
        param = rng.choice(present_required)
        dropped = {k: v for k, v in args.items() if k != param}
        cases.append(("drop_required", with_call(name, dropped), "missing_required"))
    typed = _typed_params(args, values, doc)
    if typed:
        param, expected = rng.choice(typed)
        cases.append(
            ("wrong_type", with_call(name, {**args, param: _WRONG_TYPE[expected]}), "type_error")
        )
        scalar = [(p, t) for p, t in typed if t is not list]
        if scalar:
            param, _ = rng.choice(scalar)
            wrong = _wrong_value(args[param], values[param])
            if wrong is not None:
                cases.append(
                    ("wrong_value", with_call(name, {**args, param: wrong}), "value_error")
                )
    return cases


@needs_bfcl
def test_seeded_perturbations_give_the_exact_error(entries: dict) -> None:
    rng = random.Random(0)
    pool = [
        e
        for cat in ("simple_python", "multiple", "parallel", "parallel_multiple", "live_parallel")
        for e in entries[cat]
        if e.id not in INCONSISTENT and e.id not in INCONSISTENT_FULL_ONLY
    ]
    sample = rng.sample(pool, 300)
    done: Counter[str] = Counter()
    for entry in sample:
        for kind, calls, expected in _perturb(entry, rng):
            for output, functions in (
                (to_python(calls), entry.original_functions),
                (to_dicts(calls, json_args=True), entry.functions),
            ):
                got = ast_check(output, entry.possible_answer, functions)
                assert got == (False, expected), (entry.id, kind, output, got)
            done[kind] += 1
    # Every perturbation kind was really exercised, on parallel entries too.
    assert min(done.values()) >= 50 and len(done) == 7, done
    assert sum(len(e.possible_answer) > 1 for e in sample) >= 100


@needs_bfcl
def test_parallel_order_does_not_matter(entries: dict) -> None:
    rng = random.Random(0)
    shuffled_some = 0
    for entry in entries["parallel"] + entries["parallel_multiple"]:
        calls = render(entry.possible_answer, entry.original_functions, full=False)
        rng.shuffle(calls)
        shuffled_some += calls != render(entry.possible_answer, entry.original_functions, False)
        assert ast_check(to_python(calls), entry.possible_answer, entry.original_functions) == (
            entry.id not in INCONSISTENT,
            None if entry.id not in INCONSISTENT else INCONSISTENT[entry.id][0],
        )
    assert shuffled_some > 100


# ------------------------------------------------------------- rules, by hand

DOC = {
    "name": "geo.distance",
    "description": "d",
    "parameters": {
        "type": "dict",
        "properties": {
            "city": {"type": "string"},
            "km": {"type": "float"},
            "hops": {"type": "integer"},
            "exact": {"type": "boolean"},
            "stops": {"type": "array", "items": {"type": "integer"}},
            "point": {"type": "tuple", "items": {"type": "float"}},
            "opts": {"type": "dict", "properties": {"mode": {"type": "string"}}},
            "legs": {"type": "array", "items": {"type": "dict"}},
            "extra": {"type": "string"},
        },
        "required": ["city"],
    },
}
GT = [
    {
        "geo.distance": {
            "city": ["New York, NY", "NYC"],
            "km": [2.0, ""],
            "hops": [3, ""],
            "exact": [True, ""],
            "stops": [[1, 2], ""],
            "point": [[1.5, -2.0], ""],
            "opts": [{"mode": ["Fast"], "note": ["", "x"]}, ""],
            "legs": [[{"from": ["A"]}, {"from": ["B"]}], ""],
        }
    }
]


def check(output: Any, answer: list | None = None, docs: Any = None) -> tuple[bool, str | None]:
    return ast_check(output, GT if answer is None else answer, [DOC] if docs is None else docs)


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ('geo.distance(city="New York, NY")', (True, None)),
        ('geo_distance(city="NYC")', (True, None)),  # OpenAI-mapped name
        ('geo.distance(city="new york ny")', (True, None)),  # BFCL string normalisation
        ("geo.distance(city='New-York NY', km=2)", (True, None)),  # int accepted for float
        ('geo.distance(city="NYC", km=2.0, hops=3, exact=True)', (True, None)),
        ('geo.distance(city="NYC", stops=[1, 2], point=(1.5, -2))', (True, None)),
        ('geo.distance(city="NYC", opts={"mode": "fast"})', (True, None)),
        ('geo.distance(city="NYC", opts={"mode": "fast", "note": "X"})', (True, None)),
        ('geo.distance(city="NYC", legs=[{"from": "a"}, {"from": "b"}])', (True, None)),
        ('geo.dist(city="NYC")', (False, "wrong_func_name")),
        ("geo.distance(km=2.0)", (False, "missing_required")),
        ('geo.distance(city="NYC", extra="x")', (False, "unexpected_param")),  # doc, not GT
        ('geo.distance(city="NYC", nope=1)', (False, "unexpected_param")),
        ('geo.distance(city="NYC", hops=True)', (False, "type_error")),  # bool is no int
        ('geo.distance(city="NYC", hops=3.0)', (False, "type_error")),
        ('geo.distance(city="NYC", km="2")', (False, "type_error")),
        ('geo.distance(city="NYC", stops=[1, "2"])', (False, "type_error")),  # item type
        ('geo.distance(city="NYC", stops=(1, 2))', (False, "type_error")),  # tuple != array
        ('geo.distance(city="NYC", point="1.5,-2")', (False, "type_error")),
        ('geo.distance(city="Boston")', (False, "value_error")),
        ('geo.distance(city="NYC", km=2.5)', (False, "value_error")),
        ('geo.distance(city="NYC", stops=[2, 1])', (False, "value_error")),  # order matters
        ('geo.distance(city="NYC", opts={"mode": "slow"})', (False, "value_error")),
        ('geo.distance(city="NYC", opts={"speed": "fast"})', (False, "value_error")),
        ('geo.distance(city="NYC", opts={})', (False, "value_error")),  # missing dict key
        ('geo.distance(city="NYC", legs=[{"from": "a"}])', (False, "value_error")),
        ('[geo.distance(city="NYC"), geo.distance(city="NYC")]', (False, "wrong_count")),
        ("[]", (False, "wrong_count")),
        ("geo.distance('NYC')", (False, "parse_error")),  # positional argument
    ],
)
def test_bfcl_rules(output: str, expected: tuple[bool, str | None]) -> None:
    assert check(output) == expected
    if not output.startswith("[") and "'NYC'" not in output:
        # The same call as an OpenAI-style dict against the normalised tool.
        from ttpa_ray.tools.bfcl import normalize_bfcl_function

        (name, args) = parse_python_calls(output)[0]
        tool = normalize_bfcl_function(DOC)
        got = check([{"name": name, "arguments": args}], docs=[tool])
        # Normalised, ``tuple`` is ``array``, which (as in BFCL) takes no Python tuple.
        assert got == (expected if "point=(" not in output else (False, "type_error"))


def test_required_by_ground_truth_only_is_missing_required() -> None:
    answer = [{"geo.distance": {"city": ["NYC"], "hops": [3]}}]  # hops not optional here
    assert check('geo.distance(city="NYC")', answer) == (False, "missing_required")
    assert check('geo.distance(city="NYC", hops=3)', answer) == (True, None)


def test_variable_rule_accepts_the_ground_truths_type() -> None:
    # A variable name for a dict parameter (BFCL's ``is_variable``): compared verbatim.
    answer = [{"geo.distance": {"city": ["NYC"], "opts": ["my_opts"]}}]
    assert check('geo.distance(city="NYC", opts="my_opts")', answer) == (True, None)
    assert check("geo.distance(city='NYC', opts=my_opts)", answer) == (True, None)  # bare name
    assert check('geo.distance(city="NYC", opts="MY_OPTS")', answer) == (False, "value_error")


def test_parallel_uses_a_full_matching_not_greedy() -> None:
    doc = {"name": "f", "parameters": {"type": "dict", "properties": {"a": {"type": "integer"}}}}
    answer = [{"f": {"a": [1, 2]}}, {"f": {"a": [1]}}]
    # Greedy (BFCL) would give f(a=1) to the first answer and then fail on f(a=2).
    assert ast_check("[f(a=1), f(a=2)]", answer, [doc]) == (True, None)
    assert ast_check("[f(a=2), f(a=1)]", answer, [doc]) == (True, None)
    assert ast_check("[f(a=2), f(a=2)]", answer, [doc]) == (False, "value_error")


def test_irrelevance_answer_accepts_no_call() -> None:
    assert ast_check("[]", [], [DOC]) == (True, None)
    assert ast_check([], [], [DOC]) == (True, None)
    assert ast_check('geo.distance(city="x")', [], [DOC]) == (False, "wrong_count")


def test_missing_doc_compares_values_only() -> None:
    answer = [{"g": {"x": ["Hello"], "n": [1]}}]
    assert ast_check("g(x='hello', n=1)", answer, []) == (True, None)
    assert ast_check("g(x='bye', n=1)", answer, []) == (False, "value_error")
    assert ast_check("g(x='hello', n=1, z=2)", answer, []) == (False, "unexpected_param")


def test_standardize_string() -> None:
    assert standardize_string("April 1, 2024") == standardize_string("april 1 2024")
    assert standardize_string("New_York-City/NY.") == "newyorkcityny"
    assert standardize_string("it's") == 'it"s'


@pytest.mark.parametrize(
    ("language", "schema", "value", "answer", "valid"),
    [
        ("java", {"type": "integer"}, "42", 42, True),
        ("java", {"type": "long"}, "42L", 42, True),
        ("java", {"type": "float"}, "2.5f", 2.5, True),
        ("java", {"type": "boolean"}, "true", True, True),
        ("java", {"type": "String"}, '"abc"', "abc", True),
        ("java", {"type": "Array", "items": {"type": "integer"}}, "new int[]{1, 2}", [1, 2], True),
        (
            "java",
            {"type": "ArrayList", "items": {"type": "String"}},
            'new ArrayList<>(Arrays.asList("a", "b"))',
            ["a", "b"],
            True,
        ),
        (
            "java",
            {"type": "HashMap"},
            'new HashMap<String, Object>() {{ put("k", 5); }}',
            {"k": [5]},
            True,
        ),
        ("java", {"type": "integer"}, 42, 42, True),  # native JSON value also accepted
        ("java", {"type": "integer"}, "forty", 42, False),
        ("javascript", {"type": "array", "items": {"type": "integer"}}, "[1, 2]", [1, 2], True),
        ("javascript", {"type": "dict"}, "{a: 1, b: 'x'}", {"a": [1], "b": ["x"]}, True),
        ("javascript", {"type": "Boolean"}, "false", False, True),
        ("javascript", {"type": "Bigint"}, "7n", 7, True),
        ("python", {"type": "integer"}, "42", 42, False),  # Python gets no conversion
    ],
)
def test_java_and_javascript_values(
    language: str, schema: dict, value: Any, answer: Any, valid: bool
) -> None:
    doc = {"name": "m", "parameters": {"type": "dict", "properties": {"p": schema}}}
    got = ast_check(
        [{"name": "m", "arguments": {"p": value}}], [{"m": {"p": [answer]}}], [doc], language
    )
    assert got[0] is valid, got


# ------------------------------------------------------------------------ parser


def test_parser_nested_literals_and_negative_numbers() -> None:
    calls = parse_python_calls(
        "[f(a=[1, [2, -3]], b={'k': (1, -2.5), 'n': None}, c=True, d=-7, e=1e-3, s='x,y'),"
        " g.h.i(x=[])]"
    )
    assert calls == [
        (
            "f",
            {
                "a": [1, [2, -3]],
                "b": {"k": (1, -2.5), "n": None},
                "c": True,
                "d": -7,
                "e": 0.001,
                "s": "x,y",
            },
        ),
        ("g.h.i", {"x": []}),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("math.factorial(number=5)", [("math.factorial", {"number": 5})]),
        ("f(a=1), g(b=2)", [("f", {"a": 1}), ("g", {"b": 2})]),  # BFCL's implicit list
        ("```python\n[f(a=1)]\n```", [("f", {"a": 1})]),
        ("`f(a=1)`", [("f", {"a": 1})]),
        ("f()", [("f", {})]),
        ("f(a=my_var, b=np.pi)", [("f", {"a": "my_var", "b": "np.pi"})]),
        ("f(a=2**10, b=1/4, c=-(3))", [("f", {"a": 1024, "b": 0.25, "c": -3})]),
        ("f(a=g(x=1))", [("f", {"a": "g(x=1)"})]),  # nested call kept as source text
        ("f(a=__import__('os').getcwd())", [("f", {"a": "__import__('os').getcwd()"})]),
    ],
)
def test_parser_forms(text: str, expected: list) -> None:
    assert parse_python_calls(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "hello world",
        "f(",
        "[1, 2]",
        "f(1)",
        "f(**kw)",
        "f(a=1, a=2)",
        "x.y",
        "42",
        "f(a={**d})",
        "f(a=10**10**10)",
        "f(a=(10**999)**999)",
        "f(a=" + "*".join(["9**9999"] * 50) + ")",
        "(lambda: 1)()",
        "f()(a=1)",
        "[" * 5000,
        "f(a=" * 3000,
    ],
)
def test_parser_rejects_garbage(text: str) -> None:
    with pytest.raises(AstParseError):
        parse_python_calls(text)
    assert ast_check(text, GT, [DOC]) == (False, "parse_error")


def test_dict_outputs() -> None:
    expected = [("f", {"a": 1}), ("g", {})]
    assert parse_model_output([{"name": "f", "arguments": {"a": 1}}, {"name": "g"}]) == expected
    assert (
        parse_model_output([{"name": "f", "arguments": '{"a": 1}'}, {"name": "g", "arguments": ""}])
        == expected
    )
    openai = [{"type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]
    assert parse_model_output(openai) == expected[:1]
    assert parse_model_output([{"f": {"a": 1}}]) == expected[:1]  # BFCL's decoded form
    assert parse_model_output('[{"name": "f", "arguments": {"a": 1}}]') == expected[:1]
    assert parse_model_output({"name": "f", "arguments": {"a": 1}}) == expected[:1]


@pytest.mark.parametrize(
    "output",
    [
        None,
        5,
        1.5,
        object(),
        [1, 2],
        [{"foo": 1, "bar": 2}],
        {"name": 5},
        [{"name": "f", "arguments": "{not json"}],
        [{"name": "f", "arguments": "[1]"}],
        [{"name": "f", "arguments": {1: 2}}],
        b"f(a=1)",
    ],
)
def test_malformed_outputs_are_parse_errors(output: Any) -> None:
    assert ast_check(output, GT, [DOC]) == (False, "parse_error")


@pytest.mark.parametrize(
    ("answer", "docs"),
    [
        (None, [DOC]),
        ("x", [DOC]),
        ({"f": {}}, [DOC]),
        ([{"f": 1}], [DOC]),
        ([{"f": {"a": 1}}], [DOC]),
        ([{"a": {}, "b": {}}], [DOC]),
        (GT, "abc"),
        (GT, [1]),
        (GT, 5),
    ],
)
def test_malformed_answers_and_docs_never_raise(answer: Any, docs: Any) -> None:
    assert ast_check('geo.distance(city="NYC")', answer, docs) == (False, "parse_error")


def test_unknown_language() -> None:
    assert ast_check('geo.distance(city="NYC")', GT, [DOC], "cobol") == (False, "parse_error")


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=80),
        st.text(alphabet="f(a=1,[]{}'\"-.x)gb:", max_size=60),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=5),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=4), inner, max_size=3)
            ),
            max_leaves=10,
        ),
    )
)
def test_never_raises_on_arbitrary_output(output: Any) -> None:
    result = ast_check_detail(output, GT, [DOC])
    assert isinstance(result, AstCheckResult)
    assert result.valid or result.error_type in ERROR_TYPES
