"""The thin objectives of TRL's pairwise losses and CombinedPairLoss, on the tiny model and the shipped pairs.

Each objective's loss on a batch (its rows packed with a shared prompt) must equal its ``pair_loss`` evaluated on
log-probs computed here independently, from the unpacked rows' logits of the policy and the reference.
"""

import pytest
import torch

from lit_align.data import PreferenceDataModule
from lit_align.models.logprobs import completion_token_logprobs
from lit_align.losses import bco_pair_loss, dpo_loss, length_desensitized_logps
from lit_align.objectives import DPO, IPO
from lit_align.objectives import (
    AOT, APODown, APOZero, BCOPair, CombinedPairLoss, DiscoPOP, EXOPair, Hinge, LDDPO, LengthNormalizedDPO,
    NCAPair, ORPO, RPO, RobustDPO, SPPOHard, SimPO, WPO,
)
from lit_align.objectives.offline.base import RowLogps
from lit_align.objectives.offline.pair_terms import RunningRewardMean
from lit_align.objectives.offline.pairwise_length import ChosenNLL

CLASSES = [AOT, APODown, APOZero, BCOPair, ChosenNLL, DiscoPOP, DPO, EXOPair, Hinge, IPO, LDDPO, LengthNormalizedDPO,
           NCAPair, ORPO, RPO, RobustDPO, SPPOHard, SimPO, WPO]


@pytest.fixture(scope="module")
def batch():
    data = PreferenceDataModule(path="tiny", tokenizer="tiny", batch_size=6, max_length=64, max_prompt_length=32)
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def _moved(module):
    """The module with its policy moved off pi_0, so that log-ratios are not all zero."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.policy.policy.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return module


def _rows(module, batch, ld_alpha=None):
    """(chosen, rejected) RowLogps of the unpacked rows, computed here from the logits; with ``ld_alpha`` the
    policy's and the reference's sums desensitised LD-DPO's way."""
    with torch.no_grad():
        logits = module.policy(batch["input_ids"], batch["attention_mask"])
        tokens, mask = completion_token_logprobs(logits, batch["input_ids"], batch["completion_mask"])
        ref_tokens = None
        if module.policy.reference.live:
            ref_logits = module.policy.reference_logits(batch["input_ids"], batch["attention_mask"])
            ref_tokens = completion_token_logprobs(ref_logits, batch["input_ids"], batch["completion_mask"])[0]

    def summed(values):
        if values is None or ld_alpha is None:
            return None if values is None else values.sum(-1)
        public = torch.minimum(*mask.sum(-1).chunk(2)).repeat(2)
        return length_desensitized_logps(values, mask, public, ld_alpha)

    rows = RowLogps(summed(tokens), tokens, mask, torch.zeros(len(tokens)), summed(ref_tokens))
    return rows.blocks(2)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_objective_loss_is_its_pair_loss_on_independent_logps(cls, batch):
    module = _moved(cls())
    module.eval()  # BCO's running mean is read, not moved
    with torch.no_grad():
        loss, metrics = module.compute_loss(batch, "val")
        chosen, rejected = _rows(module, batch, module.ld_alpha)
        expected = module.pair_loss(chosen, rejected, batch)
    torch.testing.assert_close(loss, expected.losses.mean(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(metrics["rewards/chosen"], expected.chosen_rewards, atol=1e-5, rtol=1e-5)
    assert metrics["rewards/accuracies"].shape == (batch["index"].numel(),)


@pytest.mark.parametrize("make", [SimPO, ORPO, lambda **kw: Hinge(reference_free=True, **kw)],
                         ids=["SimPO", "ORPO", "Hinge-reference-free"])
def test_reference_free_objectives_load_no_reference(make, batch):
    module = make()
    assert module.policy.reference.name == "none" and module.reference_needed is None
    loss, _ = module.compute_loss(batch, "train")
    loss.backward()
    assert torch.isfinite(loss)
    assert Hinge().policy.reference.name != "none"  # the TRL form keeps its reference


def test_ld_dpo_with_alpha_one_is_dpo_and_desensitises_the_reference_too(batch):
    module = _moved(LDDPO(alpha=1.0))
    chosen, rejected = _rows(module, batch)
    plain = dpo_loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference, 0.1).losses
    with torch.no_grad():
        torch.testing.assert_close(module.compute_loss(batch, "val")[1]["loss"], plain, atol=1e-5, rtol=1e-5)
        module.ld_alpha = 0.5
        desensitised = module.compute_loss(batch, "val")[1]["loss"]
    # alpha < 1: a pair of equal lengths is untouched, an unequal one is not
    same = chosen.lengths == rejected.lengths
    assert (~same).any()
    torch.testing.assert_close(desensitised[same], plain[same], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(desensitised[~same], plain[~same])
    # the reference is desensitised as well as the policy (TRL's): at the reference the loss is ln 2 exactly
    at_reference = LDDPO(alpha=0.5)
    with torch.no_grad():
        torch.testing.assert_close(at_reference.compute_loss(batch, "val")[0], torch.tensor(0.6931472))


def test_wpo_batch_normalized_weights_average_one(batch):
    module = _moved(WPO())
    chosen, rejected = _rows(module, batch)
    plain = dpo_loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference, 0.1).losses
    weighted = module.pair_loss(chosen, rejected, batch).losses
    weights = weighted / plain
    assert weights.mean().item() == pytest.approx(1.0) and weights.std() > 0
    module.batch_normalized = False
    raw = module.pair_loss(chosen, rejected, batch).losses / plain
    # unnormalised: exp of both responses' mean token log-probs, well below 1 for a random tiny model
    mean_logp = chosen.policy / chosen.lengths + rejected.policy / rejected.lengths
    torch.testing.assert_close(raw, torch.exp(mean_logp).clamp(max=1))


def test_combined_is_the_weighted_sum_of_its_parts_and_logs_each(batch):
    spec = [{"loss": "sigmoid", "weight": 0.8, "beta": 0.1}, {"loss": "bco_pair", "weight": 0.2},
            {"loss": "sft", "weight": 1.0}]
    module = _moved(CombinedPairLoss(losses=spec))
    module.eval()
    with torch.no_grad():
        loss, metrics = module.compute_loss(batch, "val")
    chosen, rejected = _rows(module, batch)
    ratios = chosen.policy, rejected.policy, chosen.reference, rejected.reference
    dpo = dpo_loss(*ratios, beta=0.1)
    bco = bco_pair_loss(*ratios, beta=0.1)  # no shift (TRL 1.16's bco_pair)
    nll = -chosen.policy * len(chosen.policy) / chosen.lengths.sum()  # the token mean over the batch (TRL's sft)
    torch.testing.assert_close(loss, (0.8 * dpo.losses + 0.2 * bco.losses + nll).mean(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(metrics["loss/sft"], nll, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(metrics["loss/sigmoid"], dpo.losses, atol=1e-5, rtol=1e-5)
    assert "loss/bco_pair" in metrics
    torch.testing.assert_close(metrics["rewards/chosen"], dpo.chosen_rewards, atol=1e-5, rtol=1e-5)
    assert "term_states.bco_pair.total" not in module.state_dict()  # no running mean unless asked for
    shifted = CombinedPairLoss(losses=[{"loss": "bco_pair", "running_mean": True}])
    assert "term_states.bco_pair.total" in shifted.state_dict()  # the paper's running mean is checkpointed


def test_combined_names_repeats_loads_reference_only_when_needed_and_checks_its_spec():
    module = CombinedPairLoss(losses=[{"loss": "simpo", "gamma": 1.0}, {"loss": "simpo"}, {"loss": "sft"}])
    assert module.part_names == ["simpo_0", "simpo_1", "sft"]
    assert module.policy.reference.name == "none"
    with pytest.raises(ValueError, match="unknown pair loss 'dpo'"):
        CombinedPairLoss(losses=[{"loss": "dpo"}])
    with pytest.raises(ValueError, match="gama"):
        CombinedPairLoss(losses=[{"loss": "simpo", "gama": 1.0}])
    with pytest.raises(ValueError, match="label_smoothing"):  # a wrapped loss's settings are its own
        CombinedPairLoss(losses=[{"loss": "nca_pair", "label_smoothing": 0.1}])
    CombinedPairLoss(losses=[{"loss": "robust", "label_smoothing": 0.2}])
    with pytest.raises(ValueError):
        CombinedPairLoss(losses=[])


def test_bco_running_mean_moves_in_training_only():
    mean = RunningRewardMean()
    assert mean(torch.tensor([1.0, 3.0])).item() == 2.0  # first batch: its own mean
    assert mean(torch.tensor([5.0, 7.0])).item() == 4.0  # the mean of all four rewards
    mean.eval()
    assert mean(torch.tensor([100.0])).item() == 4.0  # read, not moved
    mean.train()
    assert mean(torch.tensor([9.0])).item() == 5.0


def test_invalid_settings_fail_before_loading():
    for make in (lambda: RobustDPO(label_smoothing=0.5), lambda: EXOPair(label_smoothing=0.0),
                 lambda: LDDPO(alpha=1.5), lambda: SimPO(beta=0.0), lambda: DiscoPOP(tau=-1.0)):
        with pytest.raises(ValueError):
            make()


def test_ipo_part_is_the_papers_by_default_and_trls_when_length_normalized(batch):
    from lit_align.losses import ipo_loss, length_normalized_ipo_loss

    module = _moved(CombinedPairLoss(losses=[{"loss": "ipo"}, {"loss": "ipo", "length_normalized": True}]))
    chosen, rejected = _rows(module, batch)
    args = chosen.policy, rejected.policy, chosen.reference, rejected.reference
    papers, trls = (part.pair_loss(chosen, rejected, batch).losses for part in module.parts)
    torch.testing.assert_close(papers, ipo_loss(*args).losses)
    torch.testing.assert_close(trls, length_normalized_ipo_loss(*args, chosen.lengths, rejected.lengths).losses)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_setting_is_documented_with_the_source_of_its_default(cls):
    import inspect
    import re

    args = inspect.getdoc(cls).split("Args:\n", 1)[1]
    entries = dict(re.findall(r"^    (\w+): (.*(?:\n {8}.*)*)", args, flags=re.M))  # name -> text, continuations too
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if parameter.kind is parameter.POSITIONAL_OR_KEYWORD and parameter.default is not inspect.Parameter.empty:
            assert name in entries, f"{cls.__name__}.{name} undocumented"
            assert "TRL" in entries[name] or "paper" in entries[name], f"{cls.__name__}.{name}: no stated source"


@pytest.mark.parametrize("spec, message", [
    ({"loss": "sigmoid", "beta": -1.0}, "beta must be positive"),
    ({"loss": "ipo", "tau": 0.0}, "tau must be positive"),
    ({"loss": "robust", "label_smoothing": 0.5}, "label_smoothing must be in"),
    ({"loss": "exo_pair", "label_smoothing": 0.0}, "label_smoothing must be in"),
    ({"loss": "sft", "nll_reduction": "sum"}, "nll_reduction must be one of"),
])
def test_a_combined_part_gets_its_objectives_checks(spec, message):
    """A part of a mix is its objective, with the objective's checks."""
    with pytest.raises(ValueError, match=message):
        CombinedPairLoss(losses=[spec])
    objective = {"sigmoid": DPO, "ipo": IPO, "robust": RobustDPO, "exo_pair": EXOPair, "sft": RPO}[spec["loss"]]
    settings = {k: v for k, v in spec.items() if k != "loss"}
    with pytest.raises(ValueError, match=message):
        objective(**settings)


def test_f_divergence_is_a_setting_of_the_terms_trl_allows_it_for():
    CombinedPairLoss(losses=[{"loss": "hinge", "f_divergence_type": "js_divergence"}, {"loss": "sft"}])
    with pytest.raises(ValueError, match="not \\['f_divergence_type'\\]"):
        CombinedPairLoss(losses=[{"loss": "apo_zero", "f_divergence_type": "js_divergence"}])
