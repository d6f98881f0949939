"""``generation/logprob_gap``: how far the generation engine's log-probs are from the trainer's on the same samples.

An inference engine (``generation: vllm``) computes the sampled tokens' log-probs with its own kernels; the trainer
re-scores every response with its own. On the same weights the two should agree to rounding; a gap that grows
means the engine samples from weights other than the trained ones (a missed push) or numerics differ enough to
make the samples off-policy.
"""

from __future__ import annotations

import lightning.pytorch as pl


class GenerationGapMonitor(pl.Callback):
    """Logs ``generation/logprob_gap`` (mean per-token engine minus trainer log-prob of the last generate) after
    each training batch that generated. Needs ``policy.vllm_options.logprob_gap: true``."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        backend = pl_module.policy.generation_backend
        gap = getattr(backend, "last_logprob_gap", None)
        if gap is not None:
            pl_module.log("generation/logprob_gap", gap, on_step=True, on_epoch=False)
            backend.last_logprob_gap = None
