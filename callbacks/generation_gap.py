"""``generation/logprob_gap``: how far the generation engine's log-probs are from the trainer's on the same samples.

An inference engine (``generation: vllm``, or Hugging Face ``generate`` in another precision) computes the sampled
tokens' log-probs with its own kernels; the trainer re-scores every response with its own. On the same weights the
two should agree to rounding; a gap that grows means the engine samples from weights other than the trained ones
(a missed push, a stale asynchronous sample) or numerics differ enough to make the samples off-policy.

This is the diagnostic of the correction an objective applies (``importance_correction``, docs/onpolicy.md): the gap
is taken from exactly the numbers the correction weighs, the engine's ``Rollout.engine_logps`` against the
experience's sampling-time ``old_logps``, and the ratio's statistics the correction used are logged beside it by
the objective (``generation/is_ratio/mean|max|clipped_fraction|masked_fraction``).
"""

from __future__ import annotations

import lightning.pytorch as pl


class GenerationGapMonitor(pl.Callback):
    """Logs ``generation/logprob_gap`` (mean per-token engine minus trainer log-prob of the last batch's samples)
    after each training batch that generated with the engine's log-probs: with an objective's
    ``importance_correction`` (which asks for them) or ``policy.vllm_options.logprob_gap: true``."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        gap = getattr(pl_module, "last_logprob_gap", None)
        if gap is not None:
            pl_module.log("generation/logprob_gap", gap, on_step=True, on_epoch=False)
            pl_module.last_logprob_gap = None
