"""LoRA through a real ``peft.LoraConfig``: any of its fields, from Python or from a YAML config."""

import math
import textwrap
from pathlib import Path

import pytest
from support.cli import run_main
from peft import LoraConfig
from peft.tuners.lora import LoraLayer

from lit_align import PolicyWithReference
from lit_align.cli.app import build_cli

ROOT = Path(__file__).resolve().parents[2]
#: The linear layers of the tiny Llama's decoder blocks; "all-linear" adapts all of them but the output head.
BLOCK_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def _adapted(policy: PolicyWithReference) -> dict[str, LoraLayer]:
    return {name: module for name, module in policy.policy.named_modules() if isinstance(module, LoraLayer)}


def _assert_dora_rslora_all_linear(policy: PolicyWithReference, r: int, alpha: int) -> None:
    adapted = _adapted(policy)
    assert {name.rsplit(".", 1)[-1] for name in adapted} == BLOCK_LINEARS
    assert len(adapted) == 2 * len(BLOCK_LINEARS)  # both blocks
    for layer in adapted.values():
        assert layer.r["default"] == r
        assert layer.use_dora["default"] and "default" in layer.lora_magnitude_vector  # DoRA's magnitudes
        assert layer.scaling["default"] == pytest.approx(alpha / math.sqrt(r))  # rsLoRA: alpha / sqrt(r), not / r


def test_dora_rslora_and_all_linear_reach_the_peft_model():
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_dora=True, use_rslora=True)
    policy = PolicyWithReference("tiny", reference="lora", lora=config)
    _assert_dora_rslora_all_linear(policy, r=4, alpha=8)
    assert type(policy.policy).__name__ == "PeftModelForCausalLM"  # task_type defaulted to CAUSAL_LM
    assert policy.lora_options.task_type == "CAUSAL_LM" and config.task_type is None  # the caller's config untouched
    assert config.base_model_name_or_path is None
    trainable = {n for n, p in policy.policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_reference_lora_without_settings_gets_rank_8_alpha_16_on_every_linear_layer():
    policy = PolicyWithReference("tiny", reference="lora")
    adapted = _adapted(policy)
    assert {name.rsplit(".", 1)[-1] for name in adapted} == BLOCK_LINEARS
    assert all(layer.r["default"] == 8 and layer.scaling["default"] == 2.0 for layer in adapted.values())
    assert policy.lora_export == "merged"


def test_a_yaml_lora_section_builds_the_peft_config(run_dir):
    (run_dir / "lora.yaml").write_text(textwrap.dedent("""\
        model:
          init_args:
            policy:
              class_path: lit_align.PolicyWithReference
              init_args:
                reference: lora
                lora_export: adapter
                lora:
                  r: 16
                  lora_alpha: 32
                  target_modules: all-linear
                  use_dora: true
                  use_rslora: true
                  modules_to_save: [lm_head]
        """))
    cli = build_cli(["--config", str(ROOT / "configs/dpo.yaml"), "--config", "lora.yaml",
                     "--trainer.accelerator=cpu"], run=False)
    policy = cli.model.policy
    assert isinstance(policy.lora_options, LoraConfig) and policy.lora_export == "adapter"
    _assert_dora_rslora_all_linear(policy, r=16, alpha=32)
    head = policy.policy.base_model.model.lm_head  # modules_to_save: a trained copy of the head
    assert type(head).__name__ == "ModulesToSaveWrapper"
    assert all(p.requires_grad for p in head.modules_to_save["default"].parameters())


def test_a_misspelt_lora_field_is_one_line_naming_it_and_the_fields(run_dir, capsys):
    args = ["fit", "--config", str(ROOT / "configs/dpo.yaml"), "--model.policy.init_args.reference=lora",
            "--model.policy.init_args.lora.lora_alpah=32"]
    assert run_main(args) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-align: error:")]
    assert "peft.LoraConfig has no argument 'lora_alpah'; did you mean 'lora_alpha'" in line


def test_lora_export_and_quantization_without_lora_are_refused():
    with pytest.raises(ValueError, match="lora_export must be merged or adapter"):
        PolicyWithReference("tiny", reference="lora", lora_export="full")
    with pytest.raises(ValueError, match=r"quantization needs lora \(QLoRA\)"):
        PolicyWithReference("tiny", reference="copy", quantization={"load_in_4bit": True})

