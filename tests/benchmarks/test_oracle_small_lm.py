"""``save_tiny_lm``: the embedded architecture saved with a small vocabulary, for oracles with a small support."""

from __future__ import annotations

import torch

from lit_align.data.oracle import OracleDataModule
from lit_align.models.loading import load_causal_lm
from lit_align.models.oracle import logits_fn, save_tiny_lm


def test_saved_tiny_lm_is_the_embedded_model_its_vocabulary_cut_and_its_logits_scaled(tmp_path):
    full = load_causal_lm(save_tiny_lm(tmp_path / "full", seed=3), seed=0)  # a directory: its seed is unused
    embedded = load_causal_lm("tiny", seed=3)
    ids = torch.tensor([[1, 5, 7]])
    assert torch.equal(logits_fn(full)(ids, torch.ones_like(ids)), logits_fn(embedded)(ids, torch.ones_like(ids)))
    size = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    plain = load_causal_lm(save_tiny_lm(tmp_path / "plain", seed=3, vocab_size=8, **size))
    sharp = load_causal_lm(save_tiny_lm(tmp_path / "sharp", seed=3, vocab_size=8, logit_scale=4.0, **size))
    assert plain.config.vocab_size == 8 and plain.config.hidden_size == 16
    plain_logits, sharp_logits = (logits_fn(m)(ids, torch.ones_like(ids)) for m in (plain, sharp))
    assert plain_logits.shape == (1, 3, 8)
    torch.testing.assert_close(sharp_logits, 4.0 * plain_logits)


def test_oracle_task_on_saved_small_lms_samples_inside_the_small_vocabulary(tmp_path):
    reference = save_tiny_lm(tmp_path / "pi0", seed=0, vocab_size=6)
    target = save_tiny_lm(tmp_path / "target", seed=1, vocab_size=6, logit_scale=8.0)
    data = OracleDataModule(num_pairs=64, val_pairs=0, num_prompts=2, prompt_length=3, response_length=1,
                            reference_model=reference, target_model=target, target_logit_scale=1.0, tokenizer=reference)
    pairs = data.build_task().pairs["train"]
    assert int(torch.cat([pairs["a"], pairs["b"]]).max()) < 6
    assert set(pairs["a"].flatten().tolist()) | set(pairs["b"].flatten().tolist()) > {3, 4, 5}  # several tokens
