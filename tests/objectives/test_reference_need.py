"""Which pi_0 an objective loads follows from its settings alone (``AlignmentModule.reference_need``), decided once
when it is built: with no ``policy`` given the reference it needs is loaded (a frozen copy, or none at all), and a
given policy whose reference cannot serve it is refused in one line naming who needs it."""

import json

import pytest

from lit_align import PolicyWithReference
from lit_align.cli.app import build_cli
from lit_align.objectives import (
    DPO, GRPO, KTO, LDDPO, ORPO, PMLE, RLHF, RLOO, SFT, CombinedPairLoss, Hinge, SimPO,
)

LD = "ld_alpha \\(the reference's log-probs desensitised token by token\\)"
DATA = "needs reference log-probs of the data rows, which reference='none' cannot give"
SAMPLES = "scores fresh samples under the reference, which reference='{}' cannot"

# (objective, settings, the reference loaded without a policy, (a reference it refuses, the refusal) or None)
CASES = [
    (DPO, {}, "copy", ("none", f"^DPO {DATA}")),
    (SimPO, {}, "none", None),
    (ORPO, {}, "none", None),
    (SFT, {}, "none", None),
    (Hinge, {}, "copy", ("none", f"^Hinge {DATA}")),
    (Hinge, {"reference_free": True}, "none", None),
    (LDDPO, {}, "copy", ("cache", f"^{LD} {SAMPLES.format('cache')}")),
    (CombinedPairLoss, {"losses": [{"loss": "sigmoid"}, {"loss": "sft"}]}, "copy",
     ("none", f"^CombinedPairLoss {DATA}")),
    (CombinedPairLoss, {"losses": [{"loss": "simpo"}, {"loss": "sft"}]}, "none", None),
    (CombinedPairLoss, {"losses": [{"loss": "hinge", "reference_free": True}]}, "none", None),
    # ld_alpha reads the reference's tokens only where some part reads the reference
    (CombinedPairLoss, {"losses": [{"loss": "simpo"}], "ld_alpha": 0.5}, "none", None),
    (CombinedPairLoss, {"losses": [{"loss": "sigmoid"}], "ld_alpha": 0.5}, "copy",
     ("cache", f"^{LD} {SAMPLES.format('cache')}")),
    (PMLE, {"beta": 0.0}, "none", None),
    (PMLE, {"beta": 1e-3}, "copy", ("none", f"^PMLE with beta > 0 {SAMPLES.format('none')}")),
    (KTO, {}, "copy", ("cache", f"^KTO's reference point \\(prompts with mismatched completions\\) "
                                f"{SAMPLES.format('cache')}")),
    (KTO, {"loss_type": "apo_zero_unpaired"}, "copy", ("none", f"^KTO {DATA}")),
    (GRPO, {"beta": 0.0}, "none", None),
    (GRPO, {"beta": 0.04}, "copy", ("cache", f"^GRPO with a KL weight above 0 {SAMPLES.format('cache')}")),
    (RLOO, {"kl_coef": 0.0}, "none", None),
    (RLOO, {}, "copy", ("none", f"^RLOO with a KL weight above 0 {SAMPLES.format('none')}")),
    (RLHF, {}, "copy", ("cache", f"^RLHF {SAMPLES.format('cache')}")),
]
IDS = [f"{cls.__name__}-{'-'.join(f'{k}={v}' for k, v in settings.items()) or 'defaults'}"
       for cls, settings, _, _ in CASES]


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    """One policy per way of holding pi_0, given to the objectives that must refuse it."""
    cache = str(tmp_path_factory.mktemp("reference_cache"))
    return {mode: PolicyWithReference(reference=mode, reference_cache_dir=cache) for mode in ("none", "cache")}


@pytest.mark.parametrize("cls, settings, loaded, refused", CASES, ids=IDS)
def test_the_reference_follows_from_the_settings(cls, settings, loaded, refused, policies):
    module = cls(**settings)
    assert module.policy.reference.name == loaded
    # decided by the class (needs_reference) or computed (reference_need), never written on the instance
    assert "needs_reference" not in vars(module) and "default_reference" not in vars(module)
    assert module.reference_needed == cls.reference_need(module.hparams)
    assert (module.reference_needed is None) == (loaded == "none")
    if refused is not None:
        mode, message = refused
        with pytest.raises(ValueError, match=message):
            cls(policy=policies[mode], **settings)


@pytest.mark.parametrize("cls, settings, loaded, data", [
    (GRPO, {"beta": 0.0}, "none", "PromptDataModule"),
    (CombinedPairLoss, {"losses": [{"loss": "hinge", "reference_free": True}]}, "none", "PreferenceDataModule"),
], ids=["GRPO-beta=0", "CombinedPairLoss-reference-free-hinge"])
def test_the_command_line_decides_the_same(cls, settings, loaded, data, tmp_path, monkeypatch):
    """Built by the command line (which hands Lightning the config's own arguments, not a base's), the settings
    that decide are the same: a base's argument set by a subclass (GRPO's beta as the KL weight) and a mix's
    parts included."""
    monkeypatch.chdir(tmp_path)
    args = [f"--model=lit_align.objectives.{cls.__name__}", f"--data=lit_align.data.{data}", "--data.path=tiny"]
    args += [f"--model.{name}={json.dumps(value)}" for name, value in settings.items()]
    assert build_cli(args, run=False).model.policy.reference.name == loaded


def test_a_given_policy_wins_when_it_can_serve():
    given = PolicyWithReference(reference="lora")
    assert DPO(policy=given).policy is given and GRPO(beta=0.0, policy=given).policy.reference.name == "lora"
