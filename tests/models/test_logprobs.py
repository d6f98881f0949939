"""Sequence log-probs: the shift, the masks, float32, and independence from batch companions and padding."""

import torch
import torch.nn.functional as F

from lit_align.models.logprobs import (
    completion_token_logprobs,
    masked_mean,
    sequence_logprobs,
    token_entropy,
    token_kl,
)
from lit_align.policy.with_reference import PolicyWithReference


def test_sum_over_completion_tokens_only():
    """Hand example: logits (1, 4, V=3), tokens [0, 1, 2, 1], completion = tokens 2 and 3 (positions 2, 3).

    The log-prob of token t comes from the logits at t - 1: ln softmax(logits[1])[2] + ln softmax(logits[2])[1].
    Prompt tokens (0, 1) and the prediction made by the last position must not count.
    """
    logits = torch.tensor([[[0.0, 1.0, 2.0], [3.0, 0.0, 1.0], [0.5, 2.5, 0.0], [9.0, 9.0, -9.0]]])
    ids = torch.tensor([[0, 1, 2, 1]])
    mask = torch.tensor([[0, 0, 1, 1]])
    expected = F.log_softmax(logits[0, 1].double(), -1)[2] + F.log_softmax(logits[0, 2].double(), -1)[1]
    assert torch.allclose(sequence_logprobs(logits, ids, mask).double(), expected[None], atol=1e-6)
    token_logps, token_mask = completion_token_logprobs(logits, ids, mask)
    assert token_logps.shape == (1, 3) and token_mask.tolist() == [[False, True, True]]
    assert token_logps[0, 0] == 0  # zero off the mask


def test_bf16_logits_give_float32_close_to_float64():
    torch.manual_seed(0)
    logits = (torch.randn(2, 40, 500) * 8).to(torch.bfloat16)
    ids = torch.randint(0, 500, (2, 40))
    mask = torch.zeros(2, 40, dtype=torch.long)
    mask[:, 10:] = 1
    out = sequence_logprobs(logits, ids, mask)
    assert out.dtype == torch.float32
    reference = F.log_softmax(logits.double(), -1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    reference = (reference * mask[:, 1:]).sum(-1)
    torch.testing.assert_close(out.double(), reference, rtol=0, atol=1e-3)
    # a bf16 log-softmax would be off by far more than that
    naive = (F.log_softmax(logits, -1)[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1) * mask[:, 1:]).sum(-1)
    assert (naive.double() - reference).abs().max() > 1e-2
    assert token_entropy(logits).dtype == torch.float32 and token_kl(logits, logits).dtype == torch.float32


def test_entropy_and_kl_against_direct_computation():
    torch.manual_seed(1)
    p, q = torch.randn(2, 3, 7, dtype=torch.float64), torch.randn(2, 3, 7, dtype=torch.float64)
    probs_p, probs_q = p.softmax(-1), q.softmax(-1)
    entropy = -(probs_p * probs_p.log()).sum(-1)
    kl = (probs_p * (probs_p.log() - probs_q.log())).sum(-1)
    torch.testing.assert_close(token_entropy(p).double(), entropy, atol=1e-5, rtol=0)
    torch.testing.assert_close(token_kl(p, q).double(), kl, atol=1e-5, rtol=0)
    assert torch.all(token_kl(p, p).abs() < 1e-6) and torch.all(token_kl(p, q) >= 0)
    uniform = torch.zeros(1, 1, 7)
    torch.testing.assert_close(token_entropy(uniform), torch.log(torch.tensor([[7.0]])))


def test_masked_mean_is_token_weighted():
    values = torch.tensor([[1.0, 2.0, 3.0], [10.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert masked_mean(values, mask).item() == (1 + 2 + 3 + 10) / 4
    assert masked_mean(values, mask, dim=-1).tolist() == [2.0, 10.0]


def _sequences():
    prompt_a, completion_a = [1, 40, 41, 42], [50, 51, 2]
    prompt_b, completion_b = [1, 60], [70, 71, 72, 73, 74, 2]
    return (prompt_a, completion_a), (prompt_b, completion_b)


def _right_padded(pairs, width):
    ids = torch.zeros(len(pairs), width, dtype=torch.long)
    attn, comp = torch.zeros_like(ids), torch.zeros_like(ids)
    for row, (prompt, completion) in enumerate(pairs):
        seq = prompt + completion
        ids[row, : len(seq)] = torch.tensor(seq)
        attn[row, : len(seq)] = 1
        comp[row, len(prompt) : len(seq)] = 1
    return ids, attn, comp


def _left_padded(pairs, width):
    ids = torch.zeros(len(pairs), width, dtype=torch.long)
    attn, comp = torch.zeros_like(ids), torch.zeros_like(ids)
    for row, (prompt, completion) in enumerate(pairs):
        seq = prompt + completion
        start = width - len(seq)
        ids[row, start:] = torch.tensor(seq)
        attn[row, start:] = 1
        comp[row, start + len(prompt) :] = 1
    return ids, attn, comp


def test_value_independent_of_batch_companions_and_padding():
    torch.manual_seed(0)
    policy = PolicyWithReference("tiny", reference="none").eval()
    a, b = _sequences()

    def logps(ids, attn, comp):
        with torch.no_grad():
            return sequence_logprobs(policy(ids, attn), ids, comp)

    alone = logps(*_right_padded([a], len(a[0]) + len(a[1])))[0]
    together_right = logps(*_right_padded([a, b], 12))
    together_left = logps(*_left_padded([b, a], 12))
    wide_left = logps(*_left_padded([a], 20))[0]
    alone_b = logps(*_right_padded([b], 8))[0]
    for value in (together_right[0], together_left[1], wide_left):
        torch.testing.assert_close(value, alone, atol=1e-5, rtol=0)
    for value in (together_right[1], together_left[0]):
        torch.testing.assert_close(value, alone_b, atol=1e-5, rtol=0)
    assert alone.item() < 0 and (alone - alone_b).abs() > 1e-3  # not a constant that would pass trivially


def test_token_entropy_independent_of_padding():
    policy = PolicyWithReference("tiny", reference="none").eval()
    a, b = _sequences()
    with torch.no_grad():
        ids, attn, comp = _right_padded([a], 7)
        alone = token_entropy(policy(ids, attn))[0]  # (7,)
        ids, attn, comp = _left_padded([b, a], 12)
        padded = token_entropy(policy(ids, attn))[1, -7:]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)


def test_temperature_scores_the_tempered_softmax_in_every_chunk(monkeypatch):
    """Every function scores softmax(logits / T), chunk by chunk (a chunk of 3 positions here, so 7 positions
    take three chunks), against a float64 computation of the definition."""
    import lit_align.models.logprobs as logprobs

    monkeypatch.setattr(logprobs, "_CHUNK", 3)
    torch.manual_seed(0)
    logits_p, logits_q = torch.randn(2, 8, 11) * 3, torch.randn(2, 8, 11) * 3
    ids = torch.randint(0, 11, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[:, 0] = 0
    t = 0.7
    logp = F.log_softmax(logits_p.double() / t, -1)
    logq = F.log_softmax(logits_q.double() / t, -1)
    want = logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    got, _ = completion_token_logprobs(logits_p, ids, mask, temperature=t)
    torch.testing.assert_close(got.double(), want * mask[:, 1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sequence_logprobs(logits_p, ids, mask, temperature=t).double(),
                               (want * mask[:, 1:]).sum(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(token_entropy(logits_p, temperature=t).double(), -(logp.exp() * logp).sum(-1),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(token_kl(logits_p, logits_q, temperature=t).double(),
                               (logp.exp() * (logp - logq)).sum(-1), atol=1e-5, rtol=1e-5)
    # T = 1 is the default and unchanged
    torch.testing.assert_close(token_entropy(logits_p), token_entropy(logits_p, temperature=1.0))
    assert not torch.allclose(token_entropy(logits_p), token_entropy(logits_p, temperature=t))


def test_greedy_temperature_has_no_logprobs():
    import pytest

    with pytest.raises(ValueError, match="temperature > 0"):
        token_entropy(torch.zeros(1, 2, 3), temperature=0.0)
