"""A reward model with its own tokenizer and chat template scores the policy's responses (lit_align/rewards/dispatch.py
and lit_align/rewards/inputs.py): the data's messages and the decoded response, rendered by its own template.

Two tokenizers are built offline: the reward model's is a byte-level BPE trained here on the shipped text, with
other ids than the policy's and a Llama-3.1-style chat template (a default system block with a date); the policies
are the embedded tiny model (its own template) and a Llama-3-style stand-in (header tokens, ``<|eot_id|>``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast

from support.cli import fit_args, run_main
from lit_align.evaluation import RewardModelJudge
from lit_align.objectives import PreferenceDistillation
from lit_align.generation.rollout import Rollout
from lit_align.rewards.dispatch import rollout_texts
from lit_align.rewards.inputs import RewardInputs, reads_policy_ids
from lit_align.rewards.model import PretrainedRewardModel, RewardScorer, load_reward_model

ROOT = Path(__file__).resolve().parents[2]
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
LLAMA31_TEMPLATE = (
    "{{ bos_token }}<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] | trim }}{% endif %}<|eot_id|>"
    "{% for m in messages %}{% if m['role'] != 'system' %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|pad|>"]
CHAT = [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": "Describe the rain."}]


def _lines() -> list[str]:
    lines = []
    for name in ("tiny_preferences_train.jsonl", "tiny_preferences_chat.jsonl"):
        for line in (ROOT / "lit_align" / "assets" / "data" / name).read_text().splitlines():
            lines.append(line)
    return lines


def bpe_tokenizer(vocab_size: int, template: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE with Llama-style special tokens that adds its BOS, trained on the shipped data."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=LLAMA_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(_lines(), trainer)
    bos = LLAMA_SPECIALS[0]
    backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, 0)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token="<|eot_id|>",
                                        pad_token="<|pad|>", model_max_length=256)
    tokenizer.chat_template = template
    return tokenizer


def small_config(tokenizer) -> LlamaConfig:
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, num_labels=1)


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory) -> Path:
    """A saved one-label Llama reward model with the Llama-3.1-style BPE (not the policy's vocabulary)."""
    tokenizer = bpe_tokenizer(420, LLAMA31_TEMPLATE)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(small_config(tokenizer))
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)  # rewards that differ from text to text
    directory = tmp_path_factory.mktemp("reward") / "rm"
    RewardScorer(model, tokenizer).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def llama3_policy_dir(tmp_path_factory) -> Path:
    """A tiny causal LM with a Llama-3-style tokenizer and template (the UltraFeedback policy's family)."""
    tokenizer = bpe_tokenizer(380, LLAMA3_TEMPLATE)
    torch.manual_seed(1)
    model = LlamaForCausalLM(small_config(tokenizer))
    directory = tmp_path_factory.mktemp("policy") / "llama3"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


class Recorder(torch.nn.Module):
    """Wraps a scorer and keeps every (input_ids, attention_mask) it is given."""

    def __init__(self, scorer: RewardScorer) -> None:
        super().__init__()
        self.scorer, self.tokenizer, self.inputs, self.seen = scorer, scorer.tokenizer, scorer.inputs, []

    def forward(self, input_ids, attention_mask):
        self.seen.append((input_ids.clone(), attention_mask.clone()))
        return self.scorer(input_ids, attention_mask)


def rollout_rows(tokenizer, prompts: list[list[int]], responses: list[str], messages=None) -> Rollout:
    """The rollout layout: left-padded prompt ids, then the response ids + EOS right-padded, one row per prompt;
    ``messages``: the prompts' chat messages, as the data gives them."""
    response_ids = [tokenizer(r, add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for r in responses]
    width_p, width_r = max(map(len, prompts)), max(map(len, response_ids))
    n, pad = len(prompts), tokenizer.pad_token_id
    ids = torch.full((n, width_p + width_r), pad, dtype=torch.long)
    mask, completion = torch.zeros_like(ids), torch.zeros_like(ids)
    for row, (p, r) in enumerate(zip(prompts, response_ids)):
        ids[row, width_p - len(p): width_p] = torch.tensor(p)
        ids[row, width_p: width_p + len(r)] = torch.tensor(r)
        mask[row, width_p - len(p): width_p + len(r)] = 1
        completion[row, width_p: width_p + len(r)] = 1
    return Rollout(ids, mask, completion, width_p, torch.ones(n, dtype=torch.bool), torch.arange(n),
                   prompt_messages=messages)


def own_reward(scorer: RewardScorer, ids: list[int]) -> float:
    return scorer(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)).item()


def objective(reward_model, policy_model: str = "tiny") -> PreferenceDistillation:
    from lit_align import PolicyWithReference

    return PreferenceDistillation(reward_model=reward_model, policy=PolicyWithReference(model=policy_model))


# -- (a) plain text: the reward model's own tokenisation -------------------------------------------------------


def test_plain_text_reward_equals_the_reward_models_own_tokenisation(reward_dir, tokenizer):
    """Before, attach_reward_model refused a reward model with another vocabulary; now each response is decoded and
    re-encoded: its reward equals the scorer on its own tokens of prompt (BOS once) + response + EOS."""
    scorer = load_reward_model(str(reward_dir))
    assert not reads_policy_ids(scorer.tokenizer, tokenizer)
    module = objective(scorer)
    prompts, responses = ["Describe the rain.", "Write a short line about a quiet village."], [" wet", " calm and old"]
    scores = module.score(rollout_rows(tokenizer, [tokenizer(p).input_ids for p in prompts], responses))
    rm = scorer.tokenizer
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        own = rm(prompt).input_ids + rm(response, add_special_tokens=False).input_ids + [rm.eos_token_id]
        assert own[0] == rm.bos_token_id and own[:1] != tokenizer(prompt).input_ids[:1]
        assert scores[row].item() == pytest.approx(own_reward(scorer, own), abs=1e-5)
    assert scores[0] != scores[1]


def test_same_tokenizer_keeps_the_fast_path(tokenizer):
    """A reward model with the policy's tokenizer reads the policy's ids as they are, unchanged."""
    from lit_align.rewards.model import build_reward_scorer

    recorder = Recorder(build_reward_scorer("tiny"))
    module = objective(recorder)
    rows = rollout_rows(tokenizer, [tokenizer("Describe the rain.").input_ids], [" wet"])
    assert module.score(rows).shape == (1,)
    assert torch.equal(recorder.seen[0][0], rows.input_ids) and torch.equal(recorder.seen[0][1], rows.attention_mask)


# -- (b) conversations: the reward model's chat template --------------------------------------------------------


@pytest.mark.parametrize("policy", ["tiny", "llama3"])
def test_chat_template_rendering_is_what_gets_scored(policy, reward_dir, llama3_policy_dir):
    """The prompt's messages (kept from the data) are rendered, with the decoded response as the assistant turn,
    by the reward model's template: the scorer sees exactly that rendering and gives what it gives on its own
    tokenisation of it."""
    from lit_align.models.loading import load_tokenizer

    policy_model = "tiny" if policy == "tiny" else str(llama3_policy_dir)
    policy_tok = load_tokenizer(policy_model)
    recorder = Recorder(load_reward_model(str(reward_dir)))
    module = objective(recorder, policy_model)
    prompt_ids = policy_tok(policy_tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True),
                            add_special_tokens=False).input_ids
    score = module.score(rollout_rows(policy_tok, [prompt_ids], ["It falls softly."], messages=[CHAT]))
    rm = recorder.tokenizer
    expected = rm.apply_chat_template(CHAT + [{"role": "assistant", "content": "It falls softly."}], tokenize=True,
                                      return_dict=False)
    seen_ids, seen_mask = recorder.seen[-1]
    assert seen_ids[0][seen_mask[0].bool()].tolist() == expected
    rendering = rm.decode(expected)
    assert rendering.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge")
    assert "Answer in one line.<|eot_id|><|start_header_id|>user" in rendering
    assert rendering.endswith("<|start_header_id|>assistant<|end_header_id|>\n\nIt falls softly.<|eot_id|>")
    assert score.item() == pytest.approx(own_reward(recorder.scorer, expected), abs=1e-5)


def test_truncation_keeps_bos_the_prompts_end_and_the_responses_start(reward_dir):
    rm = load_reward_model(str(reward_dir)).tokenizer
    prompt, response = "one two three four five six seven eight nine ten", " alpha beta gamma"
    body = rm(prompt, add_special_tokens=False).input_ids
    response_ids = rm(response, add_special_tokens=False).input_ids + [rm.eos_token_id]
    assert RewardInputs(rm, max_length=256).encode_one(prompt, response) == [rm.bos_token_id] + body + response_ids
    room = 3  # prompt tokens kept besides BOS
    assert room < len(body)
    cut = RewardInputs(rm, max_length=1 + room + len(response_ids)).encode_one(prompt, response)
    assert cut == [rm.bos_token_id] + body[-room:] + response_ids
    assert RewardInputs(rm, max_length=3).encode_one(prompt, response) == [rm.bos_token_id] + response_ids[:2]


# -- one implementation for the judge ----------------------------------------------------------------------------


def test_judge_scores_like_the_objective(reward_dir, tokenizer):
    """RewardModelJudge and the on-policy objective make the same reward-model ids from the same prompt: its
    messages, or, without them, its text read without the policy's special tokens."""
    judge = RewardModelJudge(str(reward_dir))
    judge.setup(torch.device("cpu"))
    module = objective(judge.scorer)
    prompt = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    rows = rollout_rows(tokenizer, [ids], [" Wet."], messages=[CHAT])
    (response,) = rollout_texts(rows, tokenizer)[1]
    from_objective = module.score(rows).item()
    as_text = judge.rewards([prompt], [response]).item()  # without the policy's tokenizer: markup read as text
    judge.read_prompts_with(tokenizer)
    assert judge.rewards([CHAT], [response]).item() == pytest.approx(from_objective, abs=1e-5)
    without_messages = module.score(rollout_rows(tokenizer, [ids], [" Wet."])).item()
    assert judge.rewards([prompt], [response]).item() == pytest.approx(without_messages, abs=1e-5)
    assert as_text != pytest.approx(without_messages, abs=1e-5)


def test_pretrained_reward_model_takes_its_input_settings(reward_dir):
    scorer = PretrainedRewardModel(str(reward_dir), max_length=64, chat_template="always")
    assert not scorer.training and not any(p.requires_grad for p in scorer.parameters())
    assert (scorer.inputs.max_length, scorer.inputs.chat_template) == (64, "always")
    plain = scorer.inputs.encode_one("Describe the rain.", "Wet.")
    assert scorer.tokenizer.decode(plain).count("<|start_header_id|>user<|end_header_id|>") == 1
    assert load_reward_model(str(reward_dir)).inputs.max_length == 256  # the tokenizer's and the model's limit


# -- (c) fits offline with a reward model of another tokenizer --------------------------------------------------


@pytest.fixture
def encoded(monkeypatch) -> list[tuple[list, list[list[int]], RewardInputs]]:
    """Every (prompts, reward-model ids, encoder) that RewardInputs.encode produces during a test."""
    calls, real = [], RewardInputs.encode

    def recording(self, prompts, responses):
        ids = real(self, prompts, responses)
        calls.append((prompts, ids, self))
        return ids

    monkeypatch.setattr(RewardInputs, "encode", recording)
    return calls


@pytest.mark.parametrize("config, as_class", [("pdistill.yaml", False), ("rebel.yaml", False), ("rlhf.yaml", True)])
def test_on_policy_fit_with_a_reward_model_of_another_tokenizer(config, as_class, reward_dir, run_dir, encoded):
    """The shipped configs train offline with ``--model.reward_model`` naming a reward model of another vocabulary
    and template (before: refused at start-up); RLHF names it as a PretrainedRewardModel with its input settings."""
    reward = (json.dumps({"class_path": "lit_align.rewards.model.PretrainedRewardModel",
                          "init_args": {"source": str(reward_dir), "chat_template": "always", "max_length": 40}})
              if as_class else str(reward_dir))
    code = run_main(fit_args(config, f"--model.reward_model={reward}", "--data.batch_size=4",
                             "--data.limit_rows=8", "--model.sampling.max_new_tokens=6", steps=4))
    assert code == 0
    assert (run_dir / "runs" / "test" / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "runs" / "test" / "reward_model").exists()  # the named reward model, no reward stage
    prompts, ids, inputs = encoded[0]  # the tiny data is plain text, decoded without the policy's BOS
    assert len(prompts) == 8 and all(isinstance(p, str) and "<s>" not in p for p in prompts)
    rendered = [inputs.tokenizer.decode(row) for row in ids]
    if as_class:  # every plain prompt as a user turn of the reward model's template, cut to 40 tokens
        assert all(len(row) <= 40 for row in ids) and all(r.startswith("<|begin_of_text|>") for r in rendered)
        assert any("<|start_header_id|>user<|end_header_id|>" in r for r in rendered)
    else:  # prompt (BOS once) + response + the reward model's EOS
        assert all(r.startswith("<|begin_of_text|>") and "<|start_header_id|>" not in r for r in rendered)


def test_ultrafeedback_config_with_llama_family_stand_ins(reward_dir, llama3_policy_dir, run_dir, encoded):
    """configs/ultrafeedback/pdistill.yaml as written, on one CPU with the hardware and sizes scaled down: a
    Llama-3-style policy, a Llama-3.1-style reward model of another vocabulary, conversational UltraFeedback rows."""
    rows = [json.loads(line) for line in (ROOT / "tests" / "fixtures" / "presets" / "ultrafeedback.jsonl").open()]
    data = run_dir / "uf.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 2))
    code = run_main(fit_args(
        "ultrafeedback/pdistill.yaml", "--trainer.strategy=auto", "--trainer.devices=1",
        "--trainer.log_every_n_steps=1", f"--model.reward_model={reward_dir}",
        f"--model.policy.init_args.model={llama3_policy_dir}",
        "--model.sampling.max_new_tokens=6", "--model.epochs_per_batch=1", f"--data.path={data}",
        "--data.preset=ultrafeedback", "--data.val_split=null", "--data.batch_size=2", "--data.max_length=96",
        "--data.max_prompt_length=48", "--trainer.limit_val_batches=0", steps=2,
    ))
    assert code == 0
    assert (run_dir / "runs" / "test" / "checkpoints" / "last.ckpt").is_file()
    questions = {r["chosen"][0]["content"] for r in rows}
    for prompts, ids, inputs in encoded:  # the user turn, as the data gave it
        assert all(p[-1]["role"] == "user" and p[-1]["content"] in questions for p in prompts)
        assert all(inputs.tokenizer.decode(row).startswith("<|begin_of_text|><|start_header_id|>system") for row in ids)
    assert len(encoded) == 2


def test_evaluation_tells_the_judge_which_tokenizer_rendered_the_prompts():
    """``lit-align evaluate`` hands the judge the policy's tokenizer before the first comparison, so a reward-model
    judge with another tokenizer reads a text prompt without the policy's markup."""
    from types import SimpleNamespace

    from lit_align.evaluation import EvaluationReport, Judge

    class Recorder(Judge):
        tokenizer = None

        def read_prompts_with(self, policy_tokenizer) -> None:
            self.tokenizer = policy_tokenizer

    judge, policy_tokenizer = Recorder(), object()
    module = SimpleNamespace(device=torch.device("cpu"), tokenizer=policy_tokenizer,
                             policy=SimpleNamespace(reference=SimpleNamespace(live=True)))
    EvaluationReport(judge=judge).on_predict_start(None, module)
    assert judge.tokenizer is policy_tokenizer
