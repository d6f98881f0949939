"""The aligned policy in Hugging Face format: written at the end of fit, loadable by transformers and peft."""

import torch
from support.cli import fit_args
from transformers import AutoModelForCausalLM, AutoTokenizer

from peft import LoraConfig

from lit_align import PolicyWithReference
from lit_align.cli.app import build_cli
from lit_align.policy.export import export_policy
from lit_align.models.loading import load_causal_lm


def _ids():
    ids = torch.tensor([[1, 40, 41, 42, 50, 51, 2], [1, 60, 61, 70, 71, 72, 2]])
    return ids, torch.ones_like(ids)


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def test_fit_end_writes_a_model_transformers_loads_with_equal_logits(run_dir):
    cli = build_cli(fit_args("dpo.yaml", "--data.limit_rows=32", "--data.batch_size=8", steps=3))
    export_dir = run_dir / "runs/test/hf_model"
    assert (export_dir / "model.safetensors").is_file() and (export_dir / "config.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(export_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    assert tokenizer.eos_token == "</s>" and tokenizer.chat_template == cli.model.tokenizer.chat_template
    ids, mask = _ids()
    trained = cli.model.policy.policy.eval()
    torch.testing.assert_close(_logits(loaded, ids, mask), _logits(trained, ids, mask), atol=1e-6, rtol=0)
    # and the export is the trained policy, not the initial model
    initial = load_causal_lm("tiny").eval()
    assert (_logits(loaded, ids, mask) - _logits(initial, ids, mask)).abs().max() > 1e-4


def _trained_lora(export: str) -> PolicyWithReference:
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")
    policy = PolicyWithReference("tiny", reference="lora", lora=lora, lora_export=export)
    torch.manual_seed(0)
    with torch.no_grad():  # B starts at zero; a random B makes the adapters change the output, as training would
        for name, param in policy.policy.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    return policy.eval()


def test_lora_merged_export_equals_the_lora_model(tmp_path):
    policy = _trained_lora("merged")
    export_policy(policy, tmp_path)
    assert not (tmp_path / "adapter_config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert not any("lora" in name for name, _ in loaded.named_parameters())
    ids, mask = _ids()
    expected = _logits(policy.policy, ids, mask)
    torch.testing.assert_close(_logits(loaded, ids, mask), expected, atol=1e-5, rtol=0)
    assert (expected - _logits(load_causal_lm("tiny").eval(), ids, mask)).abs().max() > 1e-3
    # exporting left the live model unmerged: its adapters still switch off
    with policy.policy.disable_adapter():
        torch.testing.assert_close(_logits(policy.policy, ids, mask), _logits(load_causal_lm("tiny").eval(), ids, mask))


def test_lora_adapter_export_loads_with_peft(tmp_path):
    from peft import PeftModel

    policy = _trained_lora("adapter")
    export_policy(policy, tmp_path)
    assert (tmp_path / "adapter_config.json").is_file() and (tmp_path / "tokenizer.json").is_file()
    loaded = PeftModel.from_pretrained(load_causal_lm("tiny"), tmp_path).eval()
    ids, mask = _ids()
    torch.testing.assert_close(_logits(loaded, ids, mask), _logits(policy.policy, ids, mask), atol=1e-6, rtol=0)
