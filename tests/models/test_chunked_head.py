"""The LM head in chunks (lit_align/chunked_head.py): the values and gradients of the full-logits path, and the
head never applied to more than one chunk of scored positions."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig

from lit_align import chunked_head
from lit_align.data.collate import CompletionCollator
from lit_align.models.logprobs import completion_token_logprobs, masked_mean, token_entropy, token_kl
from lit_align.policy.with_reference import PolicyWithReference, _wrap_lora
from lit_align.models.packing import pack_shared_prompt, shared_prompt_token_logps
from support.examples import ragged_examples

ARCHITECTURES = {
    "llama": lambda: LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2),
    "llama, tied embeddings": lambda: LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64,
                                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                  tie_word_embeddings=True),
    "gpt_neox (Pythia)": lambda: GPTNeoXConfig(vocab_size=512, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=4),
    "gpt2 (tied)": lambda: GPT2Config(vocab_size=512, n_embd=32, n_layer=2, n_head=4),
}


def _rows():
    """Left-padded rows with prompts and completions of different lengths (the on-policy layout)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 400, (3, 10), generator=g)
    attention = torch.ones_like(ids)
    attention[0, :3] = 0
    completion = torch.zeros_like(ids)
    completion[:, 5:] = 1
    completion[2, 8:] = 0
    return ids, attention, completion


def _policy(architecture: str | None = None, reference: str = "copy", lora: bool = False) -> PolicyWithReference:
    torch.manual_seed(0)
    config = LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM") if lora else None
    policy = PolicyWithReference(reference=reference, lora=config)
    if architecture is not None:
        policy.policy = AutoModelForCausalLM.from_config(ARCHITECTURES[architecture]()).eval()
        if lora:
            policy.policy = _wrap_lora(policy.policy, config)
    with torch.no_grad():  # move the policy away from pi_0 (and LoRA from its zero start): the KL is not zero
        for name, param in policy.policy.named_parameters():
            param.add_((0.5 if "lora_B" in name else 0.05) * torch.randn_like(param))
    return policy


def _grads(policy) -> list[torch.Tensor]:
    grads = [p.grad.clone() for p in policy.policy.parameters() if p.grad is not None]
    policy.policy.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_values_and_gradients_equal_the_full_logits_path(architecture, lora):
    policy = _policy(architecture, reference="none", lora=lora)
    ids, attention, completion = _rows()
    temperature = 0.7

    logits = policy(ids, attention)  # (B, T, V): the old path
    logps, mask = completion_token_logprobs(logits, ids, completion, temperature)
    entropy = token_entropy(logits[:, :-1], temperature) * mask
    mean_logits = masked_mean(logits.detach()[:, :-1].float().mean(-1), mask, dim=-1)
    (logps.sum() + entropy.sum()).backward()
    expected_grads = _grads(policy)

    scores = policy.completion_scores(ids, attention, completion, temperature, entropy=True)
    (scores.logps.sum() + scores.entropy.sum()).backward()
    assert torch.equal(scores.mask, mask)
    torch.testing.assert_close(scores.logps, logps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores.entropy, entropy, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores.mean_logits, mean_logits, atol=1e-5, rtol=1e-5)
    got_grads = _grads(policy)
    assert len(got_grads) == len(expected_grads) > 0
    if lora:
        assert hasattr(policy.policy, "disable_adapter") and len(got_grads) < len(list(policy.policy.parameters()))
    for got, expected in zip(got_grads, expected_grads):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_shared_prompt_batch_equals_its_full_logits(architecture):
    policy = _policy(architecture, reference="none")
    batch = CompletionCollator(pad_token_id=0)(ragged_examples(2))
    packed = pack_shared_prompt(batch["input_ids"], batch["attention_mask"], batch["completion_mask"], 2)
    width = batch["input_ids"].shape[1] - 1
    logits = policy(packed.input_ids, packed.attention_mask, position_ids=packed.position_ids,
                    logits_to_keep=packed.logits_to_keep)
    tokens, mean_logits = shared_prompt_token_logps(logits, packed, width)
    tokens.sum().backward()
    expected_grads = _grads(policy)

    scores = policy.packed_scores(packed, width)
    scores.logps.sum().backward()
    torch.testing.assert_close(scores.logps, tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores.mean_logits, mean_logits, atol=1e-5, rtol=1e-5)
    for got, expected in zip(_grads(policy), expected_grads):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("reference", ["copy", "lora"])
def test_token_kl_and_reference_logps_equal_the_full_logits_path(reference):
    policy = _policy(reference=reference, lora=reference == "lora")
    ids, attention, completion = _rows()
    logits = policy(ids, attention)
    ref_logits = policy.reference_logits(ids, attention)
    _, mask = completion_token_logprobs(logits, ids, completion, 0.5)
    kl = token_kl(logits[:, :-1], ref_logits[:, :-1], 0.5) * mask
    kl.sum().backward()
    expected_grads = _grads(policy)

    scores = policy.completion_scores(ids, attention, completion, 0.5, kl=True)
    scores.kl.sum().backward()
    assert kl.sum() > 1e-3
    torch.testing.assert_close(scores.kl, kl, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores.reference_logps, completion_token_logprobs(ref_logits, ids, completion, 0.5)[0],
                               atol=1e-5, rtol=1e-5)
    for got, expected in zip(_grads(policy), expected_grads):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_the_head_sees_one_chunk_of_scored_positions_at_a_time(monkeypatch):
    """Forward and backward apply the head to at most CHUNK_ELEMENTS / V positions at once, and only to the
    positions that predict a completion token; the model's forward returns no (B, T, V) tensor."""
    policy = _policy(reference="none")
    ids, attention, completion = _rows()
    vocab = policy.policy.config.vocab_size
    monkeypatch.setattr(chunked_head, "CHUNK_ELEMENTS", 3 * vocab)
    policy.completion_logps(ids, attention, completion)  # the run's first batch: the fast-path check's forwards
    seen = []
    policy.policy.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(out.shape))
    outputs = []
    policy.policy.register_forward_hook(lambda m, args, kwargs, out: outputs.append(out.logits.shape),
                                        with_kwargs=True)
    logps, mask = policy.completion_logps(ids, attention, completion)
    forward_rows = [shape[0] for shape in seen]
    logps.sum().backward()
    scored = int(mask.sum())
    assert max(shape[0] for shape in seen) <= 3 and all(shape[-1] == vocab for shape in seen)
    assert sum(forward_rows) == scored  # prompt and padding positions never meet the head
    assert sum(shape[0] for shape in seen) == 2 * scored  # each chunk recomputed once in the backward
    assert outputs == [torch.Size([scored, 2])]


def test_logits_transformed_after_the_head_are_transformed_by_the_chunked_head():
    """Gemma-2 caps its logits after the head: the chunked head caps each chunk of logits the same way (the
    model's own cap would act on the head's columns, which are taken from the head instead)."""
    from transformers import Gemma2Config

    config = Gemma2Config(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, final_logit_softcapping=0.5)
    torch.manual_seed(0)
    policy = PolicyWithReference(reference="none")
    policy.policy = AutoModelForCausalLM.from_config(config).eval()
    assert chunked_head.LogitTransform.of(policy.policy).softcap == 0.5
    ids, attention, completion = _rows()
    expected, _ = completion_token_logprobs(policy(ids, attention), ids, completion)
    got, _ = policy.completion_logps(ids, attention, completion)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert policy.fast_paths.allows("policy", "chunked LM head")


def test_an_explicit_model_is_scored_as_it_is():
    """The reference cache scores pi_0 reloaded from its source: ``model=`` is used instead of the policy."""
    policy = _policy(reference="none")
    other = AutoModelForCausalLM.from_config(ARCHITECTURES["llama"]()).eval()
    ids, _, completion = _rows()
    attention = torch.ones_like(ids)
    with torch.no_grad():
        expected, _ = completion_token_logprobs(other(ids, attention_mask=attention).logits, ids, completion)
        got, _ = policy.completion_logps(ids, attention, completion, model=other)
        mine, _ = policy.completion_logps(ids, attention, completion)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, mine)


@pytest.mark.parametrize("share_prompt", [True, False])
def test_row_logps_sources_agree(share_prompt):
    """``row_logps`` under "reference", under the frozen copy given as a model, and the full-logits computation of
    the same rows give the same values; "policy" differs once the policy has moved."""
    from lit_align.objectives import DPO

    module = DPO(policy=_policy(), share_prompt=share_prompt)
    batch = CompletionCollator(pad_token_id=0)(ragged_examples(2))
    with torch.no_grad():
        reference = module.row_logps(batch, "reference")
        as_model = module.row_logps(batch, module.policy.reference.weights)
        logits = module.policy.reference_logits(batch["input_ids"], batch["attention_mask"])
        from_logits, _ = completion_token_logprobs(logits, batch["input_ids"], batch["completion_mask"])
        policy = module.row_logps(batch)
    torch.testing.assert_close(as_model.tokens, reference.tokens)
    torch.testing.assert_close(from_logits, reference.tokens, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(policy.policy, reference.policy)



@pytest.mark.parametrize("objective", ["DPO", "KTO"])
def test_no_grad_forwards_of_a_step_run_before_the_policy_keeps_its_activations(objective):
    """pi_0's forwards of a step (and KTO's no-grad z0 forwards) run while no autograd graph of the policy exists
    yet, so their buffers never add to the activations the policy's forward keeps for the backward (the step's
    peak memory): the one forward with gradient is the last."""
    from lit_align import objectives

    module = getattr(objectives, objective)(policy=_policy())
    batch = CompletionCollator(pad_token_id=0)(ragged_examples(2))
    if objective == "KTO":  # unpaired rows, one label each
        batch["index"] = torch.arange(batch["input_ids"].shape[0])
        batch["label"] = (torch.arange(batch["input_ids"].shape[0]) % 2).bool()
    module.compute_loss(batch, "train")  # the run's first batch: the fast-path check's forwards
    events = []
    module.policy.policy.register_forward_hook(lambda *_: events.append(("policy", torch.is_grad_enabled())))
    module.policy.reference.weights.register_forward_hook(lambda *_: events.append(("reference", False)))
    loss, _ = module.compute_loss(batch, "train")
    assert events[-1] == ("policy", True)
    assert not any(grad for _, grad in events[:-1]), events
    assert len(events) == (4 if objective == "KTO" else 2)
    assert loss.requires_grad


def test_the_chunk_is_chosen_from_the_work_within_its_bounds():
    """A chunk's logits are about one layer's activations of its positions (16 x N x H floats), never more than
    CHUNK_ELEMENTS nor fewer than MIN_CHUNK_ELEMENTS, split evenly over the chunks."""
    from lit_align.models.chunked_head import CHUNK_ELEMENTS, MIN_CHUNK_ELEMENTS, chunk_rows

    vocab = 131_072
    assert chunk_rows(1024, 64, vocab) == MIN_CHUNK_ELEMENTS // vocab == 32  # a tiny model: 16 MiB chunks, not 64
    assert chunk_rows(4096, 4096, vocab) == CHUNK_ELEMENTS // vocab == 128  # a real one: the ceiling
    assert chunk_rows(1024, 512, vocab) == 64  # in between: 16 x 1024 x 512 floats
    assert chunk_rows(130, 4096, vocab) == 65  # two even chunks instead of 128 + 2
    assert chunk_rows(1000, 256, 474) == 1000  # a small vocabulary: one chunk


def test_small_logits_are_kept_for_the_backward_not_recomputed():
    """Logits that fit in one chunk of at most MIN_CHUNK_ELEMENTS floats are kept: the head runs once per scored
    position in forward and backward together, and the gradients are those of the recomputing path."""
    policy = _policy(reference="none")
    ids, attention, completion = _rows()
    policy.completion_logps(ids, attention, completion)  # the run's first batch: the fast-path check's forwards
    seen = []
    policy.policy.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(out.shape[0]))
    logps, mask = policy.completion_logps(ids, attention, completion)
    logps.sum().backward()
    assert sum(seen) == int(mask.sum())  # one head pass: nothing recomputed
    kept = [p.grad.clone() for p in policy.policy.parameters()]
    policy.policy.zero_grad()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(chunked_head, "MIN_CHUNK_ELEMENTS", 1)  # every chunk recomputed
        policy.completion_logps(ids, attention, completion)[0].sum().backward()
    assert sum(seen) == 3 * int(mask.sum())  # forward + recompute of the second call
    for got, recomputed in zip(kept, (p.grad for p in policy.policy.parameters())):
        torch.testing.assert_close(got, recomputed, atol=1e-6, rtol=1e-5)
