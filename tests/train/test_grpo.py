"""GRPO's pure parts: rewards, group advantages, token-span credit and the clipped loss."""

from __future__ import annotations

import json
import math

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoTokenizer

from ttpa_ray.config import GRPOConfig, TrainConfig
from ttpa_ray.schema.token_classes import char_classes
from ttpa_ray.schema.tool_call_text import render_assistant_text, render_tool_calls
from ttpa_ray.train.grpo import (
    PARTS,
    completion_offsets,
    group_advantages,
    grpo_loss,
    score_completion,
    span_advantages,
    span_label,
    token_parts,
)

END = "<|im_end|>"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]
GOLD = [{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}]
WRONG_VALUE = [{"name": "get_weather", "arguments": {"city": "Berlin", "days": 3}}]


@pytest.fixture(scope="module")
def tok(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


# -- config ------------------------------------------------------------------------------


def test_config_defaults_and_weight_validation():
    cfg = TrainConfig().grpo
    assert (cfg.group_size, cfg.reward, cfg.advantage, cfg.std_normalise) == (
        4,
        "esm",
        "span",
        True,
    )
    assert cfg.weights == dict.fromkeys(("name", "required", "key", "type", "value"), 1.0)
    assert GRPOConfig(weights={"value": 2.0}).weights == {"value": 2.0}
    for bad in ({"values": 1.0}, {"value": -1.0}, {"name": 0.0, "value": 0.0}):
        with pytest.raises(ValidationError):
            GRPOConfig(weights=bad)
    with pytest.raises(ValidationError):
        GRPOConfig(group_size=1)
    for name, f in GRPOConfig.model_fields.items():
        assert f.description, f"train.grpo.{name} has no description (CLI help)"


# -- rewards -----------------------------------------------------------------------------


def test_rewards_on_hand_made_texts():
    right = render_tool_calls(GOLD) + END
    wrong = render_tool_calls(WRONG_VALUE)
    esm, exact = GRPOConfig(reward="esm"), GRPOConfig(reward="exact")
    weighted = GRPOConfig(reward="weighted")
    only_value = GRPOConfig(reward="weighted", weights={"value": 1.0})

    r = score_completion(right, GOLD, TOOLS, esm)
    assert (r.reward, r.esm, r.exact, r.parsed) == (1.0, 1.0, True, True)
    assert r.parts == dict.fromkeys(PARTS, 1.0)
    assert score_completion(right, GOLD, TOOLS, exact).reward == 1.0

    # city wrong (0), days right (1): S_value = 1/2; ESM = (3+3+1+2+2·0.5)/11
    w = score_completion(wrong, json.dumps(GOLD), json.dumps(TOOLS), esm)
    assert w.esm == pytest.approx(10 / 11) and w.reward == pytest.approx(10 / 11)
    assert not w.exact and w.parsed
    assert w.parts == {"name": 1.0, "key": 1.0, "value": pytest.approx(0.75)}
    assert score_completion(wrong, GOLD, TOOLS, exact).reward == 0.0
    assert score_completion(wrong, GOLD, TOOLS, weighted).reward == pytest.approx(4.5 / 5)
    assert score_completion(wrong, GOLD, TOOLS, only_value).reward == pytest.approx(0.5)

    for failed in ("<tool_call>\n{not json\n</tool_call>", "I cannot help.", ""):
        for cfg in (esm, exact, weighted):
            f = score_completion(failed, GOLD, TOOLS, cfg)
            assert (f.reward, f.parsed, f.exact) == (0.0, False, False)
            assert f.parts == dict.fromkeys(PARTS, 0.0)

    # a stray malformed block next to a right call: ESM 1, but not exact (as eval says)
    stray = score_completion(right + "\n<tool_call>\n{\n</tool_call>", GOLD, TOOLS, esm)
    assert stray.esm == 1.0 and not stray.exact


# -- advantages --------------------------------------------------------------------------


def test_group_advantages_hand_computed():
    v = [1.0, 0.0, 0.5, 0.5]  # mean 0.5, population std sqrt(0.125)
    assert group_advantages(v, std_normalise=False) == [0.5, -0.5, 0.0, 0.0]
    s = math.sqrt(0.125)
    assert group_advantages(v, std_normalise=True) == pytest.approx(
        [0.5 / s, -0.5 / s, 0.0, 0.0], rel=1e-5
    )
    assert group_advantages([3.0, 1.0], True, eps=1.0) == pytest.approx([0.5, -0.5])


def test_an_all_equal_group_has_zero_advantage_and_no_update():
    # 0.1 three times: a naive mean leaves ~1e-17 residue, normalised to ±1
    for std in (True, False):
        assert group_advantages([0.1, 0.1, 0.1], std) == [0.0, 0.0, 0.0]
    rewards = [score_completion(render_tool_calls(WRONG_VALUE), GOLD, TOOLS, GRPOConfig())] * 3
    adv = span_advantages(rewards, [["structure", "name", "value"]] * 3, GRPOConfig())
    assert adv == [[0.0, 0.0, 0.0]] * 3
    gen = torch.Generator().manual_seed(0)
    logps = (-torch.rand(3, 3, generator=gen)).requires_grad_()
    old = logps.detach() + 0.3 * torch.randn(3, 3, generator=gen)  # a later epoch: r != 1
    loss, _ = grpo_loss(logps, old, old, torch.tensor(adv), torch.ones(3, 3), 0.2, 0.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logps.grad) == 0


# -- the loss ----------------------------------------------------------------------------


def test_clipped_objective_on_hand_computed_numbers():
    eps = 0.2
    # token 0: r=1.5, A=+1 → clipped (1.2); token 1: r=1.5, A=-1 → unclipped (-1.5);
    # token 2: r=0.5, A=+2 → unclipped (1.0); token 3: padding (-inf log-prob)
    old = torch.log(torch.tensor([[1.0, 1.0, 1.0, 1.0]]) * 0.25)
    logps = (old + torch.log(torch.tensor([[1.5, 1.5, 0.5, 1.0]]))).clone()
    logps[0, 3] = -math.inf
    logps.requires_grad_()
    adv = torch.tensor([[1.0, -1.0, 2.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, m = grpo_loss(logps, old, old.clone(), adv, mask, eps, 0.0)
    loss.backward()
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 1.0) / 3)
    assert m["clip_frac"] == pytest.approx(1 / 3)
    assert m["ratio_mean"] == pytest.approx((1.5 + 1.5 + 0.5) / 3)
    # d/dlogp of -r·A is -r·A; a clipped token has none
    assert logps.grad.tolist()[0] == pytest.approx([0.0, 1.5 / 3, -1.0 / 3, 0.0])
    # k3 KL on one token: ref - logp = ln 2 → 2 - ln 2 - 1; the other tokens agree
    ref = logps.detach().clone()
    ref[0, 0] += math.log(2.0)
    kl_only, m = grpo_loss(logps.detach(), logps.detach(), ref, adv * 0, mask, eps, 0.5)
    assert m["kl"] == pytest.approx((1.0 - math.log(2.0)) / 3)
    assert kl_only.item() == pytest.approx(0.5 * (1.0 - math.log(2.0)) / 3)


def test_step_zero_is_the_plain_policy_gradient():
    gen = torch.Generator().manual_seed(1)
    logps = (-3 * torch.rand(2, 5, generator=gen)).requires_grad_()
    adv = torch.randn(2, 5, generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    loss, m = grpo_loss(logps, logps.detach(), logps.detach(), adv, mask, 0.2, 0.04)
    (grad,) = torch.autograd.grad(loss, logps)
    assert m["kl"] == 0.0 and m["clip_frac"] == 0.0 and m["ratio_mean"] == pytest.approx(1.0)
    n = mask.sum()
    pg = -(adv * logps * mask).sum() / n  # REINFORCE: its gradient is -A·∇logp per token
    (pg_grad,) = torch.autograd.grad(pg, logps)
    assert torch.allclose(grad, pg_grad)
    # in value it is the surrogate -A·r at r = 1: -A token-mean (not -A·logp, a constant apart)
    assert loss.item() == pytest.approx(float(-(adv * mask).sum() / n))


# -- token spans -------------------------------------------------------------------------

NESTED = {"name": "book", "arguments": {"who": {"first": "Ann", "tags": ["a", "b"]}, "n": 2}}
UNICODE = {"name": "translate", "arguments": {"text": "Zürich → 東京 😀", "to": "ja"}}
PLAIN = {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}
_STRUCT = set(' "{}[],:\n')


def _core(s: str) -> str:
    """What a part spells, without JSON punctuation and whitespace (BPE glues those to
    either side)."""
    return "".join(c for c in s if c not in _STRUCT)


def _spelled(text: str, spans, labels, label: str) -> str:
    """The characters the tokens labelled `label` cover, in order (byte tokens of one
    character share its span, so characters are counted once)."""
    chars = {
        k for (a, b), lab in zip(spans, labels, strict=True) if lab == label for k in range(a, b)
    }
    return _core("".join(text[k] for k in sorted(chars)))


@pytest.mark.parametrize(
    "content,calls",
    [
        (None, [PLAIN]),
        (None, [NESTED]),
        (None, [UNICODE]),
        ("Let me check both.", [PLAIN, UNICODE, NESTED]),  # parallel calls after prose
    ],
)
def test_span_labels_spell_the_call_parts(tok, content, calls):
    text = render_assistant_text(content, calls) + END
    ids = tok(text, add_special_tokens=False)["input_ids"]
    labels = token_parts(tok, ids)
    decoded, spans = completion_offsets(tok, ids)
    assert decoded == text and len(labels) == len(ids) == len(spans)
    assert _spelled(text, spans, labels, "name") == "".join(_core(c["name"]) for c in calls)
    keys = [k for c in calls for k in c["arguments"]]
    assert _spelled(text, spans, labels, "key") == _core("".join(keys))
    values = [json.dumps(v, ensure_ascii=False) for c in calls for v in c["arguments"].values()]
    assert _spelled(text, spans, labels, "value") == _core("".join(values))
    assert labels[-1] == "structure"  # the end of turn
    assert labels[0] == ("text" if content else "structure")  # prose, or `<tool_call>`
    assert _spelled(text, spans, labels, "text") == _core(content or "")

    # Sampled ids need not be the canonical encoding: split the text inside a value.
    def split_at(cut: int) -> list[int]:
        enc = tok([text[:cut], text[cut:]], add_special_tokens=False)["input_ids"]
        return enc[0] + enc[1]

    start = text.index(values[0])
    odd = next(o for c in range(start + 1, start + 8) if (o := split_at(c)) != ids)
    odd_labels = token_parts(tok, odd)
    decoded, odd_spans = completion_offsets(tok, odd)
    assert decoded == text
    for label in ("name", "key", "value"):
        assert _spelled(text, odd_spans, odd_labels, label) == _spelled(text, spans, labels, label)


def test_a_token_with_a_part_character_carries_that_part():
    text = render_tool_calls([PLAIN]) + END
    classes = char_classes(text)

    def label(piece: str, offset: int = 0) -> str:
        start = text.index(piece) + offset
        return span_label(text, classes, start, start + len(piece) - offset)

    assert label('y":') == "key"  # a key's last letter beats its quote and colon
    assert label('s", "') == "value"  # the value's closing quote beats `, "`
    assert label('": "') == "structure"  # around the name: its quotes are structure
    assert label("_weather") == "name"
    assert label(' {"') == "structure"
    assert label('y": "Pa') == "value"  # one key character, three value ones (its quote)
    assert label('ty": "P') == "key"  # two and two: a tie goes to the earliest
    assert label("\n</tool_call>") == "structure"
    assert label(END) == "structure"
    assert span_label(text, classes, len(text), len(text)) == "structure"  # past the end
    prose = "Sure thing\n" + text
    assert span_label(prose, char_classes(prose), 4, 6) == "text"  # ` t`: whitespace aside


def test_a_wrong_value_only_moves_the_value_tokens(tok):
    texts = [render_tool_calls(GOLD) + END, render_tool_calls(WRONG_VALUE) + END]
    cfg = GRPOConfig()
    rewards = [score_completion(t, GOLD, TOOLS, cfg) for t in texts]
    labels = [token_parts(tok, tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    adv = span_advantages(rewards, labels, cfg)
    for lab, a in zip(labels, adv, strict=True):
        assert {x for x, label in zip(a, lab, strict=True) if label in ("name", "key")} == {0.0}

    def of(label: str) -> list[list[float]]:
        return [
            [x for x, b in zip(a, lab, strict=True) if b == label]
            for lab, a in zip(labels, adv, strict=True)
        ]

    value = of("value")
    assert value[0] and value[1]
    assert min(value[0]) > 0 > max(value[1])
    # structure tokens carry the sequence advantage: a group of two normalises to ±1
    assert of("structure")[0] == pytest.approx([1.0] * len(of("structure")[0]), rel=1e-4)
    assert of("structure")[1] == pytest.approx([-1.0] * len(of("structure")[1]), rel=1e-4)
    # sequence mode: every token carries the completion's advantage
    seq = span_advantages(rewards, labels, GRPOConfig(advantage="sequence"))
    assert seq[0] == pytest.approx([1.0] * len(seq[0]), rel=1e-4)
    assert seq[1] == pytest.approx([-1.0] * len(seq[1]), rel=1e-4)
