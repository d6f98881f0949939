"""Every default a lit-align docstring or shipped config attributes to TRL, read from TRL 1.16's config classes
(never typed in): equal where lit-align keeps TRL's default, and stated in the docstring where it deliberately
differs. Needs ``pip install -e ".[parity]"`` (TRL, test-only)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml

pytest.importorskip("trl")
pytestmark = pytest.mark.extended

from trl import DPOConfig, GRPOConfig, KTOConfig, RLOOConfig  # noqa: E402
from trl.experimental.cpo import CPOConfig  # noqa: E402
from trl.experimental.online_dpo import OnlineDPOConfig  # noqa: E402
from trl.experimental.orpo import ORPOConfig  # noqa: E402

from support.trl_parity import default  # noqa: E402
from lit_align.objectives import (  # noqa: E402
    AOT, APODown, APOZero, BCOPair, DPO, DiscoPOP, EXOPair, GRPO, Hinge, IPO, KTO, LDDPO, LengthNormalizedDPO,
    NCAPair, ORPO, RLOO, RPO, OnlineDPO, RobustDPO, SPPOHard, SimPO, WPO,
)
from lit_align.objectives.base import AlignmentModule  # noqa: E402
from lit_align.objectives.onpolicy.base import OnPolicyObjective  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# (lit-align class, its __init__ argument, TRL config class, TRL field): lit-align's default is TRL's
EQUAL = [
    *[(cls, "beta", DPOConfig, "beta") for cls in (DPO, Hinge, RobustDPO, BCOPair, APOZero, APODown, NCAPair,
                                                   EXOPair, SPPOHard, AOT, LengthNormalizedDPO, LDDPO, WPO, RPO)],
    (DPO, "label_smoothing", DPOConfig, "label_smoothing"),
    *[(cls, name, DPOConfig, name) for cls in (DPO, Hinge, IPO, EXOPair, RobustDPO, DiscoPOP, LengthNormalizedDPO)
      for name in ("f_divergence_type", "f_alpha_divergence_coef")],
    (IPO, "tau", DPOConfig, "beta"),
    (AOT, "label_smoothing", DPOConfig, "label_smoothing"),
    (LengthNormalizedDPO, "label_smoothing", DPOConfig, "label_smoothing"),
    (DiscoPOP, "tau", DPOConfig, "discopop_tau"),
    (SimPO, "gamma", CPOConfig, "simpo_gamma"),
    (SimPO, "label_smoothing", CPOConfig, "label_smoothing"),
    (ORPO, "lam", ORPOConfig, "beta"),
    (KTO, "beta", KTOConfig, "beta"),
    (KTO, "desirable_weight", KTOConfig, "desirable_weight"),
    (KTO, "undesirable_weight", KTOConfig, "undesirable_weight"),
    (KTO, "loss_type", KTOConfig, "loss_type"),
    (GRPO, "beta", GRPOConfig, "beta"),
    (GRPO, "loss_type", GRPOConfig, "loss_type"),
    (GRPO, "epsilon_low", GRPOConfig, "epsilon"),
    (GRPO, "epsilon_high", GRPOConfig, "epsilon_high"),
    (GRPO, "importance_sampling_level", GRPOConfig, "importance_sampling_level"),
    (GRPO, "delta", GRPOConfig, "delta"),
    (GRPO, "use_bias_correction_kl", GRPOConfig, "use_bias_correction_kl"),
    (GRPO, "top_entropy_quantile", GRPOConfig, "top_entropy_quantile"),
    (GRPO, "sapo_temperature_pos", GRPOConfig, "sapo_temperature_pos"),
    (GRPO, "sapo_temperature_neg", GRPOConfig, "sapo_temperature_neg"),
    (GRPO, "num_samples", GRPOConfig, "num_generations"),
    (GRPO, "epochs_per_batch", GRPOConfig, "num_iterations"),
    (RLOO, "kl_coef", RLOOConfig, "beta"),
    (RLOO, "clip_range", RLOOConfig, "epsilon"),
    (RLOO, "epsilon_high", RLOOConfig, "epsilon_high"),
    (RLOO, "normalize_advantages", RLOOConfig, "normalize_advantages"),
    (RLOO, "num_samples", RLOOConfig, "num_generations"),
    (OnlineDPO, "loss_type", OnlineDPOConfig, "loss_type"),
    (OnPolicyObjective, "missing_eos_penalty", OnlineDPOConfig, "missing_eos_penalty"),
    (AlignmentModule, "max_grad_norm", DPOConfig, "max_grad_norm"),
]

# (lit-align class, argument, TRL config class, TRL field): a deliberate difference; the docstring states TRL's value
STATED = [
    (SimPO, "beta", CPOConfig, "beta"),
    (SimPO, "cpo_alpha", CPOConfig, "cpo_alpha"),
    (DiscoPOP, "beta", DPOConfig, "beta"),
    (RobustDPO, "label_smoothing", DPOConfig, "label_smoothing"),
    (EXOPair, "label_smoothing", DPOConfig, "label_smoothing"),
    (OnPolicyObjective, "sampling", GRPOConfig, "temperature"),
    (OnPolicyObjective, "sampling", GRPOConfig, "max_completion_length"),
    (OnPolicyObjective, "sampling", OnlineDPOConfig, "temperature"),
    (OnPolicyObjective, "sampling", OnlineDPOConfig, "max_new_tokens"),
]


def _lit_default(cls, name):
    return inspect.signature(cls.__init__).parameters[name].default


def _documented(cls, name) -> str:
    """The text of argument ``name`` in ``cls``'s Google-style Args section."""
    doc = inspect.getdoc(cls)
    match = re.search(rf"^    {name}: (.*?)(?=^    \w+: |\Z)", doc, re.S | re.M)
    assert match, f"{cls.__name__} documents no argument {name}"
    return " ".join(match.group(1).split())


@pytest.mark.parametrize("cls, name, trl_config, field", EQUAL,
                         ids=[f"{c.__name__}.{n}={t.__name__}.{f}" for c, n, t, f in EQUAL])
def test_default_is_trls(cls, name, trl_config, field):
    assert _lit_default(cls, name) == default(trl_config, field)


def test_grouped_defaults_are_trls():
    assert tuple(_lit_default(GRPO, "vespo_shapes")) == tuple(
        default(GRPOConfig, f) for f in ("vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg"))
    assert [_lit_default(OnlineDPO, "beta")] == default(OnlineDPOConfig, "beta")
    assert _lit_default(GRPO, "scale_rewards") is None and default(GRPOConfig, "scale_rewards") == "group"
    assert "``group`` (TRL's default)" in _documented(GRPO, "scale_rewards")


@pytest.mark.parametrize("cls, name, trl_config, field", STATED,
                         ids=[f"{c.__name__}.{n}~{t.__name__}.{f}" for c, n, t, f in STATED])
def test_a_different_default_states_trls(cls, name, trl_config, field):
    value = default(trl_config, field)
    text = _documented(cls, name)
    spellings = {str(value), f"{value:g}"} if isinstance(value, float) else {str(value)}
    assert any(re.search(rf"(?<![\d.]){re.escape(v)}(?![\d])", text) for v in spellings), (
        f"{cls.__name__}.{name} must state TRL's {trl_config.__name__}.{field} = {value}: {text!r}")


# The TRL config class and field of each argument a shipped config marks "# TRL default", by objective class.
CONFIG_FIELDS = {
    "GRPO": (GRPOConfig, {"beta": "beta", "loss_type": "loss_type", "epsilon_low": "epsilon",
                          "temperature": "temperature"}),
    "RLOO": (RLOOConfig, {"kl_coef": "beta", "temperature": "temperature"}),
    "KTO": (KTOConfig, {"beta": "beta", "desirable_weight": "desirable_weight",
                        "undesirable_weight": "undesirable_weight", "loss_type": "loss_type"}),
    "OnlineDPO": (OnlineDPOConfig, {"beta": "beta", "loss_type": "loss_type", "temperature": "temperature"}),
}
MARKED = [(path, match.group(1), match.group(2)) for path in sorted(CONFIGS.rglob("*.yaml"))
          for match in re.finditer(r"^\s*(\w+): *([^#\n]*?) *# TRL default\b", path.read_text(), re.M)]


@pytest.mark.parametrize("path, key, value", MARKED, ids=[f"{p.relative_to(CONFIGS)}:{k}" for p, k, _ in MARKED])
def test_shipped_config_values_marked_trl_default_are_trls(path, key, value):
    objective = re.search(r"class_path: lit_align\.objectives\.(\w+)", path.read_text()).group(1)
    trl_config, fields = CONFIG_FIELDS[objective]
    expected = default(trl_config, fields[key])
    expected = expected[0] if isinstance(expected, list) and len(expected) == 1 else expected  # beta: [0.1]
    assert yaml.safe_load(value) == expected


def test_the_marked_configs_are_found():
    assert {(p.name, k) for p, k, _ in MARKED} >= {("grpo.yaml", "beta"), ("rloo.yaml", "temperature"),
                                                   ("kto.yaml", "beta"), ("online_dpo.yaml", "temperature")}
