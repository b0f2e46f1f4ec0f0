"""Per-token log-probabilities of completions, with the prompt forwarded once per pair.

Shapes: `B` pairs, `P` prompt tokens (left-padded, so every prompt ends at position P-1),
`C`/`R` chosen/rejected completion tokens (right-padded), `V` vocabulary. Per-token
tensors and masks are kept until the loss reduces them (`reduce`), so a token-level pair
only changes the mask (`branch_mask`), never the forward.

Shared-prefix packing (DESIGN §6): the prompt is forwarded once with `use_cache=True`,
its KV cache is repeated for the two completions (`batch_repeat_interleave(2)`), and both
completions are forwarded against it in one batch; the first completion token's
log-prob comes from the prompt's last logits. Gradients flow through the cache into the
prompt's forward, so this is exact (not an approximation) and forwards `P` tokens once
instead of twice. `concat_logps` is the plain reference (one forward per sequence).
"""

from __future__ import annotations

from typing import Any

import torch

Tensor = torch.Tensor


def gather_logps(logits: Tensor, ids: Tensor) -> Tensor:
    """log p(ids) under `logits`: `[N, L, V]`, `[N, L]` → `[N, L]` (float32).

    `logits[ids] - logsumexp(logits)`: no `[N, L, V]` log-softmax is materialised.
    """
    logits = logits.float()
    picked = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def _positions(mask: Tensor, offset: Tensor | None = None) -> Tensor:
    """Position ids that skip padding: `[N, L]` (padding positions get 0)."""
    pos = mask.long().cumsum(-1) - 1
    if offset is not None:
        pos = pos + offset.unsqueeze(-1)
    return pos.clamp(min=0) * mask.long()


def concat_logps(
    model: Any, prompt_ids: Tensor, prompt_mask: Tensor, comp_ids: Tensor, comp_mask: Tensor
) -> Tensor:
    """Per-token log-probs of completions `[N, C]` from one forward of prompt + completion.

    Masked positions are 0. The reference for `shared_prefix_logps` and the path for
    precomputing reference log-probs of single sequences.
    """
    ids = torch.cat([prompt_ids, comp_ids], dim=1)
    mask = torch.cat([prompt_mask, comp_mask], dim=1)
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False
    ).logits
    p = prompt_ids.shape[1]
    # the token at p + t is predicted by the logits at p + t - 1
    return gather_logps(logits[:, p - 1 : -1], comp_ids) * comp_mask


def _pad_to(x: Tensor, length: int, value: int = 0) -> Tensor:
    return torch.nn.functional.pad(x, (0, length - x.shape[1]), value=value)


def shared_prefix_logps(
    model: Any,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    chosen_ids: Tensor,
    chosen_mask: Tensor,
    rejected_ids: Tensor,
    rejected_mask: Tensor,
) -> tuple[Tensor, Tensor]:
    """Per-token log-probs `([B, C], [B, R])` of chosen and rejected, prompt forwarded once."""
    out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=_positions(prompt_mask),
        use_cache=True,
    )
    cache = out.past_key_values
    cache.batch_repeat_interleave(2)  # rows b0, b0, b1, b1, ...: chosen, rejected per pair
    length = max(chosen_ids.shape[1], rejected_ids.shape[1])
    cont_ids = torch.stack([_pad_to(chosen_ids, length), _pad_to(rejected_ids, length)], 1)
    cont_mask = torch.stack([_pad_to(chosen_mask, length), _pad_to(rejected_mask, length)], 1)
    cont_ids, cont_mask = cont_ids.flatten(0, 1), cont_mask.flatten(0, 1)  # [2B, L]
    mask2 = prompt_mask.repeat_interleave(2, dim=0)
    prompt_len = mask2.long().sum(-1)
    logits = model(
        input_ids=cont_ids,
        attention_mask=torch.cat([mask2, cont_mask], dim=1),
        position_ids=_positions(cont_mask, prompt_len),
        past_key_values=cache,
    ).logits
    first = out.logits[:, -1:].repeat_interleave(2, dim=0)  # predicts completion token 0
    logps = gather_logps(torch.cat([first, logits[:, :-1]], dim=1), cont_ids) * cont_mask
    return logps[0::2, : chosen_ids.shape[1]], logps[1::2, : rejected_ids.shape[1]]


def branch_mask(mask: Tensor, branch_index: Tensor) -> Tensor:
    """`mask [B, L]` with the tokens before each pair's branch point zeroed.

    `branch_index [B]`: the first completion token where chosen and rejected differ
    (TPS branch pairs); a negative index means no shared prefix (the whole completion).
    """
    start = branch_index.clamp(min=0).unsqueeze(-1)
    positions = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    return mask * (positions >= start).to(mask.dtype)


def reduce(token_logps: Tensor, mask: Tensor, average: bool = False) -> Tensor:
    """Sequence log-probs `[B]` from `[B, L]`: the sum over `mask`, or its mean."""
    total = (token_logps * mask).sum(-1)
    if not average:
        return total
    return total / mask.sum(-1).clamp(min=1)
