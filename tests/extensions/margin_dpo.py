"""The thin objective of the new loss (in the library: a module of lit_align/objectives/offline/)."""

from lit_align.losses import PreferenceLoss
from lit_align.objectives import OfflinePairObjective

from extensions.margin_loss import margin_dpo_loss


class MarginDPO(OfflinePairObjective):
    """DPO with a target margin between the chosen and the rejected log-ratio.

    Args:
        beta: Strength of the implicit KL regularisation towards the reference.
        margin: The margin ``beta * h`` must clear before the loss stops pushing; 0 is DPO.
    """

    def __init__(self, beta: float = 0.1, margin: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.beta = beta
        self.margin = margin

    def pair_loss(self, chosen, rejected, batch) -> PreferenceLoss:
        return margin_dpo_loss(chosen.policy, rejected.policy, chosen.reference, rejected.reference, self.beta,
                               self.margin)
