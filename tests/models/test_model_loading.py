"""Model-loading settings reach ``from_pretrained``: attention kernel, revision, quantization, anything else."""

import importlib.util

import pytest
import torch

from lit_align import PolicyWithReference
from lit_align.models import loading as models
from lit_align.models.loading import ModelLoadError, load_causal_lm, load_sequence_classifier, load_tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """The embedded model and tokenizer saved as an ordinary Hugging Face directory."""
    directory = tmp_path_factory.mktemp("tiny_model")
    load_causal_lm("tiny").save_pretrained(directory)
    load_tokenizer("tiny").save_pretrained(directory)
    return str(directory)


def test_attn_implementation_reaches_a_local_model_and_the_embedded_one(tiny_dir):
    assert load_causal_lm(tiny_dir, attn_implementation="eager").config._attn_implementation == "eager"
    assert load_causal_lm(tiny_dir).config._attn_implementation == "sdpa"  # transformers' own default otherwise
    assert load_causal_lm("tiny", attn_implementation="eager").config._attn_implementation == "eager"
    classifier = load_sequence_classifier(tiny_dir, attn_implementation="eager")
    assert classifier.config._attn_implementation == "eager"
    assert load_sequence_classifier("tiny", attn_implementation="eager").config._attn_implementation == "eager"


def test_the_policy_and_its_reference_copy_load_with_the_attention_asked_for(tiny_dir):
    policy = PolicyWithReference(tiny_dir, reference="copy", attn_implementation="eager")
    assert policy.policy.config._attn_implementation == "eager"
    assert policy.reference.weights.config._attn_implementation == "eager"


def test_revision_and_model_kwargs_reach_from_pretrained(monkeypatch):
    calls = []

    def recording(name, **kwargs):
        calls.append((name, kwargs))
        return torch.nn.Linear(1, 1)

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", recording)
    load_causal_lm("org/model", dtype="bfloat16", revision="v1.2", attn_implementation="flash_attention_2",
                   model_kwargs={"low_cpu_mem_usage": True, "device_map": "auto"})
    assert calls == [("org/model", {"low_cpu_mem_usage": True, "device_map": "auto", "dtype": torch.bfloat16,
                                    "trust_remote_code": False, "attn_implementation": "flash_attention_2",
                                    "revision": "v1.2"})]
    calls.clear()
    load_causal_lm("org/model")  # nothing unset is passed: transformers keeps its own defaults
    assert calls == [("org/model", {"dtype": None, "trust_remote_code": False})]


def test_model_kwargs_may_not_shadow_an_argument_of_their_own():
    with pytest.raises(ValueError, match="model_kwargs: revision, torch_dtype has an argument of its own: set "
                                         "revision, dtype instead"):
        load_causal_lm("org/model", model_kwargs={"torch_dtype": "float16", "revision": "main"})


def test_checkpoint_settings_are_refused_for_the_embedded_model():
    with pytest.raises(ValueError, match="model_kwargs, revision cannot apply to the embedded model 'tiny'"):
        load_causal_lm("tiny", revision="main", model_kwargs={"low_cpu_mem_usage": True})


def test_quantization_without_cuda_or_bitsandbytes_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelLoadError, match=r"through bitsandbytes, which needs a CUDA device \(none is visible\)"):
        load_causal_lm("org/model", quantization={"load_in_4bit": True})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match=r"needs the bitsandbytes package \(pip install bitsandbytes\)$"):
        load_causal_lm("org/model", quantization={"load_in_4bit": True})


def test_a_misspelt_quantization_field_lists_the_fields():
    with pytest.raises(ValueError, match="unknown field.* load_in_4bits; BitsAndBytesConfig takes load_in_8bit, "
                                         "load_in_4bit, "):
        load_causal_lm("org/model", quantization={"load_in_4bits": True})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None,
                    reason="QLoRA needs a CUDA device and bitsandbytes")
def test_qlora_trains_adapters_on_a_4bit_base(tiny_dir):
    import bitsandbytes as bnb

    policy = PolicyWithReference(tiny_dir, reference="lora", lora=None, quantization={
        "load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"}).cuda()
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in policy.policy.modules())
    ids = torch.randint(0, policy.tokenizer.vocab_size, (2, 8), device="cuda")
    policy(ids, torch.ones_like(ids)).float().logsumexp(-1).mean().backward()
    trained = [n for n, p in policy.policy.named_parameters() if p.grad is not None]
    assert trained and all("lora_" in n for n in trained)
