"""Shared-prompt packing (lit_align/shared_prompt.py) gives the log-probs of the separate rows."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig

from lit_align.data.collate import CompletionCollator
from lit_align.data.formats import Example
from lit_align.models.logprobs import completion_token_logprobs
from lit_align.objectives import DPO
from lit_align.policy.with_reference import PolicyWithReference
from lit_align.models.packing import pack_shared_prompt, shared_prompt_token_logps
from support.examples import ragged_examples




def separate_rows_logps(model, batch) -> torch.Tensor:
    ids, mask = batch["input_ids"], batch["attention_mask"]
    logits = model(ids, mask)
    token_logps, _ = completion_token_logprobs(logits, ids, batch["completion_mask"])
    return token_logps.sum(-1)


def packed_logps(model, batch, num_completions) -> tuple[torch.Tensor, torch.Tensor]:
    packed = pack_shared_prompt(batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                                num_completions)
    logits = model(packed.input_ids, packed.attention_mask, position_ids=packed.position_ids,
                   logits_to_keep=packed.logits_to_keep)
    tokens, mean_logits = shared_prompt_token_logps(logits, packed, batch["input_ids"].shape[1] - 1)
    return tokens.sum(-1), mean_logits


def test_packed_per_token_logps_sit_where_the_separate_rows_have_them():
    """The per-token log-probs of the packed forward land in the unpacked rows' next-token layout: the same
    tensor, position by position, as the separate rows give (the hook of an offline objective sees one layout)."""
    torch.manual_seed(0)
    model = PolicyWithReference(reference="none")
    batch = CompletionCollator(pad_token_id=0)([Example(0, [5, 6, 7], [[8], [9, 10, 11]]),
                                                Example(1, [12], [[13, 14], [15]])])
    packed = pack_shared_prompt(batch["input_ids"], batch["attention_mask"], batch["completion_mask"], 2)
    logits = model(packed.input_ids, packed.attention_mask, position_ids=packed.position_ids,
                   logits_to_keep=packed.logits_to_keep)
    tokens, _ = shared_prompt_token_logps(logits, packed, batch["input_ids"].shape[1] - 1)
    separate, mask = completion_token_logprobs(model(batch["input_ids"], batch["attention_mask"]),
                                               batch["input_ids"], batch["completion_mask"])
    assert tokens.shape == separate.shape
    assert torch.equal(tokens != 0, mask)
    torch.testing.assert_close(tokens, separate, atol=1e-5, rtol=1e-5)


def test_layout_by_hand():
    """Prompt [5, 6], completions [7] and [8, 9] pack to [5, 6, 7, 8, 9] with positions [0, 1, 2, 2, 3]; token 8
    (first of completion 2) is predicted by the prompt end (position 1), never by 7; 8 and 9 cannot see 7. The
    shortest prompt has 2 tokens, so logits are kept from packed position 1 on (4 positions)."""
    batch = CompletionCollator(pad_token_id=0)([Example(0, [5, 6], [[7], [8, 9]])])
    packed = pack_shared_prompt(batch["input_ids"], batch["attention_mask"], batch["completion_mask"], 2)
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 2, 3]]
    allowed = [[1, 0, 0, 0, 0],
               [1, 1, 0, 0, 0],
               [1, 1, 1, 0, 0],
               [1, 1, 0, 1, 0],
               [1, 1, 0, 1, 1]]
    assert packed.attention_mask[0, 0].int().tolist() == allowed
    assert packed.logits_to_keep == 4
    # kept logits start at packed position 1: 7 <- 1, 8 <- 1, 9 <- 3 (kept indices 0, 0, 2)
    assert packed.source.tolist() == [0, 0, 2]
    assert packed.labels.tolist() == [7, 8, 9]
    assert packed.row.tolist() == [0, 1, 1]


@pytest.mark.parametrize("num_completions", [2, 3])
def test_packed_logps_match_separate_rows(num_completions):
    torch.manual_seed(0)
    policy = PolicyWithReference(reference="none")
    batch = CompletionCollator(pad_token_id=0)(ragged_examples(num_completions))
    expected = separate_rows_logps(policy, batch)
    got, mean_logits = packed_logps(policy, batch, num_completions)
    assert got.shape == expected.shape == (4 * num_completions,)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

    # the mean logit over each completion's predicting positions, computed from the separate rows
    logits = policy(batch["input_ids"], batch["attention_mask"])[:, :-1].float().mean(-1)
    mask = batch["completion_mask"][:, 1:].float()
    torch.testing.assert_close(mean_logits, (logits * mask).sum(-1) / mask.sum(-1), atol=1e-4, rtol=1e-4)

    # and the same gradient
    weights = torch.randn(expected.shape)
    grads = []
    for fn in (lambda: separate_rows_logps(policy, batch), lambda: packed_logps(policy, batch, num_completions)[0]):
        policy.zero_grad()
        (fn() * weights).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.trainable_parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-3)


def test_dpo_loss_same_with_and_without_sharing():
    batch = CompletionCollator(pad_token_id=0)(ragged_examples(2))
    results = []
    for share in (True, False):
        module = DPO(beta=1.0, policy=PolicyWithReference(reference="copy"), share_prompt=share)
        with torch.no_grad():  # move the policy away from the reference so the loss is not log 2
            for p in module.policy.policy.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        results.append(module.compute_loss(batch, "train"))
    (loss_a, metrics_a), (loss_b, metrics_b) = results
    assert abs(loss_a.item() - torch.log(torch.tensor(2.0)).item()) > 1e-3
    torch.testing.assert_close(loss_a, loss_b, atol=1e-5, rtol=1e-5)
    for name in metrics_b:
        torch.testing.assert_close(metrics_a[name], metrics_b[name], atol=1e-4, rtol=1e-4)


ARCHITECTURES = {
    "llama": lambda: LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2),
    "gpt_neox (Pythia)": lambda: GPTNeoXConfig(vocab_size=512, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=4),
    "gpt2": lambda: GPT2Config(vocab_size=512, n_embd=32, n_layer=2, n_head=4),
}


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_packing_is_exact_for_every_attention_implementation(architecture, attention):
    """Eager attention adds the mask to the scores: a boolean mask would silently add 1/0 there (an error of
    0.02-0.06 nats per sequence was measured before the mask was converted), so both paths are checked."""
    torch.manual_seed(0)
    config = ARCHITECTURES[architecture]()
    config._attn_implementation = attention
    policy = PolicyWithReference(reference="none")
    policy.policy = AutoModelForCausalLM.from_config(config).eval()
    batch = CompletionCollator(pad_token_id=0)(ragged_examples(2))
    with torch.no_grad():
        expected = separate_rows_logps(policy, batch)
        got, _ = packed_logps(policy, batch, 2)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_sharing_is_switched_off_for_attention_that_ignores_a_4d_mask():
    policy = PolicyWithReference(reference="copy")
    policy.policy.config._attn_implementation = "flash_attention_2"
    with pytest.warns(UserWarning, match="ignores the packed mask"):
        module = DPO(policy=policy)
    assert module.share_prompt is False


def _pack_row_by_row(input_ids, attention_mask, completion_mask, groups):
    """The packing spelled out one group, one row and one token at a time: what ``pack_shared_prompt`` computes
    with whole-tensor operations."""
    rows = input_ids.shape[0]
    if isinstance(groups, int):
        groups = torch.arange(rows) % (rows // groups)
    spans = []
    for r in range(rows):
        real = attention_mask[r].nonzero().flatten().tolist()
        completion = completion_mask[r].nonzero().flatten().tolist()
        begin = real[0] if real else 0
        end = completion[0] if completion else begin + len(real)
        spans.append((begin, end, len(completion)))
    order = sorted(set(groups.tolist()))
    members = [[r for r in range(rows) if groups[r] == g] for g in order]
    prompt_rows = [max(m, key=lambda r: spans[r][1] - spans[r][0]) for m in members]
    sizes = [spans[r][1] - spans[r][0] for r in prompt_rows]
    length = max(p + sum(spans[r][2] for r in m) for p, m in zip(sizes, members))
    first_kept = max(min(sizes) - 1, 0)
    ids = torch.zeros(len(order), length, dtype=torch.long)
    positions = torch.zeros(len(order), length, dtype=torch.long)
    tokens = []  # (source, label, row, column)
    for b, (m, prompt_row, size) in enumerate(zip(members, prompt_rows, sizes)):
        begin = spans[prompt_row][0]
        ids[b, :size] = input_ids[prompt_row, begin : begin + size]
        positions[b, :size] = torch.arange(size)
        at = size
        for r in m:
            _, end, n = spans[r]
            for j in range(n):
                ids[b, at + j] = input_ids[r, end + j]
                positions[b, at + j] = size + j
                predictor = size - 1 if j == 0 else at + j - 1
                if predictor >= 0:
                    tokens.append((b * (length - first_kept) + predictor - first_kept, int(input_ids[r, end + j]),
                                   r, end - 1 + j))
            at += n
    return ids, positions, length - first_kept, tokens


@pytest.mark.parametrize("layout", ["pairs", "triples", "rollout", "shuffled groups"])
def test_packing_equals_the_row_by_row_layout(layout):
    g = torch.Generator().manual_seed(3)
    if layout in ("pairs", "triples"):  # right-padded collator rows, block layout, a completion truncated away
        k = 2 if layout == "pairs" else 3
        examples, width = 4, 20
        ids = torch.randint(3, 90, (k * examples, width), generator=g)
        attention = torch.zeros_like(ids)
        completion = torch.zeros_like(ids)
        for b in range(examples):
            prompt = int(torch.randint(1, 7, (), generator=g))
            for c in range(k):
                row = c * examples + b
                ids[row, :prompt] = ids[b, :prompt]
                n = 0 if (b, c) == (1, 1) else int(torch.randint(1, 10, (), generator=g))
                attention[row, : prompt + n] = 1
                completion[row, prompt : prompt + n] = 1
        groups = k
    else:  # left-padded prompts, right-padded responses; group labels out of order in the shuffled case
        prompts, samples, width = [5, 2, 8], 3, 12
        rows = len(prompts) * samples
        ids = torch.randint(3, 90, (rows, 8 + width), generator=g)
        attention, completion = torch.zeros_like(ids), torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            for j in range(samples):
                row = i * samples + j
                ids[row, 8 - p : 8] = ids[i * samples, 8 - p : 8]
                n = int(torch.randint(1, width + 1, (), generator=g))
                attention[row, 8 - p : 8 + n] = 1
                completion[row, 8 : 8 + n] = 1
        groups = torch.arange(rows) // samples
        if layout == "shuffled groups":
            groups = torch.tensor([7, 2, 5])[groups]
    packed = pack_shared_prompt(ids, attention, completion, groups)
    want_ids, want_positions, keep, tokens = _pack_row_by_row(ids, attention, completion, groups)
    assert torch.equal(packed.input_ids, want_ids)
    assert torch.equal(packed.position_ids, want_positions)
    assert packed.logits_to_keep == keep
    got = list(zip(packed.source.tolist(), packed.labels.tolist(), packed.row.tolist(), packed.column.tolist()))
    assert got == tokens
