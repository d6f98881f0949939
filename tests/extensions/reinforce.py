"""The thin on-policy objective of the new loss (in the library: a module of lit_align/objectives/onpolicy/)."""

from lit_align.objectives import OnPolicyObjective

from extensions.reinforce_loss import group_reinforce_loss


class GroupREINFORCE(OnPolicyObjective):
    """REINFORCE on ``num_samples`` responses per prompt, each prompt's mean reward as the baseline.

    Reference-free: no pi_0 is loaded and no reference forward runs.
    """

    needs_reference = None

    def experience_loss(self, mb):
        # mb: an Experience (lit_align/objectives/onpolicy/experience.py) of whole prompts
        loss, advantages = group_reinforce_loss(self.policy_token_logps(mb), mb.response_mask, mb.scores,
                                                self.num_samples)
        return loss, {"reinforce/advantage_abs": advantages.abs()}
