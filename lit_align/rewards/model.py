"""Reward models: one scalar score per (prompt, response), read at the last real token.

``RewardScorer`` wraps a Hugging Face ``AutoModelForSequenceClassification`` with ``num_labels=1``. Rather than
trusting the model's own pooling (which looks for the last token that is not the pad id, and so skips an EOS
whenever pad == EOS), it runs the backbone with position ids taken from the attention mask and applies the score
head at the last position where ``attention_mask == 1``. That one rule covers right-padded pairs and the
left-padded prompt + right-padded response layout of sampled rollouts alike.

``load_reward_model`` turns what a user names into a frozen ``RewardScorer``: a local Hugging Face directory, a
hub id, a lit-align ``RewardModeling`` checkpoint (``.ckpt``), or ``"tiny"`` (the embedded backbone with a random,
seeded head: for tests and smoke runs only, it knows nothing about preferences). ``PretrainedRewardModel`` does the
same from a config, with the settings of the reward model's inputs.

A scorer knows its tokenizer and scores text too (``score_texts``): the one way text becomes a reward model's ids
(``lit_align.rewards.inputs``), used by the on-policy objectives when the reward model's tokenizer is not the
policy's and by ``RewardModelJudge``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from lit_align.losses import last_token_index
from lit_align.models.loading import (
    EMBEDDED_SEED,
    ModelLoadError,
    enable_activation_checkpointing,
    is_embedded,
    load_sequence_classifier,
    load_tokenizer,
    resolve_dtype,
    zero_dropout,
)
from lit_align.models.forward import position_ids_from_mask
from lit_align.rewards.inputs import ChatTemplateUse, Prompt, RewardInputs, default_max_length

#: Key of the extra entry a ``RewardModeling`` checkpoint carries to be rebuilt without the training code.
CHECKPOINT_KEY = "reward_model"
#: Prefix of the scorer's weights in a ``RewardModeling`` checkpoint (the objective holds it as ``policy``).
CHECKPOINT_PREFIX = "policy."


class RewardScorer(nn.Module):
    """Wraps a Hugging Face AutoModelForSequenceClassification with num_labels=1.

    Args:
        model: The sequence-classification model (one label).
        tokenizer: Its tokenizer.
        source: Where the backbone came from (hub id, directory or ``tiny``), kept for checkpoints.
        max_length: Longest input when scoring text (see ``RewardInputs``); by default the smaller of the
            tokenizer's and the position embeddings' limits.
        chat_template: When text is rendered with the tokenizer's chat template: ``auto`` (conversations),
            ``always`` (plain-text prompts too, as one user turn) or ``never``.
        append_eos: End a plain-text response with EOS before scoring it.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        source: str = "",
        max_length: int | None = None,
        chat_template: ChatTemplateUse = "auto",
        append_eos: bool = True,
    ) -> None:
        super().__init__()
        num_labels = getattr(getattr(model, "config", None), "num_labels", 1)
        if num_labels != 1:
            raise ValueError(f"a reward model has one output label; {source or type(model).__name__} has {num_labels}")
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.inputs = RewardInputs(
            tokenizer, max_length or default_max_length(model, tokenizer), chat_template, append_eos
        )

    def score_texts(self, prompts: list[Prompt], responses: list[str], batch_size: int | None = None) -> torch.Tensor:
        """(N,) float32 rewards of responses to prompts (text, or lists of messages), tokenised by this model's
        tokenizer (``RewardInputs``)."""
        return self.inputs.score(self, prompts, responses, batch_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B,) float32 reward read at the last real token (attention_mask == 1) of each row. Works with
        left-padded prompts followed by right-padded responses (position ids from the mask)."""
        position_ids = position_ids_from_mask(attention_mask)
        head = self.head
        if head is None:  # an architecture without a per-token score head: its own pooling decides
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
            return out.logits[:, 0].float()
        hidden = self.model.base_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state  # (B, T, H)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        # A new tensor, not a view of the head's (B, 1) output: under FSDP2 the scorer is the root unit and its
        # output carries the backward hook that re-gathers the weights, which an in-place op on a view would drop.
        return head(hidden[rows, last_token_index(attention_mask)]).squeeze(-1).float().clone()  # (B,)

    @property
    def base_model(self) -> nn.Module:
        """The underlying transformers model, as ``PolicyWithReference.base_model`` is a policy's (what the
        objective's checks before the first forward read: embedding table, config)."""
        return self.model

    @property
    def head(self) -> nn.Module | None:
        """The linear score head (transformers names it ``score`` in decoder-only models)."""
        return getattr(self.model, "score", None)

    def freeze_backbone(self) -> None:
        """Train the score head only."""
        if self.head is None:
            raise ValueError(f"cannot find the score head of {type(self.model).__name__} to train alone")
        self.model.requires_grad_(False)
        self.head.requires_grad_(True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def save_pretrained(self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write safetensors + config + tokenizer, loadable by ``AutoModelForSequenceClassification``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory, state_dict=state_dict, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        return directory


def build_reward_scorer(
    model: str = "tiny",
    dtype: str | None = None,
    trust_remote_code: bool = False,
    gradient_checkpointing: bool = False,
    disable_dropout: bool = True,
    seed: int = EMBEDDED_SEED,
) -> RewardScorer:
    """A trainable scorer: the backbone ``model`` with a new (or its existing) one-label score head."""
    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
    classifier = load_sequence_classifier(
        model, dtype=dtype, trust_remote_code=trust_remote_code, seed=seed, pad_token_id=tokenizer.pad_token_id
    )
    classifier.train()  # from_pretrained returns eval mode, where gradient checkpointing and dropout do nothing
    if disable_dropout:
        zero_dropout(classifier)
    if gradient_checkpointing:
        enable_activation_checkpointing(classifier)
    return RewardScorer(classifier, tokenizer, source=model)


def load_reward_model(source: str, trust_remote_code: bool = False, dtype: str | None = None) -> RewardScorer:
    """Load a frozen reward model (eval mode, no gradient) from a directory, hub id or ``.ckpt``.

    ``source`` is a local Hugging Face directory or hub id of a sequence-classification model with one label,
    a lit-align ``RewardModeling`` checkpoint (``.ckpt``, read with ``weights_only`` unpickling), or
    ``"tiny"`` (random head, for tests). A local path that does not exist raises ``FileNotFoundError`` naming it.
    """
    source = str(source)
    path = Path(source).expanduser()
    if path.is_file() or source.endswith(".ckpt"):
        if not path.is_file():
            raise FileNotFoundError(f"reward model checkpoint {source!r} does not exist")
        scorer = _from_checkpoint(path, dtype)
    elif path.is_dir():
        scorer = _from_pretrained(str(path), trust_remote_code, dtype)
    elif is_embedded(source):
        scorer = build_reward_scorer(source, dtype=dtype)
    elif _looks_local(source):
        raise FileNotFoundError(f"reward model {source!r} does not exist (no such file or directory)")
    else:
        scorer = _from_pretrained(source, trust_remote_code, dtype)
    scorer.requires_grad_(False)
    return scorer.eval()


class PretrainedRewardModel(RewardScorer):
    """A frozen reward model named in a config, with the settings of its inputs, e.g. for an on-policy objective:

    .. code-block:: yaml

        reward_model:
          class_path: lit_align.rewards.model.PretrainedRewardModel
          init_args: {source: Skywork/Skywork-Reward-Llama-3.1-8B-v0.2, max_length: 4096}

    A plain string ``reward_model: <source>`` is the same with every other setting at its default.

    Args:
        source: What ``load_reward_model`` loads: a Hugging Face directory or hub id, a ``.ckpt``, or ``tiny``.
        dtype: Weight dtype (``bfloat16`` on GPU halves the memory).
        trust_remote_code: Run model code shipped with the hub repository.
        max_length: Longest prompt + response in the reward model's tokens when it re-tokenises text; by default
            its own limit.
        chat_template: When text is rendered with the reward model's chat template: ``auto`` (conversations),
            ``always`` (plain-text prompts too, as one user turn) or ``never``.
        append_eos: End a plain-text response with the reward model's EOS.
    """

    def __init__(
        self,
        source: str,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        max_length: int | None = None,
        chat_template: ChatTemplateUse = "auto",
        append_eos: bool = True,
    ) -> None:
        loaded = load_reward_model(source, trust_remote_code=trust_remote_code, dtype=dtype)
        super().__init__(loaded.model, loaded.tokenizer, loaded.source, max_length, chat_template, append_eos)
        self.requires_grad_(False)
        self.eval()


def _from_pretrained(source: str, trust_remote_code: bool, dtype: str | None) -> RewardScorer:
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code
        )
    except Exception as err:
        raise ModelLoadError(
            f"could not load the reward model {source!r} as a sequence-classification model: "
            f"{type(err).__name__}: {err}"
        ) from err
    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    zero_dropout(model)
    return RewardScorer(model, tokenizer, source=source)


def _from_checkpoint(path: Path, dtype: str | None) -> RewardScorer:
    from lit_align.runs.checkpoint_io import load_checkpoint_file

    # weights_only unpickling: a checkpoint someone hands you cannot run code when it is loaded.
    checkpoint = load_checkpoint_file(path, map_location="cpu")
    info = checkpoint.get(CHECKPOINT_KEY)
    if info is None:
        raise ValueError(f"{str(path)!r} is not a lit-align RewardModeling checkpoint (no {CHECKPOINT_KEY!r} entry)")
    config_dict = dict(info["config"])
    config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    model = AutoModelForSequenceClassification.from_config(config)
    weights = checkpoint["state_dict"]
    state = {k[len(CHECKPOINT_PREFIX) :]: v for k, v in weights.items() if k.startswith(CHECKPOINT_PREFIX)}
    scorer = RewardScorer(model, load_tokenizer(info["tokenizer"]), source=str(path))
    scorer.load_state_dict(state)
    zero_dropout(model)
    torch_dtype = resolve_dtype(dtype)
    return scorer.to(torch_dtype) if torch_dtype is not None else scorer


def _looks_local(source: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else with a path shape was meant as a local path.
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source
