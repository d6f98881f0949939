"""Parity with TRL 1.16's offline trainers (DPO with every loss_type, KTO, CPO/SimPO, ORPO), row by row of
docs/trl_losses.md: TRL's own loss code and lit-align's objective on the same crafted float64 log-probs give the
same loss, gradient and logged diagnostics (to 1e-6). Needs ``pip install -e ".[parity]"`` (TRL, test-only)."""

from __future__ import annotations

import types

import pytest
import torch

pytest.importorskip("trl")
pytestmark = pytest.mark.extended

from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer  # noqa: E402
from trl.experimental.cpo import CPOConfig, CPOTrainer  # noqa: E402
from trl.experimental.orpo import ORPOConfig, ORPOTrainer  # noqa: E402

from support.trl_parity import (  # noqa: E402
    DTYPE, FusedHeadModel, assert_close, config, logged, pair_batch, row_logps, token_logps, trainer, trl_metrics,
    use_crafted_rows,
)
from lit_align import PolicyWithReference  # noqa: E402
from lit_align.losses import kto_reference_point  # noqa: E402
from lit_align.objectives import (  # noqa: E402
    AOT, APODown, APOZero, BCOPair, CombinedPairLoss, DPO, DiscoPOP, EXOPair, Hinge, IPO, KTO, LDDPO,
    LengthNormalizedDPO, NCAPair, ORPO, RPO, RobustDPO, SPPOHard, SimPO, WPO,
)

PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected", "logits/chosen", "logits/rejected")


def _copy(cls, **kwargs):
    return lambda: cls(policy=PolicyWithReference(model="tiny", reference="copy"), **kwargs)


# (id, TRL DPOConfig settings, lit-align objective): one entry per row of docs/trl_losses.md's DPO table
DPO_ROWS = [
    ("sigmoid", {"loss_type": ["sigmoid"], "beta": 0.3}, _copy(DPO, beta=0.3)),
    ("sigmoid-label-smoothing-ignored", {"loss_type": ["sigmoid"], "label_smoothing": 0.2}, _copy(DPO)),
    ("forward_kl", {"loss_type": ["sigmoid"], "f_divergence_type": "forward_kl"},
     _copy(DPO, f_divergence_type="forward_kl")),
    ("js_divergence", {"loss_type": ["sigmoid"], "f_divergence_type": "js_divergence"},
     _copy(DPO, f_divergence_type="js_divergence")),
    ("alpha_divergence", {"loss_type": ["sigmoid"], "f_divergence_type": "alpha_divergence",
                          "f_alpha_divergence_coef": 0.3},
     _copy(DPO, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.3)),
    ("ipo", {"loss_type": ["ipo"], "beta": 0.2}, _copy(IPO, tau=0.2, length_normalized=True)),
    # TRL's f-divergences with the other loss types that take them
    ("hinge forward_kl", {"loss_type": ["hinge"], "f_divergence_type": "forward_kl"},
     _copy(Hinge, f_divergence_type="forward_kl")),
    ("ipo js_divergence", {"loss_type": ["ipo"], "f_divergence_type": "js_divergence"},
     _copy(IPO, length_normalized=True, f_divergence_type="js_divergence")),
    ("exo_pair forward_kl", {"loss_type": ["exo_pair"], "label_smoothing": 1e-3, "f_divergence_type": "forward_kl"},
     _copy(EXOPair, f_divergence_type="forward_kl")),
    ("robust js_divergence", {"loss_type": ["robust"], "label_smoothing": 0.1, "f_divergence_type": "js_divergence"},
     _copy(RobustDPO, label_smoothing=0.1, f_divergence_type="js_divergence")),
    ("discopop forward_kl", {"loss_type": ["discopop"], "beta": 0.05, "f_divergence_type": "forward_kl"},
     _copy(DiscoPOP, f_divergence_type="forward_kl")),
    ("sigmoid_norm js_divergence", {"loss_type": ["sigmoid_norm"], "f_divergence_type": "js_divergence"},
     _copy(LengthNormalizedDPO, f_divergence_type="js_divergence")),
    ("mpo f-divergence", {"loss_type": ["sigmoid", "hinge"], "loss_weights": [0.5, 0.5],
                          "f_divergence_type": "forward_kl"},
     _copy(CombinedPairLoss, losses=[{"loss": "sigmoid", "weight": 0.5, "f_divergence_type": "forward_kl"},
                                     {"loss": "hinge", "weight": 0.5, "f_divergence_type": "forward_kl"}])),
    ("hinge", {"loss_type": ["hinge"]}, _copy(Hinge)),
    ("robust", {"loss_type": ["robust"], "label_smoothing": 0.1}, _copy(RobustDPO, label_smoothing=0.1)),
    ("bco_pair", {"loss_type": ["bco_pair"]}, _copy(BCOPair)),
    ("apo_zero", {"loss_type": ["apo_zero"]}, _copy(APOZero)),
    ("apo_down", {"loss_type": ["apo_down"]}, _copy(APODown)),
    ("nca_pair", {"loss_type": ["nca_pair"]}, _copy(NCAPair)),
    ("exo_pair", {"loss_type": ["exo_pair"], "label_smoothing": 1e-3}, _copy(EXOPair)),
    ("sppo_hard", {"loss_type": ["sppo_hard"]}, _copy(SPPOHard)),
    ("discopop", {"loss_type": ["discopop"], "beta": 0.05}, _copy(DiscoPOP)),
    ("aot", {"loss_type": ["aot"]}, _copy(AOT)),
    ("aot_unpaired", {"loss_type": ["aot_unpaired"]}, _copy(AOT, paired=False)),
    ("sigmoid_norm", {"loss_type": ["sigmoid_norm"]}, _copy(LengthNormalizedDPO)),
    ("sigmoid+sft (RPO)", {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.7]}, _copy(RPO, alpha=0.7)),
    ("ld_alpha", {"loss_type": ["sigmoid"], "ld_alpha": 0.4}, _copy(LDDPO, alpha=0.4)),
    # WPO: equal where TRL's greedy-alignment divisor sum_v pi(v)^2 is 1 (ln = 0), the documented difference
    ("use_weighting", {"loss_type": ["sigmoid"], "use_weighting": True}, _copy(WPO, batch_normalized=False)),
    ("mpo (loss_type list)", {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]},
     _copy(CombinedPairLoss, losses=[{"loss": "sigmoid", "weight": 0.8}, {"loss": "bco_pair", "weight": 0.2},
                                     {"loss": "sft", "weight": 1.0}])),
    ("mpo with ld_alpha", {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5], "ld_alpha": 0.6},
     _copy(CombinedPairLoss, losses=[{"loss": "sigmoid"}, {"loss": "sft", "weight": 0.5}], ld_alpha=0.6)),
]


def _crafted_pairs(dtype=DTYPE):
    batch = pair_batch([3, 5, 2, 4], [4, 2, 2, 6])
    mask = batch["completion_mask"][:, 1:].to(dtype)
    generator = torch.Generator().manual_seed(7)
    mean_logits = torch.randn(mask.shape, generator=generator, dtype=DTYPE).to(dtype) * mask  # per token
    return batch, mask, mean_logits


def _trl_dpo(settings, batch, mask, mean_logits):
    args = config(DPOConfig, **settings)
    leaf, tokens = token_logps(mask, seed=1, requires_grad=True)
    _, ref_tokens = token_logps(mask, seed=2)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask")}
    key = id(inputs["input_ids"])
    outputs = {"log_probs": tokens, "entropy": torch.zeros_like(tokens), "mean_logits": mean_logits,
               "is_top1": torch.zeros(mask.shape, dtype=torch.bool), "log_sum_sq_probs": torch.zeros_like(tokens)}
    model, ref = FusedHeadModel({key: outputs}), FusedHeadModel({key: {"log_probs": ref_tokens}})
    ns = trainer(DPOTrainer, args, model, ref_model=ref, beta=args.beta, precompute_ref_logps=False,
                 loss_types=args.loss_type, loss_weights=args.loss_weights or [1.0] * len(args.loss_type),
                 ld_alpha=args.ld_alpha, f_divergence_type=args.f_divergence_type,
                 f_alpha_divergence_coef=args.f_alpha_divergence_coef, label_smoothing=args.label_smoothing,
                 use_weighting=args.use_weighting)
    loss = DPOTrainer._compute_loss(ns, model, inputs, False)
    loss.backward()
    return loss.detach(), leaf.grad, trl_metrics(ns)


def _lit(module, batch, mask, mean_logits, monkeypatch, extra=None):
    leaf, tokens = token_logps(mask, seed=1, requires_grad=True)
    _, ref_tokens = token_logps(mask, seed=2)
    row_means = (mean_logits * mask).sum(-1) / mask.sum(-1)
    mask = mask.bool()
    use_crafted_rows(monkeypatch, {"policy": row_logps(tokens, mask, row_means),
                                   "reference": row_logps(ref_tokens, mask, row_means)})
    loss, metrics = module.compute_loss({**batch, **(extra or {})}, "train")
    loss.backward()
    return loss.detach(), leaf.grad, logged(metrics)


@pytest.mark.parametrize("settings, make", [row[1:] for row in DPO_ROWS], ids=[row[0] for row in DPO_ROWS])
def test_dpo_trainer_losses(settings, make, monkeypatch):
    # TRL's alpha-divergence has no float64 path (its exponent clamp is keyed by dtype: float16/bfloat16/float32)
    dtype = torch.float32 if settings.get("f_divergence_type") == "alpha_divergence" else DTYPE
    tol = 1e-6 if dtype == DTYPE else 1e-5
    batch, mask, mean_logits = _crafted_pairs(dtype)
    trl_loss, trl_grad, trl_logged = _trl_dpo(settings, batch, mask, mean_logits)
    loss, grad, lit_logged = _lit(make(), batch, mask, mean_logits, monkeypatch)
    assert_close(loss, trl_loss, "loss", tol)
    assert_close(grad, trl_grad, "gradient", tol)
    for name in PAIR_METRICS:
        assert_close(lit_logged[name], trl_logged[name], name, tol)


def test_sigmoid_label_smoothing_is_cdpo_here_and_ignored_by_trl(monkeypatch):
    """The documented difference: TRL 1.16's sigmoid ignores label_smoothing; lit-align's DPO applies cDPO."""
    batch, mask, mean_logits = _crafted_pairs()
    trl_loss, _, _ = _trl_dpo({"loss_type": ["sigmoid"], "label_smoothing": 0.2}, batch, mask, mean_logits)
    loss, _, _ = _lit(_copy(DPO, label_smoothing=0.2)(), batch, mask, mean_logits, monkeypatch)
    assert abs(loss - trl_loss) > 1e-3


# -- KTO ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
def test_kto_trainer_loss(loss_type, monkeypatch):
    batch = pair_batch([3, 5, 2], [4, 2, 6])
    batch["index"] = torch.arange(6)
    labels = torch.tensor([True, False, True, True, False, False])
    mask = batch["completion_mask"][:, 1:].to(DTYPE)
    generator = torch.Generator().manual_seed(3)
    mean_logits = torch.randn(mask.shape, generator=generator, dtype=DTYPE) * mask
    kl_ids = batch["input_ids"].clone()
    _, kl_policy = token_logps(mask, seed=5)
    _, kl_reference = token_logps(mask, seed=6, scale=1.5)
    args = config(KTOConfig, loss_type=loss_type, beta=0.4, desirable_weight=1.3, undesirable_weight=0.8)
    leaf, tokens = token_logps(mask, seed=1, requires_grad=True)
    _, ref_tokens = token_logps(mask, seed=2)
    outputs = {"log_probs": tokens, "entropy": torch.zeros_like(tokens), "mean_logits": mean_logits}
    model = FusedHeadModel({id(batch["input_ids"]): outputs, id(kl_ids): {"log_probs": kl_policy}})
    ref = FusedHeadModel({id(batch["input_ids"]): {"log_probs": ref_tokens}, id(kl_ids): {"log_probs": kl_reference}})
    inputs = {**{k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask")}, "label": labels,
              "KL_input_ids": kl_ids, "KL_attention_mask": batch["attention_mask"],
              "KL_completion_mask": batch["completion_mask"]}
    ns = trainer(KTOTrainer, args, model, ref_model=ref, beta=args.beta, loss_type=loss_type,
                 desirable_weight=args.desirable_weight, undesirable_weight=args.undesirable_weight,
                 calculate_KL=loss_type == "kto", precompute_ref_logps=False)
    ns._compute_kl_logps = lambda model, batch: KTOTrainer._compute_kl_logps(ns, model, batch)
    trl_loss = KTOTrainer._compute_loss(ns, model, inputs, False)
    trl_loss.backward()

    module = KTO(beta=0.4, desirable_weight=1.3, undesirable_weight=0.8, loss_type=loss_type,
                 policy=PolicyWithReference(model="tiny", reference="copy"))
    z0 = kto_reference_point(kl_policy.sum(-1), kl_reference.sum(-1))
    monkeypatch.setattr(KTO, "reference_point", lambda self, batch: z0)
    loss, grad, lit_logged = _lit(module, batch, mask, mean_logits, monkeypatch, {"label": labels})
    assert_close(loss, trl_loss.detach(), "loss")
    assert_close(grad, leaf.grad, "gradient")
    for name, value in trl_metrics(ns).items():
        if name not in ("entropy", "num_tokens"):  # not logged by lit-align's offline objectives
            assert_close(lit_logged[name], value, name)


# -- CPO (SimPO) and ORPO ---------------------------------------------------------------------------------------
# Their trainers take the log-probs from ``concatenated_forward`` (logits -> per-token averages and a cross-entropy
# NLL over the chosen completion tokens); it is replaced by the crafted averages and the NLL as that cross-entropy
# computes it: the token mean over the batch's chosen completion tokens. TRL's ORPO NLL also counts the prompt
# tokens, which have no log-probs in lit-align: the documented difference, not exercised here.

def _cpo_like(trainer_cls, args, batch, mask, **attributes):
    leaf, tokens = token_logps(mask, seed=1, requires_grad=True)
    lengths = mask.sum(-1)
    average = tokens.sum(-1) / lengths
    chosen, rejected = average.chunk(2)
    nll = -tokens.chunk(2)[0].sum() / lengths.chunk(2)[0].sum()
    logits = torch.zeros(1, dtype=DTYPE)
    ns = trainer(trainer_cls, args, None, beta=args.beta, **attributes)
    ns.concatenated_forward = lambda model, batch: (chosen, rejected, logits, logits, nll)
    loss_method = "cpo_loss" if trainer_cls is CPOTrainer else "odds_ratio_loss"  # TRL's own, bound to the stand-in
    setattr(ns, loss_method, types.MethodType(getattr(trainer_cls, loss_method), ns))
    loss, metrics = trainer_cls.get_batch_loss_metrics(ns, None, batch)
    loss.backward()
    return loss.detach(), leaf.grad, metrics


@pytest.mark.parametrize("cpo_alpha", [0.0, 1.0])
def test_cpo_simpo(cpo_alpha, monkeypatch):
    batch, mask, mean_logits = _crafted_pairs()
    args = config(CPOConfig, loss_type="simpo", beta=2.0, simpo_gamma=0.5, cpo_alpha=cpo_alpha)
    trl_loss, trl_grad, trl_logged = _cpo_like(CPOTrainer, args, batch, mask, loss_type="simpo", alpha=0.0,
                                               simpo_gamma=args.simpo_gamma, label_smoothing=0.0,
                                               cpo_alpha=cpo_alpha)
    module = SimPO(beta=2.0, gamma=0.5, cpo_alpha=cpo_alpha, policy=PolicyWithReference(model="tiny", reference="none"))
    loss, grad, lit_logged = _lit(module, batch, mask, mean_logits, monkeypatch)
    assert_close(loss, trl_loss, "loss")
    assert_close(grad, trl_grad, "gradient")
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert_close(lit_logged[name], trl_logged[name], name)


def test_orpo_on_completion_tokens(monkeypatch):
    batch, mask, mean_logits = _crafted_pairs()
    args = config(ORPOConfig, beta=0.25)
    trl_loss, trl_grad, trl_logged = _cpo_like(ORPOTrainer, args, batch, mask)
    module = ORPO(lam=0.25, policy=PolicyWithReference(model="tiny", reference="none"))
    loss, grad, lit_logged = _lit(module, batch, mask, mean_logits, monkeypatch)
    assert_close(loss, trl_loss, "loss")
    assert_close(grad, trl_grad, "gradient")
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert_close(lit_logged[name], trl_logged[name], name)
