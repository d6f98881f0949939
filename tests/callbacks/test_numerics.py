"""Non-finite losses and gradients stop the run naming the step (or are skipped and counted); log-probs stay
float32 under bf16."""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import pytest
import torch

from support.cli import fit_args, run_main
from lit_align.callbacks import NonFiniteError, NonFiniteGuard
from lit_align.runs.checkpoint_io import load_checkpoint_file

NAN_AT_2 = ["--model=support.crash.NaNLossDPO", "--model.nan_step=2", "--checkpoint.every_n_train_steps=1",
            "--data.val_split=null", "--export.enabled=false", "--trainer.log_every_n_steps=1"]




def test_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(run_dir, capsys):
    assert run_main(fit_args("dpo.yaml", *NAN_AT_2, steps=4)) == 2
    err = capsys.readouterr().err
    assert "lit-align: error: non-finite loss (nan) at step 2 (epoch 0, batch 2)" in err
    # Steps 0 and 1 were taken and saved; step 2 never reached the optimizer.
    checkpoint = load_checkpoint_file(run_dir / "runs/test/checkpoints/last.ckpt")
    assert checkpoint["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())


def test_nan_loss_skipped_and_counted_on_request(run_dir, capsys):
    assert run_main(fit_args("dpo.yaml", *NAN_AT_2, "--numerics.on_nonfinite=skip", steps=4)) == 0
    checkpoint = load_checkpoint_file(run_dir / "runs/test/checkpoints/last.ckpt")
    assert checkpoint["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())
    # 4 optimizer steps, the one at step 2 dropped: AdamW advanced every parameter 3 times, not 4.
    assert {int(s["step"]) for s in checkpoint["optimizer_states"][0]["state"].values()} == {3}
    skipped = [float(r["train/nonfinite_skipped"]) for r in _rows(run_dir) if r.get("train/nonfinite_skipped")]
    assert skipped and skipped[0] == 0.0 and skipped[-1] == 1.0 and max(skipped) == 1.0


def _trainer_stub(step=5):
    progress = SimpleNamespace(current=SimpleNamespace(ready=step + 1))
    return SimpleNamespace(
        global_step=step, current_epoch=0, precision_plugin=SimpleNamespace(),
        strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision),
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
    )


def test_infinite_gradient_names_the_parameter_and_step():
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    for p in module.parameters():
        p.grad = torch.zeros_like(p)
    module[1].weight.grad[0, 1] = float("inf")
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    with pytest.raises(NonFiniteError, match=r"non-finite gradient of 1\.weight at step 5"):
        NonFiniteGuard().on_before_optimizer_step(_trainer_stub(), module, optimizer)

    guard = NonFiniteGuard(on_nonfinite="skip")
    module.log = lambda *a, **k: None
    before = [p.detach().clone() for p in module.parameters()]
    guard.on_before_optimizer_step(_trainer_stub(), module, optimizer)
    optimizer.step()
    assert guard.skipped == 1
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))  # the update was dropped


def test_logprobs_are_float32_under_bf16_autocast_and_bf16_weights():
    from lit_align.data.collate import CompletionCollator
    from lit_align.data.formats import RowEncoder
    from lit_align.objectives.offline.dpo import DPO
    from lit_align.policy.with_reference import PolicyWithReference

    rows = [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}] * 2
    for dtype, autocast in ((None, True), ("bfloat16", False)):
        module = DPO(policy=PolicyWithReference(dtype=dtype))
        examples, _ = RowEncoder(module.tokenizer, ("chosen", "rejected")).encode_all(rows, "rows")
        batch = CompletionCollator(module.tokenizer.pad_token_id)(examples)
        seen = []
        # the LM head's own output: the logits of one chunk of positions (lit_align.models.chunked_head)
        module.policy.policy.get_output_embeddings().register_forward_hook(lambda m, i, out: seen.append(out.dtype))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss, metrics = module.compute_loss(batch, "train")
        assert seen and set(seen) == {torch.bfloat16}  # the model really ran in bf16 (the fast-path check too)
        for name in ("logps/chosen", "logps/rejected"):
            assert metrics[name].dtype == torch.float32 and torch.isfinite(metrics[name]).all()
        assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_bf16_mixed_training_logs_finite_logprobs(run_dir):
    args = fit_args("dpo.yaml", "--trainer.precision=bf16-mixed", "--data.val_split=null", "--export.enabled=false",
                    "--trainer.log_every_n_steps=1", steps=2)
    assert run_main(args) == 0
    values = [float(r["train/logps/chosen"]) for r in _rows(run_dir) if r.get("train/logps/chosen")]
    assert len(values) == 2 and all(math.isfinite(v) and v < 0 for v in values)


def _rows(run_dir):
    rows = []
    for path in run_dir.glob("runs/test/logs/**/metrics.csv"):
        with open(path) as handle:
            rows += list(csv.DictReader(handle))
    return rows
